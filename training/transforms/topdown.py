"""Top-down person crops: box to centre and scale, affine crops and their inverse, augmentation.

Follows the official HRNet code (``lib/utils/transforms.py``, ``lib/dataset/JointsDataset.py``)
and, for the UDP variant, Huang et al.'s ``get_warp_matrix``. Shapes: K keypoints; keypoints are
(K, 3) float32 rows of x, y (image pixels) and a visibility flag (0 unlabelled, > 0 labelled).
A box's extent is a ``center`` (2,) in pixels and a ``scale`` (2,) in units of ``PIXEL_STD``
pixels, as in the reference code, so that ``scale * 200`` is the crop's size in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: The reference code measures box extents in units of 200 pixels.
PIXEL_STD = 200.0
#: Boxes are enlarged by this factor so that the crop holds some context around the person.
BOX_PADDING = 1.25

#: Upper-body keypoints per skeleton, for half-body crops (the MMPose dataset metadata).
UPPER_BODY: dict[str, tuple[int, ...]] = {
    "coco17": tuple(range(11)),
    "wholebody133": (*range(11), *range(23, 133)),
    "crowdpose14": (0, 1, 2, 3, 4, 5, 12, 13),
    "mpii16": tuple(range(7, 16)),
}


def upper_body_mask(skeleton: str, num_keypoints: int) -> np.ndarray:
    """(K,) bool mask of the upper body of ``skeleton``; raises for an unknown skeleton."""
    if skeleton not in UPPER_BODY:
        raise ValueError(f"no upper-body keypoints for skeleton {skeleton!r}: {sorted(UPPER_BODY)}")
    mask = np.zeros(num_keypoints, dtype=bool)
    mask[list(UPPER_BODY[skeleton])] = True
    return mask


def box_to_center_scale(
    box: np.ndarray, aspect_ratio: float, padding: float = BOX_PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale of a box, widened or heightened to the model's aspect ratio.

    Args:
        box: (4,) x, y, w, h in pixels.
        aspect_ratio: model input width / height.
        padding: factor applied to the scale (1.25 in the reference code).

    Returns:
        center (2,) float32 pixels, and scale (2,) float32 in units of ``PIXEL_STD``.
    """
    x, y, w, h = (float(v) for v in box[:4])
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / PIXEL_STD, h / PIXEL_STD], dtype=np.float32) * padding
    return center, scale


def _rotate(point: np.ndarray, radians: float) -> np.ndarray:
    sn, cs = np.sin(radians), np.cos(radians)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs], np.float32)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The point that makes (a, b, c) a right angle at b, turning counter-clockwise."""
    direction = a - b
    return b + np.array([-direction[1], direction[0]], dtype=np.float32)


def affine_matrix(
    center: np.ndarray,
    scale: np.ndarray,
    rotation: float,
    output_size: tuple[int, int],
    inverse: bool = False,
) -> np.ndarray:
    """The (2, 3) matrix from image pixels to crop pixels (MSRA / official HRNet convention).

    Args:
        center: (2,) crop centre in image pixels.
        scale: (2,) crop size in units of ``PIXEL_STD``; only the width sets the zoom, the height
            follows from ``output_size`` (the box was fitted to its aspect ratio).
        rotation: degrees, counter-clockwise in the image.
        output_size: (w, h) of the crop.
        inverse: give the matrix from crop pixels back to image pixels.
    """
    src_w = float(scale[0]) * PIXEL_STD
    dst_w, dst_h = output_size
    src_dir = _rotate(np.array([0.0, src_w * -0.5]), np.pi * rotation / 180.0)
    dst_dir = np.array([0.0, dst_w * -0.5], dtype=np.float32)
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + src_dir
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + dst_dir
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    if inverse:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def udp_matrix(
    center: np.ndarray,
    scale: np.ndarray,
    rotation: float,
    output_size: tuple[int, int],
    inverse: bool = False,
) -> np.ndarray:
    """The (2, 3) image-to-crop matrix of Unbiased Data Processing (``get_warp_matrix``).

    UDP measures sizes in pixel intervals: the crop spans ``output_size - 1`` and the box
    ``scale * 200``, so that flipping a crop maps pixel centres onto pixel centres.
    Arguments as :func:`affine_matrix`.
    """
    theta = np.deg2rad(rotation)
    size_dst = np.asarray(output_size, dtype=np.float64) - 1.0
    size_target = np.asarray(scale, dtype=np.float64) * PIXEL_STD
    size_input = np.asarray(center, dtype=np.float64) * 2.0
    scale_x, scale_y = size_dst / size_target
    cs, sn = np.cos(theta), np.sin(theta)
    matrix = np.array(
        [
            [
                cs * scale_x,
                -sn * scale_x,
                scale_x
                * (-0.5 * size_input[0] * cs + 0.5 * size_input[1] * sn + 0.5 * size_target[0]),
            ],
            [
                sn * scale_y,
                cs * scale_y,
                scale_y
                * (-0.5 * size_input[0] * sn - 0.5 * size_input[1] * cs + 0.5 * size_target[1]),
            ],
        ]
    )
    if inverse:
        matrix = cv2.invertAffineTransform(matrix)
    return matrix.astype(np.float32)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (..., 2) points; returns float32 of the same shape."""
    points = np.asarray(points, dtype=np.float32)
    flat = points.reshape(-1, 2)
    out = flat @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32)
    return out.reshape(points.shape)


def flip_keypoints(keypoints: np.ndarray, image_width: int, flip_indices: np.ndarray) -> np.ndarray:
    """Mirror (K, 3) keypoints in an image of ``image_width`` and swap left and right.

    Pixel centres mirror as ``x -> width - 1 - x`` (as ``fliplr_joints`` does); unlabelled
    keypoints keep their zeros.
    """
    flipped = keypoints[flip_indices].copy()
    labelled = flipped[:, 2] > 0
    flipped[labelled, 0] = image_width - 1 - flipped[labelled, 0]
    return flipped


def half_body_box(
    keypoints: np.ndarray,
    upper_body: np.ndarray,
    aspect_ratio: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Centre and scale around the upper or the lower body, or None if too few points.

    As ``half_body_transform`` in the reference: pick the upper body half the time (when it has
    more than two labelled points), fit a box to the chosen points, fix its aspect ratio and
    enlarge it 1.5 times.

    Args:
        keypoints: (K, 3).
        upper_body: (K,) bool, which keypoints belong to the upper body.
        aspect_ratio: model input width / height.
        rng: the sample's random generator.
    """
    labelled = keypoints[:, 2] > 0
    upper = keypoints[labelled & upper_body, :2]
    lower = keypoints[labelled & ~upper_body, :2]
    if rng.random() < 0.5 and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
        return None
    top_left, bottom_right = chosen.min(axis=0), chosen.max(axis=0)
    center = chosen.mean(axis=0).astype(np.float32)
    w, h = (bottom_right - top_left).astype(np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h], np.float32) / PIXEL_STD * 1.5


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and saturation, each by a factor in [1 - s, 1 + s].

    Args:
        image: (H, W, 3) uint8 BGR.
        rng: the sample's random generator.
        strength: s; 0 returns the image unchanged.
    """
    if strength <= 0:
        return image
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    out = image.astype(np.float32) * brightness
    mean = out.mean()
    out = (out - mean) * contrast + mean
    gray = out.mean(axis=2, keepdims=True)
    out = (out - gray) * saturation + gray
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass
class Augmentation:
    """Random changes applied to training crops (the HRNet COCO recipe by default).

    Attributes:
        scale_factor: the scale is multiplied by ``clip(1 + N(0, 1) * f, 1 - f, 1 + f)``.
        rotation_factor: degrees; rotation is ``clip(N(0, 1) * r, -2r, 2r)`` ...
        rotation_p: ... with this probability, else 0.
        flip_p: probability of a horizontal flip with left/right swap.
        half_body_p: probability of cropping the upper or lower body only ...
        half_body_min_keypoints: ... when more than this many keypoints are labelled.
        color_strength: colour jitter factor (see :func:`color_jitter`).
    """

    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_p: float = 0.6
    flip_p: float = 0.5
    half_body_p: float = 0.3
    half_body_min_keypoints: int = 8
    color_strength: float = 0.2


@dataclass
class Crop:
    """A person crop ready for the codec.

    Attributes:
        image: (h, w, 3) uint8 BGR at the model input size.
        keypoints: (K, 3) float32 x, y in crop pixels, visibility flag.
        center, scale: (2,) the crop's extent in the (unflipped) image, for mapping back.
        rotation: degrees.
        flipped: whether the image was mirrored before cropping.
    """

    image: np.ndarray
    keypoints: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    rotation: float
    flipped: bool


@dataclass
class TopDownAffine:
    """Crops one person to the model's input size, with optional augmentation.

    Args:
        input_size: (w, h) model input.
        flip_indices: (K,) the skeleton's flip permutation.
        upper_body: (K,) bool upper-body mask for half-body crops; None disables them.
        udp: use the UDP warp (:func:`udp_matrix`) instead of the MSRA one.
        augmentation: None for evaluation crops.
    """

    input_size: tuple[int, int]
    flip_indices: np.ndarray
    upper_body: np.ndarray | None = None
    udp: bool = False
    augmentation: Augmentation | None = None

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[0] / self.input_size[1]

    def matrix(
        self, center: np.ndarray, scale: np.ndarray, rotation: float, inverse: bool = False
    ) -> np.ndarray:
        """(2, 3) image-to-crop matrix (crop-to-image with ``inverse``)."""
        make = udp_matrix if self.udp else affine_matrix
        return make(center, scale, rotation, self.input_size, inverse=inverse)

    def __call__(
        self,
        image: np.ndarray,
        keypoints: np.ndarray,
        center: np.ndarray,
        scale: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> Crop:
        """Crop ``image`` (H, W, 3) around ``center``/``scale``; keypoints (K, 3) follow.

        ``rng`` is required when augmenting; the same generator state gives the same crop.
        """
        keypoints = np.asarray(keypoints, dtype=np.float32).copy()
        center = np.asarray(center, dtype=np.float32).copy()
        scale = np.asarray(scale, dtype=np.float32).copy()
        rotation, flipped = 0.0, False
        aug = self.augmentation
        if aug is not None:
            if rng is None:
                raise ValueError("TopDownAffine: augmentation needs a random generator `rng`")
            labelled = int((keypoints[:, 2] > 0).sum())
            if (
                self.upper_body is not None
                and labelled > aug.half_body_min_keypoints
                and rng.random() < aug.half_body_p
            ):
                half = half_body_box(keypoints, self.upper_body, self.aspect_ratio, rng)
                if half is not None:
                    center, scale = half
            sf, rf = aug.scale_factor, aug.rotation_factor
            scale = scale * float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
            if rng.random() < aug.rotation_p:
                rotation = float(np.clip(rng.standard_normal() * rf, -rf * 2, rf * 2))
            if rng.random() < aug.flip_p:
                flipped = True
                image = image[:, ::-1]
                keypoints = flip_keypoints(keypoints, image.shape[1], self.flip_indices)
                center[0] = image.shape[1] - center[0] - 1
        matrix = self.matrix(center, scale, rotation)
        crop = cv2.warpAffine(
            np.ascontiguousarray(image), matrix, self.input_size, flags=cv2.INTER_LINEAR
        )
        if aug is not None:
            # on the crop, not the whole image (which took 80% of a sample's time at
            # 640x480): brightness and saturation act per pixel, contrast pivots on the
            # crop's mean
            crop = color_jitter(crop, rng, aug.color_strength)
        out = keypoints.copy()
        out[:, :2] = transform_points(keypoints[:, :2], matrix)
        out[keypoints[:, 2] <= 0, :2] = 0.0
        return Crop(crop, out, center, scale, rotation, flipped)

    def to_image(
        self, points: np.ndarray, center: np.ndarray, scale: np.ndarray, rotation: float = 0.0
    ) -> np.ndarray:
        """Map (..., 2) crop pixels back to image pixels (for predictions)."""
        return transform_points(points, self.matrix(center, scale, rotation, inverse=True))
