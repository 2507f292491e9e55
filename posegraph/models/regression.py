"""Direct-regression baseline: ResNet-50 regressing normalised coordinates.

The DeepPose-style baseline against which heatmap models are measured: the
ResNet-50 features (torchvision keys at the top level) are averaged over
space and ``regressor`` maps them to K x 2 coordinates through two dense
layers with dropout 0.5 between them; a sigmoid keeps each coordinate in
[0, 1], as a fraction of the crop width (x) and height (y).

Input ``(N, 3, H, W)`` RGB ImageNet-normalised; output ``(N, K, 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from posegraph.models.common import check_image_batch
from posegraph.models.resnet import ResNet
from posegraph.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec


@dataclass(frozen=True)
class RegressionConfig:
    """One row of the variant table.

    Attributes:
        input_size: ``(width, height)`` of the person crop.
        num_keypoints: K.
        hidden: width of the hidden dense layer.
        dropout: dropout probability after the hidden layer.
    """

    input_size: tuple[int, int] = (192, 256)
    num_keypoints: int = 17
    hidden: int = 1024
    dropout: float = 0.5


VARIANTS: dict[str, RegressionConfig] = {
    "regression_res50": RegressionConfig(),
}


class RegressionNet(ResNet):
    """ResNet-50 -> global average pool -> dense layers -> sigmoid coordinates."""

    def __init__(self, config: RegressionConfig, name: str = "regression") -> None:
        super().__init__()
        self.name = name
        self.input_size = config.input_size
        self.num_keypoints = config.num_keypoints
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.regressor = nn.Sequential(
            nn.Linear(self.out_channels, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_keypoints * 2),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` crops -> ``(N, K, 2)`` coordinates in [0, 1] of (W, H)."""
        check_image_batch(x, self.name, size=self.input_size)
        pooled = self.avgpool(self.features(x)).flatten(1)
        return self.regressor(pooled).view(-1, self.num_keypoints, 2)


def make_model(name: str, config: RegressionConfig) -> nn.Module:
    """Build a regression variant with fresh weights."""
    return RegressionNet(config, name=name)


def make_spec(name: str, config: RegressionConfig) -> ModelSpec:
    """Coordinates are fractions of the crop; the codec scales them to pixels."""
    return ModelSpec(
        name=name,
        paradigm="topdown",
        input_size=config.input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        color="rgb",
        skeleton="coco17",
        codec="regression_label",
        codec_kwargs={"input_size": config.input_size, "normalized": True},
        num_keypoints=config.num_keypoints,
    )
