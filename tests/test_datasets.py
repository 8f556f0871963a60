"""WIDER FACE label.txt reader, dataset scan and collate."""
import time

import cv2
import numpy as np
import pytest
import torch

from common.data.prepare_widerface import main as prepare_main
from common.data.widerface import LabelFormatError, WiderFaceDataset, main, parse_retinaface_labels
from common.loaders import detection_collate

FACE_19 = '10 20 30 40 15 30 0.0 30 30 0.0 22 40 0.0 17 50 0.0 28 50 0.0'


def write(path, text):
    path.write_text(text)
    return path


def test_real_train_labels_counts(shared_data):
    path = shared_data / 'widerface/labels/train_label_landmarks_subset.txt'
    start = time.perf_counter()
    records = parse_retinaface_labels(path)
    seconds = time.perf_counter() - start
    assert len(records) == 12596
    assert sum(len(r.boxes) for r in records) == 72921
    # every face of this file has landmarks; a lone -1.0 coordinate (a point just off the image) must not void them
    assert sum(int(r.landmark_valid.sum()) for r in records) == 72921
    first = records[0]
    assert first.name == '0--Parade/0_Parade_marchingband_1_849.jpg' and first.line == 1
    np.testing.assert_allclose(first.boxes[0], [449, 330, 571, 479])
    np.testing.assert_allclose(first.landmarks[0, 0], [488.906, 373.643], rtol=1e-6)
    assert first.boxes.dtype == np.float32 and first.landmarks.dtype == np.float32
    assert first.landmark_valid.dtype == bool
    assert seconds < 10, f'parsing 73k faces took {seconds:.1f} s'


def test_real_val_boxes_only(shared_data):
    records = parse_retinaface_labels(shared_data / 'widerface/labels/val_label_boxes_only.txt')
    assert len(records) == 3222
    assert not any(r.landmark_valid.any() for r in records)
    faces, dropped = sum(len(r.boxes) for r in records), sum(r.dropped for r in records)
    assert faces + dropped == 39704 and dropped > 0  # the file has a few zero-size boxes
    assert all((r.boxes[:, 2:] > r.boxes[:, :2]).all() for r in records)


def test_formats_and_landmark_flags(tmp_path):
    path = write(tmp_path / 'label.txt', '\n'.join([
        '# a/one.jpg 640 480',                       # extra tokens on the name line are ignored
        FACE_19 + ' 0.9',
        '5 5 10 12',                                 # boxes only
        '1 2 3 4' + ' -1.0' * 16,                    # no landmarks
        '# a/empty.jpg',
        '#b/two.jpg',
        FACE_19,                                     # no score
    ]) + '\n')
    one, empty, two = parse_retinaface_labels(path)
    assert (one.name, one.line, empty.name, empty.line, two.name, two.line) == \
        ('a/one.jpg', 1, 'a/empty.jpg', 5, 'b/two.jpg', 6)
    np.testing.assert_array_equal(one.boxes, [[10, 20, 40, 60], [5, 5, 15, 17], [1, 2, 4, 6]])
    np.testing.assert_array_equal(one.landmark_valid, [True, False, False])
    np.testing.assert_array_equal(one.landmarks[0], [[15, 30], [30, 30], [22, 40], [17, 50], [28, 50]])
    assert (one.landmarks[1:] == 0).all()
    assert empty.boxes.shape == (0, 4) and empty.landmarks.shape == (0, 5, 2) and empty.landmark_valid.shape == (0,)
    assert two.landmark_valid.tolist() == [True]


def test_zero_size_boxes_dropped_and_counted(tmp_path):
    path = write(tmp_path / 'label.txt', '# x.jpg\n1 1 0 5\n1 1 5 -2\n2 2 4 4\n')
    (record,) = parse_retinaface_labels(path)
    assert record.dropped == 2
    np.testing.assert_array_equal(record.boxes, [[2, 2, 6, 6]])


@pytest.mark.parametrize('lines, line_no, expected', [
    (['# a.jpg', FACE_19, '1 2 3 4 5 6 7'], 3,
     'expected 4, 19 or 20 numbers (x y w h [5 x (lx ly flag)] [score]), got 7'),
    (['# a.jpg', '1 2 3 x4'], 2, "got non-number 'x4'"),
    (['', '1 2 3 4', '# a.jpg'], 2, 'expected a "# <event>/<image>.jpg" line before the first face'),
    (['just text'], 1, 'expected a "# <event>/<image>.jpg" line before the first face'),
])
def test_malformed_line_names_file_and_line(tmp_path, lines, line_no, expected):
    path = write(tmp_path / 'label.txt', '\n'.join(lines) + '\n')
    with pytest.raises(LabelFormatError) as error:
        parse_retinaface_labels(path)
    assert str(error.value).startswith(f'{path}:{line_no}: ')
    assert expected in str(error.value)


def test_empty_label_file_is_an_error(tmp_path):
    with pytest.raises(LabelFormatError, match='none found'):
        parse_retinaface_labels(write(tmp_path / 'label.txt', '\n'))


def make_split(root, names_on_disk, corrupt=()):
    """A split folder whose label.txt lists ok.jpg (2 faces), nofaces.jpg, gone.jpg and broken.jpg."""
    label = ('# e/ok.jpg\n10 10 20 20\n' + FACE_19 + '\n# e/nofaces.jpg\n# e/gone.jpg\n5 5 5 5\n'
             '# e/broken.jpg\n5 5 5 5\n')
    (root / 'images/e').mkdir(parents=True)
    write(root / 'label.txt', label)
    for name in names_on_disk:
        cv2.imwrite(str(root / 'images/e' / name), np.full((48, 64, 3), 128, np.uint8))
    for name in corrupt:
        (root / 'images/e' / name).write_bytes(b'\xff\xd8 not really a jpeg')
    return root


def test_dataset_skips_missing_and_corrupt_images(tmp_path, capsys):
    split = make_split(tmp_path / 'train', ['ok.jpg', 'nofaces.jpg'], corrupt=['broken.jpg'])
    dataset = WiderFaceDataset(split)
    summary = capsys.readouterr().out
    assert 'WIDER train: 2 images, 2 faces; skipped 2 (1 missing, 1 corrupt)' in summary
    assert 'e/gone.jpg' in summary and 'e/broken.jpg' in summary
    assert dataset.skipped == {'missing': ['e/gone.jpg'], 'corrupt': ['e/broken.jpg']}
    assert len(dataset) == 2
    image, target = dataset[0]
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert target['name'] == 'e/ok.jpg' and target['boxes'].shape == (2, 4)
    image, target = dataset[1]  # an image without faces is a valid sample
    assert target['boxes'].shape == (0, 4) and target['landmarks'].shape == (0, 5, 2)


def test_dataset_applies_transform_to_copies(tmp_path):
    split = make_split(tmp_path / 'val', ['ok.jpg', 'nofaces.jpg', 'gone.jpg', 'broken.jpg'])

    def shift(image, target, rng):
        target['boxes'] += 100  # in place: must not leak into the dataset's records
        return image[:8, :8], target

    dataset = WiderFaceDataset(split, transform=shift, verbose=False)
    for _ in range(2):
        image, target = dataset[0]
        assert image.shape == (8, 8, 3)
        np.testing.assert_array_equal(target['boxes'][0], [110, 110, 130, 130])


def test_augmentation_depends_on_seed_epoch_and_image_not_on_workers(tmp_path):
    """A sample's random draws come from (seed, epoch, index): the same with 0 or 2 workers (so a resumed run, or
    one with other --workers, repeats them), new each epoch, and different between images."""
    split = make_split(tmp_path / 'train', ['ok.jpg', 'nofaces.jpg', 'gone.jpg', 'broken.jpg'])
    dataset = WiderFaceDataset(split, transform=lambda image, target, rng: (image, rng.random(3)), verbose=False,
                               seed=7)

    def draws(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
        return np.stack([drawn for _, drawn in loader])

    dataset.set_epoch(1)
    in_process, in_workers = draws(0), draws(2)
    np.testing.assert_array_equal(in_process, in_workers)
    assert not np.array_equal(in_process[0], in_process[1])
    dataset.set_epoch(2)
    assert not np.array_equal(draws(0), in_process)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        WiderFaceDataset(tmp_path / 'nowhere')
    (tmp_path / 'split').mkdir()
    with pytest.raises(FileNotFoundError, match='label.txt'):
        WiderFaceDataset(tmp_path / 'split')


def test_collate_shapes_and_dtypes():
    rng = np.random.default_rng(0)
    batch = []
    for n in (3, 0):
        image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
        target = {'boxes': np.ones((n, 4), np.float32), 'landmarks': np.ones((n, 5, 2), np.float32),
                  'landmark_valid': np.ones(n, bool), 'name': f'img{n}', 'scale': 0.5}
        batch.append((image, target))
    images, targets = detection_collate(batch)
    assert images.shape == (2, 3, 32, 48) and images.dtype == torch.uint8
    assert torch.equal(images[0], torch.from_numpy(batch[0][0]).permute(2, 0, 1))  # BGR kept, channels first
    assert targets[0]['boxes'].shape == (3, 4) and targets[0]['boxes'].dtype == torch.float32
    assert targets[0]['landmarks'].shape == (3, 5, 2) and targets[0]['landmark_valid'].dtype == torch.bool
    assert targets[1]['boxes'].shape == (0, 4)
    assert targets[1]['name'] == 'img0' and targets[1]['scale'] == 0.5
    with pytest.raises(ValueError, match='one size'):
        detection_collate([batch[0], (np.zeros((16, 16, 3), np.uint8), batch[1][1])])


def test_check_command(tmp_path, capsys):
    path = write(tmp_path / 'label.txt', '# a.jpg\n' + FACE_19 + '\n1 1 0 1\n# b.jpg\n')
    assert main(['--labels', str(path)]) == 0
    assert '2 images, 1 faces (1 with landmarks), 1 images without faces, 1 boxes dropped' in capsys.readouterr().out
    assert main(['--labels', str(tmp_path / 'missing.txt')]) == 2
    assert 'missing.txt' in capsys.readouterr().err
    write(path, '# a.jpg\n1 2 3\n')
    assert main(['--labels', str(path)]) == 2
    assert f'{path}:2:' in capsys.readouterr().err


def fake_wider_download(root):
    """A tiny official-layout download: 2 train images (one listed image absent), 1 val image, the eval kit."""
    gt = root / 'wider_face_split'
    gt.mkdir(parents=True)
    (gt / 'wider_face_train_bbx_gt.txt').write_text('\n'.join([
        '0--Parade/a.jpg', '2',
        '10 20 30 40 0 0 0 0 0 0',
        '50 50 8 8 2 0 0 1 0 0',           # invalid: dropped
        '0--Parade/b.jpg', '0',
        '0 0 0 0 0 0 0 0 0 0',             # a count of 0 comes with one line of zeros
        '1--Handshaking/gone.jpg', '1',
        '1 1 5 5 0 0 0 0 0 0',
    ]) + '\n')
    (gt / 'wider_face_val_bbx_gt.txt').write_text('0--Parade/v.jpg\n1\n5 6 7 8 0 0 0 0 0 0\n')
    for split, name in (('train', '0--Parade/a.jpg'), ('train', '0--Parade/b.jpg'), ('val', '0--Parade/v.jpg')):
        path = root / f'WIDER_{split}' / 'images' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((60, 80, 3), 90, np.uint8))
    kit = root / 'eval_tools' / 'ground_truth'
    kit.mkdir(parents=True)
    for name in ('face', 'easy', 'medium', 'hard'):
        (kit / f'wider_{name}_val.mat').write_bytes(name.encode())
    labels = write(root / 'retinaface_train.txt', '# 0--Parade/a.jpg\n' + FACE_19 + ' 0.9\n')
    return labels


def test_prepare_widerface(tmp_path, capsys):
    labels = fake_wider_download(tmp_path / 'wider')
    out = tmp_path / 'prepared'
    assert prepare_main(['--wider-root', str(tmp_path / 'wider'), '--out', str(out),
                 '--labels', str(labels)]) == 0
    printed = capsys.readouterr().out
    assert 'train: 2 images, 1 faces (1 with landmarks), 1 invalid faces dropped' in printed
    assert '1 listed images missing: 1--Handshaking/gone.jpg' in printed
    assert 'val: 1 images, 1 faces (0 with landmarks)' in printed
    a, b = parse_retinaface_labels(out / 'train/label.txt')
    assert (a.name, b.name) == ('0--Parade/a.jpg', '0--Parade/b.jpg')
    np.testing.assert_array_equal(a.boxes, [[10, 20, 40, 60]])
    assert a.landmark_valid.tolist() == [True]  # matched by name and box
    np.testing.assert_allclose(a.landmarks[0, 0], [15, 30])
    assert len(b.boxes) == 0
    (v,) = parse_retinaface_labels(out / 'val/label.txt')
    assert v.landmark_valid.tolist() == [False]
    assert sorted(p.name for p in (out / 'ground_truth').iterdir()) == [
        'wider_easy_val.mat', 'wider_face_val.mat', 'wider_hard_val.mat', 'wider_medium_val.mat']
    dataset = WiderFaceDataset(out / 'train', verbose=False)
    assert len(dataset) == 2 and dataset[0][0].shape == (60, 80, 3)


def test_prepare_widerface_bad_gt_line(tmp_path, capsys):
    fake_wider_download(tmp_path / 'wider')
    gt = tmp_path / 'wider/wider_face_split/wider_face_val_bbx_gt.txt'
    gt.write_text('0--Parade/v.jpg\n1\n5 6 7\n')
    assert prepare_main(['--wider-root', str(tmp_path / 'wider'), '--out', str(tmp_path / 'o')]) == 2
    assert f'{gt}:3: expected 10 integers' in capsys.readouterr().err
    assert prepare_main(['--wider-root', str(tmp_path), '--out', str(tmp_path / 'o')]) == 2
    assert 'wider_face_train_bbx_gt.txt' in capsys.readouterr().err
