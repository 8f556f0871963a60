"""Any detector file -> a detector ready to run: our checkpoints (the network rebuilt from their `arch`), a
Pytorch_Retinaface state dict (the caller says which backbone), or an .onnx file from export.py (run by onnxruntime).

    detector = build_detector('runs/retinaface/best.pt', None, 'cpu', conf_thres=0.5)   # FaceDetector
    results = detector([cv2.imread('group.jpg')])                                         # boxes, scores, landmarks

detect.py, export.py, the benchmarks and the training scripts' --evaluate load their weights here.
"""
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, extract_state_dict, load_checkpoint
from ..models import build_model
from ..models.retinaface import NETWORKS as RETINAFACE_NETWORKS
from .detectors import FaceDetector, ObjectDetector

FACE_DETECTORS = ('retinaface', 'centerface')
OBJECT_DETECTORS = ('retinanet',)

# the defaults of each kind of detector: the reference demo's for faces, the RetinaNet paper's for objects
DEFAULT_CAPS = {'faces': {'nms_thres': 0.4, 'pre_nms_top_k': 5000, 'keep_top_k': 750},
                'objects': {'nms_thres': 0.5, 'pre_nms_top_k': 1000, 'keep_top_k': 100}}


def load_detector_model(weights, network: str | None = None, device='cpu') -> tuple[torch.nn.Module, dict]:
    """(network in eval mode on `device`, arch) of a detector file: our checkpoint (the network is rebuilt from its
    `arch`), a foreign RetinaFace state dict (Pytorch_Retinaface layout, with or without `module.`), for which
    `network` says which backbone it has, or one of our exported .onnx files (an OnnxModel: onnxruntime on the CPU,
    or its CUDA provider for a CUDA device when installed). Raises CheckpointError (one line) for a file that is no
    detector: unreadable, a recognition or classification checkpoint, weights that do not fit their arch."""
    if Path(weights).suffix.lower() == '.onnx':
        from .onnx_model import OnnxModel  # onnxruntime is imported only for .onnx files
        model = OnnxModel(weights, device)
        if model.arch.get('name') not in FACE_DETECTORS + OBJECT_DETECTORS:
            raise CheckpointError(f'{weights}: an exported {model.arch.get("name")} network, not a detector')
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
    if arch.get('name') not in FACE_DETECTORS + OBJECT_DETECTORS:
        raise CheckpointError(f'{weights}: a {arch.get("name")} checkpoint, not a detector (RetinaFace, CenterFace '
                              f'or RetinaNet)')
    model = build_model(arch)
    missing, unexpected = model.load_state_dict(extract_state_dict(state), strict=False)
    if missing or unexpected:
        raise CheckpointError(f'{weights}: does not fit {arch}: {len(missing)} missing keys (e.g. {missing[:3]}), '
                              f'{len(unexpected)} unexpected (e.g. {unexpected[:3]})')
    return model.to(device).eval(), arch


def build_detector(weights, network, device, *, conf_thres=0.5, nms_thres=None, pre_nms_top_k=None, keep_top_k=None,
                   max_size=None) -> FaceDetector | ObjectDetector:
    """Load the weights into a FaceDetector (each image at its own size, `max_size` caps the long side) or, for
    RetinaNet, an ObjectDetector (each image padded and resized to its square input, `max_size` its side): BatchNorm
    folded, channels_last on the CPU. Settings left at None take DEFAULT_CAPS for that kind."""
    model, arch = load_detector_model(weights, network, device)
    kind = 'objects' if arch['name'] in OBJECT_DETECTORS else 'faces'
    given = {'nms_thres': nms_thres, 'pre_nms_top_k': pre_nms_top_k, 'keep_top_k': keep_top_k}
    settings = {k: v if v is not None else DEFAULT_CAPS[kind][k] for k, v in given.items()}
    if kind == 'objects':
        return ObjectDetector(model, arch, device, conf_thres=conf_thres, size=max_size, **settings)
    return FaceDetector(model, arch, device, conf_thres=conf_thres, max_size=max_size, **settings)


def describe_arch(arch: dict) -> str:
    """A network in a few words: 'retinaface mobile0.25', 'centerface released', 'retinanet resnet18 (20 classes)'."""
    words = ' '.join(str(v) for k, v in arch.items() if k in ('name', 'network', 'backbone', 'width_mult', 'variant'))
    return words + (f' ({len(arch["classes"])} classes)' if 'classes' in arch else '')
