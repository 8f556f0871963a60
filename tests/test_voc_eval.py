"""VOC detection AP (common/evaluation/voc.py) against a plain loop written from the devkit's rules
(py-faster-rcnn's voc_eval, as ../shared/REFERENCE.md states them), on a random held-out detection set with
difficult objects and duplicates; small hand-computed cases; the command line."""
import json
import subprocess
import sys

import numpy as np
import pytest

from common.evaluation.voc import evaluate_files, main, voc_ap, write_detections
from common.data.voc import VOC_CLASSES


# ---------------------------------------------------------------------------------------------------- reference

def reference_ap(rec, prec, use_07_metric):
    """The devkit's AP, one threshold / one step at a time."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0
            for r, q in zip(rec, prec):
                if r >= t and q > p:
                    p = q
            ap += p / 11.0
        return ap
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def reference_voc_eval(detfile, objects_by_image, image_ids, classname, use_07_metric):
    """Straight from the rules: npos = non-difficult objects; detections in descending confidence (ties in file
    order); each takes its image's ground truth of largest +1-pixel IoU; > 0.5: difficult -> ignored, new -> TP,
    taken -> FP; else FP."""
    records, npos = {}, 0
    for image_id in image_ids:
        objs = [o for o in objects_by_image[image_id] if o['name'] == classname]
        records[image_id] = {'boxes': [o['bbox'] for o in objs], 'difficult': [o['difficult'] for o in objs],
                             'taken': [False] * len(objs)}
        npos += sum(not o['difficult'] for o in objs)
    lines = [line.split() for line in open(detfile).read().splitlines() if line.strip()]
    order = sorted(range(len(lines)), key=lambda i: -float(lines[i][1]))  # sorted() is stable
    tp, fp = [], []
    for i in order:
        image_id, box = lines[i][0], [float(v) for v in lines[i][2:]]
        record = records[image_id]
        ovmax, jmax = -np.inf, -1
        for j, gt in enumerate(record['boxes']):
            iw = min(box[2], gt[2]) - max(box[0], gt[0]) + 1
            ih = min(box[3], gt[3]) - max(box[1], gt[1]) + 1
            inter = max(iw, 0.0) * max(ih, 0.0)
            union = ((box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1)
                     - inter)
            if inter / union > ovmax:
                ovmax, jmax = inter / union, j
        if ovmax > 0.5:
            if record['difficult'][jmax]:
                tp.append(0.0), fp.append(0.0)  # ignored: neither
            elif not record['taken'][jmax]:
                record['taken'][jmax] = True
                tp.append(1.0), fp.append(0.0)
            else:
                tp.append(0.0), fp.append(1.0)
        else:
            tp.append(0.0), fp.append(1.0)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return reference_ap(rec, prec, use_07_metric)


# ---------------------------------------------------------------------------------------------------- data on disk

def write_xml(path, objects):
    body = ''.join(f'<object><name>{o["name"]}</name><difficult>{int(o["difficult"])}</difficult><bndbox>'
                   f'<xmin>{o["bbox"][0]:g}</xmin><ymin>{o["bbox"][1]:g}</ymin><xmax>{o["bbox"][2]:g}</xmax>'
                   f'<ymax>{o["bbox"][3]:g}</ymax></bndbox></object>\n' for o in objects)
    path.write_text(f'<annotation>\n<size><width>500</width><height>400</height></size>\n{body}</annotation>\n')


def write_set(folder, objects_by_image, detections):
    """Annotations/<id>.xml, test.txt, dets/comp4_det_test_<class>.txt; returns the evaluate_files arguments."""
    (folder / 'Annotations').mkdir(parents=True, exist_ok=True)
    (folder / 'dets').mkdir(exist_ok=True)
    for image_id, objects in objects_by_image.items():
        write_xml(folder / 'Annotations' / f'{image_id}.xml', objects)
    (folder / 'test.txt').write_text(''.join(f'{i}\n' for i in objects_by_image))
    for name, lines in detections.items():
        (folder / 'dets' / f'comp4_det_test_{name}.txt').write_text(''.join(lines))
    return str(folder / 'dets' / 'comp4_det_test_{}.txt'), str(folder / 'Annotations' / '{}.xml'), folder / 'test.txt'


def random_set(rng, classes, images=40):
    """Objects (about 20% difficult, integer 1-based boxes) and detections: jittered copies of objects (some
    several times: duplicates), boxes on difficult objects, and random false positives, with random scores."""
    objects_by_image, detections = {}, {c: [] for c in classes}
    for index in range(images):
        image_id = f'{index:06d}'
        objects = []
        for _ in range(int(rng.integers(0, 6))):
            x1, y1 = rng.integers(1, 400), rng.integers(1, 300)
            w, h = rng.integers(8, 120), rng.integers(8, 120)
            objects.append({'name': classes[int(rng.integers(len(classes)))], 'difficult': bool(rng.random() < 0.2),
                            'bbox': [int(x1), int(y1), int(x1 + w), int(y1 + h)]})
        objects_by_image[image_id] = objects
        for o in objects:
            for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):  # missed, found, found with duplicates
                w, h = o['bbox'][2] - o['bbox'][0], o['bbox'][3] - o['bbox'][1]
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                box = np.array(o['bbox']) + jitter
                detections[o['name']].append(f'{image_id} {rng.random():.6f} ' + ' '.join(f'{v:.2f}' for v in box)
                                             + '\n')
        for _ in range(int(rng.integers(0, 4))):  # false positives, sometimes of a class absent from the image
            x1, y1 = rng.uniform(1, 400), rng.uniform(1, 300)
            box = [x1, y1, x1 + rng.uniform(5, 100), y1 + rng.uniform(5, 100)]
            detections[classes[int(rng.integers(len(classes)))]].append(
                f'{image_id} {rng.random():.6f} ' + ' '.join(f'{v:.2f}' for v in box) + '\n')
    return objects_by_image, detections


@pytest.mark.parametrize('use_07_metric', [True, False])
def test_equals_the_devkit_loop_on_a_held_out_random_set(tmp_path, use_07_metric):
    classes = ('car', 'dog', 'person', 'bottle')
    objects_by_image, detections = random_set(np.random.default_rng(1234), classes)
    detpath, annopath, imageset = write_set(tmp_path, objects_by_image, detections)
    ours = evaluate_files(detpath, annopath, imageset, classes, use_07_metric)
    assert sum(o['difficult'] for objs in objects_by_image.values() for o in objs) >= 10
    for name in classes:
        expected = reference_voc_eval(detpath.format(name), objects_by_image, list(objects_by_image), name,
                                      use_07_metric)
        assert 0.05 < expected < 0.95  # neither trivial nor empty: the cases the rules decide
        assert ours['ap'][name] == pytest.approx(expected, abs=1e-6), name
    assert ours['mAP'] == pytest.approx(np.mean(list(ours['ap'].values())))


def hand_case(tmp_path, detection_lines, objects):
    detpath, annopath, imageset = write_set(tmp_path, {'000001': objects}, {'car': detection_lines})
    return {metric: evaluate_files(detpath, annopath, imageset, ('car',), metric)['ap']['car']
            for metric in (True, False)}


def test_hand_computed_duplicates_and_difficult(tmp_path):
    """Two objects and a difficult one. Detections by score: A (TP), A again (duplicate: FP), the difficult one
    (ignored), B (TP): recall .5 .5 .5 1, precision 1 .5 .5 2/3. All-point: .5 x 1 + .5 x 2/3 = 0.8333;
    11-point: (6 x 1 + 5 x 2/3) / 11 = 0.8485."""
    objects = [{'name': 'car', 'difficult': False, 'bbox': [10, 10, 50, 50]},
               {'name': 'car', 'difficult': False, 'bbox': [100, 100, 150, 160]},
               {'name': 'car', 'difficult': True, 'bbox': [200, 20, 260, 80]}]
    lines = ['000001 0.9 10 10 50 50\n', '000001 0.8 11 10 50 51\n', '000001 0.7 200 20 260 80\n',
             '000001 0.6 100 100 150 160\n']
    ap = hand_case(tmp_path, lines, objects)
    assert ap[False] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-9)
    assert ap[True] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-9)


def test_iou_of_exactly_half_is_a_miss(tmp_path):
    """+1 pixel widths: the object 1..10 x 1..10 is 100 pixels; a detection 1..10 x 1..20 overlaps it by 100 of
    200, IoU 0.5, and the rule is IoU > 0.5: a false positive. 1..10 x 1..19 (100 / 190) is a hit."""
    objects = [{'name': 'car', 'difficult': False, 'bbox': [1, 1, 10, 10]}]
    assert hand_case(tmp_path / 'a', ['000001 0.9 1 1 10 20\n'], objects) == {True: 0.0, False: 0.0}
    assert hand_case(tmp_path / 'b', ['000001 0.9 1 1 10 19\n'], objects) == {True: 1.0, False: 1.0}


def test_best_overlap_taken_is_a_false_positive_even_with_a_free_object_nearby(tmp_path):
    """The devkit does not fall back to the second-best object: a duplicate whose best overlap is a taken object
    is a false positive although it also overlaps a free one by more than 0.5."""
    objects = [{'name': 'car', 'difficult': False, 'bbox': [0, 0, 100, 100]},
               {'name': 'car', 'difficult': False, 'bbox': [10, 0, 110, 100]}]
    lines = ['000001 0.9 0 0 100 100\n', '000001 0.8 2 0 102 100\n']  # the second is nearer the first object
    ap = hand_case(tmp_path, lines, objects)
    # TP then FP: recall .5 .5, precision 1 .5 -> all-point 0.5, 11-point 6/11
    assert ap[False] == pytest.approx(0.5) and ap[True] == pytest.approx(6 / 11)


def test_voc_ap_curves():
    recall, precision = np.array([0.25, 0.5, 0.5, 1.0]), np.array([1.0, 1.0, 0.5, 0.5])
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 + 5 * 0.5) / 11)
    # recall exactly 0.3 does not reach the threshold 3 x 0.1 = 0.30000000000000004 (numpy.arange, as the devkit's
    # python port): the 11-point AP counts precision 1 at t = 0, 0.1, 0.2 only
    assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=True) == pytest.approx(3 / 11)


def test_class_without_detections_or_objects_scores_zero_and_missing_file_is_named(tmp_path):
    objects = {'000001': [{'name': 'car', 'difficult': False, 'bbox': [1, 1, 50, 50]}]}
    detpath, annopath, imageset = write_set(tmp_path, objects, {'car': [], 'dog': ['000001 0.5 1 1 50 50\n']})
    assert evaluate_files(detpath, annopath, imageset, ('car', 'dog'))['ap'] == {'car': 0.0, 'dog': 0.0}
    status = main(['--detpath', detpath, '--annopath', annopath, '--imagesetfile', str(imageset),
                   '--classes', 'car,dog,bird'])
    assert status == 2


def test_write_detections_round_trip(tmp_path):
    """Continuous boxes x1 y1 x2 y2 are written as the devkit's xmin = x1 + 1, xmax = x2: a box exactly on an
    object read from its XML scores AP 1."""
    objects = {'000001': [{'name': 'dog', 'difficult': False, 'bbox': [11, 21, 60, 90]}]}
    _, annopath, imageset = write_set(tmp_path, objects, {})
    write_detections(tmp_path / 'out', ('car', 'dog'), {'000001': {
        'boxes': np.array([[10, 20, 60, 90]]), 'scores': np.array([0.9]), 'labels': np.array([1])}})
    assert (tmp_path / 'out' / 'comp4_det_test_car.txt').read_text() == ''
    assert (tmp_path / 'out' / 'comp4_det_test_dog.txt').read_text().split() == [
        '000001', '0.900000', '11.00', '21.00', '60.00', '90.00']
    scored = evaluate_files(str(tmp_path / 'out' / 'comp4_det_test_{}.txt'), annopath, imageset, ('car', 'dog'))
    assert scored['ap'] == {'car': 0.0, 'dog': 1.0}


def test_command_line(tmp_path, repo_root):
    """The issue's command line: 20 VOC classes by default, a missing class file is an error naming it, JSON."""
    objects_by_image, detections = random_set(np.random.default_rng(7), ('car', 'dog'), images=6)
    detections = {c: detections.get(c, []) for c in VOC_CLASSES}
    detpath, annopath, imageset = write_set(tmp_path, objects_by_image, detections)
    command = [sys.executable, '-m', 'common.evaluation.voc', '--detpath', detpath, '--annopath', annopath,
               '--imagesetfile', str(imageset), '--use-07-metric', '--json', str(tmp_path / 'r.json')]
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo_root)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / 'r.json').read_text())
    assert set(results) == {'mAP', 'ap'} and list(results['ap']) == list(VOC_CLASSES)
    assert results['ap']['car'] == pytest.approx(evaluate_files(detpath, annopath, imageset, ('car',), True)['mAP'])
    (tmp_path / 'dets' / 'comp4_det_test_sheep.txt').unlink()
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo_root)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert 'comp4_det_test_sheep.txt' in done.stderr and done.stderr.count('\n') == 1
