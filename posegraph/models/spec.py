"""The description that travels with every model of the zoo.

A :class:`ModelSpec` says what a model wants as input and what its output
means, so that the pose nodes, the codecs and ``training`` agree without
reading the architecture code. Skeletons and codecs are named, never
imported: ``posegraph.skeletons`` and ``posegraph.codecs`` resolve the names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Paradigm = Literal["topdown", "bottomup", "onestage"]

#: ImageNet statistics on the 0-255 scale, in RGB order.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelSpec:
    """What a built model expects and produces.

    Attributes:
        name: zoo name, e.g. ``hrnet_w32``.
        paradigm: ``topdown`` (one person crop in, heatmaps out), ``bottomup``
            (whole image in, per-keypoint maps and grouping cues out) or
            ``onestage`` (whole image in, one pose per anchor out).
        input_size: ``(width, height)`` in pixels. Top-down models take exactly
            this size; whole-image models take any size that is a multiple of
            ``size_divisor`` and use this one for training.
        mean, std: per-channel normalisation on the 0-255 scale, in the order
            of ``color``: ``x = (pixel - mean) / std``.
        color: channel order of the input tensor, ``rgb`` or ``bgr``.
        skeleton: keypoint-set name, resolved by ``posegraph.skeletons``.
        codec: codec name, resolved by ``posegraph.codecs``.
        codec_kwargs: arguments of that codec (heatmap size, sigma, strides...).
        num_keypoints: K, the number of keypoints the model predicts.
        size_divisor: input height and width must be multiples of this.
        params: number of parameters.
        gflops: multiply-accumulates of conv, deconv and linear layers at
            ``input_size``, in units of 2**30, counted as the HRNet paper
            does (see :mod:`posegraph.models.flops`).
    """

    name: str
    paradigm: Paradigm
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: Literal["rgb", "bgr"]
    skeleton: str
    codec: str
    codec_kwargs: dict[str, Any] = field(default_factory=dict)
    num_keypoints: int = 17
    size_divisor: int = 1
    params: int = 0
    gflops: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-able), for logs, exports and the CLI."""
        return asdict(self)
