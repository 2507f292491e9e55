"""HPRNet: hierarchical point regression for whole-body pose (bottom-up).

Samet and Akbas, "HPRNet: Hierarchical Point Regression for Whole-Body Human
Pose Estimation", Image and Vision Computing 2021; official code
nerminsamet/HPRNet (built on CenterNet). Each person is a centre point; from
it the network regresses the body box, 26 body/foot keypoints, and the face
and hand box centres, from which 68 face and 2 x 21 hand landmarks are
regressed relative to their own centres (the hierarchy). Body keypoints are
also detected on their own heatmaps and snapped to the regressed ones.

Trunks, as in the official code:

- ``hprnet_dla34``: DLA-34 with deformable DLAUp/IDAUp
  (:mod:`posegraph.models.dla`); one head set on the stride-4 map.
- ``hprnet_hg104``: Hourglass-104 with two stacks
  (:mod:`posegraph.models.hourglass`); one head set per stack, supervised
  both; the last stack's output is the prediction.

Heads (CenterNet's): 3x3 conv to 256 + ReLU + 1x1 conv, with output channels
``hm`` 1 (person centre heatmap), ``wh`` 2 (box size), ``reg`` 2 (centre
sub-pixel offset), ``hps`` 52 (26 body keypoints as offsets from the
centre), ``hm_hp`` 26 (body keypoint heatmaps), ``hp_offset`` 2 (their
sub-pixel offsets), ``wh_face`` 2 (face box size), ``face_lms`` 136 (68 face
landmarks), ``hand_lms`` 84 (2 x 21 hand landmarks). The last conv of every
heatmap head (``hm``, ``hm_hp``) starts with bias -2.19 (a 0.1 prior after the
sigmoid, CenterNet's focal-loss initialisation); the others start at zero.

Input ``(N, 3, H, W)`` BGR normalised with CenterNet's COCO statistics;
512 x 512 in training; at test any size padded to a multiple of 32 (DLA-34)
or 128 (Hourglass-104, whose five halvings need it; the official code pads
with ``| 127``). Output: in eval mode a dict ``head -> (N, C, H/4, W/4)`` of
raw maps (no sigmoid), in training mode a list of such dicts, one per stack.
Official ``.pth`` checkpoints (``{"epoch", "state_dict"}``) load with
:func:`posegraph.models.load_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from posegraph.models.common import check_image_batch
from posegraph.models.dla import DLA34_CHANNELS, DLASeg
from posegraph.models.hourglass import SIZE_DIVISOR as HOURGLASS_DIVISOR
from posegraph.models.hourglass import ConvBlock, Hourglass
from posegraph.models.spec import ModelSpec

#: Head name -> output channels, for COCO-WholeBody (26 body+foot, 68 face, 2 x 21 hand).
WHOLEBODY_HEADS: dict[str, int] = {
    "hm": 1,
    "wh": 2,
    "reg": 2,
    "hps": 52,
    "hm_hp": 26,
    "hp_offset": 2,
    "wh_face": 2,
    "face_lms": 136,
    "hand_lms": 84,
}

#: CenterNet's focal-loss prior: sigmoid(-2.19) = 0.1.
HEATMAP_BIAS = -2.19
HEAD_CONV = 256

# CenterNet's COCO statistics, on the 0-255 scale, BGR order.
CENTERNET_MEAN = (0.40789654 * 255, 0.44719302 * 255, 0.47026115 * 255)
CENTERNET_STD = (0.28863828 * 255, 0.27408164 * 255, 0.27809835 * 255)


@dataclass(frozen=True)
class HPRNetConfig:
    """One row of the variant table.

    Attributes:
        backbone: ``dla34`` or ``hourglass104``.
        input_size: ``(width, height)`` in training and for the counts.
        heads: head name -> output channels.
        dla_channels: DLA widths per level (DLA-34's, or a narrower row).
        head_conv: width of each head's hidden 3x3 conv.
    """

    backbone: Literal["dla34", "hourglass104"] = "dla34"
    input_size: tuple[int, int] = (512, 512)
    heads: dict[str, int] = field(default_factory=lambda: dict(WHOLEBODY_HEADS))
    dla_channels: tuple[int, ...] = DLA34_CHANNELS
    head_conv: int = HEAD_CONV

    @property
    def size_divisor(self) -> int:
        return 32 if self.backbone == "dla34" else HOURGLASS_DIVISOR


VARIANTS: dict[str, HPRNetConfig] = {
    "hprnet_dla34": HPRNetConfig("dla34"),
    "hprnet_hg104": HPRNetConfig("hourglass104"),
    # DLA-34 at half width with narrow heads, at 256x256: the shipped whole-body model,
    # sized to train on a CPU (5.0M parameters against the full model's 20.6M).
    "hprnet_dla34_half_256": HPRNetConfig(
        "dla34", (256, 256), dla_channels=tuple(c // 2 for c in DLA34_CHANNELS), head_conv=64
    ),
}


def _init_head(last: nn.Conv2d, head: str) -> None:
    # CenterNet keys on the substring: every heatmap head gets the prior.
    if "hm" in head:
        nn.init.constant_(last.bias, HEATMAP_BIAS)
    else:
        nn.init.zeros_(last.bias)


class HPRNetDLA(DLASeg):
    """DLA-34 trunk with the head set at top level (CenterNet's key layout)."""

    checkpoint_ignore_prefixes = ("base.fc.",)  # ImageNet classifier left in the official files

    def __init__(self, config: HPRNetConfig, name: str = "hprnet_dla34") -> None:
        super().__init__(config.dla_channels)
        self.name = name
        self.heads = dict(config.heads)
        self.size_divisor = config.size_divisor
        for head, channels in self.heads.items():
            layer = nn.Sequential(
                nn.Conv2d(self.out_channels, config.head_conv, 3, 1, 1, bias=True),
                nn.ReLU(inplace=True),
                nn.Conv2d(config.head_conv, channels, 1),
            )
            _init_head(layer[-1], head)
            self.add_module(head, layer)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """``(N, 3, H, W)`` -> ``{head: (N, C, H/4, W/4)}`` (a one-item list in training)."""
        check_image_batch(x, self.name, divisor=self.size_divisor)
        features = super().forward(x)
        out = {head: getattr(self, head)(features) for head in self.heads}
        return [out] if self.training else out


class HPRNetHourglass(Hourglass):
    """Hourglass-104 trunk with one head set per stack (CenterNet's key layout)."""

    def __init__(self, config: HPRNetConfig, name: str = "hprnet_hg104") -> None:
        super().__init__(stacks=2)
        self.name = name
        self.heads = dict(config.heads)
        self.size_divisor = config.size_divisor
        for head, channels in self.heads.items():
            per_stack = nn.ModuleList(
                nn.Sequential(
                    ConvBlock(3, self.out_channels, HEAD_CONV, with_bn=False),
                    nn.Conv2d(HEAD_CONV, channels, 1),
                )
                for _ in range(self.stacks)
            )
            for layer in per_stack:
                _init_head(layer[-1], head)
            self.add_module(head, per_stack)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """``(N, 3, H, W)`` -> last stack's ``{head: (N, C, H/4, W/4)}``, or every stack's in training."""
        check_image_batch(x, self.name, divisor=self.size_divisor)
        stacks = super().forward(x)
        if not self.training:
            # Inference reads the last stack only; skip the other heads.
            return {head: getattr(self, head)[-1](stacks[-1]) for head in self.heads}
        return [
            {head: getattr(self, head)[i](features) for head in self.heads}
            for i, features in enumerate(stacks)
        ]


def make_model(name: str, config: HPRNetConfig) -> nn.Module:
    """Build an HPRNet variant with fresh weights."""
    if config.backbone == "dla34":
        return HPRNetDLA(config, name=name)
    if config.backbone == "hourglass104":
        return HPRNetHourglass(config, name=name)
    raise ValueError(f"{name}: backbone {config.backbone!r}; use 'dla34' or 'hourglass104'")


def make_spec(name: str, config: HPRNetConfig) -> ModelSpec:
    """Whole-image, whole-body model at output stride 4."""
    return ModelSpec(
        name=name,
        paradigm="bottomup",
        input_size=config.input_size,
        mean=CENTERNET_MEAN,
        std=CENTERNET_STD,
        color="bgr",
        skeleton="wholebody133",
        codec="hprnet",
        codec_kwargs={
            "input_size": config.input_size,
            "output_stride": 4,
            "heads": dict(config.heads),
        },
        num_keypoints=133,
        size_divisor=config.size_divisor,
    )
