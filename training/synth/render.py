"""Camera projection and drawing of one person onto a layer of their own.

Each person is painted into a crop-sized layer: colour, and a part map recording which volume
is on top at every pixel. The part map is what the keypoint visibility flags are read from, so
the labels say exactly what the picture shows.

World frame (metres): X to the image right, Y up, Z away from the camera; the ground is Y = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .body import FACE0, GROUP, Figure, K, Part, lowest_point

_SHIFT = 4  # fixed-point bits for OpenCV polygon vertices: sub-pixel shapes for small people
_ONE = 1 << _SHIFT
# Shading bands (radius scale, offset toward the light as a fraction of size, brightness):
# a dark rim, a mid tone and a highlight, smoothed into a gradient by a blur afterwards.
_BANDS = ((1.0, 0.0, 0.6), (0.78, 0.14, 0.88), (0.45, 0.3, 1.1))
_EXEMPT_GROUPS = {GROUP["head"], GROUP["hand_l"], GROUP["hand_r"], GROUP["foot_l"], GROUP["foot_r"]}


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at height ``elevation`` metres above the ground, tilted down by
    ``pitch`` radians; ``focal`` and the principal point are in pixels."""

    width: int
    height: int
    focal: float
    cx: float
    cy: float
    elevation: float
    pitch: float

    @staticmethod
    def sample(rng: np.random.Generator, width: int, height: int) -> Camera:
        return Camera(
            width=width,
            height=height,
            focal=width * rng.uniform(0.7, 1.5),
            cx=width / 2 + rng.normal(0, width * 0.02),
            cy=height / 2 + rng.normal(0, height * 0.02),
            elevation=rng.uniform(1.0, 4.0),
            pitch=rng.uniform(-0.03, 0.3),
        )

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) world directions -> camera directions (x right, y down, z depth)."""
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        return np.array([[1.0, 0.0, 0.0], [0.0, -c, -s], [0.0, -s, c]])

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) camera points, metres."""
        return (points - np.array([0.0, self.elevation, 0.0])) @ self.rotation.T

    def project(self, cam_points: np.ndarray) -> np.ndarray:
        """(N, 3) camera points -> (N, 2) pixel coordinates (x, y)."""
        z = cam_points[:, 2:3]
        return np.array([self.cx, self.cy]) + self.focal * cam_points[:, :2] / z

    @property
    def horizon(self) -> float:
        """Image row of the horizon, pixels."""
        return self.cy - self.focal * np.tan(self.pitch)

    def ground_depth_for_row(self, row: float) -> float:
        """Distance along the ground (world Z) seen at an image row below the horizon."""
        angle = self.pitch + np.arctan((row - self.cy) / self.focal)
        return self.elevation / np.tan(max(angle, 1e-3))


@dataclass(frozen=True)
class Placement:
    """Where a person stands: ground position (metres) and heading (radians; 0 faces the
    camera, pi shows the back, +pi/2 shows the person's right side... see ``body_to_world``)."""

    x: float
    z: float
    yaw: float


def body_to_world(yaw: float) -> np.ndarray:
    """(3, 3) map from the body frame to the world frame for a heading ``yaw``.

    At yaw 0 the person faces the camera: their forward (+z) is world -Z and their left (+x)
    is world +X, the image right, as COCO has it.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [s, 0.0, -c]])


@dataclass
class PersonLayer:
    """One person painted on their own layer.

    Attributes:
        keypoints: (133, 3) x, y in image pixels and v (2 visible, 1 hidden by the person's own
            body, 0 unlabelled); occlusion by others and the image border come later.
        depth: (133,) camera depth of each keypoint, metres.
        colour: (h, w, 3) uint8 BGR layer; ``part_map`` (h, w) uint8, 0 where empty.
        origin: (x0, y0) of the layer in the image, pixels.
        root_depth: camera depth of the pelvis, metres (the painter's order between people).
        face_labelled: whether the face points are labelled (the face turns to the camera).
        height_px: the person's projected height, pixels.
    """

    keypoints: np.ndarray
    depth: np.ndarray
    colour: np.ndarray
    part_map: np.ndarray
    origin: tuple[int, int]
    root_depth: float
    face_labelled: bool
    height_px: float

    @property
    def mask(self) -> np.ndarray:
        """(h, w) bool: where this person covers their layer."""
        return self.part_map > 0


_RINGS = {
    n: np.stack([np.cos(t), np.sin(t)], 1)
    for n in range(6, 25)
    for t in [np.linspace(0, 2 * np.pi, n, endpoint=False)]
}


def _outline(centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(M, 2) circle centres and (M,) radii, pixels -> points whose convex hull is the shape."""
    if radii.max() < 0.25:
        return centres
    ring = _RINGS[int(np.clip(radii.max() * 1.5, 6, 24))]
    return (centres[:, None, :] + radii[:, None, None] * ring[None]).reshape(-1, 2)


def _hull(points: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Fixed-point convex hull of pixel points, relative to the layer origin."""
    fixed = np.round((points - origin) * _ONE).astype(np.int32)
    return cv2.convexHull(fixed)


def render_person(
    camera: Camera,
    figure: Figure,
    place: Placement,
    light: np.ndarray,
    face_colours: dict[str, np.ndarray],
) -> PersonLayer | None:
    """Project and paint a posed figure; None when it is behind the camera or off the image.

    ``light`` is a (2,) unit vector in the image toward which surfaces are lit;
    ``face_colours`` the BGR colours of ``skin``, ``eyes``, ``lips`` and ``hair``.
    """
    rot = body_to_world(place.yaw)
    drop = np.array([0.0, lowest_point(figure), 0.0])
    offset = np.array([place.x, 0.0, place.z])

    def to_cam(points: np.ndarray) -> np.ndarray:
        return camera.to_camera((points - drop) @ rot.T + offset)

    kp_cam = to_cam(figure.keypoints)
    parts = figure.parts
    part_cam = [to_cam(p.centres) for p in parts]
    if min(kp_cam[:, 2].min(), min(c[:, 2].min() for c in part_cam)) < 0.3:
        return None
    kp_px = camera.project(kp_cam)
    part_px = [camera.project(c) for c in part_cam]
    part_rpx = [camera.focal * p.radii / c[:, 2] for p, c in zip(parts, part_cam, strict=True)]
    parts, part_cam, part_px, part_rpx = _mittens(parts, part_cam, part_px, part_rpx)
    outlines = [_outline(c, r) for c, r in zip(part_px, part_rpx, strict=True)]

    allpts = np.concatenate(outlines)
    lo = np.floor(allpts.min(0)).astype(int) - 2
    hi = np.ceil(allpts.max(0)).astype(int) + 3
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], camera.width), min(hi[1], camera.height)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    origin = np.array([x0, y0], dtype=np.float64)
    h, w = y1 - y0, x1 - x0
    colour = np.zeros((h, w, 3), np.uint8)
    part_map = np.zeros((h, w), np.uint8)
    height_px = float(allpts[:, 1].max() - allpts[:, 1].min())

    order = np.argsort(
        [-(c[:, 2].mean() + p.depth_bias) for p, c in zip(parts, part_cam, strict=True)],
        kind="stable",
    )
    face_ids: list[int] = []
    for rank, i in enumerate(order, start=1):
        _paint_part(colour, parts[i], part_px[i], part_rpx[i], origin, light)
        cv2.fillConvexPoly(part_map, _hull(outlines[i], origin), rank, cv2.LINE_8, _SHIFT)
        if parts[i].face_surface:
            face_ids.append(rank)
    sigma = float(np.clip(0.008 * height_px, 0.5, 3.0))
    colour = cv2.GaussianBlur(colour, (0, 0), sigma)

    to_viewer = -kp_cam / np.linalg.norm(kp_cam, axis=1, keepdims=True)
    dirs = rot.T @ camera.rotation.T  # body-frame directions -> camera directions
    facing = np.einsum("kd,kd->k", figure.normals @ dirs, to_viewer)
    face_dot = float((figure.face_forward @ dirs) @ to_viewer[FACE0 + 30])
    face_labelled = face_dot > -0.1

    head_px = np.linalg.norm(kp_px[FACE0 + 8] - kp_px[FACE0 + 27]) * 1.6
    if face_labelled and head_px > 10 and face_ids:
        _paint_face(colour, part_map, face_ids, kp_px, facing, origin, head_px, face_colours)

    v = _self_visibility(
        figure, kp_px, kp_cam, facing, part_map, order, parts, part_px, part_cam, origin
    )
    face = slice(FACE0, FACE0 + 68)
    if not face_labelled:
        v[face] = 0
    keypoints = np.concatenate([kp_px, v[:, None]], axis=1)
    return PersonLayer(
        keypoints=keypoints,
        depth=kp_cam[:, 2],
        colour=colour,
        part_map=part_map,
        origin=(int(x0), int(y0)),
        root_depth=float(to_cam(np.zeros((1, 3)))[0, 2]),
        face_labelled=face_labelled,
        height_px=height_px,
    )


def _mittens(parts, part_cam, part_px, part_rpx):
    """Merge each hand's palm and finger volumes into one when the fingers are under a pixel
    wide: the same silhouette for a fraction of the drawing."""
    out: tuple[list, list, list, list] = ([], [], [], [])
    hands: dict[int, list[int]] = {GROUP["hand_l"]: [], GROUP["hand_r"]: []}
    for i, p in enumerate(parts):
        if p.group in hands and len(p.radii) == 2:
            hands[p.group].append(i)
    merged: set[int] = set()
    for idx in hands.values():
        if idx and max(part_rpx[i].max() for i in idx) < 1.0:
            merged.update(idx)
    if not merged:
        return parts, part_cam, part_px, part_rpx
    for i in range(len(parts)):
        if i not in merged:
            for lst, item in zip(
                out, (parts[i], part_cam[i], part_px[i], part_rpx[i]), strict=True
            ):
                lst.append(item)
    for idx in hands.values():
        if not idx or idx[0] not in merged:
            continue
        first = parts[idx[0]]
        cam = np.concatenate([part_cam[i] for i in idx])
        centres = np.concatenate([parts[i].centres for i in idx])
        radii = np.concatenate([parts[i].radii for i in idx])
        out[0].append(Part(centres, radii, first.colour, first.group))
        out[1].append(cam)
        out[2].append(np.concatenate([part_px[i] for i in idx]))
        out[3].append(np.concatenate([part_rpx[i] for i in idx]))
    return out


def _paint_part(
    layer: np.ndarray,
    part: Part,
    centres: np.ndarray,
    radii: np.ndarray,
    origin: np.ndarray,
    light: np.ndarray,
) -> None:
    """Paint one volume as three nested shapes (rim, mid tone, highlight)."""
    capsule = len(centres) <= 2
    c0 = centres.mean(0)
    if capsule:
        size = float(radii.max())
    else:
        ext = centres.max(0) - centres.min(0)
        size = float(min(ext)) / 2 + float(radii.max())
    for scale, shift, gain in _BANDS:
        if size * scale < 0.7 and scale < 1.0:
            break
        if capsule:
            pts = centres + light * shift * size
            rr = radii * scale
        else:
            pts = c0 + (centres - c0) * scale + light * shift * size
            rr = radii * scale
        col = np.clip(part.colour * gain, 0, 255).tolist()
        cv2.fillConvexPoly(layer, _hull(_outline(pts, rr), origin), col, cv2.LINE_8, _SHIFT)


def _paint_face(layer, part_map, face_ids, kp_px, facing, origin, head_px, colours) -> None:
    """Eyes, brows, nose and mouth drawn along the face landmarks, only on the face's own
    pixels (a hand in front of the face stays in front)."""
    feat = layer.copy()
    pts = np.round((kp_px[FACE0 : FACE0 + 68] - origin) * _ONE).astype(np.int32)
    front = facing[FACE0 : FACE0 + 68] > 0.05
    thick = max(1, int(round(head_px * 0.03)))

    def group_visible(idx: range) -> bool:
        return bool(front[list(idx)].mean() > 0.6)

    for eye in (range(36, 42), range(42, 48)):
        if not group_visible(eye):
            continue
        poly = pts[list(eye)]
        cv2.fillPoly(feat, [poly], (235, 240, 240), cv2.LINE_AA, _SHIFT)
        centre = poly.mean(0).astype(np.int32)
        iris = int(round(head_px * 0.035 * _ONE))
        cv2.circle(
            feat, tuple(centre.tolist()), iris, colours["eyes"].tolist(), -1, cv2.LINE_AA, _SHIFT
        )
        cv2.circle(feat, tuple(centre.tolist()), iris // 2, (15, 15, 15), -1, cv2.LINE_AA, _SHIFT)
        cv2.polylines(feat, [poly[[0, 1, 2, 3]]], False, (30, 30, 40), thick, cv2.LINE_AA, _SHIFT)
    for brow in (range(17, 22), range(22, 27)):
        if group_visible(brow):
            col = (colours["hair"] * 0.7).tolist()
            cv2.polylines(feat, [pts[list(brow)]], False, col, thick, cv2.LINE_AA, _SHIFT)
    nose_col = (colours["skin"] * 0.62).tolist()
    if group_visible(range(31, 36)):
        cv2.polylines(feat, [pts[31:36]], False, nose_col, thick, cv2.LINE_AA, _SHIFT)
    if group_visible(range(48, 60)):
        cv2.fillPoly(feat, [pts[48:60]], colours["lips"].tolist(), cv2.LINE_AA, _SHIFT)
        dark = (colours["lips"] * 0.4).tolist()
        cv2.polylines(feat, [pts[60:68]], True, dark, max(1, thick // 2), cv2.LINE_AA, _SHIFT)
    on_face = np.isin(part_map, face_ids)
    layer[on_face] = feat[on_face]


def _self_visibility(
    figure: Figure,
    kp_px: np.ndarray,
    kp_cam: np.ndarray,
    facing: np.ndarray,
    part_map: np.ndarray,
    order: np.ndarray,
    parts: list[Part],
    part_px: list[np.ndarray],
    part_cam: list[np.ndarray],
    origin: np.ndarray,
) -> np.ndarray:
    """(133,) 2 or 1: is each keypoint seen, or hidden by the person's own body?

    A keypoint is hidden when the part on top at its pixel is in front of it by more than the
    depth the keypoint sits inside its own limb (``Figure.radius``). Head points are also hidden
    when their surface turns away from the camera. Parts of the same hand, foot or head never
    hide each other's points: their overlap is within the thickness of one limb.
    """
    v = np.full(K, 2.0)
    h, w = part_map.shape
    pix = np.round(kp_px - origin).astype(int)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
    head = np.any(figure.normals != 0, axis=1)
    thresholds = np.where(np.isin(np.arange(K), [3, 4]), -0.25, 0.0)
    v[head & (facing < thresholds)] = 1.0
    for k in np.flatnonzero(inside):
        rank = int(part_map[pix[k, 1], pix[k, 0]])
        if rank == 0:
            continue
        i = int(order[rank - 1])
        part = parts[i]
        if part.group == figure.group[k] and part.group in _EXEMPT_GROUPS:
            continue
        z, r = part_cam[i][:, 2], part.radii
        if len(z) == 2:
            a, b = part_px[i]
            ab = b - a
            t = float(np.clip((kp_px[k] - a) @ ab / max(ab @ ab, 1e-9), 0.0, 1.0))
            front = z[0] + (z[1] - z[0]) * t - (r[0] + (r[1] - r[0]) * t)
        else:
            front = float((z - r).min())
        if kp_cam[k, 2] > front + 1.5 * figure.radius[k] + 0.02:
            v[k] = 1.0
    return v
