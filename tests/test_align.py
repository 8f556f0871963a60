"""Face alignment (common/align.py): the templates at other sizes, the similarity fit against hand-computed cases and
against the same least-squares problem solved another way, the crop, and the face picking rules; the command on real
photos against insightface's norm_crop written again here from its description, and its bad input."""
import math

import cv2
import numpy as np
import pytest
import torch

from common.align import ARCFACE_112, TEMPLATES, crop_face, parse_size, pick_face, similarity_transform, \
    template_points

RETINAFACE = 'weights/retinaface_mobilenet0.25_Final.pth'


def fit_by_linear_least_squares(source, target):
    """The same optimum written another way: a similarity without reflection is x' = a x - b y + tx,
    y' = b x + a y + ty, linear in (a, b, tx, ty); solve the stacked equations by least squares."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        values += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, float), np.array(values, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_templates_and_sizes():
    assert TEMPLATES['sphereface'][0][0].tolist() == pytest.approx([30.2946, 51.6963])
    assert template_points('arcface').tolist() == ARCFACE_112.tolist()
    assert np.allclose(template_points('arcface', (224, 224)), ARCFACE_112 * 2)       # a multiple of 112
    assert np.allclose(template_points('arcface', (128, 128)), ARCFACE_112 + [8, 0])  # insightface's 128 rule
    assert np.allclose(template_points('arcface', (256, 256)), ARCFACE_112 * 2 + [16, 0])
    assert np.allclose(template_points('sphereface', (192, 224)), (ARCFACE_112 - [8, 0]) * 2)
    assert np.allclose(template_points('sphereface', (112, 112)), ARCFACE_112)  # centred: 8 px each side
    # another size: scaled by min(W / 112, H / 112) = 1.5, centred (x: (200 - 168) / 2, y: 0)
    assert np.allclose(template_points('arcface', (200, 168)), ARCFACE_112 * 1.5 + [16, 0])
    assert parse_size('96x112') == (96, 112) and parse_size('128') == (128, 128)
    for bad in ('96x', 'ax112', '0x112', '96x112x3'):
        with pytest.raises(ValueError, match='WxH'):
            parse_size(bad)
    with pytest.raises(ValueError, match='unknown template'):
        template_points('vggface')


def test_template_onto_itself_is_the_identity():
    for name in TEMPLATES:
        points = template_points(name)
        assert np.allclose(similarity_transform(points, points), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_hand_computed_similarity():
    # (x, y) -> (-2 y + 3, 2 x + 1): scale 2, rotation +90 degrees, shift (3, 1)
    source = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]], float)
    target = np.stack([-2 * source[:, 1] + 3, 2 * source[:, 0] + 1], 1)
    assert np.allclose(similarity_transform(source, target), [[0, -2, 3], [2, 0, 1]], atol=1e-12)


def test_known_rotation_scale_shift_recovered():
    scale, angle, shift = 0.37, math.radians(-23.0), np.array([12.5, -40.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    detected = (ARCFACE_112 - shift) @ rotation / scale  # template = scale * rotation @ detected + shift
    matrix = similarity_transform(detected, ARCFACE_112)
    assert np.allclose(matrix, np.hstack([scale * rotation, shift[:, None]]), atol=1e-9)
    assert math.atan2(matrix[1, 0], matrix[0, 0]) == pytest.approx(angle)


def test_reflected_points_are_not_reflected():
    mirrored = ARCFACE_112 * [-1, 1]  # a mirror image's landmarks: the best reflection would fit exactly
    matrix = similarity_transform(mirrored, ARCFACE_112)
    assert np.linalg.det(matrix[:, :2]) > 0
    assert np.allclose(matrix, fit_by_linear_least_squares(mirrored, ARCFACE_112), atol=1e-9)


def test_fit_equals_linear_least_squares_on_noisy_points():
    rng = np.random.default_rng(0)
    for _ in range(20):
        detected = rng.uniform(0, 500, (5, 2))
        for name in TEMPLATES:
            target = template_points(name)
            ours = similarity_transform(detected, target)
            assert np.allclose(ours, fit_by_linear_least_squares(detected, target), atol=1e-8)
            assert np.linalg.det(ours[:, :2]) > 0


def test_crop_puts_the_landmarks_on_the_template():
    # five bright dots on black where a rotated, scaled face's landmarks are; the crop must show them at the template
    angle, scale, shift = math.radians(15), 2.5, np.array([160.0, 90.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    landmarks = ARCFACE_112 @ rotation.T * scale + shift
    image = np.zeros((480, 560, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(image, (round(x), round(y)), 4, (255, 255, 255), -1)
    for name, size in (('arcface', None), ('sphereface', None), ('arcface', (128, 128))):
        crop = crop_face(image, landmarks, name, size)
        assert crop.shape == ((size or TEMPLATES[name][1])[1], (size or TEMPLATES[name][1])[0], 3)
        for x, y in template_points(name, size):
            assert crop[round(y), round(x)].min() > 200  # the dot, shrunk to a radius of about 1.6 px
        assert crop[0, 0].max() == 0 and crop.mean() < 20  # black around the dots, black border


def test_pick_face_rules():
    boxes = np.array([[0, 0, 10, 10], [40, 40, 60, 60], [70, 0, 100, 40]], float)
    scores = np.array([0.7, 0.95, 0.8])
    assert pick_face(boxes, scores, (100, 100), 'score') == 1
    assert pick_face(boxes, scores, (100, 100), 'largest') == 2   # 30 x 40
    assert pick_face(boxes, scores, (100, 100), 'central') == 1   # centre (50, 50)
    assert pick_face(boxes[:0], scores[:0], (100, 100)) is None
    with pytest.raises(ValueError, match='pick'):
        pick_face(boxes, scores, (100, 100), 'first')


# ---------------------------------------------------------------------------------------------------- the command


def norm_crop(image, landmarks, template: str):
    """insightface's norm_crop as ../shared/REFERENCE.md describes it: the similarity from the landmarks to the
    template (here by linear least squares), then cv2.warpAffine, bilinear, black border."""
    points, size = TEMPLATES[template]
    return cv2.warpAffine(image, fit_by_linear_least_squares(landmarks, points), size, borderValue=0.0)


def align(argv, capsys):
    """python -m common.align in this process -> (exit status, stdout, stderr)."""
    from common import align
    try:
        result, status = align.main([str(a) for a in argv]), 0
    except SystemExit as stop:
        result, status = None, stop.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err, result


@pytest.fixture
def raw_photos(shared_data, tmp_path):
    """Real photos as PNG (no JPEG noise) in a person/photo tree and flat, a photo without a face, a corrupt file and
    a note: raw/obama/obama.png (long side 480), raw/kit_with_rose.png, raw/wall.png, raw/broken.jpg, raw/notes.txt."""
    raw = tmp_path / 'raw'
    (raw / 'obama').mkdir(parents=True)
    photo = cv2.imread(str(shared_data / 'recognition' / 'people' / 'obama' / 'obama.jpg'))
    cv2.imwrite(str(raw / 'obama' / 'obama.png'), cv2.resize(photo, None, fx=0.42, fy=0.42,
                                                                interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(raw / 'kit_with_rose.png'),
                cv2.imread(str(shared_data / 'recognition' / 'people_test' / 'kit_with_rose.jpg')))
    cv2.imwrite(str(raw / 'wall.png'), np.full((200, 240, 3), 128, np.uint8))
    (raw / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    (raw / 'notes.txt').write_text('not a photo')
    return raw


@pytest.mark.slow
def test_command_crops_equal_norm_crop_on_png_photos(shared_data, raw_photos, tmp_path, capsys):
    from common.inference.load import build_detector
    weights = shared_data / RETINAFACE
    detector = build_detector(weights, 'mobile0.25', 'cpu')  # detect.py's settings: original size, conf 0.5
    for template in TEMPLATES:
        out = tmp_path / template
        status, stdout, err, result = align(['--weights', weights, '--network', 'mobile0.25', '--source', raw_photos,
                                             '--out', out, '--template', template, '--device', 'cpu'], capsys)
        assert status == 0, err
        assert result == {'images': 4, 'aligned': 2, 'no_face': ['wall.png'], 'unreadable': ['broken.jpg']}
        assert (out / 'no_face.txt').read_text() == 'wall.png\n'
        assert 'broken.jpg' in stdout and '1 without a face' in stdout
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*.png')) == ['kit_with_rose.png',
                                                                                     'obama/obama.png']
        for relative in ('obama/obama.png', 'kit_with_rose.png'):
            image = cv2.imread(str(raw_photos / relative))
            found = detector([image])[0]
            best = int(np.argmax(found['scores']))
            reference = norm_crop(image, found['landmarks'][best].astype(np.float64), template)
            crop = cv2.imread(str(out / relative))
            assert crop.shape == reference.shape == (112, TEMPLATES[template][1][0], 3)
            assert np.abs(crop.astype(float) - reference).mean() <= 1.0
            assert crop.std() > 20  # a face, not a black square


@pytest.mark.slow
def test_command_batches_sizes_and_picks(shared_data, raw_photos, tmp_path, capsys):
    """--batch-size 3 pads the photos into one batch and writes the same faces; --size 128x128 (insightface's 128
    rule); --pick largest takes the largest of the two faces of kit_with_rose.png (Kit Harington's, also the best)
    and --pick score the other when the best is hidden."""
    weights = shared_data / RETINAFACE
    flags = ['--weights', weights, '--network', 'mobile0.25', '--source', raw_photos, '--device', 'cpu']
    status, _, err, one = align([*flags, '--out', tmp_path / 'one'], capsys)
    status3, _, err3, three = align([*flags, '--out', tmp_path / 'three', '--batch-size', 3, '--size', '128x128'],
                                    capsys)
    assert status == status3 == 0, err + err3
    assert one == three
    for relative in ('obama/obama.png', 'kit_with_rose.png'):
        single, padded = cv2.imread(str(tmp_path / 'one' / relative)), cv2.imread(str(tmp_path / 'three' / relative))
        assert padded.shape == (128, 128, 3)
        # the same face: the 128 crop holds the 112 one 8 px in from the left (landmarks differ a little in a batch)
        assert np.abs(padded[:112, 8:120].astype(float) - single).mean() < 12
    status, _, err, _ = align([*flags, '--out', tmp_path / 'largest', '--pick', 'largest'], capsys)
    assert status == 0, err
    largest = cv2.imread(str(tmp_path / 'largest' / 'kit_with_rose.png')).astype(float)
    assert np.abs(largest - cv2.imread(str(tmp_path / 'one' / 'kit_with_rose.png'))).mean() < 1
    photo = cv2.imread(str(raw_photos / 'kit_with_rose.png'))
    photo[:, 250:] = 0  # Kit Harington gone: the best face left is Rose Leslie's
    cv2.imwrite(str(raw_photos / 'kit_with_rose.png'), photo)
    status, _, err, _ = align([*flags, '--out', tmp_path / 'rose'], capsys)
    assert status == 0, err
    assert np.abs(cv2.imread(str(tmp_path / 'rose' / 'kit_with_rose.png')).astype(float) - largest).mean() > 20


def test_command_bad_input_is_one_line(shared_data, raw_photos, tmp_path, capsys):
    weights = shared_data / RETINAFACE
    flags = ['--weights', weights, '--network', 'mobile0.25', '--device', 'cpu']
    cases = [
        ([*flags, '--source', tmp_path / 'nowhere', '--out', tmp_path / 'o'], '--source', 'nowhere'),
        ([*flags, '--source', raw_photos, '--out', tmp_path / 'o', '--template', 'vggface'], '--template', 'vggface'),
        ([*flags, '--source', raw_photos, '--out', tmp_path / 'o', '--size', '112by112'], '--size', '112by112'),
        ([*flags, '--source', raw_photos, '--out', tmp_path / 'o', '--pick', 'first'], '--pick', 'first'),
        ([*flags, '--source', raw_photos, '--out', raw_photos / 'aligned'], '--out', 'inside --source'),
        (['--weights', tmp_path / 'none.pt', '--source', raw_photos, '--out', tmp_path / 'o'], '--weights', 'none.pt'),
    ]
    empty = tmp_path / 'empty'
    empty.mkdir()
    cases.append(([*flags, '--source', empty, '--out', tmp_path / 'o'], '--source', 'no images'))
    retinanet = tmp_path / 'retinanet.pt'
    recognizer = tmp_path / 'recognizer.pt'
    save_networks(retinanet, recognizer)
    cases.append((['--weights', retinanet, '--source', raw_photos, '--out', tmp_path / 'o', '--device', 'cpu'],
                  '--weights', 'object detector'))
    cases.append((['--weights', recognizer, '--source', raw_photos, '--out', tmp_path / 'o', '--device', 'cpu'],
                  '--weights', 'not a detector'))
    for argv, flag, says in cases:
        status, _, err, _ = align(argv, capsys)
        assert status == 2 and err.strip().count('\n') == 0 and 'Traceback' not in err, err
        assert err.startswith(f'error: {flag}') and says in err, err
    assert not (tmp_path / 'o').exists()  # nothing written by a refused run


def save_networks(retinanet_path, recognizer_path):
    """An untrained RetinaNet (an object detector) and an untrained MobileFaceNet (no detector) as our checkpoints."""
    from common.anchors import RETINANET_RATIOS, RETINANET_SCALES, retinanet_anchor_sizes
    from common.checkpoint import save_checkpoint
    from common.models import build_model
    from common.models.mobilefacenet import RELEASED_ARCH
    arch = {'name': 'retinanet', 'arch': 'resnet18', 'num_classes': 2, 'classes': ['cat', 'dog'], 'fpn_channels': 64,
            'group_norm': True, 'anchor_sizes': list(retinanet_anchor_sizes(128)),
            'anchor_scales': list(RETINANET_SCALES), 'anchor_ratios': list(RETINANET_RATIOS), 'size': 128}
    torch.manual_seed(0)
    save_checkpoint({'model': build_model(arch).state_dict(), 'arch': arch}, retinanet_path)
    save_checkpoint({'model': build_model(RELEASED_ARCH).state_dict(), 'arch': dict(RELEASED_ARCH)}, recognizer_path)
