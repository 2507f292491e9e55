"""ER-Pose: single-stage, keypoint-driven, NMS-free multi-person pose.

Li et al., "ER-Pose: Rethinking Keypoint-Driven Representation Learning for
Real-Time Human Pose Estimation", arXiv:2603.08681, 2026. There is no
official code; the paper builds on YOLO-Pose (YOLOv8) and removes the box
branch. The choices below follow YOLOv8 where the paper is silent.

Backbone (YOLOv8 CSPDarknet)
    Conv(3x3, s2) x2, then per level Conv(3x3, s2) + C2f, SPPF(k=5) on top;
    base widths 64-128-256-512-1024 and C2f repeats 3-6-6-3 scaled by the
    variant's width and depth multiples (n 0.25/0.33, s 0.50/0.33,
    m 0.75/0.67, l 1.00/1.00) with YOLOv8's channel caps (m 768, l 512).
    Conv = conv (no bias) + BN (eps 1e-3, momentum 0.03) + SiLU.
Neck (YOLOv8 PAN)
    Top-down: upsample P5, concat P4, C2f; upsample, concat P3, C2f -> P3.
    Bottom-up: Conv(s2), concat, C2f -> P4; Conv(s2), concat SPPF, C2f -> P5.
    C2f in the neck has no shortcut. Strides 8, 16, 32.
Head (per level, no box branch)
    - Person-confidence branch: two depthwise-separable convs (3x3 depthwise
      Conv, then 1x1 Conv) of width ``max(C_P3, 1)`` and a 1x1 conv to one
      logit. Depthwise convs suffice for a single class and pay for the
      keypoint branch.
    - Keypoint-regression branch: two standard 3x3 Convs of width
      ``max(C_P3 / 2, 3K)`` (twice YOLOv8-pose's C_P3 / 4, to carry the
      high-dimensional pose representation the paper makes the main
      objective) and a 1x1 conv to ``3K`` values.
    - Decoding (eval mode, inside the model so that the exported graph ends
      in poses): anchor ``(i, j)`` of a level with stride s gives
      ``x = (2 t_x + j) s``, ``y = (2 t_y + i) s`` (YOLOv8-pose's
      parametrisation: offsets around the anchor cell), visibility and score
      through a sigmoid. One pose per anchor; the one-to-one assignment of
      the paper's training makes NMS unnecessary: keep anchors above a score.

Input ``(N, 3, H, W)``, RGB scaled to [0, 1] (mean 0, std 255), H and W
multiples of 32 (640 by default). Output in eval mode ``(N, A, 1 + 3K)``:
per anchor ``[score, x_1, y_1, v_1, ..., x_K, y_K, v_K]``, x and y in input
pixels, A = sum over strides of ``(H/s)(W/s)``, anchors ordered stride 8
first, row-major. In training mode the raw per-level maps
``[(N, 1 + 3K, H/s, W/s)]`` for the loss.

Parameters against YOLOv8-pose at the same scale (``posegraph models``):

======== ========== ================ ===========
variant  ER-Pose    YOLOv8-pose      GFLOPs @640
======== ========== ================ ===========
n        2.59M      3.3M             2.98
s        9.84M      11.6M            10.86
m        23.69M     26.4M            32.32
l        40.54M     44.4M            69.92
======== ========== ================ ===========
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from posegraph.models.common import check_image_batch
from posegraph.models.spec import ModelSpec

STRIDES = (8, 16, 32)


class Conv(nn.Module):
    """Conv (no bias) + BN + SiLU, "same" padding."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 Convs, residual when asked and widths agree."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = Conv(channels, channels, 3)
        self.cv2 = Conv(channels, channels, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two convolutions: split, n bottlenecks, concat every stage."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.hidden = cout // 2
        self.cv1 = Conv(cin, 2 * self.hidden, 1)
        self.cv2 = Conv((2 + n) * self.hidden, cout, 1)
        self.m = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).split(self.hidden, dim=1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools, concatenated."""

    def __init__(self, cin: int, cout: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv1 = Conv(cin, hidden, 1)
        self.cv2 = Conv(hidden * 4, cout, 1)
        self.m = nn.MaxPool2d(kernel, 1, kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], dim=1))


@dataclass(frozen=True)
class ERPoseConfig:
    """One row of the variant table.

    Attributes:
        depth: multiple of the C2f repeats.
        width: multiple of the channel widths.
        max_channels: cap on the unscaled widths.
        input_size: ``(width, height)`` used in training and for the counts.
        num_keypoints: K.
    """

    depth: float = 0.33
    width: float = 0.25
    max_channels: int = 1024
    input_size: tuple[int, int] = (640, 640)
    num_keypoints: int = 17

    def channels(self, base: int) -> int:
        """Scaled width, a multiple of 8."""
        return int(math.ceil(min(base, self.max_channels) * self.width / 8) * 8)

    def repeats(self, base: int) -> int:
        """Scaled C2f repeats, at least one."""
        return max(round(base * self.depth), 1)


VARIANTS: dict[str, ERPoseConfig] = {
    "erpose_n": ERPoseConfig(0.33, 0.25, 1024),
    "erpose_s": ERPoseConfig(0.33, 0.50, 1024),
    "erpose_m": ERPoseConfig(0.67, 0.75, 768),
    "erpose_l": ERPoseConfig(1.00, 1.00, 512),
    # Ours: the shipped weights (trained on synthetic people, posegraph/weights/) are
    # erpose_n_320's, last trained at 512; erpose_n_416 and erpose_n_512 are the same network
    # at those sizes (1.7x and 2.5x the arithmetic) and run the same file (``weights: builtin``).
    "erpose_n_320": ERPoseConfig(0.33, 0.25, 1024, input_size=(320, 320)),
    "erpose_n_416": ERPoseConfig(0.33, 0.25, 1024, input_size=(416, 416)),
    "erpose_n_512": ERPoseConfig(0.33, 0.25, 1024, input_size=(512, 512)),
}


class Backbone(nn.Module):
    """CSPDarknet: stride-8/16/32 features ``(P3, P4, P5)``."""

    def __init__(self, config: ERPoseConfig) -> None:
        super().__init__()
        c = [config.channels(b) for b in (64, 128, 256, 512, 1024)]
        self.stem = Conv(3, c[0], 3, 2)
        self.stage1 = nn.Sequential(
            Conv(c[0], c[1], 3, 2), C2f(c[1], c[1], config.repeats(3), True)
        )
        self.stage2 = nn.Sequential(
            Conv(c[1], c[2], 3, 2), C2f(c[2], c[2], config.repeats(6), True)
        )
        self.stage3 = nn.Sequential(
            Conv(c[2], c[3], 3, 2), C2f(c[3], c[3], config.repeats(6), True)
        )
        self.stage4 = nn.Sequential(
            Conv(c[3], c[4], 3, 2), C2f(c[4], c[4], config.repeats(3), True), SPPF(c[4], c[4])
        )
        self.out_channels = (c[2], c[3], c[4])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        return p3, p4, self.stage4(p4)


class PAN(nn.Module):
    """Path-aggregation neck: top-down then bottom-up fusion of P3-P5."""

    def __init__(self, channels: tuple[int, int, int], n: int) -> None:
        super().__init__()
        c3, c4, c5 = channels
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4 = C2f(c5 + c4, c4, n, False)
        self.top_down3 = C2f(c4 + c3, c3, n, False)
        self.down3 = Conv(c3, c3, 3, 2)
        self.bottom_up4 = C2f(c3 + c4, c4, n, False)
        self.down4 = Conv(c4, c4, 3, 2)
        self.bottom_up5 = C2f(c4 + c5, c5, n, False)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        p3, p4, p5 = feats
        t4 = self.top_down4(torch.cat([self.up(p5), p4], dim=1))
        n3 = self.top_down3(torch.cat([self.up(t4), p3], dim=1))
        n4 = self.bottom_up4(torch.cat([self.down3(n3), t4], dim=1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], dim=1))
        return [n3, n4, n5]


class PoseHead(nn.Module):
    """Per level: a depthwise-separable score branch and a keypoint branch."""

    def __init__(self, channels: tuple[int, int, int], num_keypoints: int) -> None:
        super().__init__()
        self.num_keypoints = num_keypoints
        c_score = max(channels[0], 1)
        c_kpt = max(channels[0] // 2, 3 * num_keypoints)
        self.score = nn.ModuleList(
            nn.Sequential(
                Conv(c, c, 3, groups=c),
                Conv(c, c_score, 1),
                Conv(c_score, c_score, 3, groups=c_score),
                Conv(c_score, c_score, 1),
                nn.Conv2d(c_score, 1, 1),
            )
            for c in channels
        )
        self.keypoints = nn.ModuleList(
            nn.Sequential(
                Conv(c, c_kpt, 3), Conv(c_kpt, c_kpt, 3), nn.Conv2d(c_kpt, 3 * num_keypoints, 1)
            )
            for c in channels
        )
        for branch, stride in zip(self.score, STRIDES, strict=True):
            # YOLO prior: about 5 people in a 640x640 image.
            nn.init.constant_(branch[-1].bias, math.log(5 / (640 / stride) ** 2))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw maps ``[(N, 1 + 3K, H/s, W/s)]``: score logit, then (t_x, t_y, v) per keypoint."""
        return [
            torch.cat([score(f), kpt(f)], dim=1)
            for f, score, kpt in zip(feats, self.score, self.keypoints, strict=True)
        ]


def decode(raw: list[torch.Tensor], num_keypoints: int) -> torch.Tensor:
    """Raw per-level maps -> ``(N, A, 1 + 3K)`` poses in input pixels (see module doc)."""
    poses = []
    for maps, stride in zip(raw, STRIDES, strict=True):
        # in float32 whatever the model ran in: bfloat16 holds 300 px only to 2 px
        maps = maps.float()
        n, _, h, w = maps.shape
        flat = maps.flatten(2).transpose(1, 2)  # (N, h*w, 1 + 3K)
        cols = torch.arange(w, dtype=maps.dtype, device=maps.device).repeat(h)
        rows = torch.arange(h, dtype=maps.dtype, device=maps.device).repeat_interleave(w)
        kpts = flat[..., 1:].reshape(n, h * w, num_keypoints, 3)
        x = (kpts[..., 0] * 2 + cols.view(1, -1, 1)) * stride
        y = (kpts[..., 1] * 2 + rows.view(1, -1, 1)) * stride
        decoded = torch.stack([x, y, kpts[..., 2].sigmoid()], dim=-1).flatten(2)
        poses.append(torch.cat([flat[..., :1].sigmoid(), decoded], dim=-1))
    return torch.cat(poses, dim=1)


class ERPose(nn.Module):
    """Backbone + PAN + pose head; see the module docstring for the outputs."""

    def __init__(self, config: ERPoseConfig, name: str = "erpose") -> None:
        super().__init__()
        self.name = name
        self.num_keypoints = config.num_keypoints
        self.backbone = Backbone(config)
        self.neck = PAN(self.backbone.out_channels, config.repeats(3))
        self.head = PoseHead(self.backbone.out_channels, config.num_keypoints)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(N, 3, H, W)`` -> ``(N, A, 1 + 3K)`` (eval) or raw level maps (training)."""
        check_image_batch(x, self.name, divisor=STRIDES[-1])
        raw = self.head(self.neck(self.backbone(x)))
        return raw if self.training else decode(raw, self.num_keypoints)


def make_model(name: str, config: ERPoseConfig) -> nn.Module:
    """Build an ER-Pose variant with fresh weights."""
    return ERPose(config, name=name)


def make_spec(name: str, config: ERPoseConfig) -> ModelSpec:
    """Whole-image model, [0, 1] RGB input, decoded poses out."""
    return ModelSpec(
        name=name,
        paradigm="onestage",
        input_size=config.input_size,
        mean=(0.0, 0.0, 0.0),
        std=(255.0, 255.0, 255.0),
        color="rgb",
        skeleton="coco17",
        codec="erpose",
        codec_kwargs={"input_size": config.input_size, "strides": STRIDES},
        num_keypoints=config.num_keypoints,
        size_divisor=STRIDES[-1],
    )
