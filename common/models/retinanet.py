"""RetinaNet: a ResNet "extractor" -> FPN P3-P7 -> class and box towers shared by all levels, 9 anchors per cell.
Its anchors and decoder are in common/anchors.py, its per-class NMS in common/inference/nms.py.

The Extractor is torchvision's ResNet (built with weights=None: nothing is downloaded) under torchvision's own
attribute names, so a torchvision state dict (resnet18/34/50/101-*.pth) and a pretrain_extractor.py checkpoint
load into it as they are. `forward(x, classify=True)` gives class logits (when built with `num_classes`), else
the C3, C4, C5 feature maps (strides 8, 16, 32). Its input is an RGB float image normalised with ImageNet's mean
and std; `RetinaNet` takes raw BGR pixels 0..255 (uint8 or float, (B,3,H,W)) and normalises them itself.

FPN (the RetinaNet paper's): 1x1 laterals on C3-C5, nearest-upsampled top-down sums, 3x3 output convs -> P3-P5;
P6 = 3x3 stride-2 conv on C5, P7 = 3x3 stride-2 conv on ReLU(P6). Towers: four 3x3 convs (+ GroupNorm(32) with
`group_norm`) + ReLU, then a 3x3 conv to anchors x classes (sigmoid logits) or anchors x 4 box offsets. Conv weights
start at N(0, 0.01), the class output's bias at -log((1 - pi) / pi) with pi = 0.01, so every anchor starts as
background with probability 0.99 and the focal loss is not swamped by the background at the first step.

Outputs: class logits (B,A,K) and box offsets (B,A,4) with A = 9 x the cells of P3..P7, ordered level, row,
column, anchor (scale-major: scales x ratios), as common.anchors.retinanet_anchors lists them.
"""
import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm  # BatchNorm2d and SyncBatchNorm (DDP)

from .backbones import normalize_pixels

# arch -> C3, C4, C5 channels
EXTRACTORS = {'resnet18': (128, 256, 512), 'resnet34': (128, 256, 512), 'resnet50': (512, 1024, 2048),
              'resnet101': (512, 1024, 2048)}
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as torchvision's weights expect
PRIOR_PROBABILITY = 0.01


def default_fpn_channels(arch: str) -> int:
    """The paper's 256 on the bottleneck ResNets (C5 2048 wide); 128 on resnet18/34 (C5 512 wide), where 256-wide
    towers at P3 would cost more than the whole extractor (measured in README: issue 10 section)."""
    return 256 if EXTRACTORS[arch][2] >= 2048 else 128


class Extractor(nn.Module):
    """torchvision ResNet `arch` (resnet18|34|50|101). With `num_classes` it keeps avgpool + fc (pretraining);
    without, it has no classifier (a detector's extractor: no unused parameters under DDP)."""

    def __init__(self, arch: str = 'resnet50', num_classes: int | None = None):
        super().__init__()
        if arch not in EXTRACTORS:
            raise ValueError(f'unknown extractor {arch!r} (use one of {", ".join(EXTRACTORS)})')
        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes or 1000)
        for name in ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4'):
            setattr(self, name, getattr(net, name))
        if num_classes:
            self.avgpool, self.fc = net.avgpool, net.fc
        self.arch, self.num_classes = arch, num_classes
        self.out_channels = EXTRACTORS[arch]
        self.bn_frozen = False

    def forward(self, x, classify: bool = True):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        if not classify:
            return [c3, c4, c5]
        if not self.num_classes:
            raise RuntimeError('this Extractor was built without a classifier (num_classes); use classify=False')
        return self.fc(torch.flatten(self.avgpool(c5), 1))

    def freeze_bn(self):
        """BatchNorm fixed: running statistics no longer updated (eval mode kept through model.train()) and its
        affine parameters not trained. For small per-device batches on pretrained weights."""
        self.bn_frozen = True
        for module in self.modules():
            if isinstance(module, _BatchNorm):
                module.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.bn_frozen:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self


class FPN(nn.Module):
    """C3, C4, C5 -> P3 .. P7, all `width` channels."""

    def __init__(self, in_channels, width: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(in_channels[-1], width, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(width, width, 3, stride=2, padding=1)

    def forward(self, features):
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down: each level adds the coarser one, upsampled
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode='nearest')
        pyramid = [conv(x) for conv, x in zip(self.output, laterals)]
        p6 = self.p6(features[-1])
        return pyramid + [p6, self.p7(F.relu(p6))]


class Tower(nn.Module):
    """Four 3x3 conv (+ GroupNorm) + ReLU layers and a 3x3 output conv with `values` numbers per anchor, shared by
    all levels; output (B, sum of H*W*anchors, values)."""

    def __init__(self, width: int, values: int, num_anchors: int, group_norm: bool, depth: int = 4):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1)]
            if group_norm:
                layers += [nn.GroupNorm(math.gcd(32, width), width)]
            layers += [nn.ReLU(inplace=True)]
        self.tower = nn.Sequential(*layers)
        self.output = nn.Conv2d(width, num_anchors * values, 3, padding=1)
        self.values = values
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, levels):
        outputs = []
        for x in levels:
            out = self.output(self.tower(x)).permute(0, 2, 3, 1)  # (B,H,W,anchors*values): a cell's anchors adjacent
            outputs.append(out.reshape(out.shape[0], -1, self.values))
        return torch.cat(outputs, dim=1)


class RetinaNet(nn.Module):
    """`RetinaNet(num_classes, arch)`; forward(images BGR 0..255 (B,3,H,W)) -> class logits (B,A,K), box offsets
    (B,A,4). `body` is the extractor, where common.models.load_pretrained puts backbone weights."""

    def __init__(self, num_classes: int, arch: str = 'resnet50', fpn_channels: int | None = None,
                 group_norm: bool = True, num_anchors: int = 9, prior: float = PRIOR_PROBABILITY):
        super().__init__()
        width = fpn_channels or default_fpn_channels(arch)
        self.extractor = Extractor(arch)
        self.fpn = FPN(self.extractor.out_channels, width)
        self.classifier = Tower(width, num_classes, num_anchors, group_norm)
        self.regressor = Tower(width, 4, num_anchors, group_norm)
        nn.init.constant_(self.classifier.output.bias, -math.log((1 - prior) / prior))
        self.num_classes = num_classes
        # BGR order: the channels are reversed to RGB after normalising
        self.register_buffer('mean', torch.tensor(RGB_MEAN[::-1]) * 255, persistent=False)
        self.register_buffer('std', torch.tensor(RGB_STD[::-1]) * 255, persistent=False)

    @property
    def body(self) -> Extractor:
        return self.extractor

    def freeze_bn(self):
        self.extractor.freeze_bn()
        return self

    def forward(self, images: torch.Tensor):
        x = normalize_pixels(images, self.mean, self.std).flip(1)  # BGR -> RGB
        levels = self.fpn(self.extractor(x, classify=False))
        return self.classifier(levels), self.regressor(levels)


def build_retinanet(arch: dict) -> RetinaNet:
    """From a checkpoint's arch dict: {'name': 'retinanet', 'backbone', 'num_classes', 'fpn_channels', 'group_norm',
    anchor settings ...} (checkpoints of earlier versions name the backbone 'arch')."""
    return RetinaNet(arch['num_classes'], arch.get('backbone', arch.get('arch')), arch.get('fpn_channels'),
                     arch.get('group_norm', True), len(arch['anchor_scales']) * len(arch['anchor_ratios']))


def build_extractor(arch: dict) -> Extractor:
    """A pretrain_extractor.py checkpoint's network: {'name': 'extractor', 'backbone', 'num_classes'}."""
    return Extractor(arch.get('backbone', arch.get('arch', 'resnet50')), arch.get('num_classes'))
