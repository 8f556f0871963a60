"""Detectors ready for inference: network + its decoder + batched NMS, raw BGR images in, detections in each
image's own pixels out. FaceDetector runs RetinaFace and CenterFace (each image at its own size, landmarks);
ObjectDetector runs RetinaNet (each image padded to a square and resized to its training input, class labels).
detect.py, the benchmarks and the evaluations of the training scripts use them, so they all see exactly the same
pre- and post-processing. The network is one of ours in PyTorch, or one of our exported .onnx files run by
onnxruntime (common/inference/onnx_model.py), which takes and gives the same tensors.
"""
import math
import time

import cv2
import numpy as np
import torch

from ..anchors import anchors_for, decode_retinanet, decode_retinaface, retinaface_priors
from ..checkpoint import CheckpointError
from ..data.voc import letterbox
from ..heatmaps import decode_centerface, start_inside_image
from ..models import fuse_for_inference, input_convention
from .nms import postprocess, postprocess_objects, to_image_pixels


def resize_scale(height: int, width: int, *, max_size: int | None = None, test_size: int | None = None) -> float:
    """Scale factor for one image: 1 (original size) by default; with `test_size` the short side becomes test_size
    and with `max_size` the long side is capped, tested on the rounded size as test_widerface.py does
    (`np.round(resize * long_side) > max_size`; the reference's 1600 / 2150 protocol)."""
    scale = 1.0
    if test_size:
        scale = test_size / min(height, width)
    if max_size and np.round(max(height, width) * scale) > max_size:
        scale = max_size / max(height, width)
    return scale


def ready_for_inference(model, device, *, fuse=True, channels_last=None):
    """(network, device) for a detector: our PyTorch network in eval mode with BatchNorm folded into the convs (a
    copy: training goes on with the original untouched) and channels_last on the CPU, where it measured faster; an
    OnnxModel as it is, on the CPU, since onnxruntime takes and gives CPU tensors."""
    device = torch.device(device)
    if not isinstance(model, torch.nn.Module):
        return model, torch.device('cpu')
    model = fuse_for_inference(model) if fuse else model.eval()
    if device.type == 'cpu' if channels_last is None else channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, device


def synchronize(device):
    """Wait for CUDA's queued work, so that each stage's time is its own (a no-op elsewhere)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_network(detector, images: list[np.ndarray]):
    """`detector.prepare` the images into one batch on its device, then its network: (outputs, batch, scales, moments)
    with `moments` the start, prepared and forwarded times that stage_times turns into ms."""
    start = time.perf_counter()
    batch, scales = detector.prepare(images)
    batch = batch.to(detector.device, non_blocking=True)
    synchronize(detector.device)
    prepared = time.perf_counter()
    outputs = detector.model(batch)
    synchronize(detector.device)
    return outputs, batch, scales, (start, prepared, time.perf_counter())


def stage_times(start, prepared, forwarded) -> dict:
    """ms spent preparing, in the network, and since then (postprocess)."""
    return {'preprocess': (prepared - start) * 1000, 'forward': (forwarded - prepared) * 1000,
            'postprocess': (time.perf_counter() - forwarded) * 1000}


class FaceDetector:
    """RetinaFace and CenterFace: `detector(list of BGR uint8 images) -> list of {'boxes' (N,4) xyxy, 'scores' (N,),
    'landmarks' (N,5,2)}` in each image's own pixels; `detector.times` holds the last call's stage times in ms; its
    `kind` is 'faces'. Images of different sizes are padded (with the colour the network maps to zero,
    `input_convention`) to one batch, so a folder runs in batches; an image alone keeps its own size, as the reference
    runs it (the released CenterFace: stretched to sides that are multiples of 32, as its authors run it).
    `pre_nms_top_k` / `keep_top_k` of None (or 0): no cap (the reference's WIDER FACE evaluation); the defaults are its
    demo's caps."""

    def __init__(self, model, arch: dict, device, *, conf_thres=0.02, nms_thres=0.4, pre_nms_top_k=5000,
                 keep_top_k=750, max_size=None, test_size=None, pad_multiple=1, fuse=True, channels_last=None):
        self.model, self.device = ready_for_inference(model, device, fuse=fuse, channels_last=channels_last)
        self.arch = arch
        self.convention = input_convention(arch)
        self.conf_thres, self.nms_thres = conf_thres, nms_thres
        self.pre_nms_top_k, self.keep_top_k = pre_nms_top_k or None, keep_top_k or None  # 0 or None: no cap
        self.max_size, self.test_size, self.pad_multiple = max_size, test_size, pad_multiple
        self.kind = 'faces'
        self.decode = decoder_for(arch)
        self.border_rule = border_rule_for(arch)
        self.times = {}

    def _stretch(self, image: np.ndarray, scale: float) -> tuple[np.ndarray, tuple]:
        """The image resized by `scale`, each side then rounded up to the convention's multiple (the released
        CenterFace's preprocessing, in one resize); returns it with its (x, y) scale factors."""
        m = self.convention.size_multiple
        height, width = image.shape[:2]
        new_h, new_w = math.ceil(height * scale / m) * m, math.ceil(width * scale / m) * m
        if (new_h, new_w) != (height, width):
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return image, (new_w / width, new_h / height)

    def prepare(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list]:
        """Resize each image by its scale (and stretch it to the convention's size multiple), pad all to one size
        (a multiple of `pad_multiple`) and stack into a uint8 (B,3,H,W) tensor on the CPU; returns the batch and the
        scales (one factor per image, or an (x, y) pair per image when stretched)."""
        scales = [resize_scale(*im.shape[:2], max_size=self.max_size, test_size=self.test_size) for im in images]
        if self.convention.size_multiple:
            resized, scales = zip(*(self._stretch(im, s) for im, s in zip(images, scales)))
        else:
            resized = [im if s == 1.0 else cv2.resize(im, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
                       for im, s in zip(images, scales)]
        m = self.pad_multiple
        height = math.ceil(max(im.shape[0] for im in resized) / m) * m
        width = math.ceil(max(im.shape[1] for im in resized) / m) * m
        if len(resized) == 1 and resized[0].shape[:2] == (height, width):
            return torch.from_numpy(resized[0]).permute(2, 0, 1)[None], scales  # a view: no copy, no padding
        batch = np.empty((len(resized), height, width, 3), np.uint8)
        batch[:] = np.array(self.convention.pad_bgr, np.uint8)
        for i, im in enumerate(resized):
            batch[i, :im.shape[0], :im.shape[1]] = im
        return torch.from_numpy(batch).permute(0, 3, 1, 2), scales

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[dict]:
        outputs, batch, scales, moments = run_network(self, images)
        boxes, scores, landmarks = self.decode(outputs, batch.shape[-2:], self.pre_nms_top_k)
        boxes, landmarks = to_image_pixels(boxes, landmarks, scales)  # NMS in each image's own pixels
        if self.border_rule is not None:
            boxes, landmarks = self.border_rule(boxes, landmarks, [im.shape[:2] for im in images])
        results = postprocess(boxes, scores, landmarks, conf_thres=self.conf_thres, nms_thres=self.nms_thres,
                              pre_nms_top_k=self.pre_nms_top_k, keep_top_k=self.keep_top_k)
        results = [{k: v.float().cpu().numpy() for k, v in r.items()} for r in results]
        self.times = stage_times(*moments)
        return results


def decoder_for(arch: dict):
    """`decode(outputs, input_hw, top_k) -> boxes (B,K,4), scores (B,K), landmarks (B,K,5,2)` in input pixels for
    the network `arch` names: at most the top_k best candidates of each image (None: all)."""
    if arch['name'] == 'retinaface':
        cache = {}

        def decode(outputs, input_hw, top_k=None):
            key = (tuple(input_hw), outputs[0].device)
            if key not in cache:
                cache[key] = retinaface_priors(*input_hw, device=outputs[0].device)
            return decode_retinaface(*outputs, cache[key], input_hw, top_k)
        return decode
    if arch['name'] == 'centerface':
        peaks_only = arch.get('variant') != 'released'  # the released decoder takes every cell above the threshold
        return lambda outputs, input_hw, top_k=None: decode_centerface(outputs, input_hw, top_k=top_k,
                                                                       peaks_only=peaks_only)
    raise CheckpointError(f'no decoder for network {arch["name"]!r}')


def border_rule_for(arch: dict):
    """`rule(boxes, landmarks, image_hw) -> boxes, landmarks` applied in image pixels before NMS, or None (boxes
    as decoded): the released CenterFace's decoder moves boxes that cross the left / top edge inside."""
    if arch['name'] == 'centerface' and arch.get('variant') == 'released':
        return start_inside_image
    return None


class ObjectDetector:
    """RetinaNet: `detector(list of BGR uint8 images) -> list of {'boxes' (N,4) x1y1x2y2, 'scores' (N,), 'labels'
    (N,)}`, best first, in each image's own pixels; `detector.classes` names the labels; `detector.times` holds the last
    call's stage times in ms; its `kind` is 'objects'. Each image is padded to a square and resized to `size` (default:
    the checkpoint's training size), so any batch stacks without further padding. Caps of None: the RetinaNet defaults
    (1000 candidates per image before NMS, 100 objects after)."""

    def __init__(self, model, arch: dict, device, *, conf_thres=0.05, nms_thres=0.5, pre_nms_top_k=1000,
                 keep_top_k=100, size=None, fuse=True):
        self.model, self.device = ready_for_inference(model, device, fuse=fuse)
        self.arch, self.classes, self.kind = arch, list(arch['classes']), 'objects'
        self.size = int(size or arch['size'])
        self.anchors = anchors_for(arch, self.size, self.size, device=self.device)
        self.conf_thres, self.nms_thres = conf_thres, nms_thres
        self.pre_nms_top_k, self.keep_top_k = pre_nms_top_k or 1000, keep_top_k or None
        self.times = {}

    def prepare(self, images: list[np.ndarray]) -> tuple[torch.Tensor, tuple]:
        """Each image padded to a square and resized to `size`, stacked into a uint8 (B,3,size,size) tensor on the
        CPU; returns it and the scales (input pixels per original pixel)."""
        inputs, scales = zip(*(letterbox(image, self.size) for image in images))
        return torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2), scales

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[dict]:
        (cls_logits, box_offsets), _, scales, moments = run_network(self, images)
        candidates = decode_retinanet(cls_logits.to(self.device), box_offsets.to(self.device), self.anchors,
                                      self.pre_nms_top_k)
        found = postprocess_objects(*candidates, conf_thres=self.conf_thres, nms_thres=self.nms_thres,
                                    keep_top_k=self.keep_top_k, scales=scales,
                                    image_sizes=[image.shape[:2] for image in images])
        results = [{k: v.cpu().numpy() for k, v in f.items()} for f in found]
        self.times = stage_times(*moments)
        return results
