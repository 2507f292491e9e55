"""Direct coordinate regression (DeepPose-style baselines): keypoints as crop fractions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posegraph.codecs.common import check_keypoints


@dataclass
class RegressionLabel:
    """Targets and decoding for models that regress keypoint coordinates directly.

    Shapes: N instances (crops), K keypoints; ``input_size`` = (w, h) of the model input in
    pixels. With ``normalized=True`` the model works in fractions of the crop, (x / w, y / h),
    which keeps targets in [0, 1] whatever the input size; otherwise in input pixels.

    Args:
        input_size: (w, h) model input in pixels.
        normalized: targets and outputs are fractions of the input size.
    """

    input_size: tuple[int, int] = (192, 256)
    normalized: bool = True

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)

    @property
    def _unit(self) -> np.ndarray:
        """(2,) input pixels per unit of the model's coordinates."""
        return np.array(self.input_size if self.normalized else (1, 1), dtype=np.float32)

    def encode(
        self, keypoints: np.ndarray, keypoints_visible: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Training targets.

        Args:
            keypoints: (N, K, 2) in input pixels.
            keypoints_visible: (N, K) annotation flags; > 0 means annotated. None: all.

        Returns:
            ``keypoint_labels`` (N, K, 2) float32 in the model's units and
            ``keypoint_weights`` (N, K) float32 (1 annotated, else 0).
        """
        keypoints, visible = check_keypoints(keypoints, keypoints_visible, "RegressionLabel.encode")
        return {
            "keypoint_labels": keypoints / self._unit,
            "keypoint_weights": (visible > 0).astype(np.float32),
        }

    def decode(self, coordinates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints from model output.

        Args:
            coordinates: (N, K, 2) in the model's units.

        Returns:
            keypoints (N, K, 2) float32 in input pixels, and scores (N, K) float32, all 1:
            a regression head gives no confidence.
        """
        coordinates = np.asarray(coordinates, dtype=np.float32)
        if coordinates.ndim != 3 or coordinates.shape[-1] != 2:
            raise ValueError(
                f"RegressionLabel.decode: coordinates have shape {coordinates.shape}; "
                "expected (N, K, 2)"
            )
        return coordinates * self._unit, np.ones(coordinates.shape[:2], dtype=np.float32)
