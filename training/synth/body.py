"""The articulated figure: body shape, appearance, joint angles and forward kinematics.

A person is a 3D skeleton with volumes (capsules for limbs, convex hulls of sampled surfaces for
torso, head, hair and hands), placed by forward kinematics from a vector of joint angles. The
renderer projects it through a pinhole camera and paints the volumes as shaded 2D shapes in
depth order, which is what "2.5D" means here: true 3D geometry, drawn as layered flat shapes.

Body frame (metres): origin at the mid-point of the hip joints, x to the person's LEFT, y up,
z forward (the way the person faces). A person facing the camera therefore has their left side
on the image's right, as COCO labels it.

All 133 keypoints follow COCO-WholeBody order (``posegraph.skeletons.wholebody133``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from posegraph.skeletons import wholebody133

K = wholebody133.num_keypoints
FOOT0 = wholebody133.parts["foot"].start
FACE0 = wholebody133.parts["face"].start
LHAND0 = wholebody133.parts["left_hand"].start
RHAND0 = wholebody133.parts["right_hand"].start

# Joint angles, radians. Sides use the same sign conventions, mirrored: positive abduction moves
# either limb away from the body, positive flexion moves it forward.
DOF_NAMES: tuple[str, ...] = (
    "root_pitch",  # whole body tips forward (+) or back (-); lying is -pi/2 or +pi/2
    "root_roll",  # whole body tips to its left (+)
    "spine_bend",  # chest forward
    "spine_side",  # chest to the left
    "spine_twist",  # chest turns to the left
    "neck_pitch",  # looks down
    "neck_yaw",  # looks to its left
    "neck_roll",
    *(
        f"{j}_{s}"
        for s in ("l", "r")
        for j in (
            "sho_flex",
            "sho_abd",
            "sho_twist",
            "elbow",
            "wrist_flex",
            "hip_flex",
            "hip_abd",
            "knee",
            "ankle",
            "fingers",
            "thumb",
        )
    ),
)
DOF = {name: i for i, name in enumerate(DOF_NAMES)}
NUM_DOF = len(DOF_NAMES)

_SIDE_LIMITS = {
    "sho_flex": (-0.9, 3.0),
    "sho_abd": (-0.2, 2.9),
    "sho_twist": (-1.0, 1.2),
    "elbow": (0.0, 2.5),
    "wrist_flex": (-1.0, 1.0),
    "hip_flex": (-0.5, 2.2),
    "hip_abd": (-0.25, 0.9),
    "knee": (0.0, 2.5),
    "ankle": (-0.7, 0.5),
    "fingers": (0.0, 1.5),
    "thumb": (0.0, 1.0),
}
_CENTRE_LIMITS = {
    "root_pitch": (-1.6, 1.6),
    "root_roll": (-1.6, 1.6),
    "spine_bend": (-0.35, 1.4),
    "spine_side": (-0.4, 0.4),
    "spine_twist": (-0.6, 0.6),
    "neck_pitch": (-0.6, 0.7),
    "neck_yaw": (-1.2, 1.2),
    "neck_roll": (-0.35, 0.35),
}


def _limits() -> np.ndarray:
    lim = np.zeros((NUM_DOF, 2))
    for name, i in DOF.items():
        base = name[:-2] if name[-2:] in ("_l", "_r") else name
        lim[i] = _SIDE_LIMITS[base] if base in _SIDE_LIMITS else _CENTRE_LIMITS[name]
    return lim


DOF_LIMITS = _limits()
"""(NUM_DOF, 2) lower and upper joint limits, radians (finger curl is radians per joint)."""


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class BodyShape:
    """Sizes of one person, metres.

    ``stature`` sets the overall scale; children get relatively larger heads and shorter legs,
    ``build`` scales girth (0.8 thin to 1.4 broad) without changing lengths.
    """

    stature: float
    build: float
    head_height: float
    neck_len: float
    torso_len: float  # hip joints to the base of the neck
    shoulder_width: float  # between shoulder joints
    hip_width: float  # between hip joints
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    ankle_height: float
    foot: float
    chest_half_width: float
    waist_half_width: float
    torso_half_depth: float
    arm_radius: float
    leg_radius: float
    neck_radius: float

    @staticmethod
    def sample(rng: np.random.Generator, child: bool | None = None) -> BodyShape:
        """Draw a body: adults 1.5-1.95 m, children (one in six) 1.0-1.5 m."""
        if child is None:
            child = rng.random() < 0.17
        stature = rng.uniform(1.0, 1.5) if child else rng.uniform(1.5, 1.95)
        childness = float(np.clip((1.55 - stature) / 0.55, 0.0, 1.0))
        build = rng.uniform(0.8, 1.4) * (1.0 - 0.1 * childness)
        k = stature / 1.75
        head_height = 0.23 * k**0.45 * rng.uniform(0.93, 1.07)
        leg_frac = rng.uniform(0.5, 0.55) - 0.05 * childness
        neck_len = 0.045 * stature
        torso_len = (1.0 - leg_frac) * stature - neck_len - 0.95 * head_height
        leg = leg_frac * stature
        ankle_height = 0.04 * stature
        thigh = 0.51 * (leg - ankle_height)
        shoulder_width = 0.2 * stature * rng.uniform(0.88, 1.15) * (0.8 + 0.2 * build)
        return BodyShape(
            stature=stature,
            build=build,
            head_height=head_height,
            neck_len=neck_len,
            torso_len=torso_len,
            shoulder_width=shoulder_width,
            hip_width=0.1 * stature * rng.uniform(0.9, 1.15) * (0.85 + 0.15 * build),
            upper_arm=0.186 * stature,
            forearm=0.146 * stature,
            hand=0.108 * stature,
            thigh=thigh,
            shin=leg - ankle_height - thigh,
            ankle_height=ankle_height,
            foot=0.15 * stature,
            chest_half_width=0.09 * stature * build,
            waist_half_width=0.078 * stature * build**1.3,
            torso_half_depth=0.055 * stature * build**1.2,
            arm_radius=0.026 * stature * build,
            leg_radius=0.04 * stature * build,
            neck_radius=0.03 * stature * build**0.5,
        )


# Colour palettes (BGR). Skin tones from light to dark, hair and clothing in everyday colours.
SKIN_TONES = np.array(
    [
        [200, 215, 245],
        [170, 195, 235],
        [140, 175, 225],
        [115, 150, 200],
        [90, 125, 175],
        [70, 100, 150],
        [50, 75, 115],
        [35, 55, 85],
    ],
    dtype=np.float64,
)
HAIR_COLOURS = np.array(
    [
        [20, 20, 25],
        [30, 40, 60],
        [40, 65, 100],
        [70, 120, 170],
        [110, 170, 215],
        [40, 70, 150],
        [150, 150, 155],
        [220, 220, 225],
    ],
    dtype=np.float64,
)

HAIR_STYLES = ("bald", "short", "medium", "long")
TOP_STYLES = ("tshirt", "longsleeve", "tank", "dress")
BOTTOM_STYLES = ("trousers", "shorts", "skirt")


def _clothing_colour(rng: np.random.Generator) -> np.ndarray:
    """A garment colour: mostly muted, sometimes saturated."""
    if rng.random() < 0.35:
        grey = rng.uniform(20, 235)
        return np.full(3, grey) + rng.normal(0, 8, 3)
    hue = rng.uniform(0, 180)
    sat = rng.uniform(60, 255) if rng.random() < 0.5 else rng.uniform(20, 120)
    val = rng.uniform(50, 245)
    hsv = np.uint8([[[hue, sat, val]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)


@dataclass(frozen=True)
class Appearance:
    """How a person looks: colours are BGR floats in [0, 255]."""

    skin: np.ndarray
    hair: np.ndarray
    hair_style: str
    top: np.ndarray
    top_style: str
    bottom: np.ndarray
    bottom_style: str
    shoes: np.ndarray
    lips: np.ndarray
    eyes: np.ndarray

    @staticmethod
    def sample(rng: np.random.Generator) -> Appearance:
        skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.08, 3)
        hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
        top_style = TOP_STYLES[rng.choice(4, p=[0.4, 0.35, 0.12, 0.13])]
        bottom_style = (
            "skirt" if top_style == "dress" else BOTTOM_STYLES[rng.choice(3, p=[0.7, 0.18, 0.12])]
        )
        top = _clothing_colour(rng)
        return Appearance(
            skin=np.clip(skin, 0, 255),
            hair=np.clip(hair, 0, 255),
            hair_style=HAIR_STYLES[rng.choice(4, p=[0.08, 0.42, 0.25, 0.25])],
            top=top,
            top_style=top_style,
            bottom=top if top_style == "dress" else _clothing_colour(rng),
            bottom_style=bottom_style,
            shoes=_clothing_colour(rng) * 0.6,
            lips=np.clip(skin * np.array([0.75, 0.7, 1.0]) * rng.uniform(0.8, 1.0), 0, 255),
            eyes=HAIR_COLOURS[rng.integers(3)],
        )


# Part groups: a keypoint is never self-occluded by parts of its own group (a fingertip is not
# hidden by its own finger), and face features are painted only on the "head" group's pixels.
GROUPS = (
    "torso",
    "head",
    "neck",
    "arm_l",
    "arm_r",
    "hand_l",
    "hand_r",
    "leg_l",
    "leg_r",
    "foot_l",
    "foot_r",
)
GROUP = {g: i for i, g in enumerate(GROUPS)}


@dataclass
class Part:
    """One volume of the figure, in body-frame metres.

    A part is the convex hull of spheres: ``centres`` (M, 3) with ``radii`` (M,). A limb is two
    spheres (a tapered capsule); a head or torso is many points of radius 0 on its surface.
    ``depth_bias`` (metres, + is farther) nudges the painter's order where mean depth misleads.
    """

    centres: np.ndarray
    radii: np.ndarray
    colour: np.ndarray
    group: int
    depth_bias: float = 0.0
    face_surface: bool = False  # eyes, brows and mouth may be painted on it


@dataclass
class Figure:
    """A posed person in the body frame.

    Attributes:
        keypoints: (133, 3) COCO-WholeBody points, metres.
        normals: (133, 3) outward surface normals for head points (face, eyes, ears, nose),
            zero elsewhere; a head point facing away from the camera is self-occluded.
        radius: (133,) how deep inside its own volume each keypoint sits, metres; used to tell
            a joint seen through its own limb surface from one hidden behind another part.
        group: (133,) the part group each keypoint belongs to.
        parts: the volumes to draw.
        face_forward: (3,) unit vector the face looks along.
    """

    keypoints: np.ndarray
    normals: np.ndarray
    radius: np.ndarray
    group: np.ndarray
    parts: list[Part] = field(default_factory=list)
    face_forward: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))


def _ellipse_ring(half_w: float, half_d: float, y: float, n: int = 12) -> np.ndarray:
    """(n, 3) points of a horizontal ellipse at height y."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([half_w * np.cos(t), np.full(n, y), half_d * np.sin(t)], axis=1)


def _fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) near-uniform unit vectors."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.cos(phi), np.sin(theta) * np.sin(phi)], 1)


_SPHERE = _fibonacci_sphere(160)


def _face_template() -> tuple[np.ndarray, np.ndarray]:
    """iBUG-68 landmarks on a unit head: (68, 2) (u, v) in [-1, 1] with u toward the person's
    left, and (68,) extra forward protrusion (nose), in units of the head's depth radius."""
    uv = np.zeros((68, 2))
    bulge = np.zeros(68)
    phi = np.linspace(-np.pi / 2, np.pi / 2, 17)
    uv[0:17, 0] = 0.93 * np.sin(phi)
    uv[0:17, 1] = 0.02 - 0.9 * np.cos(phi)
    brow_u = np.linspace(0.78, 0.16, 5)
    brow_v = np.array([0.28, 0.36, 0.38, 0.36, 0.31])
    uv[17:22] = np.stack([-brow_u, brow_v], 1)
    uv[22:27] = np.stack([brow_u[::-1], brow_v[::-1]], 1)
    uv[27:31] = np.stack([np.zeros(4), [0.2, 0.08, -0.04, -0.16]], 1)
    bulge[27:31] = [0.06, 0.13, 0.2, 0.28]
    uv[31:36] = np.stack([np.linspace(-0.2, 0.2, 5), [-0.22, -0.25, -0.27, -0.25, -0.22]], 1)
    bulge[31:36] = [0.04, 0.1, 0.15, 0.1, 0.04]
    # Right eye (image left when facing the camera): outer corner, upper lid, inner corner,
    # lower lid, clockwise in the image as iBUG numbers it.
    eye_u = np.array([-0.64, -0.5, -0.32, -0.18, -0.32, -0.5])
    eye_v = 0.14 + np.array([0.0, 0.07, 0.07, 0.0, -0.06, -0.06])
    uv[36:42] = np.stack([eye_u, eye_v], 1)
    uv[42:48] = np.stack([-eye_u[[3, 2, 1, 0, 5, 4]], eye_v[[3, 2, 1, 0, 5, 4]]], 1)
    mouth_u = np.array([-0.36, -0.22, -0.09, 0.0, 0.09, 0.22, 0.36, 0.22, 0.09, 0.0, -0.09, -0.22])
    mouth_v = -0.5 + np.array([0.0, 0.05, 0.08, 0.06, 0.08, 0.05, 0.0, -0.08, -0.12, -0.13])
    mouth_v = np.concatenate([mouth_v, [-0.12, -0.08]])
    uv[48:60] = np.stack([mouth_u, mouth_v], 1)
    inner_u = np.array([-0.28, -0.09, 0.0, 0.09, 0.28, 0.09, 0.0, -0.09])
    inner_v = -0.5 + np.array([0.0, 0.02, 0.02, 0.02, 0.0, -0.03, -0.03, -0.03])
    uv[60:68] = np.stack([inner_u, inner_v], 1)
    bulge[48:68] = 0.04
    return uv, bulge


FACE_UV, FACE_BULGE = _face_template()

# Hand layout for the LEFT hand in its own frame (fingers point along -y, palm faces -x, thumb
# toward +z); the right hand mirrors x. Units: fractions of the hand length.
_FINGER_BASE_Z = np.array([0.2, 0.07, -0.06, -0.18])
_FINGER_SEGMENTS = np.array(
    [[0.25, 0.14, 0.11], [0.27, 0.16, 0.12], [0.25, 0.15, 0.11], [0.2, 0.12, 0.1]]
)
_FINGER_SPLAY = np.array([0.12, 0.03, -0.06, -0.16])


class _Builder:
    """Collects keypoints and parts while the kinematic chain is walked."""

    def __init__(self) -> None:
        self.kp = np.zeros((K, 3))
        self.normals = np.zeros((K, 3))
        self.radius = np.full(K, 0.02)
        self.group = np.zeros(K, dtype=np.int64)
        self.parts: list[Part] = []

    def capsule(self, a, b, ra, rb, colour, group, bias=0.0) -> None:
        self.parts.append(Part(np.stack([a, b]), np.array([ra, rb]), colour, GROUP[group], bias))

    def hull(self, points, colour, group, radius=0.0, bias=0.0, face=False) -> None:
        r = np.full(len(points), radius)
        self.parts.append(Part(np.asarray(points), r, colour, GROUP[group], bias, face))

    def set(self, k, point, group, radius) -> None:
        self.kp[k] = point
        self.group[k] = GROUP[group]
        self.radius[k] = radius


def pose_figure(shape: BodyShape, look: Appearance, angles: np.ndarray) -> Figure:
    """Forward kinematics: joint angles (NUM_DOF,) radians -> a posed Figure in the body frame.

    The figure stands on nothing yet: the caller drops it onto the ground (see
    ``Figure.lowest_point``), which is what lets the same code pose a sitter or a lying person.
    """
    a = angles
    s = shape
    bd = _Builder()
    root = rot_x(a[DOF["root_pitch"]]) @ rot_z(a[DOF["root_roll"]])
    chest = (
        root
        @ rot_x(a[DOF["spine_bend"]])
        @ rot_z(a[DOF["spine_side"]])
        @ rot_y(a[DOF["spine_twist"]])
    )
    head_r = (
        chest @ rot_y(a[DOF["neck_yaw"]]) @ rot_x(a[DOF["neck_pitch"]]) @ rot_z(a[DOF["neck_roll"]])
    )
    kscale = s.stature / 1.75
    waist = root @ np.array([0.0, 0.12 * kscale, 0.0])
    up = s.torso_len - 0.12 * kscale
    neck_base = waist + chest @ np.array([0.0, up, 0.0])
    neck_top = neck_base + chest @ np.array([0.0, s.neck_len, 0.01])

    # Torso: pelvis block (trousers colour) and chest block (top colour), each the hull of
    # elliptical cross-sections so that it reads right from any side.
    hw, hd = s.waist_half_width, s.torso_half_depth
    hip_half = s.hip_width / 2 + s.leg_radius * 0.85
    pelvis_pts = np.concatenate(
        [
            _ellipse_ring(hip_half, hd * 1.05, -0.07 * kscale),
            _ellipse_ring(hip_half * 0.98, hd, 0.02 * kscale),
            _ellipse_ring(hw, hd * 0.95, 0.14 * kscale),
        ]
    )
    low_colour = look.bottom if look.bottom_style != "skirt" else look.top
    bd.hull(pelvis_pts @ root.T, low_colour, "torso", bias=0.03)
    chest_pts = np.concatenate(
        [
            _ellipse_ring(hw, hd * 0.95, 0.0),
            _ellipse_ring(s.chest_half_width, hd * 1.05, up * 0.55),
            _ellipse_ring(s.shoulder_width / 2 + 0.01, hd * 0.8, up - 0.035 * kscale),
            _ellipse_ring(s.shoulder_width * 0.3, hd * 0.6, up),
        ]
    )
    bd.hull(waist + chest_pts @ chest.T, look.top, "torso", bias=0.03)
    bd.capsule(neck_base, neck_top, s.neck_radius, s.neck_radius * 0.9, look.skin, "neck", 0.1)

    _head(bd, shape, look, neck_top, head_r)

    for side, sgn in (("l", 1.0), ("r", -1.0)):
        _arm(bd, shape, look, a, side, sgn, waist, chest, up)
        _leg(bd, shape, look, a, side, sgn, root)
    if look.bottom_style == "skirt":
        knees = bd.kp[[13, 14]]
        ring = _ellipse_ring(hip_half * 1.02, hd * 1.1, 0.05 * kscale) @ root.T
        flare = s.leg_radius * 1.6
        hem = np.concatenate([knees + d * flare for d in _SPHERE[::8]])
        bd.hull(np.concatenate([ring, hem]), look.bottom, "torso", bias=-0.01)
    return Figure(
        keypoints=bd.kp,
        normals=bd.normals,
        radius=bd.radius,
        group=bd.group,
        parts=bd.parts,
        face_forward=head_r @ np.array([0.0, 0.0, 1.0]),
    )


def _head(bd: _Builder, s: BodyShape, look: Appearance, neck_top, rot) -> None:
    """Skull, face landmarks, ears, nose, hair."""
    hh = s.head_height
    ax = np.array([0.33 * hh, 0.5 * hh, 0.41 * hh])  # half-axes: x (ears), y (height), z (depth)
    centre = neck_top + rot @ np.array([0.0, 0.42 * hh, 0.08 * hh])
    skull = _SPHERE * ax
    bd.hull(centre + skull @ rot.T, look.skin, "head", face=True)

    # Landmarks sit just under the surface so they always fall inside the drawn head.
    u, v = FACE_UV[:, 0], FACE_UV[:, 1]
    z = np.sqrt(np.clip(1 - u**2 - v**2, 0.0, 1.0))
    local = np.stack([u, v, z], 1) * 0.96
    local[:, 2] += FACE_BULGE * 0.9
    normal_local = np.stack([u / ax[0], v / ax[1], z / ax[2]], 1)
    normal_local[27:36] = [0.0, 0.0, 1.0]
    face = centre + (local * ax) @ rot.T
    normals = normal_local / np.linalg.norm(normal_local, axis=1, keepdims=True)
    bd.kp[FACE0 : FACE0 + 68] = face
    bd.normals[FACE0 : FACE0 + 68] = normals @ rot.T
    bd.group[FACE0 : FACE0 + 68] = GROUP["head"]
    bd.radius[FACE0 : FACE0 + 68] = 0.01

    nose_pts = face[27:36]
    bd.hull(nose_pts, look.skin * 0.97, "head", radius=0.012 * hh / 0.23, face=True)

    fwd = rot @ np.array([0.0, 0.0, 1.0])
    for k, idx in ((0, [30]), (1, range(42, 48)), (2, range(36, 42))):
        bd.set(k, face[list(idx)].mean(0), "head", 0.01)
        bd.normals[k] = fwd
    for k, sgn in ((3, 1.0), (4, -1.0)):
        ear = centre + rot @ (np.array([sgn * 0.97, 0.05, -0.05]) * ax)
        bd.set(k, ear, "head", 0.015)
        bd.normals[k] = rot @ np.array([sgn, 0.0, 0.0])
        bd.hull(ear + (_SPHERE[::10] * ax * [0.25, 0.35, 0.3]) @ rot.T, look.skin * 0.93, "head")

    # Hair: a cap over the crown and a shell behind, grown longer for longer styles.
    if look.hair_style == "bald":
        return
    out = _SPHERE * ax * 1.07
    cap = out[(_SPHERE[:, 1] > 0.3) & ~((_SPHERE[:, 2] > 0.55) & (_SPHERE[:, 1] < 0.62))]
    bd.hull(centre + cap @ rot.T, look.hair, "head")
    back = out[(_SPHERE[:, 2] < -0.05) & (_SPHERE[:, 1] > -0.45)]
    if look.hair_style in ("medium", "long"):
        drop = {"medium": 0.75, "long": 1.45}[look.hair_style]
        tail = np.array([[x, -drop, -0.35] for x in (-0.95, -0.5, 0.5, 0.95)]) * ax
        back = np.concatenate([back, tail])
        sides = out[(np.abs(_SPHERE[:, 0]) > 0.75) & (_SPHERE[:, 1] > -0.3)]
        back = np.concatenate([back, sides])
    bd.hull(centre + back @ rot.T, look.hair * 0.9, "head", bias=0.0)


def _arm(bd: _Builder, s: BodyShape, look: Appearance, a, side, sgn, waist, chest, up) -> None:
    """Shoulder, elbow, wrist and hand of one side (sgn +1 left, -1 right)."""
    b = 0 if side == "l" else 1
    sho = waist + chest @ np.array([sgn * s.shoulder_width / 2, up - 0.03 * s.stature / 1.75, 0])
    r_up = (
        chest
        @ rot_z(sgn * a[DOF[f"sho_abd_{side}"]])
        @ rot_x(-a[DOF[f"sho_flex_{side}"]])
        @ rot_y(sgn * a[DOF[f"sho_twist_{side}"]])
    )
    elb = sho + r_up @ np.array([0.0, -s.upper_arm, 0.0])
    r_fore = r_up @ rot_x(-a[DOF[f"elbow_{side}"]])
    wri = elb + r_fore @ np.array([0.0, -s.forearm, 0.0])
    ra = s.arm_radius
    grp = f"arm_{side}"
    sleeve = look.top if look.top_style in ("tshirt", "longsleeve", "dress") else look.skin
    fore = look.top if look.top_style == "longsleeve" else look.skin
    if look.top_style == "tshirt":
        # A short sleeve ends part-way down the upper arm.
        mid = sho + (elb - sho) * 0.55
        bd.capsule(sho, mid, ra * 1.25, ra * 1.15, look.top, grp)
        bd.capsule(mid, elb, ra * 0.95, ra * 0.8, look.skin, grp)
    else:
        bd.capsule(sho, elb, ra * 1.1, ra * 0.85, sleeve, grp)
    bd.capsule(elb, wri, ra * 0.82, ra * 0.62, fore, grp)
    bd.set(5 + b, sho, "torso", s.torso_half_depth * 1.1)
    bd.set(7 + b, elb, grp, ra)
    bd.set(9 + b, wri, grp, ra * 0.8)

    r_hand = r_fore @ rot_z(sgn * -0.15) @ rot_x(-a[DOF[f"wrist_flex_{side}"]])
    _hand(bd, s, look, r_hand, wri, sgn, a[DOF[f"fingers_{side}"]], a[DOF[f"thumb_{side}"]], side)


def _hand(bd: _Builder, s: BodyShape, look: Appearance, rot, wri, sgn, curl, thumb, side) -> None:
    """21 hand points (wrist, then thumb/index/middle/ring/pinky base to tip) and the hand."""
    h0 = LHAND0 if side == "l" else RHAND0
    grp = f"hand_{side}"
    L = s.hand
    pts = np.zeros((21, 3))
    pts[0] = wri
    palm_half = 0.17 * L * (0.8 + 0.2 * s.build)
    for f in range(4):
        base_local = np.array([0.0, -0.45 * L, _FINGER_BASE_Z[f] * L * 1.15])
        p = wri + rot @ base_local
        pts[5 + 4 * f] = p
        r = rot @ rot_x(-_FINGER_SPLAY[f] * (1.0 - 0.5 * curl / 1.5))
        for j, seg in enumerate(_FINGER_SEGMENTS[f]):
            # Fingers curl toward the palm (-x for the left hand), harder at the tip joints.
            r = r @ rot_z(-sgn * curl * (0.8 + 0.15 * j))
            p = p + r @ np.array([0.0, -seg * L, 0.0])
            pts[6 + 4 * f + j] = p
    r = rot @ rot_x(-0.9 + 0.4 * thumb) @ rot_z(-sgn * 0.3)
    p = wri + rot @ np.array([-sgn * 0.03 * L, -0.12 * L, 0.16 * L])
    pts[1] = p
    for j, seg in enumerate((0.22, 0.18, 0.15)):
        r = r @ rot_z(-sgn * thumb * 0.6)
        p = p + r @ np.array([0.0, -seg * L, 0.0])
        pts[2 + j] = p
    bd.kp[h0 : h0 + 21] = pts
    bd.group[h0 : h0 + 21] = GROUP[grp]
    bd.radius[h0 : h0 + 21] = 0.012
    finger_r = 0.045 * L
    bd.hull(pts[[0, 1, 5, 9, 13, 17]], look.skin, grp, radius=palm_half * 0.35)
    for chain in ([1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]):
        for i, j in zip(chain[:-1], chain[1:], strict=True):
            bd.capsule(pts[i], pts[j], finger_r, finger_r * 0.85, look.skin, grp)


def _leg(bd: _Builder, s: BodyShape, look: Appearance, a, side, sgn, root) -> None:
    """Hip, knee, ankle and the three foot points of one side."""
    b = 0 if side == "l" else 1
    hip = root @ np.array([sgn * s.hip_width / 2, 0.0, 0.0])
    r_th = root @ rot_z(sgn * a[DOF[f"hip_abd_{side}"]]) @ rot_x(-a[DOF[f"hip_flex_{side}"]])
    knee = hip + r_th @ np.array([0.0, -s.thigh, 0.0])
    r_sh = r_th @ rot_x(a[DOF[f"knee_{side}"]])
    ank = knee + r_sh @ np.array([0.0, -s.shin, 0.0])
    r_ft = r_sh @ rot_x(-a[DOF[f"ankle_{side}"]])
    rl = s.leg_radius
    grp = f"leg_{side}"
    thigh_c = look.bottom if look.bottom_style in ("trousers", "shorts") else look.skin
    shin_c = look.bottom if look.bottom_style == "trousers" else look.skin
    bd.capsule(hip, knee, rl * 1.15, rl * 0.8, thigh_c, grp)
    bd.capsule(knee, ank, rl * 0.78, rl * 0.5, shin_c, grp)
    bd.set(11 + b, hip, "torso", s.torso_half_depth * 1.1)
    bd.set(13 + b, knee, grp, rl * 0.8)
    bd.set(15 + b, ank, grp, rl * 0.6)

    fl = s.foot
    heel = ank + r_ft @ np.array([0.0, -s.ankle_height * 0.8, -0.22 * fl])
    big = ank + r_ft @ np.array([-sgn * 0.03 * fl / 0.26, -s.ankle_height * 0.8, 0.78 * fl])
    small = ank + r_ft @ np.array([sgn * 0.055 * fl / 0.26, -s.ankle_height * 0.85, 0.68 * fl])
    f0 = FOOT0 + 3 * b
    fgrp = f"foot_{side}"
    for k, p in ((f0, big), (f0 + 1, small), (f0 + 2, heel)):
        bd.set(k, p, fgrp, 0.02)
    foot_r = 0.022 * s.stature / 1.75
    bd.hull(np.stack([ank, heel, big, small]), look.shoes, fgrp, radius=foot_r)


def lowest_point(figure: Figure) -> float:
    """The smallest y over all keypoints and volumes, metres; dropping the figure by this
    amount stands it (or sits it, or lays it) on the ground plane y = 0."""
    lows = [figure.keypoints[:, 1].min()]
    lows += [(p.centres[:, 1] - p.radii).min() for p in figure.parts]
    return float(min(lows))
