"""detect.py, export.py and bench/detect_speed.py with a RetinaNet checkpoint: class names in the txt results and on
the drawn images, the detections train_retinanet.py's evaluation writes for the same images, an image without
detections, and the .onnx export giving the checkpoint's detections."""
import cv2
import numpy as np
import pytest
import torch

import bad_input
from common.anchors import RETINANET_RATIOS, RETINANET_SCALES, retinanet_anchor_sizes
from common.checkpoint import save_checkpoint
from common.models.retinanet import RetinaNet
from common.synthetic.objects import CLASSES, make_voc

SIZE = 128


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp('voc'), num_images=6, seed=5)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """An untrained RetinaNet whose class scores spread over 0..1 (its class output scaled up), so that boxes of
    several classes pass the thresholds and differ in score."""
    torch.manual_seed(0)
    model = RetinaNet(len(CLASSES), 'resnet18', fpn_channels=64)
    with torch.no_grad():
        model.classifier.output.weight.mul_(10)
    arch = {'name': 'retinanet', 'arch': 'resnet18', 'num_classes': len(CLASSES), 'classes': list(CLASSES),
            'fpn_channels': 64, 'group_norm': True, 'anchor_sizes': list(retinanet_anchor_sizes(SIZE)),
            'anchor_scales': list(RETINANET_SCALES), 'anchor_ratios': list(RETINANET_RATIOS), 'size': SIZE}
    return save_checkpoint({'model': model.state_dict(), 'arch': arch}, tmp_path_factory.mktemp('w') / 'rn.pt')


def detect(argv, capsys):
    """detect.main in this process -> (exit status, stdout)."""
    status, out, _ = bad_input.run_main('detect', ['--device', 'cpu', *argv], capsys)
    return status, out


def read_objects(path):
    """detect.py --save-txt of an object detector -> (image name, [(class, score, x1, y1, x2, y2)])."""
    lines = path.read_text().splitlines()
    assert int(lines[1]) == len(lines) - 2
    rows = [(c, *map(float, rest)) for c, *rest in (line.split() for line in lines[2:])]
    return lines[0], rows


def count_same_detections(ours, theirs, label) -> int:
    """Every detection scoring > 0.1 on either side has one of the same class on the other with the score within
    1e-4 and corners within 0.02 px (away from the 0.05 threshold, where float rounding may move one across);
    returns how many were compared."""
    compared = 0
    for mine, other in ((ours, theirs), (theirs, ours)):
        for row in (r for r in mine if r[1] > 0.1):
            assert any(o[0] == row[0] and abs(o[1] - row[1]) < 1e-4 and
                       max(abs(a - b) for a, b in zip(o[2:], row[2:])) < 0.02 for o in other), (label, row)
            compared += 1
    return compared


def test_txt_and_drawing_name_classes_and_match_the_evaluation(voc, checkpoint, tmp_path, capsys):
    images = voc / 'VOC2007' / 'JPEGImages'
    test_ids = (voc / 'VOC2007' / 'ImageSets' / 'Main' / 'test.txt').read_text().split()
    source = tmp_path / 'source'
    source.mkdir()
    for image_id in test_ids:
        (source / f'{image_id}.jpg').write_bytes((images / f'{image_id}.jpg').read_bytes())
    (source / 'notes.txt').write_text('not an image')
    status, out = detect(['--weights', checkpoint, '--source', source, '--out', tmp_path / 'out', '--save-txt',
                          '--conf-thres', '0.05'], capsys)
    assert status == 0 and 'skipping notes.txt: not an image' in out

    status, _ = bad_input.main_exit('train_retinanet', ['--data-root', voc, '--evaluate', '--weights', checkpoint,
                                                        '--out', tmp_path / 'eval', '--device', 'cpu',
                                                        '--workers', '0'], capsys)
    assert status == 0
    evaluation = {}  # image id -> [(class, score, x1, y1, x2, y2)] from the comp4 files (xmin = x1 + 1)
    for name in CLASSES:
        for line in (tmp_path / 'eval' / 'detections' / f'comp4_det_test_{name}.txt').read_text().splitlines():
            image_id, score, xmin, ymin, xmax, ymax = line.split()
            evaluation.setdefault(image_id, []).append((name, float(score), float(xmin) - 1, float(ymin) - 1,
                                                        float(xmax), float(ymax)))
    compared = 0
    for image_id in test_ids:
        name, rows = read_objects(tmp_path / 'out' / f'{image_id}.txt')
        assert name == f'{image_id}.jpg' and rows
        image = cv2.imread(str(images / f'{image_id}.jpg'))
        drawn = cv2.imread(str(tmp_path / 'out' / f'{image_id}.jpg'))
        assert drawn.shape == image.shape and not np.array_equal(drawn, image)
        assert {r[0] for r in rows} <= set(CLASSES) and len({r[0] for r in rows}) > 1
        assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
        height, width = image.shape[:2]
        for _, score, x1, y1, x2, y2 in rows:
            assert 0.05 < score <= 1 and 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        # the evaluation runs the network with BatchNorm unfolded: the same detections up to float rounding
        compared += count_same_detections(rows, evaluation.get(image_id, []), image_id)
    assert compared > 20


def test_an_image_without_detections_gets_its_file(checkpoint, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / 'grey.png'), np.full((90, 160, 3), 128, np.uint8))
    status, _ = detect(['--weights', checkpoint, '--source', tmp_path / 'grey.png', '--out', tmp_path / 'out',
                        '--save-txt', '--conf-thres', '0.9999999'], capsys)
    assert status == 0
    assert (tmp_path / 'out' / 'grey.txt').read_text() == 'grey.png\n0\n'
    assert cv2.imread(str(tmp_path / 'out' / 'grey.png')).shape == (90, 160, 3)


@pytest.mark.slow
def test_onnx_export_gives_the_checkpoints_detections(voc, checkpoint, tmp_path, capsys):
    model_file = tmp_path / 'rn.onnx'
    status, _ = bad_input.main_exit('export', ['--weights', checkpoint, '--out', model_file], capsys)
    assert status == 0 and model_file.is_file()
    source = voc / 'VOC2007' / 'JPEGImages'
    for weights, out in ((checkpoint, 'pt'), (model_file, 'onnx')):
        status, _ = detect(['--weights', weights, '--source', source, '--out', tmp_path / out, '--save-txt',
                            '--no-save', '--conf-thres', '0.05'], capsys)
        assert status == 0
    compared = 0
    for path in sorted((tmp_path / 'pt').glob('*.txt')):
        _, ours = read_objects(path)
        _, exported = read_objects(tmp_path / 'onnx' / path.name)
        compared += count_same_detections(ours, exported, path.name)
    assert compared > 50

    bench = ['--weights', model_file, '--pytorch-weights', checkpoint, '--source', source, '--repeats', '1']
    status, out, _ = bad_input.run_main('bench.detect_speed', bench, capsys)
    assert status == 0 and 'speedup_over_pytorch:' in out and out.strip().splitlines()[-1].startswith(
        'median_ms_per_image:')
