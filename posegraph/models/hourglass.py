"""Hourglass-104 (two stacks), as CenterNet's ``large_hourglass``.

Newell et al.'s stacked hourglass in the CornerNet/CenterNet form: a stem
(``pre``: 7x7 stride-2 conv to 128, residual stride-2 to 256), two
hourglass modules (``kps``) of depth 5 with widths 256-256-384-384-384-512
and 2-2-2-2-2-4 residuals per level (down-sampling by stride-2 residuals,
up-sampling by nearest neighbour), a 3x3 conv after each (``cnvs``) and an
intermediate merge (``inters_``, ``cnvs_``, ``inters``) between stacks.
Module names follow CenterNet's so its checkpoints load.

Shapes: ``(N, 3, H, W)`` -> one ``(N, 256, H/4, W/4)`` map per stack; H and
W must be multiples of 128 (stride 4 times five halvings).
"""

from __future__ import annotations

import torch
from torch import nn

#: Hourglass-104: depth, widths per level and residuals per level.
DEPTH = 5
DIMS = (256, 256, 384, 384, 384, 512)
MODULES = (2, 2, 2, 2, 2, 4)
SIZE_DIVISOR = 128


class ConvBlock(nn.Module):
    """k x k conv + BN + ReLU; without BN the conv has a bias (CenterNet's ``convolution``)."""

    def __init__(self, k: int, cin: int, cout: int, stride: int = 1, with_bn: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=not with_bn)
        self.bn = nn.BatchNorm2d(cout) if with_bn else nn.Sequential()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    """Two 3x3 convs with a (projected when needed) skip connection."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Sequential()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu(out + self.skip(x))


def _residuals(cin: int, cout: int, count: int, stride: int = 1) -> nn.Sequential:
    """``count`` residuals, the first one changing width and stride."""
    layers = [Residual(cin, cout, stride)]
    layers += [Residual(cout, cout) for _ in range(count - 1)]
    return nn.Sequential(*layers)


def _residuals_reversed(cin: int, cout: int, count: int) -> nn.Sequential:
    """``count`` residuals, the last one changing width (the way back up)."""
    layers = [Residual(cin, cin) for _ in range(count - 1)]
    layers.append(Residual(cin, cout))
    return nn.Sequential(*layers)


class HourglassModule(nn.Module):
    """One hourglass level: a skip branch and a recursive down-up branch, summed."""

    def __init__(self, depth: int, dims: tuple[int, ...], modules: tuple[int, ...]) -> None:
        super().__init__()
        curr, nxt = dims[0], dims[1]
        self.up1 = _residuals(curr, curr, modules[0])
        # CenterNet keeps an empty pooling slot: the stride-2 residual in low1 down-samples.
        self.max1 = nn.Sequential()
        self.low1 = _residuals(curr, nxt, modules[0], stride=2)
        self.low2: nn.Module = (
            HourglassModule(depth - 1, dims[1:], modules[1:])
            if depth > 1
            else _residuals(nxt, nxt, modules[1])
        )
        self.low3 = _residuals_reversed(nxt, curr, modules[0])
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up1(x) + self.up2(self.low3(self.low2(self.low1(self.max1(x)))))


class Hourglass(nn.Module):
    """Stacked Hourglass-104 trunk; ``forward`` returns one feature map per stack.

    Args:
        stacks: number of hourglass modules (2 for Hourglass-104).
        cnv_dim: width of the per-stack output maps (the heads' input).
    """

    def __init__(self, stacks: int = 2, cnv_dim: int = 256) -> None:
        super().__init__()
        curr = DIMS[0]
        self.stacks = stacks
        self.out_channels = cnv_dim
        self.pre = nn.Sequential(ConvBlock(7, 3, 128, stride=2), Residual(128, curr, stride=2))
        self.kps = nn.ModuleList(HourglassModule(DEPTH, DIMS, MODULES) for _ in range(stacks))
        self.cnvs = nn.ModuleList(ConvBlock(3, curr, cnv_dim) for _ in range(stacks))
        self.inters = nn.ModuleList(Residual(curr, curr) for _ in range(stacks - 1))
        self.inters_ = nn.ModuleList(
            nn.Sequential(nn.Conv2d(curr, curr, 1, bias=False), nn.BatchNorm2d(curr))
            for _ in range(stacks - 1)
        )
        self.cnvs_ = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cnv_dim, curr, 1, bias=False), nn.BatchNorm2d(curr))
            for _ in range(stacks - 1)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 3, H, W)`` -> ``[(N, cnv_dim, H/4, W/4)]`` per stack."""
        inter = self.pre(x)
        outs = []
        for i in range(self.stacks):
            cnv = self.cnvs[i](self.kps[i](inter))
            outs.append(cnv)
            if i < self.stacks - 1:
                inter = self.relu(self.inters_[i](inter) + self.cnvs_[i](cnv))
                inter = self.inters[i](inter)
        return outs
