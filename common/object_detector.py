"""An object detector ready for inference: a RetinaNet checkpoint (or its .onnx export) + its anchors + per-class
NMS, raw BGR images in, class-labelled boxes in original-image pixels out. The object-detection counterpart of
common/detector.py's FaceDetector, with the same call and `times`, so detect.py and bench/detect_speed.py take
either; the input is what train_retinanet.py's evaluation feeds the network (common.voc.letterbox).
"""
import time

import numpy as np
import torch

from .detector import ready_for_inference, synchronize
from .models.retinanet import anchors_for, decode_retinanet, postprocess_retinanet
from .voc import letterbox


class ObjectDetector:
    """`detector(list of BGR uint8 images) -> list of {'boxes' (N,4) x1y1x2y2, 'scores' (N,), 'labels' (N,)}`, best
    first, in each image's own pixels; `detector.classes` names the labels; `detector.times` holds the last call's
    stage times in ms. Each image is padded to a square and resized to `size` (default: the checkpoint's training
    size), so any batch stacks without further padding. Caps of None: the RetinaNet defaults (1000 candidates per
    image before NMS, 100 objects after)."""

    def __init__(self, model, arch: dict, device, *, conf_thres=0.05, nms_thres=0.5, pre_nms_top_k=1000,
                 keep_top_k=100, size=None, fuse=True):
        self.model, self.device = ready_for_inference(model, device, fuse=fuse)
        self.arch, self.classes = arch, list(arch['classes'])
        self.size = int(size or arch['size'])
        self.anchors = anchors_for(arch, self.size, self.size, device=self.device)
        self.conf_thres, self.nms_thres = conf_thres, nms_thres
        self.pre_nms_top_k, self.keep_top_k = pre_nms_top_k or 1000, keep_top_k or None
        self.times = {}

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[dict]:
        start = time.perf_counter()
        inputs, scales = zip(*(letterbox(image, self.size) for image in images))
        batch = torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).to(self.device, non_blocking=True)
        synchronize(self.device)
        prepared = time.perf_counter()
        cls_logits, box_offsets = self.model(batch)
        synchronize(self.device)
        forwarded = time.perf_counter()
        candidates = decode_retinanet(cls_logits.to(self.device), box_offsets.to(self.device), self.anchors,
                                      self.pre_nms_top_k)
        found = postprocess_retinanet(*candidates, conf_thres=self.conf_thres, nms_thres=self.nms_thres,
                                      keep_top_k=self.keep_top_k, scales=scales,
                                      image_sizes=[image.shape[:2] for image in images])
        results = [{k: v.cpu().numpy() for k, v in f.items()} for f in found]
        done = time.perf_counter()
        self.times = {'preprocess': (prepared - start) * 1000, 'forward': (forwarded - prepared) * 1000,
                      'postprocess': (done - forwarded) * 1000}
        return results
