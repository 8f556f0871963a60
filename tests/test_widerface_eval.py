"""WIDER FACE evaluation: hand-computed cases, the loop reference, file formats, the CLI and the real .mat files."""
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from common.evaluation.widerface import (SETTINGS, WiderGroundTruth, evaluate, evaluate_dirs, load_ground_truth, main,
                                         read_predictions, write_prediction_file)

REPO = Path(__file__).resolve().parents[1]


def _loop_reference():
    """The plain-loop transcription of the official kit lives once, in the bench script; load it from there."""
    spec = importlib.util.spec_from_file_location('widerface_eval_speed', REPO / 'bench' / 'widerface_eval_speed.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.evaluate_loop


def make_gt(images):
    """images: {key: (boxes xywh, {setting: counted bool list})}; a missing setting counts every face."""
    keys = list(images)
    boxes = [np.asarray(images[k][0], dtype=float).reshape(-1, 4) for k in keys]
    counted = {s: [np.asarray(images[k][1].get(s, [True] * len(b)), dtype=bool).reshape(-1)
                   for k, b in zip(keys, boxes)] for s in SETTINGS}
    return WiderGroundTruth(keys, boxes, counted)


def preds(*rows):
    return np.asarray(rows, dtype=float).reshape(-1, 5)


def test_perfect_predictions_give_ap_one_also_with_equal_scores():
    faces_a = [[10, 10, 20, 20], [100, 40, 30, 35]]
    faces_b = [[5, 5, 50, 60]]
    gt = make_gt({'e/a': (faces_a, {}), 'e/b': (faces_b, {})})
    varied = {'e/a': preds([*faces_a[0], 0.9], [*faces_a[1], 0.4]), 'e/b': preds([*faces_b[0], 0.7])}
    equal = {'e/a': preds([*faces_a[0], 1.0], [*faces_a[1], 1.0]), 'e/b': preds([*faces_b[0], 1.0])}
    for predictions in (varied, equal):
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # a zero score range must not divide by zero
            result = evaluate(predictions, gt)
        assert [result[s] for s in SETTINGS] == [1.0, 1.0, 1.0]


def test_prediction_on_a_face_the_setting_ignores_is_no_false_positive():
    # face A counted everywhere, face B counted by medium and hard only. The prediction on B outscores the one
    # on A. Easy: B's prediction is ignored, so at the lowest threshold 1 proposal, 1 recall -> AP 1.0 (had it
    # counted as a false positive, precision would be 1/2 at recall 1 -> AP 0.5).
    gt = make_gt({'e/a': ([[10, 10, 20, 20], [200, 10, 20, 20]], {'easy': [True, False]})})
    result = evaluate({'e/a': preds([200, 10, 20, 20, 0.9], [10, 10, 20, 20, 0.8])}, gt)
    assert result['easy'] == 1.0 and result['medium'] == 1.0 and result['hard'] == 1.0
    easy = result['curves']['easy']
    assert easy['precision'][0] == 0.0 and easy['recall'][0] == 0.0  # above 0: only the ignored one, no proposal
    assert easy['precision'][-1] == 1.0 and easy['recall'][-1] == 1.0


def test_predictions_in_an_image_without_ground_truth_boxes_add_nothing():
    gt = make_gt({'e/a': ([[10, 10, 20, 20]], {}), 'e/empty': (np.zeros((0, 4)), {})})
    result = evaluate({'e/a': preds([10, 10, 20, 20, 0.5]), 'e/empty': preds([0, 0, 30, 30, 0.99])}, gt)
    assert [result[s] for s in SETTINGS] == [1.0, 1.0, 1.0]


def test_scores_are_normalised_over_the_whole_set_not_per_image():
    # image A: true positive 0.9, false positive 0.1; image B: false positive 0.8, true positive 0.7.
    # Over the set (min 0.1, max 0.9): TP 1.0, FP 0.875, TP 0.75, FP 0.0 ->
    #   (P, R) = (1, 1/2), (1/2, 1/2), (2/3, 1), (1/2, 1) -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # Normalised per image it would be TP 1, FP 0 and FP 1, TP 0 -> (1/2, 1/2), (1/2, 1) -> AP 1/2; feeding those
    # per-image scores (already spanning 0..1) shows the difference.
    gt = make_gt({'e/a': ([[10, 10, 20, 20]], {}), 'e/b': ([[10, 10, 20, 20]], {})})
    far = [300, 300, 20, 20]
    raw = {'e/a': preds([10, 10, 20, 20, 0.9], [*far, 0.1]), 'e/b': preds([*far, 0.8], [10, 10, 20, 20, 0.7])}
    per_image = {'e/a': preds([10, 10, 20, 20, 1.0], [*far, 0.0]), 'e/b': preds([*far, 1.0], [10, 10, 20, 20, 0.0])}
    assert evaluate(raw, gt)['hard'] == pytest.approx(5 / 6, abs=1e-12)
    assert evaluate(per_image, gt)['hard'] == pytest.approx(0.5, abs=1e-12)


def test_three_predictions_by_hand():
    # Faces A = (10,10,20,20), B = (100,100,30,30). Predictions: p1 = A exactly (0.9), p2 = A shifted by 2 px (0.6;
    # +1-pixel IoU with A = 19*19 / (2*21*21 - 361) = 0.69: a duplicate, counted as a proposal that recalls nothing),
    # p3 = B exactly (0.3). Normalised: p1 1.0, p2 ~0.5, p3 0.0.
    #   t in (0.5, 0.999]: p1            -> proposals 1, recalled 1 -> P 1,   R 1/2
    #   t in (0, ~0.5]:    p1, p2        -> proposals 2, recalled 1 -> P 1/2, R 1/2
    #   t = 0:             p1, p2, p3    -> proposals 3, recalled 2 -> P 2/3, R 1
    # envelope: P(R=1/2) = 1, P(R=1) = 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    gt = make_gt({'e/a': ([[10, 10, 20, 20], [100, 100, 30, 30]], {})})
    p = preds([10, 10, 20, 20, 0.9], [12, 12, 20, 20, 0.6], [100, 100, 30, 30, 0.3])
    result = evaluate({'e/a': p}, gt)
    assert result['easy'] == pytest.approx(5 / 6, abs=1e-12)
    curve = result['curves']['easy']
    assert (curve['precision'][0], curve['recall'][0]) == (1.0, 0.5)
    assert curve['precision'][-1] == pytest.approx(2 / 3) and curve['recall'][-1] == 1.0
    assert curve['thresholds'][0] == pytest.approx(0.999) and curve['thresholds'][-1] == 0.0
    # the order of the rows in the file does not matter
    assert evaluate({'e/a': p[::-1]}, gt)['easy'] == result['easy']


def random_case(seed, num_images=24):
    """Integer boxes (exact IoU ties, exact 0.5s), duplicate faces, coarse scores (ties) outside 0..1, images
    without faces, without a prediction file and with an empty one."""
    rng = np.random.default_rng(seed)
    images, predictions = {}, {}
    for i in range(num_images):
        n = int(rng.integers(0, 10))
        faces = np.concatenate((rng.integers(0, 150, (n, 2)), rng.integers(2, 40, (n, 2))), axis=1)
        if n > 2:
            faces[1] = faces[0]  # duplicate face: the second one can never be recalled
        hard = rng.random(n) < 0.85
        medium = hard & (rng.random(n) < 0.7)
        easy = medium & (rng.random(n) < 0.6)
        key = f'{i % 3}--ev/img_{i}'
        images[key] = (faces, {'easy': easy, 'medium': medium, 'hard': hard})
        if i % 7 == 3:
            continue  # no prediction file
        found = faces[rng.random(n) < 0.7]
        jitter = rng.integers(-3, 4, found.shape)
        dup = found[: len(found) // 2] + rng.integers(-6, 7, (len(found) // 2, 4))
        num_fp = int(rng.integers(0, 6))
        fp = np.concatenate((rng.integers(0, 180, (num_fp, 2)), rng.integers(2, 40, (num_fp, 2))), axis=1)
        boxes = np.concatenate((found + jitter, dup, fp)).astype(float)
        scores = np.round(rng.uniform(-2, 3, len(boxes)), 1)
        predictions[key] = np.concatenate((boxes, scores[:, None]), axis=1)
    return make_gt(images), predictions


@pytest.mark.parametrize('seed', range(4))
def test_vectorised_equals_loop_reference(seed, capsys):
    gt, predictions = random_case(seed)
    evaluate_loop = _loop_reference()
    for iou in (0.5, 0.3):
        fast, loop = evaluate(predictions, gt, iou), evaluate_loop(predictions, gt, iou)
        for s in SETTINGS:
            assert fast[s] == pytest.approx(loop[s], abs=1e-9)
            np.testing.assert_array_equal(fast['curves'][s]['recall'], loop['curves'][s]['recall'])
            np.testing.assert_array_equal(fast['curves'][s]['precision'], np.nan_to_num(loop['curves'][s]['precision']))
    assert 0 < fast['hard'] < 1  # a non-trivial case


def test_missing_prediction_file_counts_as_no_detection_and_is_reported(capsys):
    gt = make_gt({'e/a': ([[10, 10, 20, 20]], {}), 'e/b': ([[10, 10, 20, 20]], {})})
    result = evaluate({'e/a': preds([10, 10, 20, 20, 0.5])}, gt)
    assert result['missing'] == ['e/b']
    assert result['hard'] == pytest.approx(0.5)  # recall stops at 1/2 with precision 1
    err = capsys.readouterr().err
    assert err.count('warning') == 1 and '1 of 2' in err and 'e/b' in err


def write_gt_mats(gt_dir, gt):
    """The official .mat nesting: per event a cell of file names, of (N, 4) boxes and of 1-based counted indices."""
    def cell(items):
        out = np.empty((len(items), 1), dtype=object)
        for i, item in enumerate(items):
            out[i, 0] = item
        return out

    events = sorted({k.split('/')[0] for k in gt.keys})
    index = {e: [i for i, k in enumerate(gt.keys) if k.startswith(e + '/')] for e in events}
    common = {
        'event_list': cell([np.array([e]) for e in events]),
        'file_list': cell([cell([np.array([gt.keys[i].split('/')[1]]) for i in index[e]]) for e in events]),
        'face_bbx_list': cell([cell([gt.boxes[i].astype(np.int32) for i in index[e]]) for e in events]),
    }
    gt_dir.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(gt_dir / 'wider_face_val.mat', common)
    for s in SETTINGS:
        gt_list = cell([cell([(np.flatnonzero(gt.counted[s][i]) + 1).astype(np.uint8).reshape(-1, 1)
                              for i in index[e]]) for e in events])
        scipy.io.savemat(gt_dir / f'wider_{s}_val.mat', {**common, 'gt_list': gt_list})


def test_ground_truth_mat_round_trip_and_missing_file(tmp_path):
    gt, _ = random_case(1, num_images=6)
    write_gt_mats(tmp_path / 'gt', gt)
    loaded = load_ground_truth(tmp_path / 'gt')
    order = [loaded.keys.index(k) for k in gt.keys]
    assert sorted(loaded.keys) == sorted(gt.keys)
    for i, j in enumerate(order):
        np.testing.assert_array_equal(loaded.boxes[j], gt.boxes[i])
        for s in SETTINGS:
            np.testing.assert_array_equal(loaded.counted[s][j], gt.counted[s][i])
    (tmp_path / 'gt' / 'wider_hard_val.mat').unlink()
    with pytest.raises(FileNotFoundError, match='wider_hard_val.mat'):
        load_ground_truth(tmp_path / 'gt')


def xyxy(xywh):
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]], axis=1)


def test_prediction_files_round_trip_and_malformed_lines(tmp_path):
    boxes = np.array([[1.5, 2, 30, 40], [100, 50, 10.25, 12]])
    scores = np.array([0.123456789, 0.02], dtype=np.float32)
    landmarks = np.arange(20, dtype=float).reshape(2, 5, 2)
    rows = write_prediction_file(tmp_path / '0--Parade' / '0_Parade_1.txt', '0_Parade_1', xyxy(boxes), scores,
                                 landmarks)
    lines = (tmp_path / '0--Parade' / '0_Parade_1.txt').read_text().splitlines()
    assert lines[:2] == ['0_Parade_1', '2'] and len(lines[2].split()) == 15  # landmarks after the score
    write_prediction_file(tmp_path / '1--Handshaking' / 'empty.txt', 'empty', np.zeros((0, 4)), [], np.zeros((0, 5, 2)))
    assert (tmp_path / '1--Handshaking' / 'empty.txt').read_text() == 'empty\n0\n'
    loaded = read_predictions(tmp_path)
    assert set(loaded) == {'0--Parade/0_Parade_1', '1--Handshaking/empty'}
    np.testing.assert_allclose(loaded['0--Parade/0_Parade_1'], np.c_[boxes, scores], atol=1e-6)
    np.testing.assert_allclose(loaded['0--Parade/0_Parade_1'], rows, atol=1e-9)
    np.testing.assert_array_equal(loaded['0--Parade/0_Parade_1'][:, 4].astype(np.float32), scores)  # no ties made
    assert loaded['1--Handshaking/empty'].shape == (0, 5)


def test_integer_boxes_as_the_reference_writes_them(tmp_path):
    """test_widerface.py: x = int(x1), w = int(x2) - int(x1); int() truncates toward zero."""
    boxes_xyxy = np.array([[10.9, 20.2, 30.7, 40.99], [-0.6, -1.5, 5.5, 6.2]])
    rows = write_prediction_file(tmp_path / 'e' / 'a.txt', 'a', boxes_xyxy, [0.9, 0.5], integer_boxes=True)
    expected = [[int(x1), int(y1), int(x2) - int(x1), int(y2) - int(y1)] for x1, y1, x2, y2 in boxes_xyxy]
    np.testing.assert_array_equal(rows[:, :4], expected)
    lines = (tmp_path / 'e' / 'a.txt').read_text().splitlines()
    assert lines[2].split()[:4] == ['10', '20', '20', '20'] and lines[3].split()[:4] == ['0', '-1', '5', '7']

    bad = tmp_path / '2--Demo' / 'bad.txt'
    bad.parent.mkdir()
    bad.write_text('bad\n2\n1 2 3 4 0.5\n1 2 x 4 0.5\n')
    with pytest.raises(ValueError, match=r'bad\.txt:4'):
        read_predictions(tmp_path)
    bad.write_text('bad\n3\n1 2 3 4 0.5\n')
    with pytest.raises(ValueError, match=r'bad\.txt:3: line 2 announces 3 boxes'):
        read_predictions(tmp_path)
    bad.write_text('bad\nthree\n')
    with pytest.raises(ValueError, match=r'bad\.txt:2'):
        read_predictions(tmp_path)


def test_cli_end_to_end(tmp_path, capsys):
    gt, predictions = random_case(2, num_images=8)
    write_gt_mats(tmp_path / 'gt', gt)
    for key, p in predictions.items():
        event, name = key.split('/')
        write_prediction_file(tmp_path / 'pred' / event / f'{name}.txt', name, xyxy(p[:, :4]), p[:, 4])
    expected = evaluate(predictions, gt)
    code = main(['--pred', str(tmp_path / 'pred'), '--gt', str(tmp_path / 'gt'),
                 '--json', str(tmp_path / 'out' / 'r.json'), '--plot', str(tmp_path / 'pr.png')])
    assert code == 0
    out = capsys.readouterr().out
    assert f'Easy AP: {expected["easy"]:.4f}' in out and f'Hard AP: {expected["hard"]:.4f}' in out
    written = json.loads((tmp_path / 'out' / 'r.json').read_text())
    assert written == pytest.approx({s: expected[s] for s in SETTINGS}, abs=1e-12)
    assert (tmp_path / 'pr.png').read_bytes()[:4] == b'\x89PNG'
    assert evaluate_dirs(tmp_path / 'pred', tmp_path / 'gt')['medium'] == pytest.approx(expected['medium'])


def test_cli_missing_directory_exits_2_without_traceback(tmp_path):
    missing = tmp_path / 'nope'
    proc = subprocess.run([sys.executable, '-m', 'common.evaluation.widerface', '--pred', str(missing),
                           '--gt', str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count('\n') == 0 and '--pred' in proc.stderr and str(missing) in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert main(['--pred', str(tmp_path), '--gt', str(missing)]) == 2  # gt dir, too


def test_real_ground_truth(shared_data):
    gt = load_ground_truth(shared_data / 'widerface' / 'ground_truth')
    assert len(gt) == 3226 and gt.num_boxes == 39708
    assert [gt.num_counted(s) for s in SETTINGS] == [7211, 13319, 31958]
    assert gt.keys[0] == '0--Parade/0_Parade_marchingband_1_465'

    # The ground truth itself as predictions (all scores 1). The official protocol cannot reach AP 1 on the real
    # file: one face has w = -2 (no overlap even with itself under the +1 convention: a false positive in every
    # setting, and never recalled where counted, which is hard only), and one hard face is listed twice (its copy's
    # prediction takes the first copy: a false positive, the second copy is never recalled).
    as_predictions = {k: np.c_[b, np.ones(len(b))] for k, b in zip(gt.keys, gt.boxes)}
    result = evaluate(as_predictions, gt)
    assert result['easy'] == pytest.approx(7211 / 7212, abs=1e-12)     # recall 1, precision 7211/7212
    assert result['medium'] == pytest.approx(13319 / 13320, abs=1e-12)
    assert result['hard'] == pytest.approx((31956 / 31958) ** 2, abs=1e-12)  # recall = precision = 31956/31958
    # without those two boxes every setting is perfect
    negative = [(i, j) for i, b in enumerate(gt.boxes) for j in np.flatnonzero(b[:, 2] < 0)]
    duplicate = [(i, j) for i, b in enumerate(gt.boxes) for j in range(1, len(b)) if (b[:j] == b[j]).all(1).any()]
    assert len(negative) == 1 and len(duplicate) == 1
    drop = dict(negative + duplicate)
    keep = [np.arange(len(b)) != drop.get(i, -1) for i, b in enumerate(gt.boxes)]
    clean = WiderGroundTruth(gt.keys, [b[k] for b, k in zip(gt.boxes, keep)],
                             {s: [m[k] for m, k in zip(gt.counted[s], keep)] for s in SETTINGS})
    clean_predictions = {k: np.c_[b, np.ones(len(b))] for k, b in zip(clean.keys, clean.boxes)}
    assert [evaluate(clean_predictions, clean)[s] for s in SETTINGS] == [1.0, 1.0, 1.0]
