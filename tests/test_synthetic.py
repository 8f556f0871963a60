"""Synthetic WIDER FACE: reproducible bytes, label.txt / .mat agreement, the official .mat structure, sane faces."""
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from common.data.widerface import parse_retinaface_labels
from common.synthetic.faces import draw_person
from common.synthetic import KINDS, make_widerface

SETTINGS = ('easy', 'medium', 'hard')


@pytest.fixture(scope='module')
def widerface(tmp_path_factory):
    return make_widerface(tmp_path_factory.mktemp('synthetic') / 'widerface', num_images=16, seed=3)


def files_of(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (make_widerface(tmp_path / name, num_images=4, seed=seed) for name, seed in
               (('a', 7), ('b', 7), ('c', 8)))
    files_a, files_b, files_c = files_of(a), files_of(b), files_of(c)
    assert len(files_a) == 4 + 1 + 1 + 1 + 4  # train images + val image + two label.txt + four .mat
    assert files_a == files_b
    assert files_a.keys() == files_c.keys() and files_a != files_c


def test_layout_and_labels(widerface):
    assert KINDS['widerface'] is make_widerface
    train = parse_retinaface_labels(widerface / 'train/label.txt')
    val = parse_retinaface_labels(widerface / 'val/label.txt')
    assert len(train) == 16 and len(val) == 4
    for split, records in (('train', train), ('val', val)):
        for r in records:
            assert (widerface / split / 'images' / r.name).is_file()
            assert r.name.split('/')[0].endswith('--Synthetic')
    faces = sum(len(r.boxes) for r in train)
    assert faces >= 16  # typically 1-12 faces per image
    for r in train + val:
        boxes, lm = r.boxes, r.landmarks[r.landmark_valid]
        heights = boxes[:, 3] - boxes[:, 1]
        assert (heights >= 7).all() and (heights <= 330).all()
        inner = boxes[r.landmark_valid]
        assert ((lm >= inner[:, None, :2]) & (lm <= inner[:, None, 2:])).all(), 'landmarks outside their box'
        assert (lm[:, 0, 0] < lm[:, 1, 0]).all()  # left eye left of the right eye (faces are upright-ish)


def load_mat(path):
    return scipy.io.loadmat(str(path))


def test_val_label_agrees_with_mat(widerface):
    mat = load_mat(widerface / 'ground_truth/wider_face_val.mat')
    from_mat = []
    for event, files, boxes in zip(mat['event_list'][:, 0], mat['file_list'][:, 0], mat['face_bbx_list'][:, 0]):
        for name, box in zip(files[:, 0], boxes[:, 0]):
            box = box[(box[:, 2] > 0) & (box[:, 3] > 0)]  # an image without faces holds one all-zero box
            from_mat.append((f'{event[0]}/{name[0]}.jpg', box))
    records = parse_retinaface_labels(widerface / 'val/label.txt')
    assert [r.name for r in records] == [name for name, _ in from_mat]
    for record, (_, box) in zip(records, from_mat):
        xywh = np.concatenate([record.boxes[:, :2], record.boxes[:, 2:] - record.boxes[:, :2]], 1)
        np.testing.assert_array_equal(xywh, box)


def dtype_name(array):
    return 'str' if array.dtype.kind == 'U' else array.dtype.str  # names vary in length; numbers must match exactly


def structure(mat):
    """Field -> (outer dtype, ndim, columns, set of (dtype, ndim, columns) of the per-image arrays)."""
    out = {}
    for key, value in mat.items():
        if key.startswith('__'):
            continue
        kinds = set()
        for entry in value[:, 0]:
            if entry.dtype == object:
                assert entry.ndim == 2 and entry.shape[1] == 1
                for item in entry[:, 0]:
                    kinds.add((dtype_name(item), item.ndim, item.shape[1] if item.ndim == 2 else None))
            else:
                kinds.add((dtype_name(entry), entry.ndim, None))
        out[key] = (value.dtype, value.ndim, value.shape[1], kinds)
    return out


@pytest.mark.parametrize('name', ['face', *SETTINGS])
def test_mat_structure_matches_official(widerface, shared_data, name):
    ours = structure(load_mat(widerface / f'ground_truth/wider_{name}_val.mat'))
    official = structure(load_mat(shared_data / f'widerface/ground_truth/wider_{name}_val.mat'))
    assert ours.keys() == official.keys()
    for key in ours:
        assert ours[key][:3] == official[key][:3], key
        assert ours[key][3] <= official[key][3], f'{key}: {ours[key][3]} not among {official[key][3]}'


def test_mat_fields_without_official_copy(widerface):
    face = load_mat(widerface / 'ground_truth/wider_face_val.mat')
    assert {k for k in face if not k.startswith('__')} == {
        'event_list', 'file_list', 'face_bbx_list', 'blur_label_list', 'expression_label_list',
        'illumination_label_list', 'invalid_label_list', 'occlusion_label_list', 'pose_label_list'}
    assert 'gt_list' in load_mat(widerface / 'ground_truth/wider_hard_val.mat')


def test_difficulty_sets_are_nested(widerface):
    gt = {s: load_mat(widerface / f'ground_truth/wider_{s}_val.mat') for s in SETTINGS}
    boxes = gt['hard']['face_bbx_list']
    totals = dict.fromkeys(SETTINGS, 0)
    for e in range(len(boxes)):
        for i in range(len(boxes[e, 0])):
            n_faces = int((boxes[e, 0][i, 0][:, 3] > 0).sum())
            sets = {s: set(gt[s]['gt_list'][e, 0][i, 0].ravel().tolist()) for s in SETTINGS}
            assert sets['easy'] <= sets['medium'] <= sets['hard']
            assert sets['hard'] == set(range(1, n_faces + 1))  # 1-based, every face counts in hard
            for s in SETTINGS:
                totals[s] += len(sets[s])
    assert 0 < totals['easy'] < totals['hard']


def test_drawn_face_has_dark_eyes_and_mouth():
    """The landmarks sit on the drawn features: pupils and the lip line are darker than the cheeks."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        image = np.full((300, 300, 3), 128, np.float32)
        face = draw_person(image, rng, (150, 150), 160, 200, angle=0.0)
        gray = image.mean(axis=2)
        lm = np.floor(face['landmarks']).astype(int)  # continuous coordinates: pixel i spans [i, i+1)
        eyes = [gray[y, x] for x, y in lm[:2]]
        cheeks = [gray[(lm[0, 1] + lm[3, 1]) // 2, x] for x in (lm[0, 0], lm[1, 0])]
        assert max(eyes) < min(cheeks) - 20


def test_cli_and_contact_sheet(tmp_path, widerface, repo_root):
    png = tmp_path / 'sheet.png'
    run = subprocess.run([sys.executable, '-m', 'common.synthetic', 'contact-sheet', '--data', str(widerface),
                          '--out', str(png)], capture_output=True, text=True, cwd=repo_root)
    assert run.returncode == 0, run.stderr
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size < 400_000
    run = subprocess.run([sys.executable, '-m', 'common.synthetic', 'contact-sheet', '--data', str(tmp_path / 'no'),
                          '--out', str(png)], capture_output=True, text=True, cwd=repo_root)
    assert run.returncode == 2 and 'neither a widerface set (train/label.txt)' in run.stderr
