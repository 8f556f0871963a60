"""Speed of the vectorised WIDER FACE evaluation against a loop transcription of the official kit, same run.

    python bench/widerface_eval_speed.py [--gt ../shared/data/widerface/ground_truth] [--seed 0] [--repeat 3]

Builds a full-val prediction set from the real ground truth (3226 images, 39,708 faces) the way a detector's output
looks after its 0.02 score threshold: most faces found with jittered boxes (small ones less often), some duplicate
boxes that survived NMS, and about fifty false positives per image, all with random seeded scores (~180k boxes).
Both evaluations must agree to 1e-5 AP; the last line is `speedup: X.Xx`.

`evaluate_loop` below is the baseline: a direct per-image, per-prediction, per-threshold transcription of the
official protocol (REFERENCE.md), shaped like the official MATLAB / Python kit. It shares no evaluation code with
common/evaluation/widerface.py, so tests/test_widerface_eval.py also uses it as the independent reference.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.evaluation.widerface import SETTINGS, evaluate, load_ground_truth  # noqa: E402


# ---------------------------------------------------------------------------------- the loop baseline (reference)

def _iou_matrix(pred_xywh, gt_xywh):
    """IoU of every prediction with every ground truth of one image, +1 pixel convention (the kit's compiled op)."""
    p = np.concatenate((pred_xywh[:, :2], pred_xywh[:, :2] + pred_xywh[:, 2:4]), axis=1)
    g = np.concatenate((gt_xywh[:, :2], gt_xywh[:, :2] + gt_xywh[:, 2:4]), axis=1)
    iw = np.minimum(p[:, None, 2], g[None, :, 2]) - np.maximum(p[:, None, 0], g[None, :, 0]) + 1
    ih = np.minimum(p[:, None, 3], g[None, :, 3]) - np.maximum(p[:, None, 1], g[None, :, 1]) + 1
    pred_area = (p[:, 2] - p[:, 0] + 1) * (p[:, 3] - p[:, 1] + 1)
    gt_area = (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1)
    inter = iw * ih
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = inter / (pred_area[:, None] + gt_area[None, :] - inter)
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def _image_eval(pred, gt_xywh, counted, iou_thresh):
    """Greedy matching of one image's score-sorted predictions: recalled faces after each one, proposal flags."""
    overlaps = _iou_matrix(pred[:, :4], gt_xywh)
    recall_list = np.zeros(len(gt_xywh))  # 1 recalled, -1 matched but not counted, 0 untouched
    proposal_list = np.ones(len(pred))
    pred_recall = np.zeros(len(pred))
    for h in range(len(pred)):
        best = overlaps[h].argmax()
        if overlaps[h, best] >= iou_thresh:
            if not counted[best]:
                recall_list[best] = -1
                proposal_list[h] = -1  # ignored: matches a face this setting does not count
            elif recall_list[best] == 0:
                recall_list[best] = 1
        pred_recall[h] = np.sum(recall_list == 1)
    return pred_recall, proposal_list


def _image_pr_info(num_thresholds, pred, proposal_list, pred_recall):
    info = np.zeros((num_thresholds, 2))
    for k in range(num_thresholds):
        thresh = 1 - (k + 1) / num_thresholds
        above = np.where(pred[:, 4] >= thresh)[0]
        if len(above):
            last = above[-1]
            info[k, 0] = np.sum(proposal_list[:last + 1] == 1)
            info[k, 1] = pred_recall[last]
    return info


def _voc_ap_loop(recall, precision):
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate_loop(predictions, gt, iou_thresh=0.5, num_thresholds=1000):
    """The official protocol with plain loops; same inputs and AP / curve outputs as evaluate() (no warnings)."""
    images = []
    for key in gt.keys:
        pred = np.asarray(predictions.get(key, np.zeros((0, 5))), dtype=np.float64)
        pred = pred[:, :5] if pred.size else np.zeros((0, 5))
        order = sorted(range(len(pred)), key=lambda i: -pred[i, 4])  # descending, stable: ties keep file order
        images.append(pred[order].copy())
    low, high = np.inf, -np.inf
    for pred in images:
        if len(pred):
            low, high = min(low, pred[:, 4].min()), max(high, pred[:, 4].max())
    for pred in images:
        pred[:, 4] = 1.0 if high == low else (pred[:, 4] - low) / (high - low)

    result = {'curves': {}}
    for setting in SETTINGS:
        pr_sum = np.zeros((num_thresholds, 2))
        count_face = 0
        for pred, gt_xywh, counted in zip(images, gt.boxes, gt.counted[setting]):
            count_face += int(np.sum(counted))
            if len(gt_xywh) == 0 or len(pred) == 0:
                continue
            pred_recall, proposal_list = _image_eval(pred, gt_xywh, counted, iou_thresh)
            pr_sum += _image_pr_info(num_thresholds, pred, proposal_list, pred_recall)
        with np.errstate(divide='ignore', invalid='ignore'):
            precision = pr_sum[:, 1] / pr_sum[:, 0]  # NaN without proposals, as in the kit
        recall = pr_sum[:, 1] / count_face
        result[setting] = _voc_ap_loop(recall, precision)
        result['curves'][setting] = {'precision': precision, 'recall': recall}
    return result


# ----------------------------------------------------------------------------------- a detector-like prediction set

def make_predictions(gt, seed=0, false_positives_per_image=50.0):
    """Jittered / dropped / duplicated faces plus random false positives, scores >= 0.02, like a detector's output."""
    rng = np.random.default_rng(seed)
    counts = np.array([len(b) for b in gt.boxes])
    faces = np.concatenate(gt.boxes)
    image_of_face = np.repeat(np.arange(len(gt)), counts)
    size = np.sqrt(np.maximum(faces[:, 2] * faces[:, 3], 1.0))

    found = rng.random(len(faces)) < np.clip(0.25 + size / 25, 0, 0.97)  # tiny faces are missed more often
    boxes = faces[found].copy()
    s = size[found, None]
    boxes[:, :2] += rng.normal(0, 0.08, (len(boxes), 2)) * s
    boxes[:, 2:] *= np.exp(rng.normal(0, 0.1, (len(boxes), 2)))
    scores = np.clip(rng.beta(6, 1.5, len(boxes)) * np.clip(0.4 + size[found] / 40, 0, 1), 0, 1)
    image = image_of_face[found]

    dup = rng.random(len(boxes)) < 0.15  # duplicates that survived NMS, lower score
    dup_boxes = boxes[dup].copy()
    dup_boxes[:, :2] += rng.normal(0, 0.2, (len(dup_boxes), 2)) * s[dup]
    dup_scores = scores[dup] * rng.uniform(0.1, 0.8, len(dup_boxes))

    extent = np.zeros((len(gt), 2))  # image size guessed from its faces, at least 1024 x 768
    np.maximum.at(extent, image_of_face, faces[:, :2] + faces[:, 2:])
    extent = np.maximum(extent, [1024, 768])
    fp_count = rng.poisson(false_positives_per_image, len(gt))
    fp_image = np.repeat(np.arange(len(gt)), fp_count)
    fp_size = np.exp(rng.uniform(np.log(6), np.log(200), (len(fp_image), 1)) + rng.normal(0, 0.15, (len(fp_image), 2)))
    fp_boxes = np.concatenate((rng.random((len(fp_image), 2)) * extent[fp_image], fp_size), axis=1)
    fp_scores = rng.beta(1, 5, len(fp_image))

    all_boxes = np.concatenate((boxes, dup_boxes, fp_boxes))
    all_scores = np.concatenate((scores, dup_scores, fp_scores)).astype(np.float32).astype(np.float64)
    all_image = np.concatenate((image, image[dup], fp_image))
    keep = all_scores >= 0.02
    table = np.concatenate((all_boxes, all_scores[:, None]), axis=1)[keep]
    all_image = all_image[keep]
    order = np.argsort(all_image, kind='stable')
    table, all_image = table[order], all_image[order]
    split = np.searchsorted(all_image, np.arange(1, len(gt)))
    return dict(zip(gt.keys, np.split(table, split)))


def _best_time(fn, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--gt', default=str(REPO.parent / 'shared' / 'data' / 'widerface' / 'ground_truth'),
                        help='folder with the official wider_*_val.mat files')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--repeat', type=int, default=3, help='best of N runs for the vectorised evaluation')
    args = parser.parse_args()
    if not Path(args.gt).is_dir():
        print(f'error: --gt: directory not found: {args.gt}', file=sys.stderr)
        return 2

    gt = load_ground_truth(args.gt)
    predictions = make_predictions(gt, args.seed)
    num_pred = sum(len(p) for p in predictions.values())
    print(f'images {len(gt)}  faces {gt.num_boxes}  predictions {num_pred} '
          f'({num_pred / len(gt):.1f} per image)')

    fast_s, fast = _best_time(lambda: evaluate(predictions, gt), args.repeat)
    loop_s, loop = _best_time(lambda: evaluate_loop(predictions, gt), 1)
    diff = max(abs(fast[s] - loop[s]) for s in SETTINGS)
    for name, res in (('vectorised', fast), ('loop', loop)):
        print(f'{name:>10}: ' + '  '.join(f'{s.capitalize()} AP {res[s]:.6f}' for s in SETTINGS))
    print(f'max |AP difference| {diff:.2e}')
    print(f'vectorised {fast_s:.3f} s (best of {args.repeat})  loop baseline {loop_s:.2f} s')
    if not diff <= 1e-5:
        print('error: the two evaluations disagree', file=sys.stderr)
        return 1
    print(f'speedup: {loop_s / fast_s:.1f}x')
    return 0


if __name__ == '__main__':
    sys.exit(main())
