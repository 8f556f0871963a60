"""CenterFace: an anchor-free face detector with five landmarks (CenterNet-style heads at stride 4).

    image (B,3,H,W) BGR 0..255 -> ImageNet normalisation (inside, RGB order for torchvision weights)
    -> MobileNetV2 features at strides 4, 8, 16, 32 (torchvision, its 1280-channel last conv unused)
    -> top-down neck: a 1x1 lateral conv per level to `neck_channels`, upsample + add from the coarser level,
       then one depthwise-separable 3x3 on the finest level (stride `down`, 4 by default)
    -> four heads, each 3x3 conv (head_conv channels) + ReLU + 1x1 conv:
       'hm' 1 (face-centre heatmap logits), 'wh' 2 (log box size), 'off' 2 (sub-cell centre offset), 'lm' 10.

The outputs are raw: `hm` holds logits (sigmoid at decoding and in the loss). What each map means is defined by the
target encoding in common/heatmaps.py. The neck and heads are kept narrow (24 channels by default) because at
stride 4 every channel costs H*W/16 positions: at 256 px the four heads cost about as much as a quarter of the
backbone.

`ReleasedCenterFace` (arch {'name': 'centerface', 'variant': 'released'}) has the layers of the authors' released
model, which they published as ONNX only; `python -m common.models.convert --centerface-onnx` fills it from that file:
    image (B,3,H,W) BGR 0..255, H and W multiples of 32 -> RGB, no mean, no std
    -> MobileNetV2 (ReLU, not ReLU6; each BatchNorm folded into its conv's bias, as the file holds them), features
       at strides 4, 8, 16, 32 (24, 32, 96, 320 channels)
    -> neck: 1x1 conv + ReLU per level to 24 channels; from the coarsest level three times a 2x2 stride-2
       transposed conv + BN + ReLU, added to the next finer level
    -> 3x3 conv + ReLU (24) -> four 1x1 heads 'hm' 1, 'wh' 2, 'off' 2, 'lm' 10.
Its outputs follow our encoding (common/heatmaps.py), not the file's: the converter puts the released heads' (h, w),
(y, x) and landmark (y, x) channels in our (x, y) order, adds the file's half-cell centre offset to the offset bias,
and leaves the heatmap as logits (the file applies the sigmoid inside). So one decoder serves both variants and
`train_centernet.py --pretrained` trains it with our targets.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2

from .backbones import normalize_pixels


HEADS = {'hm': 1, 'wh': 2, 'off': 2, 'lm': 10}
HEATMAP_PRIOR_BIAS = -2.19  # sigmoid(-2.19) ~ 0.1: a low initial face score everywhere (as CenterNet)
# The size head starts at a typical training face (24 px), not at exp(0) * down = 4 px: Adam moves a bias by about
# the LR per step, so from 0 it would take thousands of steps just to reach the sizes of ordinary faces.
SIZE_PRIOR_PIXELS = 24.0
# torchvision's ImageNet statistics, in RGB order, for pixels 0..255
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# MobileNetV2 `features` indices that end each stride (4, 8, 16, 32); index 18 (1x1 conv to 1280) is not used
STAGE_ENDS = {4: 4, 8: 7, 16: 14, 32: 18}

DEFAULT_ARCH = {'name': 'centerface', 'width_mult': 1.0, 'neck_channels': 24, 'head_conv': 24, 'down': 4}


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN + ReLU as one Sequential, so fuse_for_inference can fold the BN."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class UpsampleNeck(nn.Module):
    """FPN-like top-down path: lateral 1x1 convs to `channels`, nearest upsampling to the finer level's exact size
    (odd input sizes work) and add, ending at the finest level with a depthwise-separable 3x3 to mix neighbours."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels) for c in in_channels)
        self.smooth = nn.Sequential(conv_bn_relu(channels, channels, 3, groups=channels),
                                    conv_bn_relu(channels, channels))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: finest first. Returns the finest level, `channels` wide."""
        out = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            out = lateral(feature) + F.interpolate(out, size=feature.shape[-2:], mode='nearest')
        return self.smooth(out)


def head(in_ch: int, mid_ch: int, out_ch: int, bias: float = 0.0) -> nn.Sequential:
    """3x3 conv + ReLU + 1x1 conv (CenterNet's head); the last bias starts at `bias`."""
    last = nn.Conv2d(mid_ch, out_ch, 1)
    nn.init.normal_(last.weight, std=0.01)
    nn.init.constant_(last.bias, bias)
    return nn.Sequential(nn.Conv2d(in_ch, mid_ch, 3, padding=1), nn.ReLU(inplace=True), last)


class CenterFace(nn.Module):
    """`model(images) -> {'hm', 'wh', 'off', 'lm'}`, each (B,C,H/down,W/down); images are BGR 0..255 (uint8 or
    float). `model.body` is the torchvision MobileNetV2 `features` (keys as torchvision's, without the prefix)."""

    def __init__(self, width_mult: float = 1.0, neck_channels: int = 24, head_conv: int = 24, down: int = 4):
        super().__init__()
        if down not in (4, 8):
            raise ValueError(f'CenterFace: down (output stride) must be 4 or 8, got {down}')
        self.down = down
        features = mobilenet_v2(weights=None, width_mult=width_mult).features
        self.body = features[:STAGE_ENDS[32]]  # keeps torchvision's indices 0..17 as keys
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN_RGB), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD_RGB), persistent=False)
        self.taps = [STAGE_ENDS[s] for s in (4, 8, 16, 32) if s >= down]  # where each used level ends
        channels = [self.body[end - 1].out_channels for end in self.taps]
        self.neck = UpsampleNeck(channels, neck_channels)
        prior_bias = {'hm': HEATMAP_PRIOR_BIAS, 'wh': math.log(SIZE_PRIOR_PIXELS / down)}
        self.heads = nn.ModuleDict({name: head(neck_channels, head_conv, out, prior_bias.get(name, 0.0))
                                    for name, out in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict:
        # BGR -> RGB, the order torchvision's ImageNet weights expect (flipping the small uint8 input is cheapest)
        x = normalize_pixels(images.flip(1), self.mean, self.std)
        features, start = [], 0
        for end in self.taps:
            for index in range(start, end):
                x = self.body[index](x)
            features.append(x)
            start = end
        neck = self.neck(features)
        return {name: module(neck) for name, module in self.heads.items()}

    @staticmethod
    def body_weights(state: dict) -> dict:
        """A torchvision MobileNetV2 ImageNet state dict (`features.N...`, `classifier...`; the file torchvision
        downloads as mobilenet_v2-*.pth) in model.body's keys: the classifier and the unused last conv
        (features.18) dropped. common.models.load_pretrained uses it for backbone checkpoints."""
        skipped = (f'features.{STAGE_ENDS[32]}.', 'classifier.')
        return {k[len('features.'):]: v for k, v in state.items()
                if k.startswith('features.') and not k.startswith(skipped)}


# ------------------------------------------------------------------------------------ the released model's layers

RELEASED_ARCH = {'name': 'centerface', 'variant': 'released', 'down': 4}
# MobileNetV2's inverted residual stages: (expansion, output channels, blocks, stride of the first block)
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))
RELEASED_TAPS = (3, 6, 13, 17)  # the body blocks that end strides 4, 8, 16, 32
RELEASED_CHANNELS = 24
RELEASED_SIZE_MULTIPLE = 32     # each 2x2 transposed conv doubles its input: every level must halve exactly


def conv_relu(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv with bias (where the released file folded a BatchNorm) + ReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion + ReLU (absent at expansion 1), depthwise 3x3 + ReLU, linear 1x1
    projection; the input is added back when the shape is unchanged."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        layers = [conv_relu(in_ch, hidden)] if expansion != 1 else []
        layers += [conv_relu(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, out_ch, 1)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class ReleasedCenterFace(nn.Module):
    """`model(images) -> {'hm', 'wh', 'off', 'lm'}` at stride 4 in our encoding, like CenterFace; images are BGR
    0..255 (uint8 or float) with H and W multiples of 32 (common.inference.detectors stretches each image to that, as
    the authors' pipeline does)."""

    def __init__(self):
        super().__init__()
        self.down = 4
        blocks, in_ch = [conv_relu(3, 32, 3, stride=2)], 32
        for expansion, out_ch, count, stride in MOBILENET_V2_STAGES:
            for i in range(count):
                blocks.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expansion))
                in_ch = out_ch
        self.body = nn.Sequential(*blocks)
        width = RELEASED_CHANNELS
        self.lateral = nn.ModuleList(conv_relu(blocks[i].conv[-1].out_channels, width) for i in RELEASED_TAPS)
        self.up = nn.ModuleList(nn.Sequential(nn.ConvTranspose2d(width, width, 2, stride=2, bias=False),
                                              nn.BatchNorm2d(width, eps=1e-3), nn.ReLU(inplace=True))
                                for _ in RELEASED_TAPS[1:])
        self.feature = conv_relu(width, width, 3)
        self.heads = nn.ModuleDict({name: nn.Conv2d(width, out, 1) for name, out in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict:
        height, width = images.shape[-2:]
        if height % RELEASED_SIZE_MULTIPLE or width % RELEASED_SIZE_MULTIPLE:
            raise ValueError(f'released CenterFace: input sides must be multiples of {RELEASED_SIZE_MULTIPLE}, '
                             f'got {height} x {width}')
        x = images.flip(1).to(torch.float32)  # BGR -> RGB, pixels as they are
        features, start = [], 0
        for end in RELEASED_TAPS:
            for index in range(start, end + 1):
                x = self.body[index](x)
            features.append(x)
            start = end + 1
        x = self.lateral[-1](features[-1])
        for level in reversed(range(len(features) - 1)):  # coarse to fine: upsample, add the finer level
            x = self.up[level](x) + self.lateral[level](features[level])
        x = self.feature(x)
        return {name: head(x) for name, head in self.heads.items()}


def build_centerface(arch: dict) -> nn.Module:
    """CenterFace from an arch dict such as DEFAULT_ARCH (missing keys take its values), or the released model's
    layers for arch['variant'] == 'released' (RELEASED_ARCH)."""
    variant = arch.get('variant', 'tutorial')
    if variant == 'released':
        return ReleasedCenterFace()
    if variant != 'tutorial':
        raise ValueError(f'unknown CenterFace variant {variant!r} (use "tutorial" or "released")')
    arch = {**DEFAULT_ARCH, **arch}
    return CenterFace(width_mult=float(arch['width_mult']), neck_channels=int(arch['neck_channels']),
                      head_conv=int(arch['head_conv']), down=int(arch['down']))
