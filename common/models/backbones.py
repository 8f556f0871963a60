"""Backbones that return multi-scale feature maps, the conv+BN blocks they are made of, and BatchNorm folding.

Block and attribute names follow the Pytorch_Retinaface layout (`stage1.0.0.weight`, `layer2.0.conv1.weight`, ...)
so checkpoints in that layout load as they are:

- conv_bn / conv_bn_no_relu / conv_bn1x1 / conv_dw: nn.Sequential(conv, BN[, LeakyReLU]) (indices 0, 1, 2, ...).
- MobileNetV1x0.25: stage1 (stride 8, 64 ch), stage2 (stride 16, 128 ch), stage3 (stride 32, 256 ch); the ImageNet
  classifier variant adds avg pool + fc(256, 1000).
- ResNet50: torchvision's resnet50 (built with weights=None: nothing is downloaded) minus avgpool/fc; returns
  layer2/3/4 (strides 8/16/32; 512, 1024, 2048 channels).

`BGR_MEAN` is the pixel the detectors map to zero (RetinaFace subtracts it; the padding of every detection input and
augmentation uses it); `normalize_pixels` turns raw pixels into the network's input; `fuse_for_inference(model)`
folds every BatchNorm into the conv before it, for faster CPU inference.
"""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

BGR_MEAN = (104, 117, 123)  # Pytorch_Retinaface's mean, about ImageNet's in BGR order


def normalize_pixels(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
    """(B,3,H,W) pixels, uint8 or float -> float32 (images - mean) / std with per-channel (3,) mean and std, in the
    input's memory layout. Channels-last memory (a view of OpenCV's HWC images, or a channels_last batch) is
    normalised as rows of W*3 values: a per-channel broadcast over it has an inner loop of 3 elements and measured
    5x slower there (7 ms for a 1280 x 886 image on the CPU), as much as a tenth of a small detector's forward."""
    batch, channels, height, width = images.shape
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        rows = images.permute(0, 2, 3, 1).to(torch.float32, copy=True).view(batch, height, width * channels)
        rows.sub_(mean.repeat(width))
        if std is not None:
            rows.div_(std.repeat(width))
        return rows.view(batch, height, width, channels).permute(0, 3, 1, 2)
    out = images.to(torch.float32) - mean.view(1, -1, 1, 1)
    return out if std is None else out / std.view(1, -1, 1, 1)


def conv_bn(in_ch: int, out_ch: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    """3x3 conv (pad 1, no bias), BN, LeakyReLU(leaky); leaky 0 is a plain ReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.LeakyReLU(negative_slope=leaky, inplace=True))


def conv_bn_no_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (pad 1, no bias), BN; the activation comes after a concatenation (SSH)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch))


def conv_bn1x1(in_ch: int, out_ch: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    """1x1 conv (no bias), BN, LeakyReLU(leaky)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False), nn.BatchNorm2d(out_ch),
                         nn.LeakyReLU(negative_slope=leaky, inplace=True))


def conv_dw(in_ch: int, out_ch: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise-separable block: depthwise 3x3 (groups=in_ch), BN, LeakyReLU, then pointwise 1x1, BN, LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False), nn.BatchNorm2d(in_ch),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False), nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 with width 0.25. forward returns [stage1, stage2, stage3] features (strides 8, 16, 32), or the
    1000-class logits when built with `classifier=True` (the layout of the ImageNet checkpoint)."""

    out_channels = (64, 128, 256)

    def __init__(self, classifier: bool = False, num_classes: int = 1000):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1), conv_dw(16, 32, 2), conv_dw(32, 32, 1), conv_dw(32, 64, 2), conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))
        self.classifier = classifier
        if classifier:
            self.avg = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        if self.classifier:
            return self.fc(torch.flatten(self.avg(c3), 1))
        return [c1, c2, c3]


class ResNet50Body(nn.Module):
    """torchvision resnet50 without avgpool/fc; forward returns [layer2, layer3, layer4] (strides 8, 16, 32).
    The attribute names are torchvision's, so `body.layer2...` keys match Pytorch_Retinaface's resnet50 layout."""

    out_channels = (512, 1024, 2048)

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50
        net = resnet50(weights=None)  # never downloads: pretrained weights come through load_pretrained
        for name in ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4'):
            setattr(self, name, getattr(net, name))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c2, c3, c4]


# ---------------------------------------------------------------------------------------------- BatchNorm folding

def _conv_bn_pairs(module: nn.Module):
    """(parent, conv name, bn name) for every BatchNorm2d that directly follows a Conv2d in the data flow:
    adjacent children of an nn.Sequential, and the `convK` / `bnK` attribute pairs of torchvision's ResNet blocks
    and stem (where forward runs bnK right after convK)."""
    for parent in module.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d):
                    yield parent, a, b
        else:
            for name, child in children.items():
                if isinstance(child, nn.Conv2d) and name.startswith('conv'):
                    bn_name = 'bn' + name[len('conv'):]
                    if isinstance(children.get(bn_name), nn.BatchNorm2d):
                        yield parent, name, bn_name


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every BatchNorm folded into the conv before it (the BN becomes Identity).
    Same outputs up to float rounding, fewer passes over memory: for CPU inference. Not for training or saving
    (its state dict no longer has the BN keys)."""
    fused = copy.deepcopy(model).eval()
    for parent, conv_name, bn_name in list(_conv_bn_pairs(fused)):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())
    return fused
