"""Keypoint sets: names, left/right flip pairs, limbs for drawing, OKS sigmas, body parts.

Every pose in posegraph names its skeleton (``Poses.skeleton``); this module is where that name
resolves. The keypoint orders follow the datasets the models are trained on (COCO, COCO-WholeBody,
MPII, CrowdPose) so that outputs and annotations index the same way.

>>> from posegraph import skeletons
>>> skel = skeletons.get("coco17")
>>> skel.num_keypoints, skel.keypoint_names[skel.flip_indices[1]]
(17, 'right_eye')
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

__all__ = [
    "SKELETONS",
    "Skeleton",
    "coco17",
    "crowdpose14",
    "get",
    "mpii16",
    "wholebody133",
]


@dataclass(frozen=True, eq=False)
class Skeleton:
    """A named keypoint set.

    Attributes:
        name: registry name, the value of ``Poses.skeleton``.
        keypoint_names: K names in model-output order.
        flip_pairs: (left, right) index pairs swapped by a horizontal flip; keypoints on the
            mid-line (nose, neck, chin) are in no pair.
        limbs: (a, b) index pairs joined by a line when a pose is drawn.
        sigmas: (K,) float64 per-keypoint OKS constants, as the dataset's evaluation uses them
            (a fraction of the object scale, so unitless).
        parts: part name -> ``range`` of keypoint indices; the ranges are disjoint.
        flip_indices: (K,) int64 permutation, derived from ``flip_pairs``: after a horizontal
            flip, output keypoint ``k`` is input keypoint ``flip_indices[k]``. It is its own
            inverse.
    """

    name: str
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    limbs: tuple[tuple[int, int], ...]
    sigmas: np.ndarray
    parts: Mapping[str, range]
    flip_indices: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        k = len(self.keypoint_names)
        where = f"skeleton {self.name!r}"
        if len(set(self.keypoint_names)) != k:
            raise ValueError(f"{where}: keypoint names are not unique")

        sigmas = np.asarray(self.sigmas, dtype=np.float64)
        if sigmas.shape != (k,):
            raise ValueError(f"{where}: {sigmas.shape[0]} sigmas for {k} keypoints")
        sigmas.setflags(write=False)
        object.__setattr__(self, "sigmas", sigmas)

        flip = np.arange(k, dtype=np.int64)
        for a, b in self.flip_pairs:
            if not (0 <= a < k and 0 <= b < k) or a == b:
                raise ValueError(f"{where}: flip pair ({a}, {b}) is not two indices in [0, {k})")
            if flip[a] != a or flip[b] != b:
                raise ValueError(f"{where}: keypoint of flip pair ({a}, {b}) is in two pairs")
            flip[a], flip[b] = b, a
        flip.setflags(write=False)
        object.__setattr__(self, "flip_indices", flip)

        for a, b in self.limbs:
            if not (0 <= a < k and 0 <= b < k):
                raise ValueError(f"{where}: limb ({a}, {b}) is outside [0, {k})")

        covered = np.zeros(k, dtype=np.int64)
        for part, span in self.parts.items():
            if span.start < 0 or span.stop > k or span.step != 1:
                raise ValueError(f"{where}: part {part!r} {span} is not a slice of [0, {k})")
            covered[span.start : span.stop] += 1
        if covered.max(initial=0) > 1:
            raise ValueError(f"{where}: parts overlap")
        object.__setattr__(self, "parts", MappingProxyType(dict(self.parts)))

    def __reduce__(self) -> tuple:
        """Pickled as its fields (its read-only ``parts`` view cannot be): it travels to
        training loader workers and other processes."""
        fields = (self.keypoint_names, self.flip_pairs, self.limbs, np.array(self.sigmas))
        return (Skeleton, (self.name, *fields, dict(self.parts)))

    @property
    def num_keypoints(self) -> int:
        """K, the number of keypoints."""
        return len(self.keypoint_names)

    def index(self, keypoint: str) -> int:
        """Index of a keypoint by name; raises ``ValueError`` naming the nearest names."""
        try:
            return self.keypoint_names.index(keypoint)
        except ValueError:
            near = difflib.get_close_matches(keypoint, self.keypoint_names, n=3)
            raise ValueError(
                f"skeleton {self.name!r} has no keypoint {keypoint!r}; nearest: {near}"
            ) from None


def _pairs_by_name(names: tuple[str, ...], pairs: Iterable[tuple[str, str]]) -> tuple:
    """Turn (name, name) pairs into (index, index) pairs, so tables read as names."""
    lookup = {n: i for i, n in enumerate(names)}
    return tuple((lookup[a], lookup[b]) for a, b in pairs)


def _left_right_pairs(names: tuple[str, ...]) -> tuple:
    """Pair every ``left_*`` name with its ``right_*`` twin (by name, so order cannot drift)."""
    lookup = {n: i for i, n in enumerate(names)}
    return tuple(
        (i, lookup["right_" + n[len("left_") :]])
        for i, n in enumerate(names)
        if n.startswith("left_")
    )


def _chain(indices: Iterable[int], closed: bool = False) -> tuple:
    """Limbs joining consecutive indices (a polyline), closed into a loop if asked."""
    idx = list(indices)
    links = list(zip(idx[:-1], idx[1:], strict=True))
    if closed:
        links.append((idx[-1], idx[0]))
    return tuple(links)


# --- COCO 17 ---------------------------------------------------------------------------------

_COCO_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
_COCO_LIMBS = (
    ("left_ankle", "left_knee"),
    ("left_knee", "left_hip"),
    ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"),
    ("left_hip", "right_hip"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("right_shoulder", "right_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_elbow", "right_wrist"),
    ("left_eye", "right_eye"),
    ("nose", "left_eye"),
    ("nose", "right_eye"),
    ("left_eye", "left_ear"),
    ("right_eye", "right_ear"),
    ("left_ear", "left_shoulder"),
    ("right_ear", "right_shoulder"),
)
# COCO keypoint evaluation constants (cocoapi / xtcocotools COCOeval defaults).
_COCO_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip

coco17 = Skeleton(
    name="coco17",
    keypoint_names=_COCO_NAMES,
    flip_pairs=_left_right_pairs(_COCO_NAMES),
    limbs=_pairs_by_name(_COCO_NAMES, _COCO_LIMBS),
    sigmas=np.array(_COCO_SIGMAS),
    parts={"body": range(0, 17)},
)

# --- COCO-WholeBody 133 ----------------------------------------------------------------------

_FOOT_NAMES = (
    "left_big_toe",
    "left_small_toe",
    "left_heel",
    "right_big_toe",
    "right_small_toe",
    "right_heel",
)
# The 68 face points follow the iBUG-300W layout and keep its numbering as names.
_FACE_NAMES = tuple(f"face-{i}" for i in range(68))
_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")


def _hand_names(side: str) -> tuple[str, ...]:
    """The 21 hand points of one side: root (wrist), then 4 joints per finger, base to tip."""
    return (f"{side}_hand_root",) + tuple(f"{side}_{f}{j}" for f in _FINGERS for j in range(1, 5))


_WB_NAMES = _COCO_NAMES + _FOOT_NAMES + _FACE_NAMES + _hand_names("left") + _hand_names("right")
_WB_PARTS = {
    "body": range(0, 17),
    "foot": range(17, 23),
    "face": range(23, 91),
    "left_hand": range(91, 112),
    "right_hand": range(112, 133),
}

# iBUG-68 mirror image, in face-local numbering: jaw line, brows, nose base, eyes (both lids,
# corners included), outer and inner lips. The nose bridge (27-30), chin (8) and lip mid-line
# points (51, 57, 62, 66) sit on the axis and are not paired.
_FACE_MIRROR = (
    tuple((i, 16 - i) for i in range(8))
    + tuple((17 + i, 26 - i) for i in range(5))
    + ((31, 35), (32, 34))
    + ((36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46))
    + ((48, 54), (49, 53), (50, 52), (55, 59), (56, 58))
    + ((60, 64), (61, 63), (65, 67))
)
_FACE0 = _WB_PARTS["face"].start

# Body, feet and hands pair by their left_/right_ names (left hand <-> right hand point by
# point); the face has no sides in its names and mirrors by the table above.
_WB_FLIP = _left_right_pairs(_WB_NAMES) + tuple((_FACE0 + a, _FACE0 + b) for a, b in _FACE_MIRROR)


def _hand_limbs(side: str) -> tuple:
    """Wrist -> each finger base -> tip, for one hand; the body wrist anchors the hand root."""
    root = _WB_NAMES.index(f"{side}_hand_root")
    links = [(_WB_NAMES.index(f"{side}_wrist"), root)]
    for f in range(5):
        links += _chain([root] + [root + 1 + 4 * f + j for j in range(4)])
    return tuple(links)


_WB_LIMBS = (
    _pairs_by_name(_WB_NAMES, _COCO_LIMBS)
    + _pairs_by_name(
        _WB_NAMES,
        [
            (f"{s}_ankle", f"{s}_{p}")
            for s in ("left", "right")
            for p in ("big_toe", "small_toe", "heel")
        ],
    )
    + _chain(range(_FACE0, _FACE0 + 17))  # jaw
    + _chain(range(_FACE0 + 17, _FACE0 + 22))  # right brow (image left)
    + _chain(range(_FACE0 + 22, _FACE0 + 27))  # left brow
    + _chain(range(_FACE0 + 27, _FACE0 + 31))  # nose bridge
    + _chain(range(_FACE0 + 31, _FACE0 + 36))  # nose base
    + _chain(range(_FACE0 + 36, _FACE0 + 42), closed=True)  # eyes
    + _chain(range(_FACE0 + 42, _FACE0 + 48), closed=True)
    + _chain(range(_FACE0 + 48, _FACE0 + 60), closed=True)  # outer lips
    + _chain(range(_FACE0 + 60, _FACE0 + 68), closed=True)  # inner lips
    + _hand_limbs("left")
    + _hand_limbs("right")
)

# Per-part constants of the COCO-WholeBody evaluation (evaluation/myeval_wholebody.py): body is
# COCO's, both hands share one array.
_WB_FOOT_SIGMAS = (0.068, 0.066, 0.066, 0.092, 0.094, 0.094)
_WB_FACE_SIGMAS = (
    0.042, 0.043, 0.044, 0.043, 0.040, 0.035, 0.031, 0.025, 0.020, 0.023, 0.029, 0.032, 0.037,
    0.038, 0.043, 0.041, 0.045, 0.013, 0.012, 0.011, 0.011, 0.012, 0.012, 0.011, 0.011, 0.013,
    0.015, 0.009, 0.007, 0.007, 0.007, 0.012, 0.009, 0.008, 0.016, 0.010, 0.017, 0.011, 0.009,
    0.011, 0.009, 0.007, 0.013, 0.008, 0.011, 0.012, 0.010, 0.034, 0.008, 0.008, 0.009, 0.008,
    0.008, 0.007, 0.010, 0.008, 0.009, 0.009, 0.009, 0.007, 0.007, 0.008, 0.011, 0.008, 0.008,
    0.008, 0.010, 0.008,
)  # fmt: skip
_WB_HAND_SIGMAS = (
    0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024, 0.035, 0.018, 0.024,
    0.022, 0.026, 0.017, 0.021, 0.021, 0.032, 0.020, 0.019, 0.022, 0.031,
)  # fmt: skip

wholebody133 = Skeleton(
    name="wholebody133",
    keypoint_names=_WB_NAMES,
    flip_pairs=_WB_FLIP,
    limbs=_WB_LIMBS,
    sigmas=np.array(
        _COCO_SIGMAS + _WB_FOOT_SIGMAS + _WB_FACE_SIGMAS + _WB_HAND_SIGMAS + _WB_HAND_SIGMAS
    ),
    parts=_WB_PARTS,
)

# --- MPII 16 ---------------------------------------------------------------------------------

_MPII_NAMES = (
    "right_ankle",
    "right_knee",
    "right_hip",
    "left_hip",
    "left_knee",
    "left_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "right_wrist",
    "right_elbow",
    "right_shoulder",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
)
_MPII_LIMBS = (
    ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"),
    ("right_hip", "pelvis"),
    ("pelvis", "left_hip"),
    ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"),
    ("pelvis", "thorax"),
    ("thorax", "upper_neck"),
    ("upper_neck", "head_top"),
    ("upper_neck", "right_shoulder"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
    ("upper_neck", "left_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
)
# MPII is scored by PCKh and has no OKS constants of its own; these are COCO's, carried over
# joint by joint (MMPose's MPII metainfo), for OKS-based NMS and tracking.
_MPII_SIGMAS = (
    0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026,
    0.026, 0.026, 0.062, 0.072, 0.179, 0.179, 0.072, 0.062,
)  # fmt: skip

mpii16 = Skeleton(
    name="mpii16",
    keypoint_names=_MPII_NAMES,
    flip_pairs=_left_right_pairs(_MPII_NAMES),
    limbs=_pairs_by_name(_MPII_NAMES, _MPII_LIMBS),
    sigmas=np.array(_MPII_SIGMAS),
    parts={"body": range(0, 16)},
)

# --- CrowdPose 14 ----------------------------------------------------------------------------

_CROWDPOSE_NAMES = _COCO_NAMES[5:] + ("top_head", "neck")
_CROWDPOSE_LIMBS = _COCO_LIMBS[:12] + (
    ("top_head", "neck"),
    ("right_shoulder", "neck"),
    ("left_shoulder", "neck"),
)
# CrowdPose evaluation constants (CrowdPose's crowdposetools, as passed to xtcocotools).
_CROWDPOSE_SIGMAS = (
    0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107,
    0.107, 0.087, 0.087, 0.089, 0.089, 0.079, 0.079,
)  # fmt: skip

crowdpose14 = Skeleton(
    name="crowdpose14",
    keypoint_names=_CROWDPOSE_NAMES,
    flip_pairs=_left_right_pairs(_CROWDPOSE_NAMES),
    limbs=_pairs_by_name(_CROWDPOSE_NAMES, _CROWDPOSE_LIMBS),
    sigmas=np.array(_CROWDPOSE_SIGMAS),
    parts={"body": range(0, 14)},
)

SKELETONS: Mapping[str, Skeleton] = MappingProxyType(
    {s.name: s for s in (coco17, wholebody133, mpii16, crowdpose14)}
)


def get(name: str) -> Skeleton:
    """Look a skeleton up by name; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return SKELETONS[name]
    except KeyError:
        near = difflib.get_close_matches(name, SKELETONS, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(
            f"unknown skeleton {name!r}; known skeletons: {sorted(SKELETONS)}.{hint}"
        ) from None
