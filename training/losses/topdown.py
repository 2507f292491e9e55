"""Losses of the top-down models: heatmap MSE with target weights, and coordinate MSE.

Shapes: B crops, K keypoints, heatmaps (B, K, H, W), weights (B, K).
"""

from __future__ import annotations

import torch
from torch import nn


class JointsMSELoss(nn.Module):
    """Mean squared heatmap error, each keypoint's map multiplied by its target weight.

    The official HRNet ``JointsMSELoss``: ``0.5 * mean((w * pred - w * target) ** 2)`` per
    keypoint, averaged over keypoints; weights are 0 for unlabelled keypoints and for those
    that fell outside the crop, so they teach nothing.

    Args:
        use_target_weight: multiply by the weights (the reference always does for COCO).
    """

    def __init__(self, use_target_weight: bool = True) -> None:
        super().__init__()
        self.use_target_weight = use_target_weight

    def forward(
        self, heatmaps: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Args: heatmaps and targets (B, K, H, W), weights (B, K). Returns a scalar."""
        if heatmaps.shape != targets.shape:
            raise ValueError(
                f"JointsMSELoss: model heatmaps {tuple(heatmaps.shape)} and targets "
                f"{tuple(targets.shape)} differ; the codec's heatmap_size must match the model"
            )
        pred = heatmaps.flatten(2).float()
        gt = targets.flatten(2).float()
        if self.use_target_weight:
            w = weights.float().unsqueeze(-1)
            pred, gt = pred * w, gt * w
        # Mean over batch and pixels per keypoint, then over keypoints: the same as one mean.
        return 0.5 * torch.mean((pred - gt) ** 2)


class CoordinateMSELoss(nn.Module):
    """MSE of regressed coordinates, in fractions of the crop size, over labelled keypoints.

    Args:
        (forward) coordinates, labels: (B, K, 2); weights (B, K).
    """

    def forward(
        self, coordinates: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Mean of ``w * |pred - label|^2`` over keypoints and axes; a scalar."""
        if coordinates.shape != labels.shape:
            raise ValueError(
                f"CoordinateMSELoss: model output {tuple(coordinates.shape)} and labels "
                f"{tuple(labels.shape)} differ"
            )
        error = (coordinates.float() - labels.float()) ** 2
        return torch.mean(error * weights.float().unsqueeze(-1))
