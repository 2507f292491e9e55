"""ResNet-50 backbone with torchvision's module names.

``conv1``, ``bn1``, ``layer1``..``layer4`` (Bottleneck blocks with the stride
on the 3x3 convolution, "ResNet v1.5", and ``downsample.0/1`` projections)
carry the same keys as ``torchvision.models.resnet50`` and as the official
SimpleBaseline ``pose_resnet``, so ImageNet weights and official pose
checkpoints load without renaming. The classifier (``fc``) is left out.
"""

from __future__ import annotations

import torch
from torch import nn

from posegraph.models.hrnet import BN_MOMENTUM, Bottleneck

#: Bottleneck blocks per stage of ResNet-50.
RESNET50_LAYERS = (3, 4, 6, 3)


class ResNet(nn.Module):
    """ResNet feature extractor, stride 32.

    Input ``(N, 3, H, W)``; :meth:`features` returns ``(N, 2048, H/32, W/32)``.
    Subclasses add their heads and their own ``forward``.
    """

    def __init__(self, layers: tuple[int, int, int, int] = RESNET50_LAYERS) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.out_channels = 512 * Bottleneck.expansion

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride, bias=False),
                nn.BatchNorm2d(out, momentum=BN_MOMENTUM),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> ``(N, 2048, H/32, W/32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
