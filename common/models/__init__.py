"""Network definitions. Building a model never reads a file or the network by itself; a training script builds its
network in sight (RetinaFace(args.network), CenterFace(...), RetinaNet(...)).

`build_model(arch)` rebuilds any network from the plain `arch` dict stored in every checkpoint (for detect.py,
export.py and --evaluate, which know the network only from the file);
`load_pretrained(model, path)` fills it from one of the weight files people pass around (see there);
`fuse_for_inference(model)` folds BatchNorm into the convs for fast inference.
"""
from pathlib import Path
from typing import NamedTuple

import torch

from ..checkpoint import CheckpointError, extract_state_dict, load_checkpoint
from .backbones import BGR_MEAN, fuse_for_inference  # noqa: F401  (fuse_for_inference re-exported)
from .centerface import RELEASED_SIZE_MULTIPLE, build_centerface
from .recognition import build_recognition
from .retinaface import RetinaFace
from .retinanet import build_extractor, build_retinanet

# arch['name'] -> the network it describes; each network family adds its entry here
BUILDERS = {
    'retinaface': lambda arch: RetinaFace(arch.get('network', 'mobile0.25')),
    'centerface': build_centerface,
    'retinanet': build_retinanet,
    'extractor': build_extractor,  # pretrain_extractor.py's classifier
    'recognition': build_recognition,
}


def build_model(arch: dict) -> torch.nn.Module:
    """A freshly initialised network for `arch`, e.g. {'name': 'retinaface', 'network': 'mobile0.25'}."""
    name = arch.get('name') if isinstance(arch, dict) else None
    if name not in BUILDERS:
        raise ValueError(f'unknown model arch {arch!r}: arch["name"] must be one of {", ".join(sorted(BUILDERS))}')
    return BUILDERS[name](arch)


# the ImageNet classifier part of a backbone checkpoint, which the detector does not have
_CLASSIFIER_PREFIXES = ('fc.', 'avg.', 'classifier.')


def _without_classifier(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}


def _mismatch(state: dict, target: dict) -> tuple[list, list, list]:
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [f'{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}'
                   for k in state if k in target and state[k].shape != target[k].shape]
    return missing, unexpected, wrong_shape


def _describe(missing, unexpected, wrong_shape) -> str:
    parts = []
    for label, keys in (('missing', missing), ('unexpected', unexpected), ('wrong shape', wrong_shape)):
        if keys:
            parts.append(f'{len(keys)} {label} (e.g. {", ".join(keys[:4])})')
    return '; '.join(parts)


def load_pretrained(model: torch.nn.Module, source) -> str:
    """Load weights into `model` and return a one-line report. `source` is a path (loaded with weights_only=True)
    or an already loaded object, any of:
      - our checkpoint ({'model': state dict, 'arch': ...}) or any full state dict of this network, such as a
        Pytorch_Retinaface checkpoint (`module.` prefixes are stripped): every key must fit;
      - a backbone checkpoint such as the ImageNet `mobilenetV1X0.25_pretrain.tar` ({'state_dict': ...}), a
        torchvision resnet50 or mobilenet_v2 state dict: loaded into `model.body` only, its classifier dropped
        (a network whose body keys differ from the checkpoint's says how to map them in `model.body_weights`);
        every backbone key must fit.
    Anything else raises CheckpointError naming a few missing / unexpected keys; nothing is loaded partially."""
    name = str(source) if isinstance(source, (str, Path)) else 'weights'
    obj = load_checkpoint(source) if isinstance(source, (str, Path)) else source
    state = extract_state_dict(obj)
    full = model.state_dict()
    body = getattr(model, 'body', None)
    body_state = body.state_dict() if isinstance(body, torch.nn.Module) else {}

    full_hits = sum(k in full for k in state)
    backbone = getattr(model, 'body_weights', _without_classifier)(state)
    if body_state and sum(k in body_state for k in backbone) > full_hits:
        problems = _mismatch(backbone, body_state)
        if any(problems):
            raise CheckpointError(f'{name}: looks like a backbone checkpoint but does not fit model.body: '
                                  f'{_describe(*problems)}')
        body.load_state_dict(backbone, strict=True)
        dropped = len(state) - len(backbone)
        return (f'{name}: loaded {len(backbone)} backbone tensors into model.body'
                + (f' (dropped {dropped} classifier tensors the detector does not use)' if dropped else '')
                + f'; {len(full) - len(body_state)} detector tensors keep their initialisation')

    problems = _mismatch(state, full)
    if any(problems):
        arch = obj.get('arch') if isinstance(obj, dict) else None
        hint = f' (the file was saved for arch {arch})' if isinstance(arch, dict) else ''
        raise CheckpointError(f'{name}: does not fit the model{hint}: {_describe(*problems)}')
    model.load_state_dict(state, strict=True)
    return f'{name}: loaded all {len(state)} tensors'


class InputConvention(NamedTuple):
    """How images become a network's input."""
    pad_bgr: tuple            # the BGR pixel the network maps to zero: what a batch of different sizes is padded with
    size_multiple: int | None  # each side stretched to a multiple of this (the released CenterFace); None: any size
    pixels: str               # what the network does with its BGR 0..255 input, in words (recorded in .onnx files)


def input_convention(arch: dict) -> InputConvention:
    """The pixel convention of a detector network (stated with each network in its module)."""
    if arch['name'] == 'centerface' and arch.get('variant') == 'released':
        return InputConvention((0, 0, 0), RELEASED_SIZE_MULTIPLE, 'BGR 0..255; inside: to RGB, no mean, no std '
                               '(the released model\'s input); each side stretched to a multiple of 32')
    if arch['name'] == 'centerface':
        return InputConvention(BGR_MEAN, None, 'BGR 0..255; inside: to RGB, minus the ImageNet mean '
                               '(123.7, 116.3, 103.5), divided by its std (58.4, 57.1, 57.4)')
    if arch['name'] == 'retinaface':
        return InputConvention(BGR_MEAN, None, f'BGR 0..255; inside: minus the mean {BGR_MEAN}, no scaling')
    if arch['name'] == 'retinanet':
        return InputConvention(BGR_MEAN, None, 'BGR 0..255; inside: to RGB, minus the ImageNet mean '
                               '(123.7, 116.3, 103.5), divided by its std (58.4, 57.1, 57.4)')
    raise CheckpointError(f'no detector input convention for network {arch["name"]!r}')
