"""Decoded candidates -> detections: score filter, top-k and NMS for the whole batch at once.

The decoders (common/anchors.py, common/heatmaps.py) give every image's candidates as boxes (B,K,4) x1y1x2y2 in
pixels of the network input with scores (B,K) (and landmarks (B,K,5,2) for faces). `postprocess` is shared by every
face detector and returns one dict of tensors per image; `to_image_pixels` maps face candidates back to the original
image before NMS when it was resized; `postprocess_objects` is RetinaNet's: NMS per class.
The reference's test-time settings: score > 0.02, NMS IoU 0.4; its demo also caps 5000 candidates before NMS and
750 faces after, its WIDER FACE evaluation neither.
"""
import torch
from torchvision.ops import batched_nms


def postprocess(boxes, scores, landmarks=None, conf_thres=0.02, nms_thres=0.4, pre_nms_top_k=5000, keep_top_k=750,
                iou_plus_one=True):
    """Batched score filter (score > conf_thres), per-image top `pre_nms_top_k`, NMS (torchvision batched_nms with
    the image index as the category) and per-image top `keep_top_k`, best first. A cap of None is no cap (the
    reference's WIDER FACE evaluation, test_widerface.py, applies neither).

    boxes (B,K,4) x1y1x2y2 pixels, scores (B,K), landmarks (B,K,5,2) or None. With `iou_plus_one` the NMS IoU uses
    the +1 pixel widths of the reference implementations (py_cpu_nms, the WIDER FACE kit), so the same boxes
    survive. Returns a list of B dicts {'boxes' (N,4), 'scores' (N,), 'landmarks' (N,5,2) if given} on the input's
    device."""
    batch, num = scores.shape
    k = num if pre_nms_top_k is None else min(pre_nms_top_k, num)
    candidate = torch.where(scores > conf_thres, scores, torch.full_like(scores, -1.0))
    top_scores, top_index = candidate.topk(k, dim=1)                          # (B,k), best first
    image, rank = (top_scores >= 0).nonzero(as_tuple=True)                    # the ones above the threshold
    index = top_index[image, rank]
    sel_boxes, sel_scores = boxes[image, index].float(), scores[image, index]

    nms_boxes = sel_boxes
    if iou_plus_one:  # (x2 + 1, y2 + 1) gives plain IoU the +1 convention's widths and heights
        nms_boxes = sel_boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], device=sel_boxes.device)
    keep = batched_nms(nms_boxes, sel_scores, image, nms_thres)              # sorted by score, all images mixed
    keep = keep[torch.argsort(image[keep], stable=True)]                    # grouped by image, still best first
    kept_image = image[keep]
    counts = torch.bincount(kept_image, minlength=batch)
    starts = counts.cumsum(0) - counts
    if keep_top_k is not None:
        rank_in_image = torch.arange(len(keep), device=keep.device) - starts[kept_image]
        keep = keep[rank_in_image < keep_top_k]
        counts = counts.clamp(max=keep_top_k)
    counts = counts.tolist()

    out_boxes = sel_boxes[keep].split(counts)
    out_scores = sel_scores[keep].split(counts)
    if landmarks is None:
        return [{'boxes': b, 'scores': s} for b, s in zip(out_boxes, out_scores)]
    out_landmarks = landmarks[image[keep], index[keep]].float().split(counts)
    return [{'boxes': b, 'scores': s, 'landmarks': lm} for b, s, lm in zip(out_boxes, out_scores, out_landmarks)]


def to_image_pixels(boxes, landmarks, scales):
    """Decoded boxes (B,K,4) and landmarks (B,K,5,2) in network-input pixels -> each image's own pixels, where
    `scales` holds one factor per image (input = original * scale), or one (x, y) pair per image for inputs stretched
    differently along the two axes (the released CenterFace's sides rounded up to multiples of 32). Done before NMS, as
    the reference does: its +1 pixel IoU depends on the pixel size, so NMS on resized images keeps other boxes
    otherwise."""
    scales = torch.as_tensor(scales, dtype=torch.float32, device=boxes.device)
    xy = scales[:, None].expand(-1, 2) if scales.dim() == 1 else scales  # (B,2): x and y factors
    return boxes.float() / xy.repeat(1, 2)[:, None, :], landmarks.float() / xy[:, None, None, :]


def postprocess_objects(boxes, scores, labels, *, conf_thres: float = 0.05, nms_thres: float = 0.5,
                        keep_top_k: int | None = 100, scales=None, image_sizes=None) -> list[dict]:
    """Decoded candidates (B,k,...) -> per image {'boxes' (N,4), 'scores' (N,), 'labels' (N,)}, best first:
    score > conf_thres, NMS per class and image (one torchvision batched_nms call for the batch), at most
    keep_top_k per image. With `scales` (B,) boxes are divided by them (input pixels -> original pixels) and with
    `image_sizes` [(h, w)] clipped to each image."""
    batch = scores.shape[0]
    num_classes = int(labels.max()) + 1 if labels.numel() else 1  # NMS groups: one per (image, class)
    if scales is not None:
        boxes = boxes / torch.as_tensor(scales, dtype=torch.float32, device=boxes.device)[:, None, None]
    if image_sizes is not None:
        limits = torch.as_tensor([(w, h, w, h) for h, w in image_sizes], dtype=torch.float32, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limits[:, None, :])
    image, rank = (scores > conf_thres).nonzero(as_tuple=True)
    sel_boxes, sel_scores, sel_labels = boxes[image, rank], scores[image, rank], labels[image, rank]
    keep = batched_nms(sel_boxes, sel_scores, image * num_classes + sel_labels, nms_thres)  # best first
    keep = keep[torch.argsort(image[keep], stable=True)]                                 # grouped by image
    counts = torch.bincount(image[keep], minlength=batch)
    if keep_top_k is not None:
        starts = counts.cumsum(0) - counts
        rank_in_image = torch.arange(len(keep), device=keep.device) - starts[image[keep]]
        keep = keep[rank_in_image < keep_top_k]
        counts = counts.clamp(max=keep_top_k)
    counts = counts.tolist()
    return [{'boxes': b, 'scores': s, 'labels': c} for b, s, c in
            zip(sel_boxes[keep].split(counts), sel_scores[keep].split(counts), sel_labels[keep].split(counts))]
