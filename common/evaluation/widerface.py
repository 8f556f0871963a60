"""WIDER FACE validation AP (Easy / Medium / Hard), numerically the official protocol, vectorised with NumPy.

    python -m common.evaluation.widerface --pred runs/widerface_txt --gt data/widerface/ground_truth \
        [--json results.json] [--plot pr.png]

Inputs are the official files: the ground truth `wider_face_val.mat` and `wider_{easy,medium,hard}_val.mat`, and
one prediction file per image, PRED/<event>/<name>.txt: the image name, the number of boxes, then `x y w h score`
per line (further columns, e.g. landmarks, are ignored).

The protocol, step by step (the numbers must match the official evaluation kit):
  1. Scores are min-max normalised over ALL predictions of the val images (not per image).
  2. IoU uses the +1 pixel convention: width = x2 - x1 + 1 with x2 = x + w.
  3. Per image, predictions in descending score order; each takes its best-IoU ground truth (the first one on an
     IoU tie). If that IoU >= 0.5: a face the setting does not count makes the prediction "ignored" (neither a
     true nor a false positive); a counted face not yet recalled becomes recalled.
  4. For the 1000 thresholds t = 1 - (k+1)/1000: the last prediction with score >= t gives the image's proposals
     (non-ignored predictions up to it) and recalled faces; both are summed over images. Images without
     predictions or without ground-truth boxes add nothing, but their counted faces stay in the total.
  5. precision = recalled / proposals, recall = recalled / counted faces, AP = VOC all-point AP (precision
     envelope, sum of recall steps times precision).

Choices where the official kit is silent or breaks, none of which changes its numbers on normal input:
  - All scores equal (max == min): the kit divides by zero and gets NaN scores (AP 0). Here every prediction
    gets normalised score 1.0, i.e. all of them pass every threshold.
  - A threshold with no proposal has precision 0 here (the kit gets 0/0 = NaN); such thresholds have recall 0
    and never reach the AP sum, so AP is the same.
  - Predictions for images the ground truth does not list are ignored (and reported); they do not enter the
    normalisation, as in the kit that reads the prediction files by the ground-truth image list.
  - Ties in score: no rule is needed, the result cannot depend on their order (see below). The loop reference in
    bench/widerface_eval_speed.py keeps file order for equal scores (a stable descending sort, as the kit's).

Why no loop over images or predictions is needed: a prediction's ground truth is its best-IoU box, fixed before
any matching, so the greedy pass only decides WHICH of the predictions hitting a face gets the credit. Since
scores are sorted inside an image, "up to the last prediction with score >= t" means "all predictions with score
>= t", and after them a counted face is recalled iff at least one of them hits it (IoU >= 0.5 with that face as
argmax), while the proposals are those predictions minus the ignored ones. Neither count depends on the order of
predictions inside an image (equal scores always pass a threshold together, hence no tie rule). So:
  - IoUs of all (prediction, ground truth of the same image) pairs, in flat chunks over the whole set; the best
    ground truth per prediction by `reduceat` over each prediction's run of pairs;
  - each face's "recall score" = the highest score among the predictions hitting it (`np.maximum.at`);
  - recalled(t) = counted faces with recall score >= t, proposals(t) = non-ignored predictions with score >= t:
    two sorted arrays read at the 1000 thresholds with `searchsorted`, summed over all images at once.
The loop transcription in bench/widerface_eval_speed.py gives identical APs (tests/test_widerface_eval.py).
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .voc import voc_ap

SETTINGS = ('easy', 'medium', 'hard')
NUM_THRESHOLDS = 1000
# Upper bound on (prediction, ground truth) pairs held at once: bounds memory on crowded images (700+ faces).
MAX_PAIRS_PER_CHUNK = 2_000_000


@dataclass
class WiderGroundTruth:
    """Val ground truth: per image (key 'event/name', .mat order) the boxes and, per setting, the counted faces."""
    keys: list           # ['0--Parade/0_Parade_marchingband_1_465', ...]
    boxes: list          # per image float64 (N, 4) x y w h in pixels
    counted: dict        # setting -> per image bool (N,): True where the setting counts that face

    def __post_init__(self):
        if len(self.boxes) != len(self.keys):
            raise ValueError(f'WiderGroundTruth: {len(self.keys)} keys but {len(self.boxes)} box arrays')
        self.boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in self.boxes]
        for setting, masks in self.counted.items():
            if len(masks) != len(self.keys):
                raise ValueError(f'WiderGroundTruth: setting {setting!r} has {len(masks)} masks for '
                                 f'{len(self.keys)} images')
            for key, box, mask in zip(self.keys, self.boxes, masks):
                if np.shape(mask) != (len(box),):
                    raise ValueError(f'WiderGroundTruth: {setting!r} mask of {key} has shape {np.shape(mask)}, '
                                     f'expected ({len(box)},)')
        self.counted = {s: [np.asarray(m, dtype=bool) for m in masks] for s, masks in self.counted.items()}

    def __len__(self):
        return len(self.keys)

    @property
    def num_boxes(self):
        return sum(len(b) for b in self.boxes)

    def num_counted(self, setting):
        return int(sum(m.sum() for m in self.counted[setting]))


# ----------------------------------------------------------------------------------------------------- file I/O

def _loadmat(path):
    import scipy.io  # only needed here; keeps `import common.evaluation.widerface` light
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'WIDER FACE ground truth file not found: {path}')
    try:
        return scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for truncated / foreign files
        raise ValueError(f'{path}: not a readable .mat file ({e})') from None


def _mat_cells(mat, name, path):
    """A (n, 1) MATLAB cell array as a flat list of its cells."""
    if name not in mat:
        raise ValueError(f'{path}: no variable {name!r} (found {sorted(k for k in mat if not k.startswith("__"))})')
    return list(np.asarray(mat[name]).reshape(-1))


def _mat_string(cell):
    return str(np.asarray(cell).reshape(-1)[0])


def load_ground_truth(gt_dir):
    """Read wider_face_val.mat and wider_{easy,medium,hard}_val.mat from gt_dir into a WiderGroundTruth."""
    gt_dir = Path(gt_dir)
    face_path = gt_dir / 'wider_face_val.mat'
    face = _loadmat(face_path)
    events = [_mat_string(e) for e in _mat_cells(face, 'event_list', face_path)]
    files = _mat_cells(face, 'file_list', face_path)
    boxes = _mat_cells(face, 'face_bbx_list', face_path)
    if not len(events) == len(files) == len(boxes):
        raise ValueError(f'{face_path}: event_list, file_list and face_bbx_list differ in length')
    keys, image_boxes, per_event_count = [], [], []
    for event, event_files, event_boxes in zip(events, files, boxes):
        event_files = list(np.asarray(event_files).reshape(-1))
        event_boxes = list(np.asarray(event_boxes).reshape(-1))
        if len(event_files) != len(event_boxes):
            raise ValueError(f'{face_path}: event {event} lists {len(event_files)} files but {len(event_boxes)} '
                             f'box arrays')
        per_event_count.append(len(event_files))
        for name, b in zip(event_files, event_boxes):
            keys.append(f'{event}/{_mat_string(name)}')
            image_boxes.append(np.asarray(b, dtype=np.float64).reshape(-1, 4))

    counted = {}
    for setting in SETTINGS:
        path = gt_dir / f'wider_{setting}_val.mat'
        gt_lists = _mat_cells(_loadmat(path), 'gt_list', path)
        lists = [list(np.asarray(cell).reshape(-1)) for cell in gt_lists]
        if [len(x) for x in lists] != per_event_count:
            raise ValueError(f'{path}: gt_list does not have the image layout of {face_path}')
        masks = []
        for key, b, idx in zip(keys, image_boxes, (i for event in lists for i in event)):
            # 1-based face indices; stored as uint8 or uint16 depending on the image, so widen before the - 1
            idx = np.asarray(idx, dtype=np.int64).reshape(-1) - 1
            if idx.size and (idx.min() < 0 or idx.max() >= len(b)):
                raise ValueError(f'{path}: gt_list of {key} indexes face {idx.max() + 1} of {len(b)}')
            mask = np.zeros(len(b), dtype=bool)
            mask[idx] = True
            masks.append(mask)
        counted[setting] = masks
    return WiderGroundTruth(keys, image_boxes, counted)


def _parse_prediction_file(path):
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f'{path}:1: expected the image name')
    try:
        count = int(lines[1]) if len(lines) > 1 else None
    except ValueError:
        count = None
    if count is None or count < 0:
        raise ValueError(f'{path}:2: expected the number of boxes, got {lines[1] if len(lines) > 1 else "nothing"!r}')
    rows = [(n, line.split()) for n, line in enumerate(lines[2:], start=3) if line.strip()]
    if len(rows) != count:
        where = rows[-1][0] if rows else 2
        raise ValueError(f'{path}:{where}: line 2 announces {count} boxes but the file has {len(rows)}')
    expected = 'expected "x y w h score"'
    for n, fields in rows:
        if len(fields) < 5:
            raise ValueError(f'{path}:{n}: {expected}, got {lines[n - 1].strip()!r}')
    try:
        out = np.array([fields[:5] for _, fields in rows], dtype=np.float64).reshape(-1, 5)  # numpy parses in C
    except ValueError:
        for n, fields in rows:  # slow path, only to name the line
            try:
                [float(v) for v in fields[:5]]
            except ValueError:
                raise ValueError(f'{path}:{n}: {expected}, got {lines[n - 1].strip()!r}') from None
        raise
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        n = rows[int(np.argmin(finite))][0]
        raise ValueError(f'{path}:{n}: non-finite value in {lines[n - 1].strip()!r}')
    return out


def read_predictions(pred_dir):
    """Read PRED/<event>/<name>.txt files into {'event/name': float64 (N, 5) x y w h score}."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f'prediction directory not found: {pred_dir}')
    predictions = {}
    for event in sorted(os.scandir(pred_dir), key=lambda e: e.name):
        if not event.is_dir():
            continue
        for entry in os.scandir(event.path):
            if entry.name.endswith('.txt') and entry.is_file():
                predictions[f'{event.name}/{entry.name[:-4]}'] = _parse_prediction_file(entry.path)
    return predictions


def write_prediction_file(path, name: str, boxes_xyxy, scores, landmarks=None, integer_boxes: bool = False,
                          names=None):
    """Write one image's detections in the official layout: the image name, the count, then `x y w h score` per
    face, best first, with `lx1 ly1 .. lx5 ly5` after the score when `landmarks` (N,5,2) are given (the evaluation
    reads the first five columns), and with `names` (N strings, whitespace written as _) one last column.
    `integer_boxes` writes the boxes as Pytorch_Retinaface's test_widerface.py does, x = int(x1),
    w = int(x2) - int(x1) (truncation toward zero); else 2 decimals. Scores keep 9 significant digits
    (every float32 exactly). Any number of faces, 0 included. Returns the (N,5) x y w h score rows as written."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1).astype(np.float64)
    if len(scores) != len(boxes):
        raise ValueError(f'{name}: {len(boxes)} boxes but {len(scores)} scores')
    if integer_boxes:
        boxes = np.trunc(boxes)
    rows = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], scores[:, None]], axis=1)
    formats = ['%d' if integer_boxes else '%.2f'] * 4 + ['%.9g']
    table = rows
    if landmarks is not None:
        table = np.concatenate([rows, np.asarray(landmarks, dtype=np.float64).reshape(len(rows), 10)], axis=1)
        formats += ['%.2f'] * 10
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = ' '.join(formats)
    names = [''] * len(table) if names is None else [' ' + '_'.join(str(n).split()) for n in names]
    with open(path, 'w') as f:
        f.write(f'{name}\n{len(table)}\n')
        f.writelines(line % tuple(row) + label + '\n' for row, label in zip(table, names))
    return rows


# --------------------------------------------------------------------------------------------------- evaluation

def score_thresholds(num=NUM_THRESHOLDS):
    """t_k = 1 - (k+1)/num for k = 0..num-1 (descending, the last one is 0.0)."""
    return 1 - (np.arange(num) + 1) / num


def normalize_scores(scores):
    """Min-max normalise over the whole set; a zero range gives every prediction 1.0 (see module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores.copy()
    low, high = scores.min(), scores.max()
    if high == low:
        return np.ones_like(scores)
    return (scores - low) / (high - low)


def _as_prediction_array(key, value):
    value = np.asarray(value, dtype=np.float64)
    if value.size == 0:
        return np.zeros((0, 5))
    if value.ndim != 2 or value.shape[1] < 5:
        raise ValueError(f'predictions[{key!r}]: expected an (N, 5) array x y w h score, got shape {value.shape}')
    if not np.isfinite(value[:, :5]).all():
        raise ValueError(f'predictions[{key!r}]: non-finite box or score')
    return value[:, :5]


def _best_ground_truth(pred_xyxy, pred_image, gt_xyxy, gt_start, gt_count):
    """Per prediction: the best IoU with a ground truth of its own image and that box's flat index (first on ties).

    Every prediction's image must have at least one ground-truth box. Pairs (prediction, each ground truth of its
    image) are laid out prediction-major, in chunks that bound memory. Only overlapping boxes have a non-zero IoU,
    so a cheap intersection test keeps those pairs alone for the IoU and the per-prediction max / first argmax
    (`reduceat` over each prediction's run of pairs). A prediction that overlaps nothing keeps IoU 0 and, as the
    argmax of an all-zero row, the first ground truth of its image.
    """
    num = len(pred_xyxy)
    best_iou = np.zeros(num)
    best_gt = gt_start[pred_image].copy()
    px1, py1, px2, py2 = (np.ascontiguousarray(c) for c in pred_xyxy.T)
    gx1, gy1, gx2, gy2 = (np.ascontiguousarray(c) for c in gt_xyxy.T)
    pred_area = (px2 - px1 + 1) * (py2 - py1 + 1)
    gt_area = (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
    pairs_per_pred = gt_count[pred_image]
    pairs_before = np.concatenate(([0], np.cumsum(pairs_per_pred)))
    start = 0
    while start < num:
        # as many predictions as fit in the pair budget, at least one
        stop = max(int(np.searchsorted(pairs_before, pairs_before[start] + MAX_PAIRS_PER_CHUNK, 'right')) - 1,
                   start + 1)
        counts = pairs_per_pred[start:stop]
        seg_start = pairs_before[start:stop] - pairs_before[start]
        # flat ground-truth index of each pair: its image's first box + the position inside the prediction's run
        first_gt_of_run = gt_start[pred_image[start:stop]] - seg_start
        pair_gt = np.arange(seg_start[-1] + counts[-1]) + np.repeat(first_gt_of_run, counts)
        iw = np.minimum(np.repeat(px2[start:stop], counts), gx2[pair_gt])
        iw -= np.maximum(np.repeat(px1[start:stop], counts), gx1[pair_gt])
        iw += 1
        ih = np.minimum(np.repeat(py2[start:stop], counts), gy2[pair_gt])
        ih -= np.maximum(np.repeat(py1[start:stop], counts), gy1[pair_gt])
        ih += 1
        keep = np.flatnonzero((iw > 0) & (ih > 0))
        if keep.size:
            pred = start + np.searchsorted(seg_start, keep, 'right') - 1
            gt = pair_gt[keep]
            inter = iw[keep] * ih[keep]
            iou = inter / (pred_area[pred] + gt_area[gt] - inter)
            run_start = np.flatnonzero(np.concatenate(([True], pred[1:] != pred[:-1])))
            run_max = np.maximum.reduceat(iou, run_start)
            run_len = np.diff(np.append(run_start, len(iou)))
            # first ground truth reaching the max, as argmax does (gt indices ascend inside a run)
            first = np.minimum.reduceat(np.where(iou == np.repeat(run_max, run_len), gt, np.iinfo(np.int64).max),
                                        run_start)
            best_iou[pred[run_start]] = run_max
            best_gt[pred[run_start]] = first
        start = stop
    return best_iou, best_gt


def _flatten(predictions, gt):
    """Concatenate the ground truth and the predictions of all val images (images in ground-truth order)."""
    gt_count = np.array([len(b) for b in gt.boxes], dtype=np.int64)
    gt_start = np.concatenate(([0], np.cumsum(gt_count)[:-1]))
    gt_xywh = np.concatenate(gt.boxes) if gt.boxes else np.zeros((0, 4))
    arrays, missing = [], []
    for key in gt.keys:
        value = predictions.get(key)
        if value is None:
            missing.append(key)
            arrays.append(np.zeros((0, 5)))
        else:
            arrays.append(_as_prediction_array(key, value))
    pred_count = np.array([len(a) for a in arrays], dtype=np.int64)
    pred = np.concatenate(arrays) if arrays else np.zeros((0, 5))
    pred_image = np.repeat(np.arange(len(gt.keys)), pred_count)
    return pred, pred_image, gt_xywh, gt_start, gt_count, missing


def _to_xyxy(xywh):
    return np.concatenate((xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]), axis=1)


def _report(missing, unknown, total):
    if missing:
        shown = ', '.join(missing[:3]) + (', ...' if len(missing) > 3 else '')
        print(f'warning: {len(missing)} of {total} val images have no prediction file and count as no detections: '
              f'{shown}', file=sys.stderr)
    if unknown:
        shown = ', '.join(unknown[:3]) + (', ...' if len(unknown) > 3 else '')
        print(f'warning: {len(unknown)} prediction files are not val images and are ignored: {shown}',
              file=sys.stderr)


def evaluate(predictions, gt, iou_thresh=0.5):
    """AP per setting of predictions {'event/name': (N, 5) x y w h score} against a WiderGroundTruth.

    Returns {'easy': AP, 'medium': AP, 'hard': AP, 'curves': {setting: {'precision', 'recall', 'thresholds', 'ap'}},
    'missing': keys of val images without predictions (counted as no detections; a warning names them)}.
    """
    pred, pred_image, gt_xywh, gt_start, gt_count, missing = _flatten(predictions, gt)
    known = set(gt.keys)
    _report(missing, sorted(k for k in predictions if k not in known), len(gt.keys))
    norm_score = normalize_scores(pred[:, 4])

    # images without ground-truth boxes contribute nothing (their predictions are neither TP nor FP)
    keep = gt_count[pred_image] > 0
    pred, pred_image, norm_score = pred[keep], pred_image[keep], norm_score[keep]
    best_iou, best_gt = _best_ground_truth(_to_xyxy(pred), pred_image, _to_xyxy(gt_xywh), gt_start, gt_count)

    hit = best_iou >= iou_thresh
    # a face is recalled at threshold t iff a prediction with score >= t hits it: keep its best hitting score
    face_score = np.full(len(gt_xywh), -np.inf)
    np.maximum.at(face_score, best_gt[hit], norm_score[hit])

    thresholds = score_thresholds()
    order = np.argsort(norm_score)
    below = np.searchsorted(norm_score[order], thresholds, side='left')  # predictions with score < t

    result = {'curves': {}, 'missing': missing}
    for setting in SETTINGS:
        counted = np.concatenate(gt.counted[setting]) if gt.boxes else np.zeros(0, dtype=bool)
        not_ignored = ~(hit & ~counted[best_gt])  # a hit on a face the setting does not count is no proposal
        cumulative = np.concatenate(([0], np.cumsum(not_ignored[order])))
        proposals = cumulative[-1] - cumulative[below]
        recalled_scores = np.sort(face_score[counted])
        recalled = len(recalled_scores) - np.searchsorted(recalled_scores, thresholds, side='left')
        num_faces = int(counted.sum())
        precision = np.divide(recalled, proposals, out=np.zeros(len(thresholds)), where=proposals > 0)
        recall = recalled / num_faces if num_faces else np.full(len(thresholds), np.nan)
        ap = voc_ap(recall, precision) if num_faces else float('nan')
        result[setting] = ap
        result['curves'][setting] = {'precision': precision, 'recall': recall, 'thresholds': thresholds, 'ap': ap}
    return result


def evaluate_dirs(pred_dir, gt_dir, iou_thresh=0.5):
    """evaluate() on a prediction folder and a ground-truth folder."""
    return evaluate(read_predictions(pred_dir), load_ground_truth(gt_dir), iou_thresh)


# -------------------------------------------------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description='WIDER FACE val Easy / Medium / Hard AP (official protocol).')
    parser.add_argument('--pred', required=True, help='folder of <event>/<name>.txt prediction files')
    parser.add_argument('--gt', required=True,
                        help='folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat')
    parser.add_argument('--iou', type=float, default=0.5, help='IoU threshold for a match')
    parser.add_argument('--json', help='write {"easy": .., "medium": .., "hard": ..} here')
    parser.add_argument('--plot', help='save the three PR curves to this PNG')
    args = parser.parse_args(argv)
    for flag in ('pred', 'gt'):
        if not Path(getattr(args, flag)).is_dir():
            print(f'error: --{flag}: directory not found: {getattr(args, flag)}', file=sys.stderr)
            return 2
    try:
        result = evaluate_dirs(args.pred, args.gt, args.iou)
    except (FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for setting in SETTINGS:
        print(f'{setting.capitalize()} AP: {result[setting]:.4f}')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({s: result[s] for s in SETTINGS}, indent=2) + '\n')
    if args.plot:
        from common.visualize import plot_pr_curves
        plot_pr_curves(result['curves'], args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
