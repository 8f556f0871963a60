"""Face recognition networks: embedding backbones and the margin heads that train them.

Backbones map an aligned face to an embedding (B, embedding_size), 512-d by default:

- FaceMobileNet: the MobileFaceNet layout (a strided 3x3 conv, a depthwise conv, inverted-residual stages with
  PReLU, a 1x1 conv to 512 channels, a linear depthwise "global" conv, a linear layer, BatchNorm) for the recognition
  tutorial's 1x128x128 gray input: the stages end at 8x8, the 7x7 depthwise conv leaves 2x2, so the linear layer
  takes 2048 values (about 2.0M parameters); on 3x112x112 input the map ends at 7x7 and the conv is global.
- MobileFaceNet (mobilefacenet.py): the published network in its PyTorch release's layout (its checkpoint loads as it
  is), 128-d, on 112 x 96 SphereFace-aligned RGB faces (`rgb112x96`), or any input below.
- IRSEResNet: insightface's IR-SE ResNet (pre-activation "improved residual" blocks with squeeze-and-excitation,
  stride 1 stem, a stride 2 at the start of each of 4 stages), with 18 / 34 / 50 / 100 layers; the head is
  BatchNorm, dropout, a linear layer from 512 x 8 x 8 (7 x 7 on 112 px) and BatchNorm.

Inputs (INPUTS): how an aligned face becomes the network's input, recorded in every checkpoint's arch['input'], so
verification, embedding export, detect.py's gallery and the ONNX export take it from the file. `FacePixels` puts the
conversion in front of a network, for BGR 0..255 crops (detect.py, the .onnx file).

Margin heads hold one weight vector per training identity and turn (embeddings, labels) into logits for a softmax
loss: ArcFace s * cos(theta + m) for the true class (s 30, m 0.5), CosFace s * (cos(theta) - m) (s 30, m 0.4); the
other classes get s * cos(theta). Only the backbone is needed after training: `build_recognition(arch)` rebuilds it
from the checkpoint's arch dict.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .mobilefacenet import MobileFaceNet


class FaceInput(NamedTuple):
    """An input convention: crops of width x height aligned to `template` (common/align.py), `channels` 1 (gray)
    or 3 (RGB), pixel p (0..255) entering the network as (p - mean) / std."""
    channels: int
    height: int
    width: int
    mean: float
    std: float
    template: str


INPUTS = {
    'gray128': FaceInput(1, 128, 128, 127.5, 127.5, 'arcface'),    # the recognition tutorial's gray 128 px crops
    'rgb112': FaceInput(3, 112, 112, 127.5, 127.5, 'arcface'),     # insightface's aligned faces (.rec, .bin)
    'rgb112x96': FaceInput(3, 112, 96, 127.5, 128.0, 'sphereface'),  # the released MobileFaceNet's
}
BACKBONES = ('fmobile', 'resnet', 'mobilefacenet')
RESNET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def conv_bn_prelu(in_ch, out_ch, kernel=3, stride=1, groups=1, activation=True) -> nn.Sequential:
    """Conv (no bias, 'same' padding), BN, and PReLU unless activation is False (a linear bottleneck)."""
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch)]
    if activation:
        layers.append(nn.PReLU(out_ch))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise (stride), 1x1 linear projection; the input is added back when shapes allow."""

    def __init__(self, in_ch, out_ch, expanded, stride=1):
        super().__init__()
        self.residual = in_ch == out_ch and stride == 1
        self.block = nn.Sequential(conv_bn_prelu(in_ch, expanded, 1),
                                   conv_bn_prelu(expanded, expanded, 3, stride, groups=expanded),
                                   conv_bn_prelu(expanded, out_ch, 1, activation=False))

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


def _stage(in_ch, out_ch, expanded_first, expanded, repeats) -> nn.Sequential:
    """A stride-2 block, then `repeats` residual blocks at out_ch."""
    return nn.Sequential(InvertedResidual(in_ch, out_ch, expanded_first, 2),
                         *[InvertedResidual(out_ch, out_ch, expanded) for _ in range(repeats)])


class FaceMobileNet(nn.Module):
    """(B, C, S, S) aligned faces, S = 128 (gray) or 112 (RGB) -> (B, embedding_size) embeddings."""

    def __init__(self, embedding_size=512, in_channels=1, input_size=128):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_prelu(in_channels, 64, 3, 2), conv_bn_prelu(64, 64, 3, groups=64))
        self.stages = nn.Sequential(_stage(64, 64, 128, 128, 4),      # 1/4
                                    _stage(64, 128, 256, 256, 6),     # 1/8
                                    _stage(128, 128, 512, 256, 2))    # 1/16
        self.expand = conv_bn_prelu(128, 512, 1)
        side = input_size // 16
        kernel = min(7, side)
        # linear depthwise conv: one learnt spatial weighting per channel instead of average pooling
        self.gdc = nn.Sequential(nn.Conv2d(512, 512, kernel, groups=512, bias=False), nn.BatchNorm2d(512))
        self.linear = nn.Linear(512 * (side - kernel + 1) ** 2, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x):
        x = self.gdc(self.expand(self.stages(self.stem(x))))
        return self.bn(self.linear(x.flatten(1)))


class SqueezeExcite(nn.Module):
    """Channel attention: global average -> 1x1 conv down (reduction) -> ReLU -> 1x1 conv up -> sigmoid gate."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels // reduction, 1, bias=False),
                                  nn.ReLU(inplace=True), nn.Conv2d(channels // reduction, channels, 1, bias=False),
                                  nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


class IRSEBlock(nn.Module):
    """BN, 3x3 conv, BN, PReLU, 3x3 conv (stride), BN, squeeze-excite; plus the shortcut (strided 1x1 conv + BN
    when the width changes, else a subsampling of the input)."""

    def __init__(self, in_ch, out_ch, stride):
        super().__init__()
        self.residual = nn.Sequential(nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(out_ch), nn.PReLU(out_ch),
                                      nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                                      SqueezeExcite(out_ch))
        if in_ch == out_ch:
            self.shortcut = nn.MaxPool2d(1, stride) if stride > 1 else nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        return self.shortcut(x) + self.residual(x)


class IRSEResNet(nn.Module):
    """(B, C, S, S) aligned faces -> (B, embedding_size); depth 18, 34, 50 (the tutorial's) or 100."""

    def __init__(self, embedding_size=512, in_channels=1, input_size=128, depth=50, drop_ratio=0.5):
        super().__init__()
        if depth not in RESNET_STAGES:
            raise ValueError(f'IR-SE ResNet depth must be one of {sorted(RESNET_STAGES)}, got {depth}')
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        blocks, in_ch = [], 64
        for out_ch, repeats in zip((64, 128, 256, 512), RESNET_STAGES[depth]):
            blocks += [IRSEBlock(in_ch, out_ch, 2)] + [IRSEBlock(out_ch, out_ch, 1) for _ in range(repeats - 1)]
            in_ch = out_ch
        self.body = nn.Sequential(*blocks)
        side = input_size // 16
        self.output = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), nn.Flatten(),
                                    nn.Linear(512 * side * side, embedding_size), nn.BatchNorm1d(embedding_size))

    def forward(self, x):
        return self.output(self.body(self.stem(x)))


def build_recognition(arch: dict) -> nn.Module:
    """The backbone an arch dict describes: {'name': 'recognition', 'backbone': 'fmobile' | 'resnet' |
    'mobilefacenet', 'input': 'gray128' | 'rgb112' | 'rgb112x96', 'embedding_size': 512, 'resnet_depth': 50,
    'drop_ratio': 0.5}. FaceMobileNet and the ResNet take square inputs."""
    backbone, input_name = arch.get('backbone', 'fmobile'), arch.get('input', 'gray128')
    if input_name not in INPUTS:
        raise ValueError(f'unknown recognition input {input_name!r} (use {", ".join(INPUTS)})')
    face = INPUTS[input_name]
    size = arch.get('embedding_size', 512)
    if backbone == 'mobilefacenet':
        return MobileFaceNet(size, face.channels, (face.height, face.width))
    if backbone in ('fmobile', 'resnet') and face.height != face.width:
        raise ValueError(f'recognition backbone {backbone!r} takes square inputs, not {input_name!r} (use '
                         f'{", ".join(k for k, v in INPUTS.items() if v.height == v.width)})')
    if backbone == 'fmobile':
        return FaceMobileNet(size, face.channels, face.height)
    if backbone == 'resnet':
        return IRSEResNet(size, face.channels, face.height, arch.get('resnet_depth', 50), arch.get('drop_ratio', 0.5))
    raise ValueError(f'unknown recognition backbone {backbone!r} (use {", ".join(BACKBONES)})')


class FacePixels(nn.Module):
    """(B, 3, H, W) aligned BGR crops, 0..255 -> the embedding network's output: the input convention `input_name`
    applied in front of the network (gray as PIL computes it, 0.299 R + 0.587 G + 0.114 B, without its rounding)."""

    def __init__(self, net: nn.Module, input_name: str):
        super().__init__()
        face = INPUTS[input_name]
        self.net, self.gray, self.mean, self.std = net, face.channels == 1, face.mean, face.std

    def forward(self, bgr):
        bgr = bgr.float()
        if self.gray:
            pixels = 0.114 * bgr[:, 0:1] + 0.587 * bgr[:, 1:2] + 0.299 * bgr[:, 2:3]
        else:
            pixels = bgr.flip(1)  # to RGB
        return self.net((pixels - self.mean) / self.std)


# ---------------------------------------------------------------------------------------------------- margin heads


class MarginHead(nn.Module):
    """One unit-length weight vector per identity; `cosine(embeddings)` is (B, classes) cos(theta). Computed in
    float32 whatever the autocast dtype: the margin arithmetic near cos = +-1 needs it."""

    def __init__(self, embedding_size, num_classes, s=30.0, m=0.5):
        super().__init__()
        self.s, self.m = s, m
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings):
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    def forward(self, embeddings, labels):
        """(B, classes) logits: s * cos(theta) for every class, the true class's with the margin."""
        cosine = self.cosine(embeddings)
        target = cosine.gather(1, labels[:, None])
        return self.s * cosine.scatter(1, labels[:, None], self.with_margin(target))

    def with_margin(self, cos_theta):
        raise NotImplementedError


class ArcFace(MarginHead):
    """cos(theta + m) for the true class: an additive angular margin. theta + m must stay below pi for the logit to
    keep falling as theta grows; past theta = pi - m (cos(theta) <= cos(pi - m)) the logit continues as the
    CosFace-like cos(theta) - m sin(m) instead. easy_margin applies the margin only where cos(theta) > 0."""

    def __init__(self, embedding_size, num_classes, s=30.0, m=0.5, easy_margin=False):
        super().__init__(embedding_size, num_classes, s, m)
        self.easy_margin = easy_margin
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.threshold = math.cos(math.pi - m)
        self.fallback_shift = math.sin(math.pi - m) * m

    def with_margin(self, cos_theta):
        sin_theta = (1 - cos_theta.square()).clamp(1e-12, 1).sqrt()  # > 0: the gradient of sqrt stays finite
        phi = cos_theta * self.cos_m - sin_theta * self.sin_m
        if self.easy_margin:
            return torch.where(cos_theta > 0, phi, cos_theta)
        return torch.where(cos_theta > self.threshold, phi, cos_theta - self.fallback_shift)


class CosFace(MarginHead):
    """cos(theta) - m for the true class: an additive cosine margin."""

    def __init__(self, embedding_size, num_classes, s=30.0, m=0.4):
        super().__init__(embedding_size, num_classes, s, m)

    def with_margin(self, cos_theta):
        return cos_theta - self.m


HEADS = {'arcface': ArcFace, 'cosface': CosFace}
