"""Helpers shared by the codecs: Gaussian targets, heatmap peaks and their refinement, flips.

Shapes follow the codec docstrings: N instances, K keypoints, heatmaps (..., H, W). Heatmap
coordinates put pixel ``(i, j)`` of row ``j`` and column ``i`` at ``(x, y) = (i, j)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class PoseInstances:
    """Poses decoded from one whole image (bottom-up and one-stage codecs).

    Attributes:
        boxes: (N, 4) float32 person boxes x1, y1, x2, y2 in input pixels.
        scores: (N,) float32 instance scores in [0, 1], best first.
        keypoints: (N, K, 2) float32 (x, y) in input pixels.
        keypoint_scores: (N, K) float32 in [0, 1].
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray
    keypoint_scores: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, computed without overflow warnings for large negative logits."""
    x = np.asarray(x, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def draw_gaussian(
    heatmap: np.ndarray, center: np.ndarray, sigma: float, radius: int, truncate: bool = True
) -> bool:
    """Write a 2-D Gaussian peak of height 1 into ``heatmap`` (H, W) by element-wise maximum.

    Args:
        heatmap: (H, W) float32, changed in place.
        center: (2,) peak position (x, y) in heatmap pixels; may be fractional.
        sigma: standard deviation in heatmap pixels.
        radius: the peak covers the (2r+1)^2 window around the nearest pixel to ``center``
            (rounding half up, as the reference MSRA targets do with ``int(x + 0.5)``).
        truncate: draw only on that window (MSRA, UDP, CenterNet); False draws the peak over
            the whole map (the unbiased targets), the window then only decides visibility.

    Returns:
        False if the window misses the map entirely (nothing drawn: the point is out of view
        and its target weight should be 0), True otherwise.
    """
    h, w = heatmap.shape
    cx, cy = float(center[0]), float(center[1])
    ix, iy = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
    if ix - radius >= w or iy - radius >= h or ix + radius < 0 or iy + radius < 0:
        return False
    if truncate:
        x0, y0 = max(ix - radius, 0), max(iy - radius, 0)
        x1, y1 = min(ix + radius + 1, w), min(iy + radius + 1, h)
    else:
        x0, y0, x1, y1 = 0, 0, w, h
    xs = np.arange(x0, x1, dtype=np.float32) - np.float32(cx)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    peak = np.exp(-(xs**2 + ys**2) / np.float32(2.0 * sigma**2))
    window = heatmap[y0:y1, x0:x1]
    np.maximum(window, peak, out=window)
    return True


def gaussian_heatmaps(
    centers: np.ndarray,
    visible: np.ndarray,
    heatmap_size: tuple[int, int],
    sigma: float,
    truncate: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One Gaussian heatmap per keypoint, with the weights that mask the missing ones.

    Args:
        centers: (N, K, 2) peak positions (x, y) in heatmap pixels.
        visible: (N, K) annotation flags; a keypoint counts when its flag is > 0.
        heatmap_size: (W, H).
        sigma: standard deviation in heatmap pixels; the window radius is 3 sigma.
        truncate: see :func:`draw_gaussian`.

    Returns:
        heatmaps (N, K, H, W) float32, and weights (N, K) float32: 1 where a peak was drawn,
        0 for keypoints not annotated or out of the map.
    """
    n, k = centers.shape[:2]
    w, h = heatmap_size
    heatmaps = np.zeros((n, k, h, w), dtype=np.float32)
    weights = np.zeros((n, k), dtype=np.float32)
    radius = int(3 * sigma + 0.5)
    for i, j in zip(*np.nonzero(visible > 0), strict=True):
        if np.all(np.isfinite(centers[i, j])):
            weights[i, j] = draw_gaussian(heatmaps[i, j], centers[i, j], sigma, radius, truncate)
    return heatmaps, weights


def heatmap_maximum(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer argmax of each heatmap.

    Args:
        heatmaps: (..., H, W).

    Returns:
        locations (..., 2) float32 (x, y) in heatmap pixels, and values (...) at them.
    """
    *lead, h, w = heatmaps.shape
    flat = heatmaps.reshape(-1, h * w)
    idx = np.argmax(flat, axis=1)
    vals = flat[np.arange(flat.shape[0]), idx]
    locs = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    return locs.reshape(*lead, 2), vals.reshape(lead).astype(np.float32)


def refine_quarter_offset(locations: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """Move each integer maximum a quarter pixel towards its higher neighbour, per axis.

    This is the post-processing of the official HRNet ``get_final_preds``; maxima on the outer
    ring of the map, where a neighbour is missing, are left as they are.

    Args:
        locations: (..., 2) integer (x, y) maxima from :func:`heatmap_maximum`.
        heatmaps: (..., H, W) the heatmaps they come from.

    Returns:
        (..., 2) float32 refined locations.
    """
    *lead, h, w = heatmaps.shape
    maps = heatmaps.reshape(-1, h, w)
    locs = locations.reshape(-1, 2).astype(np.float32)
    px, py = locs[:, 0].astype(np.int64), locs[:, 1].astype(np.int64)
    inner = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    n = np.nonzero(inner)[0]
    x, y = px[inner], py[inner]
    dx = maps[n, y, x + 1] - maps[n, y, x - 1]
    dy = maps[n, y + 1, x] - maps[n, y - 1, x]
    locs[n, 0] += 0.25 * np.sign(dx)
    locs[n, 1] += 0.25 * np.sign(dy)
    return locs.reshape(*lead, 2)


def blur_heatmaps(heatmaps: np.ndarray, kernel_size: int) -> np.ndarray:
    """Gaussian-blur each (H, W) map, rescaled so that each keeps its original maximum.

    The blur turns a network's ragged peak back into the Gaussian that DARK's quadratic model
    of the log-heatmap assumes; keeping the maximum keeps the peak value usable as a score.
    """
    *lead, h, w = heatmaps.shape
    maps = heatmaps.reshape(-1, h, w).astype(np.float32)
    out = np.empty_like(maps)
    for i, hm in enumerate(maps):
        peak = hm.max()
        blurred = cv2.GaussianBlur(hm, (kernel_size, kernel_size), 0)
        top = blurred.max()
        out[i] = blurred * (peak / top) if top > 0 else blurred
    return out.reshape(*lead, h, w)


def refine_dark(locations: np.ndarray, heatmaps: np.ndarray, blur_kernel_size: int) -> np.ndarray:
    """Sub-pixel maxima by a second-order Taylor step on the log of the blurred heatmap (DARK).

    For a Gaussian heatmap the log is a quadratic, so one Newton step from the integer maximum
    lands on the true centre: ``x* = x - H^-1 g`` with gradient ``g`` and Hessian ``H`` from
    central differences. Maxima where the Hessian is not negative definite are left as they
    are. Each step is kept to one pixel per axis: a Gaussian's centre lies within half a
    pixel of its maximum (one, once the blur and noise have moved the maximum), and on a flat
    or ragged map (an untrained model, a keypoint out of view) the quadratic fits noise and
    its step would fly off the map. Locations stay on the map, as the quarter-pixel
    refinement's do. UDP decoding uses the same step on its own grid.

    Args:
        locations: (..., 2) integer (x, y) maxima from :func:`heatmap_maximum`.
        heatmaps: (..., H, W).
        blur_kernel_size: odd size of the Gaussian blur kernel (about 6 sigma - 1).

    Returns:
        (..., 2) float32 refined locations.
    """
    *lead, h, w = heatmaps.shape
    logs = np.log(np.maximum(blur_heatmaps(heatmaps, blur_kernel_size), 1e-10))
    # Edge padding gives every maximum its 3x3 neighbourhood, borders included.
    logs = np.pad(logs.reshape(-1, h, w), ((0, 0), (1, 1), (1, 1)), mode="edge")
    locs = locations.reshape(-1, 2).astype(np.float32)
    n = np.arange(locs.shape[0])
    x = locs[:, 0].astype(np.int64) + 1
    y = locs[:, 1].astype(np.int64) + 1

    def at(dx: int, dy: int) -> np.ndarray:
        return logs[n, y + dy, x + dx].astype(np.float64)

    centre = at(0, 0)
    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = at(1, 0) - 2 * centre + at(-1, 0)
    dyy = at(0, 1) - 2 * centre + at(0, -1)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    ok = (det > 1e-12) & (dxx < 0)
    safe = np.where(ok, det, 1.0)
    step_x = np.clip(np.where(ok, (dyy * gx - dxy * gy) / safe, 0.0), -1.0, 1.0)
    step_y = np.clip(np.where(ok, (dxx * gy - dxy * gx) / safe, 0.0), -1.0, 1.0)
    locs[:, 0] = np.clip(locs[:, 0] - step_x.astype(np.float32), 0, w - 1)
    locs[:, 1] = np.clip(locs[:, 1] - step_y.astype(np.float32), 0, h - 1)
    return locs.reshape(*lead, 2)


def flip_heatmaps(heatmaps: np.ndarray, flip_indices: np.ndarray, shift: bool) -> np.ndarray:
    """Turn heatmaps predicted on a horizontally flipped input back into the input's frame.

    Args:
        heatmaps: (N, K, H, W) from the flipped input.
        flip_indices: (K,) the skeleton's ``flip_indices`` (left/right swap).
        shift: move the result one heatmap pixel right, as the official HRNet flip test does
            for heatmaps whose pixel grid is not symmetric under the flip (everything but UDP).

    Returns:
        (N, K, H, W) heatmaps aligned with the unflipped input.
    """
    if heatmaps.ndim != 4 or heatmaps.shape[1] != len(flip_indices):
        raise ValueError(
            f"flip_heatmaps: heatmaps {heatmaps.shape} do not match {len(flip_indices)} "
            "flip indices; pass (N, K, H, W) with K the skeleton's keypoint count"
        )
    out = heatmaps[:, flip_indices, :, ::-1].copy()
    if shift:
        out[..., 1:] = out[..., :-1].copy()
    return out


def peak_nms(heat: np.ndarray) -> np.ndarray:
    """Zero every value that is not the maximum of its 3x3 neighbourhood.

    The numpy form of CenterNet's ``heat * (max_pool3x3(heat) == heat)``; plateaus keep all
    their pixels, as there.

    Args:
        heat: (C, H, W).

    Returns:
        (C, H, W) the local maxima, zeros elsewhere.
    """
    padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), mode="constant", constant_values=-np.inf)
    h, w = heat.shape[1:]
    hmax = np.max(
        np.stack([padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]),
        axis=0,
    )
    return np.where(hmax == heat, heat, 0).astype(heat.dtype)


def topk(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of a 1-D array, best first.

    Returns:
        (indices (k',), values (k',)) with k' = min(k, len(values)).
    """
    k = min(k, values.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64), values[:0]
    idx = np.argpartition(-values, k - 1)[:k]
    idx = idx[np.argsort(-values[idx], kind="stable")]
    return idx.astype(np.int64), values[idx]


def check_keypoints(
    keypoints: np.ndarray, keypoints_visible: np.ndarray | None, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate encoder inputs and give them one dtype.

    Args:
        keypoints: (N, K, 2) (x, y) in input-image pixels.
        keypoints_visible: (N, K) annotation flags (COCO 0/1/2, or weights); None: all 1.
        where: the caller's name, for the error message.

    Returns:
        keypoints (N, K, 2) float32 and visibility (N, K) float32.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(
            f"{where}: keypoints have shape {keypoints.shape}; expected (N, K, 2) in "
            "input-image pixels (add a leading axis for a single instance)"
        )
    if keypoints_visible is None:
        return keypoints, np.ones(keypoints.shape[:2], dtype=np.float32)
    visible = np.asarray(keypoints_visible, dtype=np.float32)
    if visible.shape != keypoints.shape[:2]:
        raise ValueError(
            f"{where}: keypoints_visible has shape {visible.shape}; expected "
            f"{keypoints.shape[:2]} to match keypoints {keypoints.shape}"
        )
    return keypoints, visible


def check_heatmaps(heatmaps: np.ndarray, heatmap_size: tuple[int, int], where: str) -> np.ndarray:
    """Validate decoder input: (N, K, H, W) at the codec's heatmap size, as float32."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    w, h = heatmap_size
    if heatmaps.ndim != 4 or heatmaps.shape[2:] != (h, w):
        raise ValueError(
            f"{where}: heatmaps have shape {heatmaps.shape}; expected (N, K, {h}, {w}) for "
            f"heatmap_size=({w}, {h}); check the codec's heatmap_size against the model"
        )
    return heatmaps


def default_blur_kernel(sigma: float) -> int:
    """Odd blur kernel of about 6 sigma - 1: 11 for sigma 2, 17 for sigma 3 (the DARK setups)."""
    return int(6 * sigma - 1) | 1
