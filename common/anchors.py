"""RetinaFace priors and RetinaNet anchors, ground-truth matching for a whole batch at once, box / landmark encoding,
and the decoders that invert it on a network's outputs (decode_retinaface, decode_retinanet). RetinaNet's anchors
are in input pixels (cx, cy, w, h) and its ground truth in pixels (see the section at the end); the encoding is
the same.

Coordinates: priors are (cx, cy, w, h) normalised by the network input size; ground-truth boxes are x1, y1, x2, y2
and landmarks (N,5,2) x, y, both normalised to [0, 1] by the input size (or in pixels with `image_size=(h, w)`).
Encoding uses the variances (0.1, 0.2):
    box:      ((g_cxcy - p_cxcy) / (0.1 * p_wh), log(g_wh / p_wh) / 0.2)
    landmark: (g_k - p_cxcy) / (0.1 * p_wh) for each of the five points, flattened x1, y1, ..., x5, y5.
"""
import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

VARIANCES = (0.1, 0.2)
RETINAFACE_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
RETINAFACE_STEPS = (8, 16, 32)


# ------------------------------------------------------------------------------------------------------- priors

@lru_cache(maxsize=16)
def _priors_cpu(image_h: int, image_w: int, min_sizes: tuple, steps: tuple) -> torch.Tensor:
    levels = []
    for sizes, step in zip(min_sizes, steps):
        rows, cols = math.ceil(image_h / step), math.ceil(image_w / step)
        cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * step / image_h
        cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * step / image_w
        size = torch.tensor(sizes, dtype=torch.float32)
        # (rows, cols, sizes, 4); the flattening order is then row, column, min size
        grid = torch.stack(torch.broadcast_tensors(cx[None, :, None], cy[:, None, None],
                                                   size[None, None, :] / image_w, size[None, None, :] / image_h), -1)
        levels.append(grid.reshape(-1, 4))
    return torch.cat(levels)


def retinaface_priors(image_h: int, image_w: int, min_sizes=RETINAFACE_MIN_SIZES, steps=RETINAFACE_STEPS,
                      device=None) -> torch.Tensor:
    """(P,4) priors cx, cy, w, h normalised by the input size, ordered level, row, column, min size; each level's
    feature map is ceil(H/step) x ceil(W/step) (what the network produces for that input)."""
    min_sizes = tuple(tuple(int(s) for s in sizes) for sizes in min_sizes)
    priors = _priors_cpu(int(image_h), int(image_w), min_sizes, tuple(int(s) for s in steps))
    return priors.to(device, copy=True) if device is not None else priors.clone()  # callers may edit theirs


# --------------------------------------------------------------------------------------------- encode / decode

def boxes_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], dim=-1)


def encode_boxes(boxes_xyxy: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """(..., P, 4) x1y1x2y2 matched to (P, 4) priors -> regression targets (..., P, 4)."""
    centre = (boxes_xyxy[..., :2] + boxes_xyxy[..., 2:]) / 2
    size = (boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]).clamp(min=1e-8)  # log of a degenerate box stays finite
    return torch.cat([(centre - priors[:, :2]) / (variances[0] * priors[:, 2:]),
                      torch.log(size / priors[:, 2:]) / variances[1]], dim=-1)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """(..., P, 4) regression output + (P, 4) priors (or (..., P, 4), one per output) -> (..., P, 4) x1y1x2y2 in the
    priors' (normalised) units."""
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def encode_landmarks(landmarks: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """(..., P, 5, 2) points matched to (P, 4) priors -> targets (..., P, 10) ordered x1, y1, ..., x5, y5."""
    offsets = (landmarks - priors[:, None, :2]) / (variances[0] * priors[:, None, 2:])
    return offsets.flatten(-2)


def decode_landmarks(landm: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """(..., P, 10) landmark output + (P, 4) priors (or (..., P, 4)) -> (..., P, 5, 2) points in the priors'
    (normalised) units."""
    landm = landm.unflatten(-1, (5, 2))
    return priors[..., None, :2] + landm * variances[0] * priors[..., None, 2:]


def decode_retinaface(loc, conf_logits, landm, priors, input_hw, top_k: int | None = None):
    """Raw (B,P,4), (B,P,2), (B,P,10) outputs + (P,4) priors of an input of size (H, W) -> boxes (B,K,4) x1y1x2y2
    pixels, scores (B,K) (softmax, class 1 = face), landmarks (B,K,5,2) pixels. With `top_k` only the K = top_k
    best-scoring priors of each image are decoded (what postprocess keeps before NMS anyway), else all P."""
    height, width = int(input_hw[0]), int(input_hw[1])
    logits = conf_logits.float()
    scores = torch.sigmoid(logits[..., 1] - logits[..., 0])  # = softmax(logits)[..., 1], without the exp of both
    priors = priors.float().expand(scores.shape[0], -1, -1)
    if top_k is not None and top_k < scores.shape[1]:
        scores, index = scores.topk(top_k, dim=1)             # best first, like postprocess's own ordering

        def take(t):
            return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))
        loc, landm, priors = take(loc), take(landm), take(priors)
    scale = torch.tensor([width, height], dtype=torch.float32, device=loc.device)
    boxes = decode_boxes(loc.float(), priors) * scale.repeat(2)
    landmarks = decode_landmarks(landm.float(), priors) * scale
    return boxes, scores, landmarks


# ----------------------------------------------------------------------------------------------------- matching

class MatchResult(NamedTuple):
    """Per-prior training targets of a batch."""
    labels: torch.Tensor          # (B,P) long: 1 face, 0 background
    loc: torch.Tensor             # (B,P,4) encoded box targets (0 on background)
    landmarks: torch.Tensor       # (B,P,10) encoded landmark targets (0 where there is none)
    landmark_mask: torch.Tensor   # (B,P) bool: a face prior whose face has landmarks
    gt_index: torch.Tensor        # (B,P) long: index of the matched face in its image's list, -1 on background


def box_iou_batched(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of (B,G,4) with (P,4) x1y1x2y2 boxes -> (B,G,P) (continuous coordinates, no +1).
    x and y are handled separately and in place: (B,G,P) is the largest tensor matching makes."""
    ax1, ay1, ax2, ay2 = (c[..., None] for c in boxes_a.unbind(-1))
    bx1, by1, bx2, by2 = boxes_b.unbind(-1)
    inter = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)
    inter.mul_(torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0))
    union = ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1)).sub_(inter).clamp_(min=1e-12)
    return inter.div_(union)


def _as_tensor(value, shape_tail, dtype, name, index):
    if value is None:
        return None
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value, dtype=dtype)
    if shape_tail is not None:
        if t.numel() == 0:
            return t.reshape(0, *shape_tail)
        if tuple(t.shape[1:]) != shape_tail and t.reshape(t.shape[0], -1).shape[1] == math.prod(shape_tail):
            t = t.reshape(t.shape[0], *shape_tail)  # accept (N,10) landmarks as well as (N,5,2)
        if tuple(t.shape[1:]) != shape_tail:
            raise ValueError(f'target {index}: {name} has shape {tuple(t.shape)}, expected (N, '
                             f'{", ".join(map(str, shape_tail))})')
    return t


def pad_targets(targets, device=None, image_size=None):
    """List of per-image annotation dicts ('boxes' (N,4) x1y1x2y2, optional 'landmarks' (N,5,2) and
    'landmark_valid' (N,); numpy or torch) -> padded (B,G,4) boxes, (B,G,5,2) landmarks, (B,G) landmark_valid,
    (B,G) gt_mask, on `device`. With `image_size=(h, w)` pixel coordinates are normalised by it."""
    boxes, landmarks, valid = [], [], []
    for i, t in enumerate(targets):
        b = _as_tensor(t['boxes'], (4,), torch.float32, 'boxes', i)
        lm = _as_tensor(t.get('landmarks'), (5, 2), torch.float32, 'landmarks', i)
        v = _as_tensor(t.get('landmark_valid'), None, torch.bool, 'landmark_valid', i)
        if lm is None:
            lm, v = torch.zeros(len(b), 5, 2), torch.zeros(len(b), dtype=torch.bool)
        elif v is None:
            v = (lm >= 0).flatten(1).all(1)  # the label.txt convention: -1 means no landmarks
        if not (len(b) == len(lm) == len(v)):
            raise ValueError(f'target {i}: {len(b)} boxes but {len(lm)} landmarks and {len(v)} landmark flags')
        boxes.append(b), landmarks.append(lm), valid.append(v.reshape(-1))
    counts = torch.tensor([len(b) for b in boxes], dtype=torch.long)
    batch = len(boxes)
    most = max(int(counts.max()) if batch else 0, 1)  # at least one (masked) column keeps shapes simple
    # one copy into padded tensors: row = image, column = position of the face within its image
    rows = torch.repeat_interleave(torch.arange(batch), counts)
    cols = torch.arange(int(counts.sum())) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    padded_boxes = torch.zeros(batch, most, 4)
    padded_landmarks = torch.zeros(batch, most, 5, 2)
    padded_valid = torch.zeros(batch, most, dtype=torch.bool)
    gt_mask = torch.zeros(batch, most, dtype=torch.bool)
    if rows.numel():
        padded_boxes[rows, cols] = torch.cat(boxes)
        padded_landmarks[rows, cols] = torch.cat(landmarks)
        padded_valid[rows, cols] = torch.cat(valid)
        gt_mask[rows, cols] = True
    if image_size is not None:
        h, w = image_size
        padded_boxes /= torch.tensor([w, h, w, h], dtype=torch.float32)
        padded_landmarks /= torch.tensor([w, h], dtype=torch.float32)
    return (padded_boxes.to(device), padded_landmarks.to(device), padded_valid.to(device), gt_mask.to(device))


@torch.no_grad()
def best_matches(boxes, priors_xyxy, gt_mask, drop_below=0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """For padded ground truths (B,G,4) x1y1x2y2 with mask (B,G) and (P,4) x1y1x2y2 priors: each prior's best
    ground truth (B,P) and its IoU (B,P), where every kept ground truth (its best IoU >= `drop_below`) claims its
    best prior, whose IoU then reads 2 (when two claim the same prior, the later one in the image's list wins).
    With no kept ground truth a prior's IoU is -1."""
    iou = box_iou_batched(boxes, priors_xyxy)                                    # (B,G,P)
    iou.masked_fill_(~gt_mask[..., None], -1.0)
    best_prior_iou, best_prior = iou.max(dim=2)                                  # (B,G)
    kept = gt_mask & (best_prior_iou >= drop_below)
    iou.masked_fill_(~kept[..., None], -1.0)                                     # dropped faces match nothing
    best_gt_iou, best_gt = iou.max(dim=1)                                        # (B,P)

    # force-match: every kept ground truth gets its best prior; amax over the GT index makes ties deterministic
    num_gt = boxes.shape[1]
    claimant = torch.where(kept, torch.arange(num_gt, device=boxes.device).expand_as(kept), -1)
    forced = torch.full_like(best_gt, -1).scatter_reduce(1, best_prior, claimant, reduce='amax')
    is_forced = forced >= 0
    best_gt = torch.where(is_forced, forced, best_gt)
    best_gt_iou = torch.where(is_forced, torch.full_like(best_gt_iou, 2.0), best_gt_iou)
    return best_gt, best_gt_iou


@torch.no_grad()
def match_padded(priors, boxes, landmarks, landmark_valid, gt_mask, threshold=0.35, drop_below=0.2,
                 variances=VARIANCES) -> MatchResult:
    """Match padded ground truths (B,G,...) with mask (B,G) to (P,4) priors, all images at once.

    Rules (the reference recipe): a ground truth whose best prior IoU is below `drop_below` is dropped; every kept
    ground truth claims its best prior (when two claim the same prior, the later one in the image's list wins);
    any other prior takes its best-IoU ground truth and is a face when that IoU >= `threshold`, else background.
    """
    best_gt, best_gt_iou = best_matches(boxes, boxes_cxcywh_to_xyxy(priors), gt_mask, drop_below)
    labels = (best_gt_iou >= threshold).long()
    positive = labels.bool()
    matched_boxes = torch.gather(boxes, 1, best_gt[..., None].expand(-1, -1, 4))
    matched_landmarks = torch.gather(landmarks, 1, best_gt[..., None, None].expand(-1, -1, 5, 2))
    landmark_mask = positive & torch.gather(landmark_valid, 1, best_gt)

    loc = encode_boxes(matched_boxes, priors, variances).masked_fill(~positive[..., None], 0.0)
    landm = encode_landmarks(matched_landmarks, priors, variances).masked_fill(~landmark_mask[..., None], 0.0)
    gt_index = torch.where(positive, best_gt, -1)
    return MatchResult(labels, loc, landm, landmark_mask, gt_index)


def match(priors, targets, threshold=0.35, image_size=None, drop_below=0.2, variances=VARIANCES,
          max_elements=2 ** 26) -> MatchResult:
    """Training targets for a batch: `targets` is a list of per-image annotation dicts ('boxes' (N,4) x1y1x2y2,
    'landmarks' (N,5,2), 'landmark_valid' (N,); numpy or torch), normalised to [0,1] or, with
    `image_size=(h, w)`, in pixels of the network input. Images without faces give all background.
    Runs on the priors' device; the (B,G,P) IoU is computed in chunks of images of at most `max_elements` so crowd
    images (hundreds of faces) cannot exhaust memory."""
    boxes, landmarks, valid, gt_mask = pad_targets(targets, device=priors.device, image_size=image_size)
    per_image = boxes.shape[1] * priors.shape[0]
    chunk = max(1, max_elements // max(per_image, 1))
    parts = [match_padded(priors, boxes[i:i + chunk], landmarks[i:i + chunk], valid[i:i + chunk],
                          gt_mask[i:i + chunk], threshold, drop_below, variances)
             for i in range(0, boxes.shape[0], chunk)]
    if len(parts) == 1:
        return parts[0]
    return MatchResult(*(torch.cat(field) for field in zip(*parts)))


# ------------------------------------------------------------------------------------------------ RetinaNet

RETINANET_STRIDES = (8, 16, 32, 64, 128)        # P3 .. P7
RETINANET_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RETINANET_RATIOS = (0.5, 1.0, 2.0)              # height / width
BACKGROUND, IGNORED = -1, -2                    # AnchorTargets.labels of anchors that are not an object
RETINANET_VARIANCES = (1.0, 1.0)                # the paper's box encoding: offsets in anchor sizes, unscaled


def retinanet_anchor_sizes(input_size: int, reference: int = 512) -> tuple:
    """Base anchor size per level: the paper's 4 x stride (32 .. 512) for inputs of `reference` px and larger,
    shrunk in proportion below (16 .. 256 at 256 px), so the anchors cover the objects at the size the input shows
    them."""
    factor = min(1.0, input_size / reference)
    return tuple(4 * stride * factor for stride in RETINANET_STRIDES)


@lru_cache(maxsize=16)
def _anchors_cpu(image_h: int, image_w: int, sizes: tuple, strides: tuple, scales: tuple, ratios: tuple):
    levels = []
    scale, ratio = torch.tensor(scales, dtype=torch.float64), torch.tensor(ratios, dtype=torch.float64)
    for size, stride in zip(sizes, strides):
        rows, cols = math.ceil(image_h / stride), math.ceil(image_w / stride)
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * stride
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * stride
        widths = (size * scale[:, None] / ratio.sqrt()[None, :]).flatten()     # scale-major, then ratio
        heights = (size * scale[:, None] * ratio.sqrt()[None, :]).flatten()
        grid = torch.stack(torch.broadcast_tensors(cx[None, :, None], cy[:, None, None], widths[None, None, :],
                                                   heights[None, None, :]), -1)
        levels.append(grid.reshape(-1, 4))
    return torch.cat(levels).float()


def retinanet_anchors(image_h: int, image_w: int, sizes, strides=RETINANET_STRIDES, scales=RETINANET_SCALES,
                      ratios=RETINANET_RATIOS, device=None) -> torch.Tensor:
    """(A,4) anchors cx, cy, w, h in input pixels, ordered level, row, column, then scale x ratio (len(scales) *
    len(ratios) per cell, 9 by default); level l has base size sizes[l] on a ceil(H/stride) x ceil(W/stride) grid
    (what a ResNet + FPN produces for that input), centres at (j + 0.5) * stride."""
    anchors = _anchors_cpu(int(image_h), int(image_w), tuple(float(s) for s in sizes), tuple(int(s) for s in strides),
                           tuple(float(s) for s in scales), tuple(float(r) for r in ratios))
    return anchors.to(device, copy=True) if device is not None else anchors.clone()


class AnchorTargets(NamedTuple):
    """Per-anchor training targets of a batch."""
    labels: torch.Tensor    # (B,A) long: the class index of an object anchor, BACKGROUND (-1) or IGNORED (-2)
    loc: torch.Tensor       # (B,A,4) encoded box targets of object anchors (0 elsewhere)
    boxes: torch.Tensor     # (B,A,4) the matched ground truth x1y1x2y2 in pixels (0 elsewhere), for IoU losses
    gt_index: torch.Tensor  # (B,A) long: index of the matched object in its image's list, -1 elsewhere


def _pad_objects(targets, device):
    """Per-image 'boxes' (N,4), 'labels' (N,), optional 'ignore' (N,) -> padded (B,G,...) tensors and a (B,G)
    mask; G is at least 1 so images without objects keep the shapes simple."""
    def column(t, key, shape, dtype):
        value = t.get(key)
        if value is None:
            return torch.zeros((len(t['boxes']),) + shape, dtype=dtype)
        return torch.as_tensor(value, dtype=dtype).reshape((-1,) + shape)
    boxes = [column(t, 'boxes', (4,), torch.float32) for t in targets]
    labels = [column(t, 'labels', (), torch.long) for t in targets]
    ignore = [column(t, 'ignore', (), torch.bool) for t in targets]
    present = [torch.ones(len(b), dtype=torch.bool) for b in boxes]
    padded = [torch.nn.utils.rnn.pad_sequence(x, batch_first=True) for x in (boxes, labels, ignore, present)]
    if padded[0].shape[1] == 0:
        padded = [torch.zeros((len(targets), 1) + x.shape[2:], dtype=x.dtype) for x in padded]
    return [x.to(device) for x in padded]


@torch.no_grad()
def match_anchors(anchors, targets, fg_iou: float = 0.5, bg_iou: float = 0.4, variances=RETINANET_VARIANCES,
                  max_elements=2 ** 26) -> AnchorTargets:
    """RetinaNet training targets for a batch, on the anchors' device. `targets`: per image {'boxes' (N,4) x1y1x2y2
    input pixels, 'labels' (N,) class indices, optional 'ignore' (N,) bool (VOC's difficult objects)}; anchors
    (A,4) from retinanet_anchors.

    Rules (the paper's): an anchor whose best IoU with an object is >= fg_iou is that object's, < bg_iou is
    background, in between ignored; every object also keeps its best anchor (common.anchors.best_matches, as
    RetinaFace's matching). An anchor that goes to an `ignore` object is ignored instead of learnt, unless its IoU is
    below bg_iou (then it is background, as for any other object). The (B,G,A) IoU runs in chunks of images of at
    most `max_elements`."""
    boxes, labels, ignore, present = _pad_objects(targets, anchors.device)
    anchors_xyxy = boxes_cxcywh_to_xyxy(anchors)
    chunk = max(1, max_elements // max(boxes.shape[1] * anchors.shape[0], 1))
    best_gt, best_iou = (torch.cat(parts) for parts in zip(*(
        best_matches(boxes[i:i + chunk], anchors_xyxy, present[i:i + chunk], drop_below=0.0)
        for i in range(0, boxes.shape[0], chunk))))
    matched_labels = torch.gather(labels, 1, best_gt)
    matched_ignore = torch.gather(ignore, 1, best_gt)
    positive = (best_iou >= fg_iou) & ~matched_ignore
    state = torch.where(best_iou < bg_iou, BACKGROUND, IGNORED)
    assigned = torch.where(positive, matched_labels, state)
    matched_boxes = torch.gather(boxes, 1, best_gt[..., None].expand(-1, -1, 4))
    loc = encode_boxes(matched_boxes, anchors, variances).masked_fill(~positive[..., None], 0.0)
    return AnchorTargets(assigned, loc, matched_boxes.masked_fill(~positive[..., None], 0.0),
                         torch.where(positive, best_gt, -1))


# ------------------------------------------------------------------------------------- RetinaNet's decoder

def anchors_for(arch: dict, height: int, width: int, device=None) -> torch.Tensor:
    """The (A,4) anchors (cx, cy, w, h in input pixels) of a RetinaNet checkpoint's arch for an input size."""
    return retinanet_anchors(height, width, arch['anchor_sizes'], scales=arch['anchor_scales'],
                             ratios=arch['anchor_ratios'], device=device)


@torch.no_grad()
def decode_retinanet(cls_logits, box_offsets, anchors, top_k: int = 1000):
    """Raw outputs (B,A,K), (B,A,4) + (A,4) anchors -> the top_k (anchor, class) pairs of each image by score:
    boxes (B,k,4) x1y1x2y2 input pixels, scores (B,k) sigmoid, labels (B,k) class index. Only those are decoded."""
    batch, num_anchors, num_classes = cls_logits.shape
    scores = cls_logits.float().sigmoid().reshape(batch, -1)
    scores, index = scores.topk(min(top_k, scores.shape[1]), dim=1)
    anchor, labels = index // num_classes, index % num_classes
    offsets = box_offsets.float().gather(1, anchor[..., None].expand(-1, -1, 4))
    return decode_boxes(offsets, anchors.float()[anchor], RETINANET_VARIANCES), scores, labels
