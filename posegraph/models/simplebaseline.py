"""SimpleBaseline (Xiao et al., ECCV 2018): ResNet + three deconvolutions.

Keys follow the official ``pose_resnet``: the ResNet at the top level
(``conv1``, ``layer1``...), ``deconv_layers.{0,3,6}`` (4x4 stride-2
transposed convs, 256 channels, no bias) with BN at ``{1,4,7}``, and a 1x1
``final_layer``. Input ``(N, 3, H, W)`` RGB ImageNet-normalised; output
heatmaps ``(N, K, H/4, W/4)``. Published: 34.0M params, 8.9 GFLOPs at 256x192.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from posegraph.models.common import check_image_batch
from posegraph.models.hrnet import BN_MOMENTUM, HRNetConfig, heatmap_spec
from posegraph.models.resnet import ResNet
from posegraph.models.spec import ModelSpec


@dataclass(frozen=True)
class SimpleBaselineConfig:
    """One row of the variant table.

    Attributes:
        input_size: ``(width, height)`` of the person crop.
        num_keypoints: heatmap channels K.
        sigma: Gaussian sigma of the training heatmaps, in heatmap pixels.
        deconv_channels: width of the three deconvolution layers.
        unbiased: sub-pixel training Gaussians, as :class:`~posegraph.models.hrnet.HRNetConfig`'s.
        refine: sub-pixel decoding, as :class:`~posegraph.models.hrnet.HRNetConfig`'s.
    """

    input_size: tuple[int, int] = (192, 256)
    num_keypoints: int = 17
    sigma: float = 2.0
    deconv_channels: int = 256
    unbiased: bool = False
    refine: str = "dark"


VARIANTS: dict[str, SimpleBaselineConfig] = {
    "simplebaseline_res50": SimpleBaselineConfig(),
}


class SimpleBaseline(ResNet):
    """ResNet-50 features, up-sampled 8x by deconvolutions, then 1x1 to K heatmaps."""

    def __init__(self, config: SimpleBaselineConfig, name: str = "simplebaseline") -> None:
        super().__init__()
        self.name = name
        self.input_size = config.input_size
        layers: list[nn.Module] = []
        cin = self.out_channels
        for _ in range(3):
            layers += [
                nn.ConvTranspose2d(cin, config.deconv_channels, 4, 2, 1, bias=False),
                nn.BatchNorm2d(config.deconv_channels, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]
            cin = config.deconv_channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(cin, config.num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` crops -> ``(N, K, H/4, W/4)`` heatmaps."""
        check_image_batch(x, self.name, size=self.input_size)
        return self.final_layer(self.deconv_layers(self.features(x)))


def make_model(name: str, config: SimpleBaselineConfig) -> nn.Module:
    """Build a SimpleBaseline variant with fresh weights."""
    return SimpleBaseline(config, name=name)


def make_spec(name: str, config: SimpleBaselineConfig) -> ModelSpec:
    """Same heatmap contract as HRNet: MSRA Gaussians at stride 4."""
    return heatmap_spec(
        name,
        HRNetConfig(
            input_size=config.input_size,
            num_keypoints=config.num_keypoints,
            sigma=config.sigma,
            unbiased=config.unbiased,
            refine=config.refine,
        ),
    )
