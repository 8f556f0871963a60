"""MobileFaceNet (Chen et al. 2018) laid out as its widely used PyTorch release is, so that release's checkpoint
(`mobilefacenet_068.ckpt`: {'epoch': 68, 'net_state_dict'}, 999,552 parameters, trained on CASIA-WebFace) loads into
it as it is, key for key.

(B, 3, 112, 96) RGB faces, SphereFace-aligned, pixels p as (p - 127.5) / 128 -> (B, 128) embeddings:
    conv1      3x3 conv stride 2 to 64 channels, BN, PReLU                       56 x 48
    dw_conv1   3x3 depthwise conv, BN, PReLU
    blocks     15 inverted residuals (expansion t, width c, repeats n, first stride s):
               (2, 64, 5, 2) (4, 128, 1, 2) (2, 128, 6, 1) (4, 128, 1, 2) (2, 128, 2, 1)       7 x 6
    conv2      1x1 conv to 512, BN, PReLU
    linear7    global depthwise conv (its kernel the whole 7 x 6 map), BN, no activation
    linear1    1x1 conv to the embedding, BN, no activation; flattened
The input side must be a multiple of 16; the global conv's kernel follows the map size: 7 x 6 for 112 x 96, 7 x 7 for
112 x 112, 8 x 8 for 128 x 128 (one input channel for gray faces).
"""
import torch
from torch import nn

# (expansion t, output channels c, repeats n, stride of the first s) of each group of bottlenecks
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
# the released checkpoint's network in our arch terms (its input convention: common/models/recognition.py INPUTS)
RELEASED_ARCH = {'name': 'recognition', 'backbone': 'mobilefacenet', 'input': 'rgb112x96', 'embedding_size': 128}
RELEASED_KEY = 'net_state_dict'  # where the release keeps its weights


class ConvBlock(nn.Module):
    """Conv (no bias; depthwise when `depthwise`), BN, and PReLU unless `linear`: modules `conv`, `bn`, `prelu`."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, padding=0, depthwise=False, linear=False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=in_ch if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.prelu = None if linear else nn.PReLU(out_ch)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class Bottleneck(nn.Module):
    """Inverted residual `conv.0` .. `conv.7`: 1x1 expand x t, BN, PReLU; 3x3 depthwise (stride), BN, PReLU; 1x1
    linear projection, BN. The input is added back when the stride is 1 and the width unchanged."""

    def __init__(self, in_ch, out_ch, stride, expansion):
        super().__init__()
        hidden = in_ch * expansion
        self.residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileFaceNet(nn.Module):
    """(B, in_channels, H, W) aligned faces -> (B, embedding_size); H and W multiples of 16 (112 x 96 released)."""

    def __init__(self, embedding_size=128, in_channels=3, input_size=(112, 96)):
        super().__init__()
        height, width = input_size
        if height % 16 or width % 16:
            raise ValueError(f'MobileFaceNet input sides must be multiples of 16, got {height} x {width}')
        self.conv1 = ConvBlock(in_channels, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, depthwise=True)
        blocks, in_ch = [], 64
        for expansion, out_ch, repeats, stride in BOTTLENECKS:
            for i in range(repeats):
                blocks.append(Bottleneck(in_ch, out_ch, stride if i == 0 else 1, expansion))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBlock(128, 512, 1)
        # global depthwise conv: one learnt weighting of the final map's cells per channel, instead of an average
        self.linear7 = ConvBlock(512, 512, (height // 16, width // 16), depthwise=True, linear=True)
        self.linear1 = ConvBlock(512, embedding_size, 1, linear=True)

    def forward(self, x):
        x = self.blocks(self.dw_conv1(self.conv1(x)))
        return torch.flatten(self.linear1(self.linear7(self.conv2(x))), 1)


def released_state_dict(obj: dict) -> dict | None:
    """The weights of a file in the release's layout ({'epoch', 'net_state_dict'}), or None for another layout."""
    state = obj.get(RELEASED_KEY) if isinstance(obj, dict) else None
    return state if isinstance(state, dict) and 'linear7.conv.weight' in state else None
