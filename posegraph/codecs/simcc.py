"""SimCC: keypoints as two 1-D classifications, one per axis (SimCC, RTMPose)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posegraph.codecs.common import check_keypoints


@dataclass
class SimCCLabel:
    """1-D x and y classification targets with Gaussian label smoothing, and their decoding.

    Shapes: N instances (crops), K keypoints; ``input_size`` = (w, h) of the model input in
    pixels. Each axis is split into ``split_ratio`` bins per pixel, so the model outputs
    ``simcc_x`` (N, K, w * r) and ``simcc_y`` (N, K, h * r): exactly the two outputs of an
    RTMPose ONNX export, which this decodes as they come (logits are fine: only the argmax
    and the maxima are used).

    Encoding rounds each coordinate to its bin, as RTMPose does, and puts an unnormalised
    Gaussian (peak 1, ``sigma`` in bins, per axis) on it; ``normalize=True`` divides by
    ``sigma * sqrt(2 pi)`` so each label sums to about 1. Decoding takes each argmax divided
    by the ratio; the score is the smaller of the two maxima.

    Args:
        input_size: (w, h) model input in pixels.
        sigma: (sigma_x, sigma_y) in bins; RTMPose uses (4.9, 5.66) at 192x256 and
            (6.93, 7.33) at 288x384, both with ratio 2.
        split_ratio: bins per pixel.
        normalize: scale labels to unit area instead of unit peak.
    """

    input_size: tuple[int, int] = (192, 256)
    sigma: tuple[float, float] = (4.9, 5.66)
    split_ratio: float = 2.0
    normalize: bool = False

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)
        if np.isscalar(self.sigma):
            self.sigma = (float(self.sigma), float(self.sigma))
        self.sigma = tuple(float(s) for s in self.sigma)

    @property
    def bins(self) -> tuple[int, int]:
        """(Wr, Hr): the lengths of the x and y label vectors."""
        w, h = self.input_size
        return int(round(w * self.split_ratio)), int(round(h * self.split_ratio))

    def encode(
        self, keypoints: np.ndarray, keypoints_visible: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Training targets.

        Args:
            keypoints: (N, K, 2) in input pixels.
            keypoints_visible: (N, K) annotation flags; > 0 means annotated. None: all.

        Returns:
            ``simcc_x`` (N, K, Wr), ``simcc_y`` (N, K, Hr) float32 and ``keypoint_weights``
            (N, K) float32 (0 when not annotated or when the 3-sigma window misses the range).
        """
        keypoints, visible = check_keypoints(keypoints, keypoints_visible, "SimCCLabel.encode")
        centers = np.round(keypoints * self.split_ratio)
        labels = []
        inside = visible > 0
        for axis, (size, sigma) in enumerate(zip(self.bins, self.sigma, strict=True)):
            mu = centers[..., axis : axis + 1]
            radius = 3 * sigma
            inside &= (mu[..., 0] - radius < size) & (mu[..., 0] + radius + 1 >= 0)
            bins = np.arange(size, dtype=np.float32)
            label = np.exp(-((bins - mu) ** 2) / np.float32(2 * sigma**2))
            if self.normalize:
                label /= np.float32(sigma * np.sqrt(2 * np.pi))
            labels.append(label)
        weights = inside.astype(np.float32)
        simcc_x, simcc_y = (label * weights[..., None] for label in labels)
        return {
            "simcc_x": simcc_x.astype(np.float32),
            "simcc_y": simcc_y.astype(np.float32),
            "keypoint_weights": weights,
        }

    def decode(self, simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints from model output.

        Args:
            simcc_x: (N, K, Wr).
            simcc_y: (N, K, Hr).

        Returns:
            keypoints (N, K, 2) float32 in input pixels, and scores (N, K) float32: the
            smaller of the two maxima (as RTMPose reports them).
        """
        simcc_x = np.asarray(simcc_x, dtype=np.float32)
        simcc_y = np.asarray(simcc_y, dtype=np.float32)
        wr, hr = self.bins
        if (
            simcc_x.ndim != 3
            or simcc_y.shape[:2] != simcc_x.shape[:2]
            or (simcc_x.shape[2], simcc_y.shape[-1]) != (wr, hr)
        ):
            raise ValueError(
                f"SimCCLabel.decode: got simcc_x {simcc_x.shape}, simcc_y {simcc_y.shape}; "
                f"expected (N, K, {wr}) and (N, K, {hr}) for input_size={self.input_size} and "
                f"split_ratio={self.split_ratio}; set both to the model's"
            )
        x = np.argmax(simcc_x, axis=-1)
        y = np.argmax(simcc_y, axis=-1)
        scores = np.minimum(simcc_x.max(axis=-1), simcc_y.max(axis=-1))
        keypoints = np.stack([x, y], axis=-1).astype(np.float32) / np.float32(self.split_ratio)
        return keypoints, scores.astype(np.float32)
