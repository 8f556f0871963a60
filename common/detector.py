"""A face detector ready for inference: network + its decoder + batched NMS, raw BGR images in, detections in
original-image pixels out. detect.py, the benchmarks and the WIDER FACE evaluation of every training script use it,
so they all see exactly the same pre- and post-processing. The network is one of ours in PyTorch, or one of our
exported .onnx files run by onnxruntime (common/onnx_model.py), which takes and gives the same tensors.
"""
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from .checkpoint import CheckpointError, extract_state_dict, load_checkpoint
from .models import build_model, fuse_for_inference, input_convention
from .models.retinaface import NETWORKS as RETINAFACE_NETWORKS
from .postprocess import postprocess, to_image_pixels


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


def load_detector_model(weights, network: str | None = None, device='cpu') -> tuple[torch.nn.Module, dict]:
    """Our checkpoint (the network is rebuilt from its `arch`), a foreign RetinaFace state dict (Pytorch_Retinaface
    layout, with or without `module.`), for which `network` says which backbone it has, or one of our exported .onnx
    files (an OnnxModel: onnxruntime on the CPU, or its CUDA provider for a CUDA device when installed)."""
    if Path(weights).suffix.lower() == '.onnx':
        from .onnx_model import OnnxModel
        model = OnnxModel(weights, device)
        return model, model.arch
    state = load_checkpoint(weights)
    if isinstance(state, dict) and isinstance(state.get('arch'), dict):
        arch = state['arch']
    elif network:
        if network not in RETINAFACE_NETWORKS:
            raise CheckpointError(f'unknown RetinaFace network {network!r} (use {" or ".join(RETINAFACE_NETWORKS)})')
        arch = {'name': 'retinaface', 'network': network}
    else:
        raise CheckpointError(f'{weights}: no "arch" inside (not one of our checkpoints); for a Pytorch_Retinaface '
                              f'state dict say which backbone with --network {"|".join(RETINAFACE_NETWORKS)}')
    model = build_model(arch)
    weights_dict = extract_state_dict(state)
    missing, unexpected = model.load_state_dict(weights_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f'{weights}: does not fit {arch}: {len(missing)} missing keys (e.g. {missing[:3]}), '
                              f'{len(unexpected)} unexpected (e.g. {unexpected[:3]})')
    return model.to(device).eval(), arch


class FaceDetector:
    """`detector(list of BGR uint8 images) -> list of {'boxes' (N,4) xyxy, 'scores' (N,), 'landmarks' (N,5,2)}` in
    each image's own pixels; `detector.times` holds the last call's stage times in ms. Images of different sizes
    are padded (with the colour the network maps to zero, `input_convention`) to one batch, so a folder runs in
    batches; an image alone keeps its own size, as the reference runs it (the released CenterFace: stretched to sides
    that are multiples of 32, as its authors run it). `pre_nms_top_k` / `keep_top_k` of None (or 0): no cap (the
    reference's WIDER FACE evaluation); the defaults are its demo's caps."""

    def __init__(self, model, arch: dict, device, *, conf_thres=0.02, nms_thres=0.4, pre_nms_top_k=5000,
                 keep_top_k=750, max_size=None, test_size=None, pad_multiple=1, fuse=True, channels_last=None):
        self.model, self.device = ready_for_inference(model, device, fuse=fuse, channels_last=channels_last)
        self.arch = arch
        self.convention = input_convention(arch)
        self.conf_thres, self.nms_thres = conf_thres, nms_thres
        self.pre_nms_top_k, self.keep_top_k = pre_nms_top_k or None, keep_top_k or None  # 0 or None: no cap
        self.max_size, self.test_size, self.pad_multiple = max_size, test_size, pad_multiple
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
        start = time.perf_counter()
        batch, scales = self.prepare(images)
        batch = batch.to(self.device, non_blocking=True)
        synchronize(self.device)
        prepared = time.perf_counter()
        outputs = self.model(batch)
        synchronize(self.device)
        forwarded = time.perf_counter()
        boxes, scores, landmarks = self.decode(outputs, batch.shape[-2:], self.pre_nms_top_k)
        boxes, landmarks = to_image_pixels(boxes, landmarks, scales)  # NMS in each image's own pixels
        if self.border_rule is not None:
            boxes, landmarks = self.border_rule(boxes, landmarks, [im.shape[:2] for im in images])
        results = postprocess(boxes, scores, landmarks, conf_thres=self.conf_thres, nms_thres=self.nms_thres,
                              pre_nms_top_k=self.pre_nms_top_k, keep_top_k=self.keep_top_k)
        results = [{k: v.float().cpu().numpy() for k, v in r.items()} for r in results]
        done = time.perf_counter()
        self.times = {'preprocess': (prepared - start) * 1000, 'forward': (forwarded - prepared) * 1000,
                      'postprocess': (done - forwarded) * 1000}
        return results


def decoder_for(arch: dict):
    """`decode(outputs, input_hw, top_k) -> boxes (B,K,4), scores (B,K), landmarks (B,K,5,2)` in input pixels for
    the network `arch` names: at most the top_k best candidates of each image (None: all)."""
    if arch['name'] == 'retinaface':
        from .anchors import retinaface_priors
        from .postprocess import decode_retinaface
        cache = {}

        def decode(outputs, input_hw, top_k=None):
            key = (tuple(input_hw), outputs[0].device)
            if key not in cache:
                cache[key] = retinaface_priors(*input_hw, device=outputs[0].device)
            return decode_retinaface(*outputs, cache[key], input_hw, top_k)
        return decode
    if arch['name'] == 'centerface':
        from .heatmaps import decode_centerface
        peaks_only = arch.get('variant') != 'released'  # the released decoder takes every cell above the threshold
        return lambda outputs, input_hw, top_k=None: decode_centerface(outputs, input_hw, top_k=top_k,
                                                                       peaks_only=peaks_only)
    raise CheckpointError(f'no decoder for network {arch["name"]!r}')


def border_rule_for(arch: dict):
    """`rule(boxes, landmarks, image_hw) -> boxes, landmarks` applied in image pixels before NMS, or None (boxes
    as decoded): the released CenterFace's decoder moves boxes that cross the left / top edge inside."""
    if arch['name'] == 'centerface' and arch.get('variant') == 'released':
        from .heatmaps import start_inside_image
        return start_inside_image
    return None


def describe_arch(arch: dict) -> str:
    """A network in a few words: 'retinaface mobile0.25', 'centerface released', 'retinanet resnet18 (20 classes)'."""
    words = ' '.join(str(v) for k, v in arch.items() if k in ('name', 'network', 'arch', 'width_mult', 'variant'))
    return words + (f' ({len(arch["classes"])} classes)' if 'classes' in arch else '')


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in {'.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff'}
