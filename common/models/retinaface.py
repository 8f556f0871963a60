"""RetinaFace: backbone -> FPN -> SSH context modules -> class / box / landmark heads, 2 anchors per cell.

Built in the Pytorch_Retinaface state_dict layout (body.*, fpn.*, ssh1-3.*, ClassHead/BboxHead/LandmarkHead.N.*),
so that project's checkpoints load strictly. The network takes raw BGR pixels 0..255 (uint8 or float, (B,3,H,W))
and subtracts the mean (104, 117, 123) itself, and returns the raw head outputs in train and eval mode alike: loc
(B,P,4), class logits (B,P,2), landmarks (B,P,10) with P = 2 * sum of the three levels' H*W. Priors, decoding and
softmax live in common.anchors, NMS in common.inference.nms.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import (BGR_MEAN, MobileNetV1, ResNet50Body, conv_bn, conv_bn1x1, conv_bn_no_relu,
                        normalize_pixels)

# network name -> (backbone class, FPN/SSH/head width); the FPN inputs are the backbone's out_channels
NETWORKS = {
    'mobile0.25': (MobileNetV1, 64),
    'resnet50': (ResNet50Body, 256),
}
NUM_ANCHORS = 2


def _leaky_for(out_channels: int) -> float:
    """The reference uses LeakyReLU(0.1) in the narrow (mobile) necks and plain ReLU in the wide ones."""
    return 0.1 if out_channels <= 64 else 0.0


class FPN(nn.Module):
    """Top-down feature pyramid over three levels: 1x1 lateral convs, nearest upsampling, 3x3 merge convs."""

    def __init__(self, in_channels_list, out_channels: int):
        super().__init__()
        leaky = _leaky_for(out_channels)
        self.output1 = conv_bn1x1(in_channels_list[0], out_channels, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels_list[1], out_channels, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels_list[2], out_channels, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, features):
        out1, out2, out3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[-2:], mode='nearest'))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[-2:], mode='nearest'))
        return [out1, out2, out3]


class SSH(nn.Module):
    """Single-stage headless context module: parallel 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches with
    out/2, out/4, out/4 channels, concatenated, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        assert out_channels % 4 == 0, 'SSH needs out_channels divisible by 4'
        leaky = _leaky_for(out_channels)
        self.conv3X3 = conv_bn_no_relu(in_channels, out_channels // 2)
        self.conv5X5_1 = conv_bn(in_channels, out_channels // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channels // 4, out_channels // 4)
        self.conv7X7_2 = conv_bn(out_channels // 4, out_channels // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channels // 4, out_channels // 4)

    def forward(self, x):
        branch3 = self.conv3X3(x)
        shared = self.conv5X5_1(x)  # the 5x5 and 7x7 branches share their first 3x3
        branch5 = self.conv5X5_2(shared)
        branch7 = self.conv7x7_3(self.conv7X7_2(shared))
        return F.relu(torch.cat([branch3, branch5, branch7], dim=1))


class Head(nn.Module):
    """1x1 conv predicting `values` numbers per anchor; output (B, H*W*anchors, values) in row-major cell order."""

    def __init__(self, in_channels: int, values: int, num_anchors: int = NUM_ANCHORS):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * values, kernel_size=1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1)  # (B,H,W,A*k): anchors of one cell are adjacent
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    def __init__(self, network: str = 'mobile0.25'):
        super().__init__()
        if network not in NETWORKS:
            raise ValueError(f'unknown RetinaFace network {network!r} (use one of {", ".join(NETWORKS)})')
        backbone_cls, width = NETWORKS[network]
        self.network = network
        self.body = backbone_cls()
        self.fpn = FPN(backbone_cls.out_channels, width)
        self.ssh1, self.ssh2, self.ssh3 = SSH(width, width), SSH(width, width), SSH(width, width)
        self.ClassHead = nn.ModuleList(Head(width, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(width, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(width, 10) for _ in range(3))
        # not persistent: the state dict keeps exactly the reference layout
        self.register_buffer('mean', torch.tensor(BGR_MEAN, dtype=torch.float32), persistent=False)

    def forward(self, images: torch.Tensor):
        """images: (B,3,H,W) BGR 0..255 -> loc (B,P,4), class logits (B,P,2), landmarks (B,P,10)."""
        return self.forward_normalized(normalize_pixels(images, self.mean))

    def forward_normalized(self, x: torch.Tensor):
        """The network on float images that already have the mean subtracted (the reference's input)."""
        features = self.fpn(self.body(x))
        features = [self.ssh1(features[0]), self.ssh2(features[1]), self.ssh3(features[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return loc, conf, landmarks
