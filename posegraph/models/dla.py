"""DLA-34 with deformable iterative up-sampling, as CenterNet's ``pose_dla_dcn``.

Yu et al., "Deep Layer Aggregation" (CVPR 2018), in the form CenterNet
("Objects as Points") and HPRNet use: a DLA-34 encoder (``base``) whose six
levels run at strides 1-32, then ``dla_up`` (DLAUp) and ``ida_up`` (IDAUp)
merge levels 2-5 back to stride 4 with modulated deformable 3x3 convolutions
(:mod:`posegraph.models.dcn`) and bilinear-initialised depthwise transposed
convolutions. Module names follow the CenterNet code (``base.level3.tree1``,
``dla_up.ida_0.proj_1.conv.conv_offset_mask``...) so its checkpoints load.

Shapes: ``(N, 3, H, W)`` -> ``(N, 64, H/4, W/4)``, H and W multiples of 32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from posegraph.models.dcn import ModulatedDeformConv2d

BN_MOMENTUM = 0.1

#: DLA-34: convs/blocks per level and widths per level (strides 1, 2, ... 32).
DLA34_LEVELS = (1, 1, 1, 2, 2, 1)
DLA34_CHANNELS = (16, 32, 64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convs; the residual is given by the enclosing tree."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        residual = x if residual is None else residual
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + residual)


class Root(nn.Module):
    """Aggregation node: 1x1 conv over the concatenated children, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, *children: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(torch.cat(children, dim=1))))


class Tree(nn.Module):
    """Hierarchical deep aggregation tree of ``levels`` levels.

    Args:
        levels: depth; a level-1 tree is two blocks and a root.
        in_channels, out_channels: widths.
        stride: down-sampling of the first block (max-pooled for the residual).
        level_root: the down-sampled input joins the root as a child.
        root_dim: channels entering the root (0: two children's worth).
    """

    def __init__(
        self,
        levels: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        level_root: bool = False,
        root_dim: int = 0,
    ) -> None:
        super().__init__()
        root_dim = root_dim or 2 * out_channels
        if level_root:
            root_dim += in_channels
        self.tree1: nn.Module
        self.tree2: nn.Module
        if levels == 1:
            self.tree1 = BasicBlock(in_channels, out_channels, stride)
            self.tree2 = BasicBlock(out_channels, out_channels, 1)
            self.root = Root(root_dim, out_channels)
        else:
            self.tree1 = Tree(levels - 1, in_channels, out_channels, stride)
            self.tree2 = Tree(
                levels - 1, out_channels, out_channels, root_dim=root_dim + out_channels
            )
        self.levels = levels
        self.level_root = level_root
        self.downsample = nn.MaxPool2d(stride, stride) if stride > 1 else None
        self.project = None
        if in_channels != out_channels:
            self.project = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            )

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        children: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        children = [] if children is None else children
        bottom = self.downsample(x) if self.downsample is not None else x
        residual = self.project(bottom) if self.project is not None else bottom
        if self.level_root:
            children.append(bottom)
        x1 = self.tree1(x, residual)
        if self.levels == 1:
            return self.root(self.tree2(x1), x1, *children)
        children.append(x1)
        return self.tree2(x1, children=children)


def _conv_level(inplanes: int, planes: int, convs: int, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(inplanes, planes, 3, stride if i == 0 else 1, 1, bias=False),
            nn.BatchNorm2d(planes, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
        ]
        inplanes = planes
    return nn.Sequential(*layers)


class DLA(nn.Module):
    """DLA encoder: ``base_layer`` and ``level0``..``level5`` (strides 1..32)."""

    def __init__(
        self,
        levels: tuple[int, ...] = DLA34_LEVELS,
        channels: tuple[int, ...] = DLA34_CHANNELS,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.base_layer = nn.Sequential(
            nn.Conv2d(3, channels[0], 7, 1, 3, bias=False),
            nn.BatchNorm2d(channels[0], momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        self.level0 = _conv_level(channels[0], channels[0], levels[0])
        self.level1 = _conv_level(channels[0], channels[1], levels[1], stride=2)
        self.level2 = Tree(levels[2], channels[1], channels[2], 2, level_root=False)
        self.level3 = Tree(levels[3], channels[2], channels[3], 2, level_root=True)
        self.level4 = Tree(levels[4], channels[3], channels[4], 2, level_root=True)
        self.level5 = Tree(levels[5], channels[4], channels[5], 2, level_root=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 3, H, W)`` -> six levels ``(N, C_i, H/2**i, W/2**i)``."""
        x = self.base_layer(x)
        levels = []
        for i in range(6):
            x = getattr(self, f"level{i}")(x)
            levels.append(x)
        return levels


class DeformConv(nn.Module):
    """Modulated deformable 3x3 conv, then BN + ReLU (``actf``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.actf = nn.Sequential(nn.BatchNorm2d(cout, momentum=BN_MOMENTUM), nn.ReLU(inplace=True))
        self.conv = ModulatedDeformConv2d(cin, cout, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actf(self.conv(x))


def bilinear_upsampling_(deconv: nn.ConvTranspose2d) -> None:
    """Set a depthwise transposed conv to bilinear interpolation (its start point)."""
    k = deconv.weight.shape[-1]
    f = math.ceil(k / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - (torch.arange(k, dtype=torch.float32) / f - c).abs()
    with torch.no_grad():
        deconv.weight.copy_((ramp.view(-1, 1) * ramp.view(1, -1)).expand_as(deconv.weight))


class IDAUp(nn.Module):
    """Iterative deep aggregation: bring levels up one by one and merge.

    ``proj_i`` (deformable) maps level i to ``out`` channels, ``up_i``
    up-samples it by ``factors[i]`` and ``node_i`` (deformable) merges it
    with the level before.
    """

    def __init__(self, out: int, channels: list[int], factors: list[int]) -> None:
        super().__init__()
        for i in range(1, len(channels)):
            f = int(factors[i])
            up = nn.ConvTranspose2d(out, out, f * 2, f, f // 2, groups=out, bias=False)
            bilinear_upsampling_(up)
            setattr(self, f"proj_{i}", DeformConv(channels[i], out))
            setattr(self, f"up_{i}", up)
            setattr(self, f"node_{i}", DeformConv(out, out))

    def forward(self, layers: list[torch.Tensor], start: int, end: int) -> None:
        """Update ``layers[start + 1:end]`` in place (CenterNet's contract)."""
        for i in range(start + 1, end):
            up = getattr(self, f"up_{i - start}")
            proj = getattr(self, f"proj_{i - start}")
            node = getattr(self, f"node_{i - start}")
            layers[i] = node(up(proj(layers[i])) + layers[i - 1])


class DLAUp(nn.Module):
    """Aggregates levels ``start``.. from the deepest up (``ida_0``, ``ida_1``...)."""

    def __init__(self, start: int, channels: list[int], scales: list[int]) -> None:
        super().__init__()
        self.start = start
        in_channels = list(channels)
        scales = list(scales)
        for i in range(len(channels) - 1):
            j = len(channels) - i - 2
            factors = [s // scales[j] for s in scales[j:]]
            setattr(self, f"ida_{i}", IDAUp(channels[j], in_channels[j:], factors))
            scales[j + 1 :] = [scales[j]] * (len(scales) - j - 1)
            in_channels[j + 1 :] = [channels[j]] * (len(in_channels) - j - 1)

    def forward(self, layers: list[torch.Tensor]) -> list[torch.Tensor]:
        """Levels in; merged maps out, finest first (strides 4, 8, 16, 32)."""
        layers = list(layers)
        out = [layers[-1]]
        for i in range(len(layers) - self.start - 1):
            getattr(self, f"ida_{i}")(layers, len(layers) - i - 2, len(layers))
            out.insert(0, layers[-1])
        return out


class DLASeg(nn.Module):
    """DLA-34 + DLAUp + IDAUp at output stride 4 (CenterNet's ``DLASeg`` trunk).

    Shapes: ``(N, 3, H, W)`` -> ``(N, channels[2], H/4, W/4)`` (64 for DLA-34).
    """

    first_level = 2  # log2 of the output stride
    last_level = 5

    def __init__(self, channels: tuple[int, ...] = DLA34_CHANNELS) -> None:
        super().__init__()
        self.base = DLA(channels=channels)
        channels = list(self.base.channels[self.first_level :])
        scales = [2**i for i in range(len(channels))]
        self.dla_up = DLAUp(self.first_level, channels, scales)
        span = self.last_level - self.first_level
        self.ida_up = IDAUp(channels[0], channels[:span], [2**i for i in range(span)])
        self.out_channels = channels[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = self.dla_up(self.base(x))
        maps = merged[: self.last_level - self.first_level]
        self.ida_up(maps, 0, len(maps))
        return maps[-1]
