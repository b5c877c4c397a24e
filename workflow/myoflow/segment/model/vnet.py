"""The V-Net of the UK Biobank iliopsoas paper (Fitzpatrick, Basty et al., Sci Rep 2020).

Blocks ``I -> D2,32 -> D3,64 -> D3,128 -> L -> U3,128 -> U3,64 -> U3,32 -> F`` (``Dn,c``:
down block of ``n`` convolutions, ``c`` channels; ``U`` up; widths at ``width=1``):

=========  ============================================================  =========
block      layers (all convolutions 5x5x5, padding 2, SELU after each)    out
=========  ============================================================  =========
I          conv in->16; shortcut 1x1x1 in->16                             16, 1/1
D2,32      2x2x2 stride-2 conv 16->16; conv 16->32, conv 32->32;          32, 1/2
           shortcut 1x1x1 16->32
D3,64      2x2x2 stride-2 conv 32->32; conv 32->64, 2 x conv 64->64       64, 1/4
D3,128     2x2x2 stride-2 conv 64->64; conv 64->128, 2 x conv 128->128    128, 1/8
L          2x2x2 stride-2 conv 128->128; 3 x conv 128->128; identity      128, 1/16
U3,128     2x2x2 stride-2 transpose conv 128->64; concat D3,128 (192);    128, 1/8
           conv 192->128, 2 x conv 128->128; shortcut 1x1x1 192->128
U3,64      transpose 128->64; concat D3,64 (128); conv 128->64, 2 x 64    64, 1/4
U3,32      transpose 64->32; concat D2,32 (64); conv 64->32, 2 x 32       32, 1/2
F          transpose 32->16; concat I (32); conv 32->16; shortcut          labels
           1x1x1 32->16; then 1x1x1 conv 16->labels and a sigmoid
=========  ============================================================  =========

Every block is residual as in V-Net: its convolutions (SELU between them) plus its
shortcut (the block's input, through a 1x1x1 convolution where the width changes), then
SELU. Skips are concatenated as in V-Net, and transpose convolutions halve the channels
as in V-Net. Resampling convolutions keep the width and the first 5x5x5 convolution of a
block sets it; this is the structure that gives the 22.9 M parameters measured for the
published network (22.90 M here at width 1 with 1 input and 1 output channel: 0.02 % off).
Doubling the width in the 2x2x2 convolutions instead, as V-Net does, gives 23.3-25.3 M.

``L``, the bottom level, follows V-Net's conventions for its count: three convolutions,
like every block at the two deepest levels. Its width is kept at 128 rather than
doubled to 256: a single 5x5x5 convolution at 256 channels has 8.2 M parameters, and a
256-wide bottom (V-Net's 3 convolutions: 24.6 M) cannot fit in 22.9 M.

``width`` scales every channel count (rounded, at least 1): 0.5 gives 5.7 M parameters,
0.25 gives 1.4 M, as measured for the published network. Activations are SELU with
LeCun-normal initialisation (self-normalising); the output is one sigmoid channel per
label (multi-label, not softmax).
"""

from __future__ import annotations

import math

import torch
from torch import nn

BASE_WIDTHS = (16, 32, 64, 128)
DOWN_CONVOLUTIONS = (2, 3, 3)
BOTTOM_CONVOLUTIONS = 3
UP_CONVOLUTIONS = (3, 3, 3)
FINAL_CONVOLUTIONS = 1
KERNEL = 5
LEVELS = 4
"""Resolution halvings between the input and the bottom: inputs must divide by 2**4."""


def _conv(in_channels: int, out_channels: int) -> nn.Conv3d:
    conv = nn.Conv3d(in_channels, out_channels, KERNEL, padding=KERNEL // 2)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")  # LeCun normal, for SELU
    nn.init.zeros_(conv.bias)
    return conv


def _projection(in_channels: int, out_channels: int) -> nn.Module:
    if in_channels == out_channels:
        return nn.Identity()
    conv = nn.Conv3d(in_channels, out_channels, 1)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
    nn.init.zeros_(conv.bias)
    return conv


class ResidualConvs(nn.Module):
    """``count`` 5x5x5 convolutions (first ``in -> out``) with SELU between them, plus a
    shortcut of the input, then SELU.

    Shapes: (N, in, X, Y, Z) -> (N, out, X, Y, Z).
    """

    def __init__(self, in_channels: int, out_channels: int, count: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for n in range(count):
            layers.append(_conv(in_channels if n == 0 else out_channels, out_channels))
            if n < count - 1:
                layers.append(nn.SELU())
        self.convs = nn.Sequential(*layers)
        self.shortcut = _projection(in_channels, out_channels)
        self.activation = nn.SELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.convs(x) + self.shortcut(x))


class Down(nn.Module):
    """A 2x2x2 stride-2 convolution (same width), then residual convolutions.

    Shapes: (N, in, X, Y, Z) -> (N, out, X/2, Y/2, Z/2).
    """

    def __init__(self, in_channels: int, out_channels: int, count: int) -> None:
        super().__init__()
        self.down = nn.Conv3d(in_channels, in_channels, 2, stride=2)
        nn.init.kaiming_normal_(self.down.weight, nonlinearity="linear")
        nn.init.zeros_(self.down.bias)
        self.activation = nn.SELU()
        self.block = ResidualConvs(in_channels, out_channels, count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.activation(self.down(x)))


class Up(nn.Module):
    """A 2x2x2 stride-2 transpose convolution halving the channels, concatenation with
    the skip of the same level, then residual convolutions.

    Shapes: (N, in, X, Y, Z) and skip (N, skip, 2X, 2Y, 2Z) -> (N, out, 2X, 2Y, 2Z).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, count: int):
        super().__init__()
        up_channels = max(1, in_channels // 2)
        self.up = nn.ConvTranspose3d(in_channels, up_channels, 2, stride=2)
        # Each output voxel sees one tap per input channel: fan-in is in_channels.
        nn.init.normal_(self.up.weight, std=1.0 / math.sqrt(in_channels))
        nn.init.zeros_(self.up.bias)
        self.activation = nn.SELU()
        self.block = ResidualConvs(up_channels + skip_channels, out_channels, count)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.activation(self.up(x)), skip], dim=1))


class VNet(nn.Module):
    """The published iliopsoas V-Net (module docstring), multi-label sigmoid output.

    Args:
        in_channels: image channels (1: water, as UK Biobank; 4: water, fat, in, opp).
        out_channels: labels, one sigmoid channel each.
        width: multiplier of every channel count (1: 22.9 M parameters).

    Shapes: ``forward`` and ``logits`` map (N, in_channels, X, Y, Z) to
    (N, out_channels, X, Y, Z), with X, Y and Z multiples of 16 (e.g. 96 x 96 x 192).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or not width > 0:
            raise ValueError(
                f"need in_channels >= 1, out_channels >= 1 and width > 0; got {in_channels}, "
                f"{out_channels} and {width}"
            )
        c = [max(1, round(w * width)) for w in BASE_WIDTHS]
        self.input_block = ResidualConvs(in_channels, c[0], 1)
        self.down = nn.ModuleList(
            Down(c[n], c[n + 1], DOWN_CONVOLUTIONS[n]) for n in range(LEVELS - 1)
        )
        self.bottom = Down(c[3], c[3], BOTTOM_CONVOLUTIONS)
        # U3,128 takes the bottom (c[3] wide); each later one the up block before it.
        up_inputs = (c[3], c[3], c[2])
        self.up = nn.ModuleList(
            Up(up_inputs[n], c[3 - n], c[3 - n], UP_CONVOLUTIONS[n]) for n in range(LEVELS - 1)
        )
        self.final = Up(c[1], c[0], c[0], FINAL_CONVOLUTIONS)
        self.output = nn.Conv3d(c[0], out_channels, 1)
        nn.init.xavier_normal_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores (for ``BCEWithLogitsLoss``): (N, in, X, Y, Z) -> (N, out, X, Y, Z)."""
        if x.ndim != 5 or any(n % 2**LEVELS for n in x.shape[2:]):
            raise ValueError(
                f"expected (N, C, X, Y, Z) with X, Y and Z multiples of {2**LEVELS}, "
                f"got {tuple(x.shape)}"
            )
        skips = [self.input_block(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        x = self.bottom(skips[-1])
        for block, skip in zip(self.up, reversed(skips[1:]), strict=True):
            x = block(x, skip)
        return self.output(self.final(x, skips[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities: (N, in, X, Y, Z) -> (N, out, X, Y, Z) in [0, 1]."""
        return torch.sigmoid(self.logits(x))
