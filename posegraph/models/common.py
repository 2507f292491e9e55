"""Small helpers shared by the architectures of the zoo."""

from __future__ import annotations

import torch


def check_image_batch(
    x: torch.Tensor,
    model: str,
    size: tuple[int, int] | None = None,
    divisor: int = 1,
    channels: int = 3,
) -> None:
    """Reject an input the model cannot take, saying what it wants.

    Args:
        x: ``(N, C, H, W)`` image batch.
        model: model name for the message.
        size: the exact ``(width, height)`` the model takes, or ``None`` for
            fully convolutional models that take any size.
        divisor: height and width must be multiples of it (the output stride
            of the deepest level), so that every up-sampled level lines up.
        channels: the channel count the model takes.
    """
    if x.dim() != 4:
        raise ValueError(
            f"{model}: expected an image batch (N, C, H, W), got a tensor of shape {tuple(x.shape)}"
        )
    n_channels, height, width = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    if n_channels != channels:
        raise ValueError(
            f"{model}: expected {channels} colour channels, got {n_channels} "
            f"(input shape {tuple(x.shape)})"
        )
    if size is not None and (width, height) != tuple(size):
        raise ValueError(
            f"{model}: expected input width x height {size[0]}x{size[1]}, got "
            f"{width}x{height}; resize the crop, or build the model with "
            f"input_size=({width}, {height})"
        )
    if height % divisor or width % divisor:
        raise ValueError(
            f"{model}: input width x height must be multiples of {divisor}, got "
            f"{width}x{height}; pad the image to "
            f"{-(-width // divisor) * divisor}x{-(-height // divisor) * divisor}"
        )
