"""HRNet for top-down pose estimation (Sun et al., CVPR 2019).

The module tree and the state-dict keys are those of the official release
(``lib/models/pose_hrnet.py`` of deep-high-resolution-net.pytorch), so its
``.pth`` checkpoints load without renaming: ``conv1``, ``bn1``, ``conv2``,
``bn2``, ``layer1``, ``transition1..3``, ``stage2..4`` made of
``HighResolutionModule`` (``branches``, ``fuse_layers``) and ``final_layer``.
The last module of stage 4 fuses into the highest resolution only.

Input ``(N, 3, H, W)`` RGB, ImageNet-normalised; output heatmaps
``(N, K, H/4, W/4)``.

Variants (published figures, ours within 0.5% / 3%, see ``posegraph models``):

================== ========= ======= =======
name               input     params  GFLOPs
================== ========= ======= =======
hrnet_w32          256x192   28.5M   7.1
hrnet_w32_384x288  384x288   28.5M   16.0
hrnet_w48          256x192   63.6M   14.6
hrnet_w48_384x288  384x288   63.6M   32.9
================== ========= ======= =======

``hrnet_w16_128x96`` is ours: the same network at width 16 and a 128x96 input, with the
context head (:class:`HRNet`), the size of the default weights trained on synthetic people
(``posegraph/weights/``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from posegraph.models.common import check_image_batch
from posegraph.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

#: The official code sets BN momentum 0.1 everywhere (the PyTorch default).
BN_MOMENTUM = 0.1

#: ``upsampler(channels, scale)`` builds the module that brings a lower
#: branch, already projected to ``channels``, up by ``scale`` in fuse layers.
Upsampler = Callable[[int, int], nn.Module]

#: ``enhancer(branch_channels)`` builds a module applied to the branch outputs
#: of every high-resolution module before fusion (DE-HRNet's DEM).
Enhancer = Callable[[list[int]], nn.Module]


def nearest_upsampler(channels: int, scale: int) -> nn.Module:
    """The official fuse up-sampling: nearest neighbour, no parameters."""
    del channels  # nearest neighbour does not depend on the channels
    return nn.Upsample(scale_factor=scale, mode="nearest")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet basic block)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 residual block with 4x channel expansion."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU); the fuse and transition building brick.

    The official fuse and transition BNs use the default momentum, which is
    the same 0.1.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _residual_layer(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int
) -> nn.Sequential:
    """``blocks`` residual blocks; the first projects when the width changes."""
    out = planes * block.expansion
    downsample = None
    if inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, 1, bias=False), nn.BatchNorm2d(out, momentum=BN_MOMENTUM)
        )
    layers = [block(inplanes, planes, 1, downsample)]
    layers += [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches, one per resolution, followed by exchange units.

    Branch ``i`` runs at stride ``4 * 2**i``. ``fuse_layers[i][j]`` brings
    branch ``j`` to the resolution and width of branch ``i``: a 1x1 conv then
    up-sampling when ``j > i``, a chain of stride-2 3x3 convs when ``j < i``,
    nothing (``None``) when ``j == i``.

    Args:
        channels: width of each branch.
        num_blocks: basic blocks per branch.
        multi_scale_output: fuse into every branch, or only into branch 0
            (the last module of the network).
        upsampler: builds the fuse up-sampling (nearest in HRNet).
        enhancer: builds a module applied to the branch outputs before fusion,
            registered as ``dem``; ``None`` in HRNet.
    """

    def __init__(
        self,
        channels: list[int],
        num_blocks: int,
        multi_scale_output: bool = True,
        upsampler: Upsampler = nearest_upsampler,
        enhancer: Enhancer | None = None,
    ) -> None:
        super().__init__()
        self.num_branches = len(channels)
        self.branches = nn.ModuleList(
            _residual_layer(BasicBlock, c, c, num_blocks) for c in channels
        )
        if enhancer is not None:
            self.dem = enhancer(list(channels))
        self.fuse_layers = self._make_fuse_layers(channels, multi_scale_output, upsampler)
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _make_fuse_layers(
        channels: list[int], multi_scale_output: bool, upsampler: Upsampler
    ) -> nn.ModuleList | None:
        if len(channels) == 1:
            return None
        targets = range(len(channels)) if multi_scale_output else range(1)
        fuse_layers = nn.ModuleList()
        for i in targets:
            row: list[nn.Module | None] = []
            for j, cj in enumerate(channels):
                if j > i:
                    up = _conv_bn(cj, channels[i], 1, 1, relu=False)
                    up.append(upsampler(channels[i], 2 ** (j - i)))
                    row.append(up)
                elif j == i:
                    row.append(None)
                else:
                    # i - j stride-2 convs; only the last changes the width and
                    # has no ReLU, because the sum is activated after fusion.
                    steps = [_conv_bn(cj, cj, 3, 2, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(cj, channels[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        return fuse_layers

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Branch features ``[(N, C_i, H/2**i, W/2**i)]`` in, fused features out."""
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if hasattr(self, "dem"):
            xs = self.dem(xs)
        if self.fuse_layers is None:
            return xs
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if j != i:
                    y = y + layer(xs[j])
            fused.append(self.relu(y))
        # Without multi-scale output the unfused lower branches follow the fused branch 0,
        # for a head that reads them (HRNet's ``context_head``); others ignore them.
        return fused + xs[len(fused) :]


#: Input width and height must be multiples of this: the stride of the lowest branch.
SIZE_DIVISOR = 32


@dataclass(frozen=True)
class HRNetConfig:
    """One row of the variant table.

    Attributes:
        width: channels of the highest-resolution branch (32 or 48); branch
            ``i`` has ``width * 2**i``.
        input_size: ``(width, height)`` of the person crop.
        num_keypoints: heatmap channels K.
        sigma: Gaussian sigma of the training heatmaps, in heatmap pixels.
        unbiased: centre each training Gaussian on the keypoint's sub-pixel position (DARK's
            encoding) rather than on the nearest heatmap pixel; training only.
        refine: sub-pixel decoding of the heatmaps, ``"dark"`` or ``"quarter"`` (the
            official post-processing); see :func:`heatmap_spec`.
        context_head: add to the heatmaps a 1x1 projection of each lower branch of the last
            module, up-sampled bilinearly (``final_context``; see :class:`HRNet`).
    """

    width: int = 32
    input_size: tuple[int, int] = (192, 256)
    num_keypoints: int = 17
    sigma: float = 2.0
    unbiased: bool = False
    refine: str = "dark"
    context_head: bool = False

    def __post_init__(self) -> None:
        # The lowest branch is at 1/32 of the input: any other size leaves the branches'
        # maps a pixel apart where the fuse layers add them.
        w, h = self.input_size
        if w % SIZE_DIVISOR or h % SIZE_DIVISOR:
            fit = "x".join(
                str(max(SIZE_DIVISOR, round(v / SIZE_DIVISOR) * SIZE_DIVISOR)) for v in (w, h)
            )
            raise ValueError(
                f"input_size {w}x{h} (width x height): both must be multiples of "
                f"{SIZE_DIVISOR}, the stride of HRNet's lowest branch; {fit} is the nearest"
            )


VARIANTS: dict[str, HRNetConfig] = {
    "hrnet_w32": HRNetConfig(32, (192, 256), sigma=2.0),
    "hrnet_w32_384x288": HRNetConfig(32, (288, 384), sigma=3.0),
    "hrnet_w48": HRNetConfig(48, (192, 256), sigma=2.0),
    "hrnet_w48_384x288": HRNetConfig(48, (288, 384), sigma=3.0),
    "hrnet_w16_128x96": HRNetConfig(16, (96, 128), sigma=1.5, context_head=True),
}

#: Modules per stage (stages 2, 3, 4) and basic blocks per branch.
STAGE_MODULES = (1, 4, 3)
BLOCKS_PER_BRANCH = 4


class HRNet(nn.Module):
    """HRNet pose network: stem, four stages, 1x1 heatmap head.

    The official head reads only the fused highest-resolution branch, ``width``
    channels: at width 16 that is fewer channels than the 17 COCO heatmaps, and the
    shipped HRNet-W16 had learnt one map for both ankles. ``context_head`` adds
    ``final_context``: per lower branch of the last module, a 1x1 convolution to the K
    heatmaps (no bias), up-sampled bilinearly to the head's resolution and added. Its
    weights start at zero, so a checkpoint without them (loaded with ``strict=False``)
    gives the same heatmaps as before, and training grows them from there.

    Args:
        config: the variant.
        name: zoo name, used in error messages.
        upsampler: fuse-layer up-sampling (see :class:`HighResolutionModule`).
        enhancer: per-module enhancement before fusion, or ``None``.
    """

    def __init__(
        self,
        config: HRNetConfig,
        name: str = "hrnet",
        upsampler: Upsampler = nearest_upsampler,
        enhancer: Enhancer | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.input_size = config.input_size
        width = config.width
        # Stem: two stride-2 3x3 convs bring the input to 1/4 resolution.
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _residual_layer(Bottleneck, 64, 64, 4)

        previous = [64 * Bottleneck.expansion]
        for stage, num_modules in enumerate(STAGE_MODULES, start=2):
            channels = [width * 2**i for i in range(stage)]
            self.add_module(f"transition{stage - 1}", self._make_transition(previous, channels))
            modules = [
                HighResolutionModule(
                    channels,
                    BLOCKS_PER_BRANCH,
                    # The network's last module only feeds the head.
                    multi_scale_output=not (stage == 4 and m == num_modules - 1),
                    upsampler=upsampler,
                    enhancer=enhancer,
                )
                for m in range(num_modules)
            ]
            self.add_module(f"stage{stage}", nn.Sequential(*modules))
            previous = channels
        self.final_layer = nn.Conv2d(width, config.num_keypoints, 1)
        if config.context_head:
            self.final_context = nn.ModuleList(
                nn.Conv2d(width * 2**i, config.num_keypoints, 1, bias=False) for i in (1, 2, 3)
            )
            for conv in self.final_context:
                nn.init.zeros_(conv.weight)

    @staticmethod
    def _make_transition(previous: list[int], channels: list[int]) -> nn.ModuleList:
        """Adapt existing branches' widths and grow one new, lower branch."""
        layers: list[nn.Module | None] = []
        for i, c in enumerate(channels):
            if i < len(previous):
                layers.append(
                    None if previous[i] == c else _conv_bn(previous[i], c, 3, 1, relu=True)
                )
            else:
                # The new branch is derived from the lowest existing one.
                src = previous[-1]
                steps = [
                    _conv_bn(src, c if k == i - len(previous) else src, 3, 2, relu=True)
                    for k in range(i + 1 - len(previous))
                ]
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` crops -> ``(N, K, H/4, W/4)`` heatmaps."""
        check_image_batch(x, self.name, size=self.input_size)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for stage in (2, 3, 4):
            transition = getattr(self, f"transition{stage - 1}")
            xs = [
                ys[i] if layer is None else layer(ys[min(i, len(ys) - 1)])
                for i, layer in enumerate(transition)
            ]
            ys = getattr(self, f"stage{stage}")(xs)
        heatmaps = self.final_layer(ys[0])
        if hasattr(self, "final_context"):
            size = heatmaps.shape[2:]
            for conv, y in zip(self.final_context, ys[1:], strict=True):
                heatmaps = heatmaps + nn.functional.interpolate(
                    conv(y), size=size, mode="bilinear", align_corners=False
                )
        return heatmaps


def heatmap_spec(name: str, config: HRNetConfig) -> ModelSpec:
    """Spec of a top-down heatmap model at stride 4 (MSRA Gaussian targets).

    Decoding refines each maximum with DARK's Taylor step rather than the official
    quarter-pixel shift by default: the weights are the same, the keypoints land closer on
    Gaussian-like maps (the HRNet-W16 shipped before, at 128x96, whose heatmap cell is 4
    input pixels: held-out AP 0.326 -> 0.347). On the ragged maps of a barely trained model
    the quarter shift can do better (``refine="quarter"``).
    """
    w, h = config.input_size
    return ModelSpec(
        name=name,
        paradigm="topdown",
        input_size=(w, h),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        color="rgb",
        skeleton="coco17",
        codec="msra_heatmap",
        codec_kwargs={
            "input_size": (w, h),
            "heatmap_size": (w // 4, h // 4),
            "sigma": config.sigma,
            "unbiased": config.unbiased,
            "refine": config.refine,
        },
        num_keypoints=config.num_keypoints,
        size_divisor=SIZE_DIVISOR,
    )


def make_model(name: str, config: HRNetConfig) -> nn.Module:
    """Build an HRNet variant with fresh weights."""
    return HRNet(config, name=name)


def make_spec(name: str, config: HRNetConfig) -> ModelSpec:
    """Spec of an HRNet variant (counts are filled in by the zoo)."""
    return heatmap_spec(name, config)
