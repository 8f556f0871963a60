"""Recognition on real faces (../shared/data/recognition: photos of five known people): aligned by python -m
common.align with the shared RetinaFace, verified and embedded by train_recognition.py with the released
MobileFaceNet (the embeddings equal its architecture as published), converted and exported, and named by detect.py
--recognizer --gallery; the bad input of each."""
import itertools
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import bad_input
from conftest import SHARED_DATA
from test_mobilefacenet import reference_forward

RETINAFACE = SHARED_DATA / 'weights' / 'retinaface_mobilenet0.25_Final.pth'
RELEASED = SHARED_DATA / 'weights' / 'mobilefacenet_068.ckpt'
PEOPLE = SHARED_DATA / 'recognition' / 'people'
TEST_PHOTOS = SHARED_DATA / 'recognition' / 'people_test'
MAX_SIZE = 640  # detection with the long side capped: quick on a CPU, and the faces stay large
# who is in each test photo (johnsnow_test1.jpg is Kit Harington); the two with two people are told apart by where
# the face picked (the highest-scoring) is: (x, y) of its centre as fractions of the photo's width and height
TEST_PEOPLE = {'alex_lacamoire1': 'alex_lacamoire', 'johnsnow_test1': 'kit_harington', 'obama1': 'obama',
               'kit_with_rose': lambda x, y: 'kit_harington' if x > 0.5 else 'rose_leslie',
               'obama_and_biden': lambda x, y: None if y > 0.6 else 'obama' if x > 0.5 else 'biden'}
NAMED = {'alex_lacamoire1.jpg': ['alex_lacamoire'], 'johnsnow_test1.jpg': ['kit_harington'], 'obama1.jpg': ['obama'],
         'kit_with_rose.jpg': ['kit_harington', 'rose_leslie'], 'obama_and_biden.jpg': ['biden', 'obama', 'unknown']}


@pytest.fixture(scope='module')
def aligned(tmp_path_factory):
    """The shared people and test photos aligned for the released MobileFaceNet (sphereface, 96 x 112) by the
    command, and the person of each crop: {relative path: person}."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'real test data not found at {SHARED_DATA}')
    from common import align
    out = tmp_path_factory.mktemp('aligned')
    result = align.main(['--weights', str(RETINAFACE), '--network', 'mobile0.25', '--source',
                         str(SHARED_DATA / 'recognition'), '--out', str(out), '--template', 'sphereface',
                         '--max-size', str(MAX_SIZE), '--device', 'cpu'])
    assert result['aligned'] == 14 and not result['no_face'] and not result['unreadable']
    return out, people_of(out)


def people_of(out) -> dict:
    """{crop path relative to `out`: person} for the aligned photos (None: a face of nobody known)."""
    from common.align import pick_face
    from common.inference.load import build_detector
    detector = build_detector(RETINAFACE, 'mobile0.25', 'cpu', max_size=MAX_SIZE)  # the command's
    people = {}
    for path in sorted(out.rglob('*.jp*g')):
        relative = path.relative_to(out).as_posix()
        rule = TEST_PEOPLE.get(path.stem) if relative.startswith('people_test/') else path.parent.name
        if callable(rule):
            image = cv2.imread(str(SHARED_DATA / 'recognition' / relative))
            found = detector([image])[0]
            x1, y1, x2, y2 = found['boxes'][pick_face(found['boxes'], found['scores'], image.shape[:2])]
            rule = rule((x1 + x2) / 2 / image.shape[1], (y1 + y2) / 2 / image.shape[0])
        people[relative] = rule
    return people


def pair_lines(people: dict) -> list:
    """Every same-person pair, then as many different-person pairs, taken in turn from each pair of people (the
    first unused pair of photos of each, in sorted order): the tutorial's `a.jpg b.jpg 0|1` lines."""
    known = sorted(p for p, who in people.items() if who)
    same = [(a, b) for a, b in itertools.combinations(known, 2) if people[a] == people[b]]
    by_people = {}
    for a, b in itertools.combinations(known, 2):
        if people[a] != people[b]:
            by_people.setdefault(tuple(sorted((people[a], people[b]))), []).append((a, b))
    queues, different = [pairs for _, pairs in sorted(by_people.items())], []
    while len(different) < len(same):
        for queue in queues:
            if queue and len(different) < len(same):
                different.append(queue.pop(0))
    return [f'{a} {b} 1' for a, b in same] + [f'{a} {b} 0' for a, b in different]


def train_recognition(argv, capsys):
    """train_recognition.main in this process -> (exit status, stdout, stderr)."""
    return bad_input.run_main('train_recognition', [*argv, '--device', 'cpu', '--workers', 0], capsys)


@pytest.mark.slow
def test_released_model_tells_the_shared_people_apart(aligned, tmp_path, capsys):
    """The issue's check: --evaluate with the released file as it is, on pairs of the aligned faces (folders, and
    the same pairs in a flat folder), 10-fold accuracy >= 0.98."""
    root, people = aligned
    lines = pair_lines(people)
    assert sum(line.endswith(' 1') for line in lines) >= 10  # the 10-fold protocol needs 10 of each
    (tmp_path / 'pairs.txt').write_text('\n'.join(lines) + '\n')
    flat = tmp_path / 'flat'
    flat.mkdir()
    for relative in people:
        shutil.copy(root / relative, flat / relative.replace('/', '__'))
    (tmp_path / 'flat_pairs.txt').write_text('\n'.join(line.replace('/', '__') for line in lines) + '\n')
    results = []
    for test_root, pairs in ((root, 'pairs.txt'), (flat, 'flat_pairs.txt')):
        status, out, err = train_recognition(['--evaluate', '--backbone', 'mobilefacenet', '--weights', RELEASED,
                                              '--test-root', test_root, '--test-list', tmp_path / pairs,
                                              '--out', tmp_path / f'run_{pairs}'], capsys)
        assert status == 0, err
        results.append(json.loads((tmp_path / f'run_{pairs}' / 'results.json').read_text()))
    assert results[0] == results[1]
    assert results[0]['acc_10fold'] >= 0.98, results


@pytest.mark.slow
def test_exported_embeddings_equal_the_published_architecture(aligned, tmp_path, capsys):
    """--export-embeddings of the released file (no --backbone: told by its layout) equals the network written
    from its description on every aligned face: cosine >= 0.99999 with the mirror image added and without."""
    root, people = aligned
    state = torch.load(RELEASED, map_location='cpu', weights_only=True)['net_state_dict']
    faces = sorted(people)
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(root / f).convert('RGB'))) for f in faces])
    pixels = (pixels.permute(0, 3, 1, 2).float() - 127.5) / 128
    with torch.no_grad():
        plain = reference_forward(state, pixels)
        summed = plain + reference_forward(state, pixels.flip(3))
    for flip, reference in (('--flip', summed), ('--no-flip', plain)):
        npz = tmp_path / f'{flip}.npz'
        status, out, err = train_recognition(['--weights', RELEASED, '--export-embeddings', root, '--out', npz, flip],
                                             capsys)
        assert status == 0, err
        with np.load(npz) as data:
            assert sorted(data.files) == faces
            ours = torch.from_numpy(np.stack([data[f] for f in faces]))
        assert ours.shape == (14, 128) and torch.allclose(ours.norm(dim=1), torch.ones(14))
        assert F.cosine_similarity(ours, reference).min() >= 0.99999


def detect(argv, capsys):
    """detect.main in this process -> (exit status, its result, stdout, stderr)."""
    import detect as script
    try:
        result, status = script.main(script.parse_args([str(a) for a in argv])), 0
    except SystemExit as stop:
        result, status = None, stop.code
    captured = capsys.readouterr()
    return status, result, captured.out, captured.err


def one_line(status, err, flag, *says):
    assert status == 2 and err.strip().count('\n') == 0 and 'Traceback' not in err, err
    assert err.startswith(f'error: {flag}') and all(s in err for s in says), err


@pytest.fixture
def converted(tmp_path):
    """The released MobileFaceNet converted to our checkpoint by python -m common.models.convert."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'real test data not found at {SHARED_DATA}')
    from common.models import convert
    path = tmp_path / 'mobilefacenet.pt'
    convert.main(['--mobilefacenet', str(RELEASED), '--out', str(path)])
    return path


@pytest.mark.slow
def test_detect_names_the_people_and_caches_the_gallery(converted, tmp_path, capsys):
    """detect.py --recognizer (the converted checkpoint) --gallery people/ names every face in people_test/
    (johnsnow_test1.jpg is Kit Harington; the third face in obama_and_biden.jpg is nobody known), and writes the
    name as the 16th column of --save-txt; a second run takes the gallery's embeddings from its cache."""
    out = tmp_path / 'out'
    flags = ['--weights', RETINAFACE, '--network', 'mobile0.25', '--recognizer', converted, '--gallery', PEOPLE,
             '--max-size', MAX_SIZE, '--device', 'cpu', '--out', out]
    status, result, printed, err = detect([*flags, '--source', TEST_PHOTOS, '--save-txt'], capsys)
    assert status == 0, err
    assert '5 people, 9 photos (0 from the cache' in printed
    assert {image: sorted(n for n, _ in faces) for image, faces in result['names'].items()} == NAMED
    for image, faces in result['names'].items():
        for name, score in faces:
            assert score >= 0.4 if name != 'unknown' else score < 0.4, (image, name, score)
    rows = [line.split() for line in (out / 'kit_with_rose.txt').read_text().splitlines()[2:]]
    assert [len(row) for row in rows] == [16, 16] and sorted(row[-1] for row in rows) == NAMED['kit_with_rose.jpg']
    status, result, printed, err = detect([*flags, '--source', TEST_PHOTOS / 'johnsnow_test1.jpg'], capsys)
    assert status == 0 and '9 photos (9 from the cache' in printed, err
    assert [n for n, _ in result['names']['johnsnow_test1.jpg']] == ['kit_harington']


@pytest.mark.slow
def test_gallery_bad_photos_and_people(converted, tmp_path, capsys):
    """A gallery photo that cannot be read or holds no face is named and skipped; a person left without a usable
    photo, a missing gallery, a detector as the recognizer and a recognizer as the detector are one line, exit 2."""
    gallery = tmp_path / 'gallery'
    (gallery / 'rose_leslie').mkdir(parents=True)
    (gallery / 'nobody').mkdir()
    shutil.copy(PEOPLE / 'rose_leslie' / 'img1.jpg', gallery / 'rose_leslie')
    (gallery / 'rose_leslie' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    cv2.imwrite(str(gallery / 'nobody' / 'wall.png'), np.full((120, 160, 3), 90, np.uint8))
    source = TEST_PHOTOS / 'kit_with_rose.jpg'
    flags = ['--weights', RETINAFACE, '--network', 'mobile0.25', '--max-size', 320, '--device', 'cpu',
             '--out', tmp_path / 'out', '--source', source]
    status, _, printed, err = detect([*flags, '--recognizer', converted, '--gallery', gallery], capsys)
    one_line(status, err, '--gallery', 'no usable photo', 'nobody')
    assert 'skipping' in printed and 'broken.jpg' in printed and 'wall.png: no face found' in printed
    shutil.rmtree(gallery / 'nobody')
    status, result, printed, err = detect([*flags, '--recognizer', converted, '--gallery', gallery], capsys)
    assert status == 0, err
    assert sorted(n for n, _ in result['names']['kit_with_rose.jpg']) == ['rose_leslie', 'unknown']
    assert 'broken.jpg' in printed  # named again: an unreadable photo is never cached
    status, _, _, err = detect([*flags, '--recognizer', converted, '--gallery', tmp_path / 'none'], capsys)
    one_line(status, err, '--gallery', 'none')
    status, _, _, err = detect([*flags, '--recognizer', RETINAFACE, '--gallery', gallery], capsys)
    one_line(status, err, '--recognizer', 'not a recognition model')
    status, _, _, err = detect([*flags, '--recognizer', converted], capsys)
    one_line(status, err, '--gallery')
    status, _, _, err = detect(['--weights', converted, '--source', source, '--out', tmp_path / 'o'], capsys)
    one_line(status, err, '--weights', 'recognition', 'not a detector')


def test_convert_bad_input_and_recognizer_checks(converted, tmp_path, capsys):
    from common.checkpoint import CheckpointError, load_checkpoint
    from common.inference.recognizer import load_recognition_model, load_recognizer
    from common.models import convert
    from common.models.mobilefacenet import RELEASED_ARCH
    saved = load_checkpoint(converted)
    assert saved['arch'] == RELEASED_ARCH and saved['source']['epoch'] == 68
    model, arch = load_recognition_model(converted)
    released, _ = load_recognition_model(RELEASED)
    assert arch == RELEASED_ARCH and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                            released.state_dict().values()))
    for bad in (RETINAFACE, tmp_path / 'none.ckpt'):
        try:
            convert.main(['--mobilefacenet', str(bad), '--out', str(tmp_path / 'x.pt')])
            status = 0
        except SystemExit as stop:
            status = stop.code
        one_line(status, capsys.readouterr().err, '--mobilefacenet', bad.name)
    with pytest.raises(CheckpointError, match='not a recognition model'):
        load_recognizer(RETINAFACE)
    recognizer = load_recognizer(converted)
    assert (recognizer.template, recognizer.size) == ('sphereface', (96, 112))
    with pytest.raises(ValueError, match='96 x 112'):
        recognizer([np.zeros((112, 112, 3), np.uint8)])
    assert recognizer([]).shape == (0, 128)


@pytest.mark.slow
def test_onnx_export_of_the_recognizer(converted, aligned, tmp_path, capsys):
    """export.py writes the recognition checkpoint as .onnx (crops in, embedding out, checked in onnxruntime), and
    the Recognizer on it gives the PyTorch Recognizer's embeddings on real aligned faces."""
    from common.inference.recognizer import load_recognizer
    root, people = aligned
    status, printed, err = bad_input.run_main('export', ['--weights', converted, '--out', tmp_path / 'm.onnx'], capsys)
    assert status == 0, err
    assert 'dynamic batch, 112 x 96 crops' in printed
    crops = [cv2.imread(str(root / face)) for face in sorted(people)]
    ours, exported = load_recognizer(converted)(crops), load_recognizer(tmp_path / 'm.onnx')(crops)
    assert exported.shape == (14, 128) and (ours * exported).sum(1).min() >= 0.99999
