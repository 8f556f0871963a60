"""A face recognition network ready to embed aligned faces: any recognition file loaded (our checkpoint from
train_recognition.py or common.models.convert, the released MobileFaceNet file as it is, or an .onnx file from
export.py), its input convention taken from the file, so nothing is given twice.

    recognizer = load_recognizer('mobilefacenet.pt', 'cpu')
    crop = crop_face(image, landmarks, recognizer.template, recognizer.size)   # common/align.py
    vectors = recognizer([crop, ...])                                          # (N, D) unit vectors

An embedding is the network's output for the crop plus its output for the mirrored crop, L2-normalised (the
verification protocol of common/evaluation/lfw.py; `flip=False`: the crop's alone).
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, extract_state_dict, load_checkpoint
from ..models import build_model, fuse_for_inference
from ..models.mobilefacenet import RELEASED_ARCH, released_state_dict
from ..models.recognition import INPUTS, FacePixels


def load_recognition_model(weights, device='cpu', arch: dict | None = None) -> tuple[object, dict]:
    """(network in eval mode on `device`, arch) of a recognition file: our checkpoint (rebuilt from its `arch`), the
    released MobileFaceNet ({'epoch', 'net_state_dict'}: RELEASED_ARCH), a bare state dict of the network `arch`
    describes, or an .onnx file from export.py (an OnnxModel, whose graph takes BGR 0..255 crops). Raises
    CheckpointError (one line) for anything else, such as a detector checkpoint."""
    weights = Path(weights)
    if weights.suffix.lower() == '.onnx':
        from .onnx_model import OnnxModel
        model = OnnxModel(weights, device)
        if model.arch.get('name') != 'recognition':
            raise CheckpointError(f'{weights}: an exported {model.arch.get("name")} network, not a recognition model')
        return model, model.arch
    obj = load_checkpoint(weights)
    if isinstance(obj, dict) and isinstance(obj.get('arch'), dict):
        arch = obj['arch']
    elif released_state_dict(obj) is not None:
        arch = dict(RELEASED_ARCH)
    elif arch is None:
        raise CheckpointError(f'{weights}: not a recognition model (no "arch" inside, as train_recognition.py '
                              f'writes, and not the released MobileFaceNet layout)')
    if arch.get('name') != 'recognition':
        raise CheckpointError(f'{weights}: a {arch.get("name")} checkpoint, not a recognition model')
    model = build_model(arch)
    try:
        model.load_state_dict(extract_state_dict(obj), strict=True)
    except RuntimeError as e:  # the first line names the network, the second what did not fit
        lines = str(e).strip().splitlines()
        raise CheckpointError(f'{weights}: does not fit {arch}: {lines[min(1, len(lines) - 1)].strip()}') from None
    return model.to(device).eval(), arch


def is_recognition_file(weights) -> bool:
    """Whether the file holds a recognition network (ours, its export, or the released MobileFaceNet); False for
    anything else, unreadable files too (whose loader then says what is wrong)."""
    weights = Path(weights)
    try:
        if weights.suffix.lower() == '.onnx':
            from .onnx_model import read_metadata
            return read_metadata(weights)['facekit_arch'].get('name') == 'recognition'
        obj = load_checkpoint(weights)
    except CheckpointError:
        return False
    arch = obj.get('arch') if isinstance(obj, dict) else None
    return (isinstance(arch, dict) and arch.get('name') == 'recognition') or released_state_dict(obj) is not None


class Recognizer:
    """`recognizer(list of aligned BGR uint8 crops, each (H, W, 3) at `size`) -> (N, D) float32 unit vectors`.
    `template` and `size` (width, height) say how to align the crops for this network (common/align.py)."""

    def __init__(self, model, arch: dict, device, flip: bool = True):
        face = INPUTS[arch['input']]
        self.arch, self.flip, self.device = arch, flip, torch.device(device)
        self.template, self.size = face.template, (face.width, face.height)
        self.dimension = arch.get('embedding_size', 512)
        if isinstance(model, torch.nn.Module):  # ours: pixels converted inside, BatchNorm folded
            self.model = fuse_for_inference(FacePixels(model, arch['input'])).to(self.device)
        else:  # an OnnxModel: the conversion is in its graph; onnxruntime takes and gives CPU tensors
            self.model, self.device = model, torch.device('cpu')

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.model(batch)
        return (out[0] if isinstance(out, (tuple, list)) else out).float()

    @torch.inference_mode()
    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        if not len(crops):
            return np.zeros((0, self.dimension), np.float32)
        for crop in crops:
            if crop.shape[:2] != self.size[::-1]:
                raise ValueError(f'crop of {crop.shape[1]} x {crop.shape[0]} px; this network takes '
                                 f'{self.size[0]} x {self.size[1]} ({self.template} template)')
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(self.device, torch.float32)
        vectors = self.forward(batch)
        if self.flip:
            vectors = vectors + self.forward(batch.flip(3))
        return F.normalize(vectors, dim=1).cpu().numpy()


def load_recognizer(weights, device='cpu', flip: bool = True) -> Recognizer:
    model, arch = load_recognition_model(weights, device)
    return Recognizer(model, arch, device, flip)
