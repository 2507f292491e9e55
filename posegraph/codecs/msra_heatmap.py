"""MSRA Gaussian heatmaps (SimpleBaseline, HRNet), with the DARK refinement as an option."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from posegraph.codecs.common import (
    check_heatmaps,
    check_keypoints,
    default_blur_kernel,
    flip_heatmaps,
    gaussian_heatmaps,
    heatmap_maximum,
    refine_dark,
    refine_quarter_offset,
)


@dataclass
class MSRAHeatmap:
    """Gaussian heatmap targets and their decoding, as in SimpleBaseline and HRNet.

    Shapes: N instances (crops), K keypoints; ``input_size`` = (w, h) of the model input in
    pixels, ``heatmap_size`` = (W, H) of its output. A keypoint at input pixel x sits at
    heatmap x / (w / W) (the MSRA grid; UDP uses its own, see :class:`UDPHeatmap`).

    Encoding draws one Gaussian of ``sigma`` heatmap pixels per keypoint (sigma 2 on 64x48 for
    a 256x192 input, sigma 3 on 96x72 for 384x288). The reference targets put the peak on
    the nearest pixel; ``unbiased=True`` puts it at the exact sub-pixel position (DARK).

    Decoding takes the argmax and then either moves it a quarter pixel towards the higher
    neighbour (``refine="quarter"``, the official HRNet post-processing) or makes a Taylor
    step on the log of the blurred heatmap (``refine="dark"``, best with unbiased targets).

    Args:
        input_size: (w, h) model input in pixels.
        heatmap_size: (W, H) model output in pixels.
        sigma: Gaussian standard deviation in heatmap pixels.
        unbiased: sub-pixel Gaussian centres, drawn over the whole map (DARK encoding).
        refine: ``"quarter"`` or ``"dark"``.
        blur_kernel_size: DARK blur kernel; None picks about 6 sigma - 1.
    """

    input_size: tuple[int, int] = (192, 256)
    heatmap_size: tuple[int, int] = (48, 64)
    sigma: float = 2.0
    unbiased: bool = False
    refine: Literal["quarter", "dark"] = "quarter"
    blur_kernel_size: int | None = None

    def __post_init__(self) -> None:
        if self.refine not in ("quarter", "dark"):
            raise ValueError(f"MSRAHeatmap: refine={self.refine!r}; use 'quarter' or 'dark'")
        self.input_size = tuple(int(v) for v in self.input_size)
        self.heatmap_size = tuple(int(v) for v in self.heatmap_size)
        if self.blur_kernel_size is None:
            self.blur_kernel_size = default_blur_kernel(self.sigma)

    @property
    def stride(self) -> np.ndarray:
        """(2,) input pixels per heatmap pixel along x and y."""
        return np.array(self.input_size, np.float32) / np.array(self.heatmap_size, np.float32)

    def encode(
        self, keypoints: np.ndarray, keypoints_visible: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Training targets.

        Args:
            keypoints: (N, K, 2) in input pixels.
            keypoints_visible: (N, K) annotation flags; > 0 means annotated. None: all.

        Returns:
            ``heatmaps`` (N, K, H, W) float32 in [0, 1] and ``keypoint_weights`` (N, K) float32
            (0 for keypoints not annotated or whose Gaussian falls off the map).
        """
        keypoints, visible = check_keypoints(keypoints, keypoints_visible, "MSRAHeatmap.encode")
        centers = keypoints / self.stride
        if not self.unbiased:
            centers = np.floor(centers + 0.5)
        heatmaps, weights = gaussian_heatmaps(
            centers, visible, self.heatmap_size, self.sigma, truncate=not self.unbiased
        )
        return {"heatmaps": heatmaps, "keypoint_weights": weights}

    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints from model output.

        Args:
            heatmaps: (N, K, H, W).

        Returns:
            keypoints (N, K, 2) float32 in input pixels, and scores (N, K) float32: the
            heatmap maxima.
        """
        heatmaps = check_heatmaps(heatmaps, self.heatmap_size, "MSRAHeatmap.decode")
        locations, scores = heatmap_maximum(heatmaps)
        if self.refine == "dark":
            locations = refine_dark(locations, heatmaps, self.blur_kernel_size)
        else:
            locations = refine_quarter_offset(locations, heatmaps)
        return locations * self.stride, scores

    def flip_back(self, heatmaps: np.ndarray, flip_indices: np.ndarray) -> np.ndarray:
        """Heatmaps of a horizontally flipped input, brought back to the input's frame.

        Mirrors the maps, swaps left and right keypoints and shifts one heatmap pixel right,
        as the official HRNet flip test does. The MSRA grid is not symmetric under the flip,
        so a keypoint decoded from these maps lies 1 input pixel right of where the unflipped
        maps put it; averaging the two (the flip test) leaves half of that. UDP has no such
        bias.

        Args:
            heatmaps: (N, K, H, W) from the flipped input.
            flip_indices: (K,) the skeleton's ``flip_indices``.

        Returns:
            (N, K, H, W).
        """
        heatmaps = check_heatmaps(heatmaps, self.heatmap_size, "MSRAHeatmap.flip_back")
        return flip_heatmaps(heatmaps, flip_indices, shift=True)

    def decode_flip_test(
        self, heatmaps: np.ndarray, flipped: np.ndarray, flip_indices: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints of the flip test: the crops' heatmaps averaged with their mirrors'.

        :meth:`flip_back` leaves a mirror's keypoints 1 input pixel right of the crop's (on
        any input size: the MSRA grid's stride is input over heatmap size), so the average
        lies half a pixel right; that half pixel is taken off here (an HRNet-W16 at 128x96:
        held-out AP 0.347 -> 0.352).

        Args:
            heatmaps: (N, K, H, W) from the crops.
            flipped: (N, K, H, W) from the horizontally mirrored crops.
            flip_indices: (K,) the skeleton's ``flip_indices``.

        Returns:
            keypoints (N, K, 2) float32 in input pixels, and scores (N, K) float32.
        """
        keypoints, scores = self.decode((heatmaps + self.flip_back(flipped, flip_indices)) * 0.5)
        keypoints[..., 0] -= 0.5
        return keypoints, scores
