"""Pascal VOC detection AP, the devkit's rules (as py-faster-rcnn's voc_eval computes them), vectorised with NumPy.

Per class: the positives are the non-difficult objects; detections of all images are sorted by confidence
(highest first, ties in file order as MATLAB's sort keeps them); each takes the ground truth of its image it
overlaps most (IoU with +1 pixel widths, difficult objects included); IoU > 0.5 (strictly) and that object
difficult: the detection is ignored; not difficult and not yet taken: a true positive that takes it; already
taken: a false positive; IoU <= 0.5: a false positive. AP is the VOC2007 11-point AP (the mean over recall
t = 0, 0.1, .., 1 of the best precision at recall >= t) or, from VOC2010 on, the all-point AP (the area under
the precision envelope).

Vectorised: a detection's best ground truth does not depend on the order, only whether it is the first to claim
it does, so one IoU matrix per image (detections x its objects), an argmax, and np.unique's first occurrences in
score order replace the devkit's loop over detections.

    python -m common.evaluation.voc --detpath 'runs/retinanet/detections/comp4_det_test_{}.txt' \\
        --annopath 'VOCdevkit/VOC2007/Annotations/{}.xml' \\
        --imagesetfile VOCdevkit/VOC2007/ImageSets/Main/test.txt --use-07-metric --json results.json

Detection files (one per class): lines `image_id score x1 y1 x2 y2` in the devkit's 1-based pixels.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..data.voc import VOC_CLASSES, AnnotationError, read_annotations, read_image_set
from ..data.widerface import is_number


class DetectionFileError(ValueError):
    """A detection file that is missing or malformed; the message names the file (and line)."""


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a recall / precision curve in score order: 11-point (VOC2007) or all-point (VOC2010+)."""
    if use_07_metric:
        thresholds = np.arange(0.0, 1.1, 0.1)  # as py-faster-rcnn: 3 x 0.1 is 0.30000000000000004, not 0.3
        reached = recall[None, :] >= thresholds[:, None]                  # (11, D)
        best = np.where(reached, precision[None, :], 0.0).max(axis=1, initial=0.0)
        return float(best.sum() / 11)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]                        # the precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


def evaluate_class(image_index: np.ndarray, scores: np.ndarray, boxes: np.ndarray, gt_image: np.ndarray,
                   gt_boxes: np.ndarray, gt_difficult: np.ndarray, iou_threshold: float = 0.5,
                   use_07_metric: bool = False) -> dict:
    """One class. Detections: image_index (D,) int, scores (D,), boxes (D,4) devkit pixels; ground truth of the
    class over all images: gt_image (G,) int, gt_boxes (G,4) devkit pixels (xmin - 1 ... as read, plus 1 on the
    left edges), gt_difficult (G,) bool. Returns {'ap', 'precision', 'recall', 'npos', 'tp', 'fp'}."""
    npos = int((~gt_difficult).sum())
    order = np.argsort(-scores, kind='stable')
    image_index, boxes = image_index[order], boxes[order]
    num = len(order)
    # the ground truths of each image as one contiguous run of a sorted list: detection d looks at
    # gt_sorted[start[image] : start[image] + count[image]]
    gt_order = np.argsort(gt_image, kind='stable')
    gt_image, gt_boxes, gt_difficult = gt_image[gt_order], gt_boxes[gt_order], gt_difficult[gt_order]
    images = int(max(image_index.max(initial=-1), gt_image.max(initial=-1))) + 1
    count = np.bincount(gt_image, minlength=images)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    width = int(count.max(initial=0))
    best_iou = np.full(num, -np.inf)
    best_gt = np.full(num, -1)
    if width and num:
        slots = start[image_index][:, None] + np.arange(width)[None, :]            # (D, width)
        valid = np.arange(width)[None, :] < count[image_index][:, None]
        slots = np.where(valid, slots, 0)
        candidates = gt_boxes[slots]                                                # (D, width, 4)
        iw = (np.minimum(boxes[:, None, 2], candidates[..., 2]) - np.maximum(boxes[:, None, 0], candidates[..., 0])
              + 1)
        ih = (np.minimum(boxes[:, None, 3], candidates[..., 3]) - np.maximum(boxes[:, None, 1], candidates[..., 1])
              + 1)
        inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
        union = ((boxes[:, None, 2] - boxes[:, None, 0] + 1) * (boxes[:, None, 3] - boxes[:, None, 1] + 1)
                 + (candidates[..., 2] - candidates[..., 0] + 1) * (candidates[..., 3] - candidates[..., 1] + 1)
                 - inter)
        iou = np.where(valid, inter / union, -np.inf)
        column = iou.argmax(axis=1)                      # the first maximum, as the devkit's max / argmax
        best_iou = iou[np.arange(num), column]
        best_gt = slots[np.arange(num), column]
    hit = best_iou > iou_threshold
    difficult = np.zeros(num, bool)
    difficult[hit] = gt_difficult[best_gt[hit]]
    claims = np.flatnonzero(hit & ~difficult)
    _, first = np.unique(best_gt[claims], return_index=True)    # the first claim of each object in score order
    tp = np.zeros(num)
    tp[claims[first]] = 1.0
    fp = (~hit).astype(float)
    fp[claims] = 1.0
    fp[claims[first]] = 0.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos if npos else np.zeros(num)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = voc_ap(recall, precision, use_07_metric) if npos else 0.0  # no object to find: the devkit divides by 0
    return {'ap': ap, 'precision': precision, 'recall': recall, 'npos': npos, 'tp': tp, 'fp': fp}


def read_detections(path, image_ids: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A comp4_det_test_<class>.txt -> image index (into `image_ids` {id: index}), scores, boxes. A line that is not
    `image_id score x1 y1 x2 y2` or names an image outside the image set raises DetectionFileError with file:line."""
    path = Path(path)
    if not path.is_file():
        raise DetectionFileError(f'detection file not found: {path}')
    rows = [line.split() for line in path.read_text().splitlines()]
    numbered = [(n, r) for n, r in enumerate(rows, start=1) if r]
    for n, row in numbered:
        if len(row) != 6:
            raise DetectionFileError(f'{path}:{n}: expected "image_id score x1 y1 x2 y2", got {len(row)} fields')
        if row[0] not in image_ids:
            raise DetectionFileError(f'{path}:{n}: image {row[0]!r} is not in the image set')
    try:
        values = np.array([[float(v) for v in row[1:]] for _, row in numbered], np.float64).reshape(-1, 5)
    except ValueError:
        n, row = next((n, r) for n, r in numbered if not all(is_number(v) for v in r[1:]))
        raise DetectionFileError(f'{path}:{n}: expected numbers for score x1 y1 x2 y2, got {" ".join(row[1:])!r}'
                                 ) from None
    index = np.array([image_ids[row[0]] for _, row in numbered], np.int64)
    return index, values[:, 0], values[:, 1:]


def ground_truth(annotations, classes) -> dict:
    """{class: (image index (G,), boxes (G,4) in the devkit's pixels, difficult (G,))} for a list of Annotation."""
    image = np.concatenate([np.full(len(a.names), i) for i, a in enumerate(annotations)] + [np.zeros(0, int)])
    names = np.array([n for a in annotations for n in a.names] + [''])[:-1]
    boxes = np.concatenate([a.boxes for a in annotations] + [np.zeros((0, 4), np.float32)]).astype(np.float64)
    boxes[:, :2] += 1  # back to the XML's 1-based xmin, ymin
    difficult = np.concatenate([a.difficult for a in annotations] + [np.zeros(0, bool)])
    return {c: (image[names == c].astype(np.int64), boxes[names == c], difficult[names == c]) for c in classes}


def evaluate_files(detpath: str, annopath: str, imagesetfile, classes=VOC_CLASSES, use_07_metric: bool = False,
                   iou_threshold: float = 0.5) -> dict:
    """The devkit evaluation of detection files `detpath.format(class)` against `annopath.format(image_id)` for the
    ids in `imagesetfile`. Returns {'mAP', 'ap': {class: AP}, 'curves': {class: {precision, recall, ap}}}. Raises
    FileNotFoundError / AnnotationError / DetectionFileError naming the file."""
    ids = read_image_set(imagesetfile)
    annotations = read_annotations([annopath.format(i) for i in ids])
    truth = ground_truth(annotations, classes)
    index = {image_id: i for i, image_id in enumerate(ids)}
    missing = [detpath.format(c) for c in classes if not Path(detpath.format(c)).is_file()]
    if missing:
        raise DetectionFileError(f'detection file not found: {missing[0]}'
                                 + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''))
    ap, curves = {}, {}
    for name in classes:
        result = evaluate_class(*read_detections(detpath.format(name), index), *truth[name],
                                iou_threshold=iou_threshold, use_07_metric=use_07_metric)
        ap[name] = result['ap']
        curves[name] = {'precision': result['precision'], 'recall': result['recall'], 'ap': result['ap']}
    return {'mAP': float(np.mean(list(ap.values()))) if ap else 0.0, 'ap': ap, 'curves': curves}


def write_detections(folder, classes, detections: dict, prefix: str = 'comp4_det_test_') -> list[Path]:
    """Write one `<prefix><class>.txt` per class (an empty file for a class without detections) from
    {image_id: {'boxes' (N,4) continuous x1y1x2y2 in image pixels, 'scores' (N,), 'labels' (N,)}}: lines
    `image_id score xmin ymin xmax ymax` with xmin = x1 + 1, xmax = x2 (the devkit's 1-based pixels)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = {c: [] for c in range(len(classes))}
    for image_id, d in detections.items():
        boxes = np.asarray(d['boxes'], np.float64).reshape(-1, 4) + np.array([1, 1, 0, 0])
        for label, score, (x1, y1, x2, y2) in zip(np.asarray(d['labels']).tolist(), np.asarray(d['scores']).tolist(),
                                                  boxes.tolist()):
            lines[label].append(f'{image_id} {score:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n')
    paths = []
    for label, name in enumerate(classes):
        path = folder / f'{prefix}{name}.txt'
        path.write_text(''.join(lines[label]))
        paths.append(path)
    return paths


def write_object_file(path, image_name: str, boxes, scores, labels, classes) -> Path:
    """One image's detections (detect.py --save-txt): the image name, the count, then one object per line, best
    first: `class score x1 y1 x2 y2` (class name, continuous pixel corners); an image without objects gets count 0."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    rows = [f'{classes[int(c)]} {s:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n' for c, s, (x1, y1, x2, y2) in
            zip(np.asarray(labels).tolist(), np.asarray(scores).tolist(), boxes.tolist())]
    path = Path(path)
    path.write_text(f'{image_name}\n{len(rows)}\n' + ''.join(rows))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m common.evaluation.voc', description=__doc__.split('\n')[0])
    parser.add_argument('--detpath', required=True, help="detection files, '{}' for the class name")
    parser.add_argument('--annopath', required=True, help="annotation files, '{}' for the image id")
    parser.add_argument('--imagesetfile', required=True, help='ImageSets/Main/<split>.txt: the image ids')
    parser.add_argument('--classes', default=None, help='comma-separated class names (default: the 20 VOC classes)')
    parser.add_argument('--use-07-metric', action='store_true', help='VOC2007 11-point AP (default: all-point)')
    parser.add_argument('--iou', type=float, default=0.5, help='IoU a detection must exceed (default 0.5)')
    parser.add_argument('--json', default=None, help='write {"mAP": .., "ap": {class: ..}} here')
    args = parser.parse_args(argv)
    for flag, template in (('--detpath', args.detpath), ('--annopath', args.annopath)):
        if '{}' not in template:
            print(f"error: {flag}: expected a pattern with '{{}}', got {template!r}", file=sys.stderr)
            return 2
    classes = tuple(c.strip() for c in args.classes.split(',') if c.strip()) if args.classes else VOC_CLASSES
    try:
        results = evaluate_files(args.detpath, args.annopath, args.imagesetfile, classes, args.use_07_metric,
                                 args.iou)
    except (FileNotFoundError, AnnotationError, DetectionFileError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    width = max(len(c) for c in classes)
    for name in classes:
        print(f'{name:>{width}}  {results["ap"][name]:.4f}')
    print(f'{"mAP":>{width}}  {results["mAP"]:.4f}  ({"11-point" if args.use_07_metric else "all-point"})')
    if args.json:
        Path(args.json).write_text(json.dumps({'mAP': results['mAP'], 'ap': results['ap']}, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
