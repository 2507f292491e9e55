"""DE-HRNet: HRNet with a Detail Enhancement Module and DySample up-sampling.

Liu et al., "DE-HRNet: Detail enhanced high-resolution network for human pose
estimation", PLoS ONE 20(9): e0325540, 2025. There is no official code; the
paper gives the ideas and the cost, and the choices below fill in the rest.

Base network
    The HRNet of :mod:`posegraph.models.hrnet`, unchanged: same stem, stages,
    module names and head, so official HRNet checkpoints load into DE-HRNet
    with ``strict=False`` (only the DEM and DySample weights stay fresh).

Detail Enhancement Module (DEM)
    - Placement: in every high-resolution module of stages 2, 3 and 4, after
      the parallel branches and before the multi-resolution fusion
      (registered as ``stageS.M.dem``). The last module of stage 4, which
      fuses into the highest resolution only, still enhances every branch,
      because all of them feed that fusion.
    - Highest-resolution branch: enhanced on its own, ``x0 + D(x0 * SE(x0))``.
    - Branch ``i > 0``: every higher-resolution branch ``j < i`` is adaptively
      average-pooled to branch ``i``'s size and concatenated with it; a 3x3
      conv + BN + ReLU brings the concatenation back to ``C_i`` channels
      (``f``), and the output is ``x_i + D(f * SE(f))``. Pooling (rather than
      strided convs) keeps the cost low and hands the lower branches the
      high-resolution details they lost by striding.
    - SE recalibration: global average pooling, 1x1 conv to ``C/16``, ReLU,
      1x1 conv back to ``C``, sigmoid (Hu et al.'s squeeze-and-excitation;
      the reduction 16 is theirs).
    - ``D`` is dropout (p = 0.1) after the SE block; it regularises the new
      path only, the residual connection keeps HRNet's features intact.

DySample
    (Liu et al., ICCV 2023; reference tiny-smart/dysample, "lp" style,
    static scope) replaces the nearest up-sampling of every fuse layer
    (``fuse_layers.i.j.2`` for ``j > i``, scale ``2**(j-i)``, 4 groups). Its
    ``offset`` conv and ``init_pos`` buffer have the reference's names and
    shapes, so DySample weights trained with the reference load as they are.

Cost (ours from ``posegraph models``, the paper's stated deltas against HRNet
of about 1/5 more parameters and 1/10 more FLOPs):

====================== ========= ======= ======= ======================
name                   input     params  GFLOPs  vs HRNet (params/FLOPs)
====================== ========= ======= ======= ======================
de_hrnet_w32           256x192   34.3M   7.92    +20.1% / +11.2%
de_hrnet_w32_384x288   384x288   34.3M   17.83   +20.1% / +11.3%
de_hrnet_w48           256x192   76.4M   16.41   +20.2% / +12.3%
de_hrnet_w48_384x288   384x288   76.4M   36.93   +20.2% / +12.3%
====================== ========= ======= ======= ======================

Input ``(N, 3, H, W)`` RGB ImageNet-normalised crops; output heatmaps
``(N, K, H/4, W/4)``, the same contract as HRNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from posegraph.models.hrnet import HRNet, HRNetConfig, heatmap_spec
from posegraph.models.spec import ModelSpec


class DySample(nn.Module):
    """Dynamic point-sampling up-sampler (DySample, "lp" style, static scope).

    A 1x1 conv predicts, for each of ``groups`` channel groups and each of the
    ``scale**2`` sub-pixels of an input pixel, an (x, y) offset. Offsets are
    scaled by 0.25 (which keeps neighbouring sample points from overlapping)
    and added to ``init_pos``, the sub-pixel positions of plain bilinear
    up-sampling; the output is the input sampled bilinearly at those points
    (``grid_sample``, border padding). With zero offsets DySample is exactly
    bilinear up-sampling with ``align_corners=False``.

    Args:
        in_channels: C, a multiple of ``groups``.
        scale: up-sampling factor s.
        groups: channel groups sharing one offset field.

    Shapes: ``(N, C, H, W)`` -> ``(N, C, s*H, s*W)``.
    """

    def __init__(self, in_channels: int, scale: int = 2, groups: int = 4) -> None:
        super().__init__()
        if in_channels % groups:
            raise ValueError(
                f"DySample: in_channels={in_channels} must be a multiple of groups={groups}"
            )
        self.scale = scale
        self.groups = groups
        self.offset = nn.Conv2d(in_channels, 2 * groups * scale**2, 1)
        # Near-zero start: the module begins as bilinear up-sampling.
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        self.register_buffer("init_pos", self._initial_positions())

    def _initial_positions(self) -> torch.Tensor:
        """``(1, 2*groups*s*s, 1, 1)``: sub-pixel (x, y) of bilinear up-sampling.

        Layout ``[component (x, y), group, sub-row a, sub-column b]``, x varying
        with b and y with a, in input pixels relative to the pixel centre.
        """
        s = self.scale
        steps = (torch.arange(s, dtype=torch.float32) - (s - 1) / 2) / s
        x = steps.view(1, s).expand(s, s)
        y = steps.view(s, 1).expand(s, s)
        grid = torch.stack([x, y]).unsqueeze(1).expand(2, self.groups, s, s)
        return grid.reshape(1, -1, 1, 1).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s, g = self.scale, self.groups
        offset = self.offset(x) * 0.25 + self.init_pos
        offset = offset.reshape(n, 2, g, s, s, h, w)
        # Pixel centres in input pixels, x then y.
        xs = torch.arange(w, dtype=x.dtype, device=x.device) + 0.5
        ys = torch.arange(h, dtype=x.dtype, device=x.device) + 0.5
        centres = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)]).view(
            1, 2, 1, 1, 1, h, w
        )
        size = torch.tensor([w, h], dtype=x.dtype, device=x.device).view(1, 2, 1, 1, 1, 1, 1)
        grid = 2 * (centres + offset) / size - 1
        # (N, 2, g, a, b, H, W) -> (N*g, H*s, W*s, 2): output pixel (y*s + a, x*s + b).
        grid = grid.permute(0, 2, 5, 3, 6, 4, 1).reshape(n * g, h * s, w * s, 2)
        sampled = F.grid_sample(
            x.reshape(n * g, c // g, h, w),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return sampled.reshape(n, c, h * s, w * s)


def pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of ``(N, C, H, W)`` to ``size`` = (h, w).

    When h and w divide H and W (every HRNet branch of a crop whose sides are
    multiples of 32) this is a plain average pool, which exports to ONNX
    with sizes fixed at export time; adaptive pooling is the fallback.
    """
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if height % size[0] == 0 and width % size[1] == 0:
        kernel = (height // size[0], width // size[1])
        return F.avg_pool2d(x, kernel, kernel)
    return F.adaptive_avg_pool2d(x, size)


class SqueezeExcitation(nn.Module):
    """Channel weights in (0, 1): GAP -> 1x1 (C/r) -> ReLU -> 1x1 (C) -> sigmoid.

    Shapes: ``(N, C, H, W)`` -> ``(N, C, 1, 1)``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(self.relu(self.fc1(pooled))))


class BranchEnhancement(nn.Module):
    """DEM for branch ``index``; see the module docstring.

    Args:
        channels: widths of all branches of the module.
        index: the branch this unit enhances.
        reduction: SE reduction ratio.
        dropout: dropout probability after the SE block.
    """

    def __init__(self, channels: list[int], index: int, reduction: int, dropout: float) -> None:
        super().__init__()
        self.index = index
        width = channels[index]
        self.fuse: nn.Module | None = None
        if index > 0:
            self.fuse = nn.Sequential(
                nn.Conv2d(sum(channels[: index + 1]), width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        self.se = SqueezeExcitation(width, reduction)
        self.dropout = nn.Dropout(dropout)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        own = xs[self.index]
        features = own
        if self.fuse is not None:
            size = (int(own.shape[-2]), int(own.shape[-1]))
            higher = [pool_to(xs[j], size) for j in range(self.index)]
            features = self.fuse(torch.cat([*higher, own], dim=1))
        return own + self.dropout(features * self.se(features))


class DetailEnhancement(nn.Module):
    """The DEM of one high-resolution module: one unit per branch.

    Shapes: a list of ``(N, C_i, H/2**i, W/2**i)`` in, the same shapes out.
    """

    def __init__(self, channels: list[int], reduction: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            BranchEnhancement(channels, i, reduction, dropout) for i in range(len(channels))
        )

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [unit(xs) for unit in self.branches]


@dataclass(frozen=True)
class DEHRNetConfig(HRNetConfig):
    """HRNet's settings plus the DEM and DySample ones.

    Attributes:
        se_reduction: SE reduction ratio in the DEM.
        dem_dropout: dropout probability after the SE block.
        dysample_groups: channel groups of each DySample.
    """

    se_reduction: int = 16
    dem_dropout: float = 0.1
    dysample_groups: int = 4


VARIANTS: dict[str, DEHRNetConfig] = {
    "de_hrnet_w32": DEHRNetConfig(32, (192, 256), sigma=2.0),
    "de_hrnet_w32_384x288": DEHRNetConfig(32, (288, 384), sigma=3.0),
    "de_hrnet_w48": DEHRNetConfig(48, (192, 256), sigma=2.0),
    "de_hrnet_w48_384x288": DEHRNetConfig(48, (288, 384), sigma=3.0),
}


def make_model(name: str, config: DEHRNetConfig) -> nn.Module:
    """Build a DE-HRNet variant with fresh weights."""
    return HRNet(
        config,
        name=name,
        upsampler=lambda channels, scale: DySample(channels, scale, config.dysample_groups),
        enhancer=lambda channels: DetailEnhancement(
            channels, config.se_reduction, config.dem_dropout
        ),
    )


def make_spec(name: str, config: DEHRNetConfig) -> ModelSpec:
    """Same heatmap contract as HRNet."""
    return heatmap_spec(name, config)
