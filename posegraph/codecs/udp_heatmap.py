"""UDP heatmaps: Unbiased Data Processing (Huang et al., CVPR 2020), Gaussian target form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posegraph.codecs.common import (
    check_heatmaps,
    check_keypoints,
    default_blur_kernel,
    flip_heatmaps,
    gaussian_heatmaps,
    heatmap_maximum,
    refine_dark,
)


@dataclass
class UDPHeatmap:
    """Gaussian heatmaps on the UDP grid, decoded by a Taylor step on the blurred log-heatmap.

    Shapes: N instances (crops), K keypoints; ``input_size`` = (w, h) of the model input in
    pixels, ``heatmap_size`` = (W, H) of its output.

    UDP measures images in pixel-to-pixel intervals: input pixel 0 maps to heatmap pixel 0
    and input pixel w - 1 to heatmap pixel W - 1, so x_heatmap = x * (W - 1) / (w - 1). On
    that grid a horizontal flip maps the heatmap onto itself exactly, so the flip test needs
    no shift and has no bias. The Gaussian sits at the sub-pixel position on a window of
    3 sigma around the nearest pixel.

    Args:
        input_size: (w, h) model input in pixels.
        heatmap_size: (W, H) model output in pixels.
        sigma: Gaussian standard deviation in heatmap pixels.
        blur_kernel_size: blur before the Taylor step; None picks about 6 sigma - 1.
    """

    input_size: tuple[int, int] = (192, 256)
    heatmap_size: tuple[int, int] = (48, 64)
    sigma: float = 2.0
    blur_kernel_size: int | None = None

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)
        self.heatmap_size = tuple(int(v) for v in self.heatmap_size)
        if self.blur_kernel_size is None:
            self.blur_kernel_size = default_blur_kernel(self.sigma)

    @property
    def scale(self) -> np.ndarray:
        """(2,) heatmap pixels per input pixel along x and y, on the (size - 1) grid."""
        return (np.array(self.heatmap_size, np.float32) - 1) / (
            np.array(self.input_size, np.float32) - 1
        )

    def encode(
        self, keypoints: np.ndarray, keypoints_visible: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Training targets.

        Args:
            keypoints: (N, K, 2) in input pixels.
            keypoints_visible: (N, K) annotation flags; > 0 means annotated. None: all.

        Returns:
            ``heatmaps`` (N, K, H, W) float32 in [0, 1] and ``keypoint_weights`` (N, K) float32.
        """
        keypoints, visible = check_keypoints(keypoints, keypoints_visible, "UDPHeatmap.encode")
        heatmaps, weights = gaussian_heatmaps(
            keypoints * self.scale, visible, self.heatmap_size, self.sigma
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
        heatmaps = check_heatmaps(heatmaps, self.heatmap_size, "UDPHeatmap.decode")
        locations, scores = heatmap_maximum(heatmaps)
        locations = refine_dark(locations, heatmaps, self.blur_kernel_size)
        return locations / self.scale, scores

    def flip_back(self, heatmaps: np.ndarray, flip_indices: np.ndarray) -> np.ndarray:
        """Heatmaps of a horizontally flipped input, mirrored and left/right-swapped back.

        Args:
            heatmaps: (N, K, H, W) from the flipped input.
            flip_indices: (K,) the skeleton's ``flip_indices``.

        Returns:
            (N, K, H, W) aligned with the unflipped input; no shift on the UDP grid.
        """
        heatmaps = check_heatmaps(heatmaps, self.heatmap_size, "UDPHeatmap.flip_back")
        return flip_heatmaps(heatmaps, flip_indices, shift=False)

    def decode_flip_test(
        self, heatmaps: np.ndarray, flipped: np.ndarray, flip_indices: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints of the flip test: the crops' heatmaps averaged with their mirrors',
        which the UDP grid aligns exactly. Shapes as :meth:`MSRAHeatmap.decode_flip_test`."""
        return self.decode((heatmaps + self.flip_back(flipped, flip_indices)) * 0.5)
