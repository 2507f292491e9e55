"""Scenes: people placed in perspective on a background, drawn far to near, then degraded.

``compose`` is shared by still images and video frames; it turns a camera, a background and a
list of actors into the picture and its exact annotations (``Sample``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .background import draw_background
from .body import FACE0, FOOT0, LHAND0, RHAND0, Appearance, BodyShape, pose_figure
from .motion import ACTIVITIES, IMAGE_ACTIVITY_P, Style, pose_for
from .render import Camera, PersonLayer, Placement, body_to_world, render_person

# Headings of people in still images. Photographed people mostly face the camera; with every
# heading equally likely, a person's left and right differ only by a few face pixels, and
# top-down models trained on such data learn the same map for both (HRNet-W16 at 128x96 did,
# after 2250 steps: both points of a pair on one pixel). So with probability
# FACING_P a heading is drawn around the camera (normal, FACING_SPREAD radians), else uniformly.
FACING_P = 0.7
FACING_SPREAD = np.radians(45.0)


@dataclass(frozen=True)
class SceneConfig:
    """What still images look like.

    ``people`` is the (min, max) number of people per image; with probability ``crowd_p`` an
    image instead holds a crowd of 20-40. Person heights are drawn log-uniformly between
    ``min_height_px`` and ``max_height_px`` (people taller than the image are cut off).
    """

    width: int = 640
    height: int = 480
    people: tuple[int, int] = (1, 8)
    crowd_p: float = 0.06
    min_height_px: float = 30.0
    max_height_px: float = 500.0
    degrade: bool = True


@dataclass
class Actor:
    """A person in a scene: who they are, what they do, where they stand."""

    shape: BodyShape
    look: Appearance
    style: Style
    activity: str
    phase: float
    place: Placement
    track_id: int = -1
    angles: np.ndarray | None = None  # set to draw a given pose instead of the activity's


@dataclass
class Sample:
    """One picture and its annotations, N people visible in it.

    Attributes:
        image: (H, W, 3) uint8 BGR.
        keypoints: (N, 133, 3) float32 x, y (pixels), v (2 visible, 1 hidden but inside the
            image, 0 unlabelled or outside: then x = y = 0), COCO-WholeBody order.
        boxes: (N, 4) float32 x, y, w, h of the visible pixels.
        areas: (N,) float32 visible pixel count.
        instance_map: (H, W) uint16, 0 background, n + 1 where person n is on top.
        track_ids: (N,) int64 (-1 in still images).
        depths: (N,) float32 camera depth of each pelvis, metres.
        face_boxes, lefthand_boxes, righthand_boxes: (N, 4) float32 x, y, w, h (0 if invalid).
        face_valid, lefthand_valid, righthand_valid, foot_valid: (N,) bool.
    """

    image: np.ndarray
    keypoints: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    instance_map: np.ndarray
    track_ids: np.ndarray
    depths: np.ndarray
    face_boxes: np.ndarray
    lefthand_boxes: np.ndarray
    righthand_boxes: np.ndarray
    face_valid: np.ndarray
    lefthand_valid: np.ndarray
    righthand_valid: np.ndarray
    foot_valid: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keypoints)


def sample_light(rng: np.random.Generator) -> np.ndarray:
    """(2,) image direction surfaces are lit toward: mostly from above."""
    a = rng.uniform(-np.pi, 0.0)
    return np.array([np.cos(a), np.sin(a)])


def _shadow_and_seat(img: np.ndarray, camera: Camera, actor: Actor) -> None:
    """A soft contact shadow under the person and, for a sitter, a stool to sit on."""
    s = actor.shape
    p = actor.place
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    ring = np.stack([np.cos(t) * 0.35, np.zeros(16), np.sin(t) * 0.3], 1) * s.stature
    ring = ring @ body_to_world(p.yaw).T + [p.x, 0.0, p.z]
    cam = camera.to_camera(ring)
    if cam[:, 2].min() < 0.3:
        return
    poly = camera.project(cam)
    lo = np.maximum(np.floor(poly.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(poly.max(0)).astype(int) + 1, [camera.width, camera.height])
    if (hi - lo).min() <= 0:
        return
    region = img[lo[1] : hi[1], lo[0] : hi[0]]
    shade = np.zeros(region.shape[:2], np.uint8)
    cv2.fillConvexPoly(shade, np.round((poly - lo) * 16).astype(np.int32), 255, cv2.LINE_AA, 4)
    k = max(3, (min(shade.shape) // 3) | 1)
    alpha = cv2.GaussianBlur(shade, (k, k), 0).astype(np.float32) * (0.45 / 255)
    region[:] = (region * (1 - alpha[:, :, None])).astype(np.uint8)
    if actor.activity == "sit":
        seat_h = s.thigh * 0.95 + s.shin * 0.1
        box = np.array([[x, y, z] for x in (-0.2, 0.2) for y in (0, seat_h) for z in (-0.35, 0.1)])
        box = box * [s.stature / 1.75, 1, s.stature / 1.75]
        world = box @ body_to_world(p.yaw).T + [p.x, 0.0, p.z]
        cam = camera.to_camera(world)
        if cam[:, 2].min() > 0.3:
            pts = np.round(camera.project(cam) * 16).astype(np.int32)
            colour = (actor.look.shoes * 0.5 + 60).tolist()
            cv2.fillConvexPoly(img, cv2.convexHull(pts), colour, cv2.LINE_AA, 4)


def _box_of(points: np.ndarray, pad: float) -> np.ndarray:
    """x, y, w, h around (M, 2) points, grown by ``pad`` times the larger side."""
    lo, hi = points.min(0), points.max(0)
    grow = pad * max(hi - lo)
    return np.array([*(lo - grow), *(hi - lo + 2 * grow)], np.float32)


def compose(camera: Camera, background: np.ndarray, actors: list[Actor], light: np.ndarray):
    """Draw actors onto a copy of ``background`` far to near; return ``(image, Sample)``.

    The Sample's image is the clean composite (no degradation); visibility flags are read
    from the final instance map, so a keypoint is v=1 exactly when another person's pixels or
    the person's own nearer body cover it.
    """
    img = background.copy()
    h, w = img.shape[:2]
    layers: list[tuple[Actor, PersonLayer]] = []
    for actor in actors:
        angles = actor.angles
        if angles is None:
            angles = pose_for(actor.activity, actor.phase, actor.style)
        fig = pose_figure(actor.shape, actor.look, angles)
        colours = {
            "skin": actor.look.skin,
            "eyes": actor.look.eyes,
            "lips": actor.look.lips,
            "hair": actor.look.hair,
        }
        layer = render_person(camera, fig, actor.place, light, colours)
        if layer is not None:
            layers.append((actor, layer))
    layers.sort(key=lambda al: -al[1].root_depth)

    inst = np.zeros((h, w), np.uint16)
    for n, (actor, layer) in enumerate(layers, start=1):
        _shadow_and_seat(img, camera, actor)
        x0, y0 = layer.origin
        lh, lw = layer.part_map.shape
        m = layer.mask
        img[y0 : y0 + lh, x0 : x0 + lw][m] = layer.colour[m]
        inst[y0 : y0 + lh, x0 : x0 + lw][m] = n

    keep: list[int] = []
    records = []
    for n, (actor, layer) in enumerate(layers, start=1):
        x0, y0 = layer.origin
        lh, lw = layer.part_map.shape
        own = inst[y0 : y0 + lh, x0 : x0 + lw] == n
        area = int(own.sum())
        if area == 0:
            continue
        rows, cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
        box = np.array([x0 + cols[0], y0 + rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1])
        kp = layer.keypoints.astype(np.float32).copy()
        pix = np.round(kp[:, :2]).astype(int)
        inside = (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
        labelled = kp[:, 2] > 0
        kp[~labelled | ~inside] = 0.0
        idx = np.flatnonzero(labelled & inside)
        owner = inst[pix[idx, 1], pix[idx, 0]]
        kp[idx[(owner != n) & (owner != 0)], 2] = 1.0
        keep.append(n)
        records.append((actor, kp, box.astype(np.float32), float(area), layer.root_depth))

    remap = np.zeros(len(layers) + 1, np.uint16)
    remap[keep] = np.arange(1, len(keep) + 1)
    inst = remap[inst]
    return img, _sample(img, inst, records)


def _part_box(kp: np.ndarray, span: slice, pad: float) -> tuple[np.ndarray, bool]:
    pts = kp[span]
    on = pts[:, 2] > 0
    if not on.any():
        return np.zeros(4, np.float32), False
    return _box_of(pts[on, :2], pad), True


def _sample(img: np.ndarray, inst: np.ndarray, records) -> Sample:
    n = len(records)
    kps = np.zeros((n, 133, 3), np.float32)
    parts = {name: np.zeros((n, 4), np.float32) for name in ("face", "lefthand", "righthand")}
    valid = {name: np.zeros(n, bool) for name in ("face", "lefthand", "righthand", "foot")}
    spans = {
        "face": slice(FACE0, FACE0 + 68),
        "lefthand": slice(LHAND0, LHAND0 + 21),
        "righthand": slice(RHAND0, RHAND0 + 21),
    }
    for i, (_, kp, _, _, _) in enumerate(records):
        kps[i] = kp
        for name, span in spans.items():
            parts[name][i], valid[name][i] = _part_box(kp, span, 0.1)
        valid["foot"][i] = bool((kp[FOOT0 : FOOT0 + 6, 2] > 0).any())
    return Sample(
        image=img,
        keypoints=kps,
        boxes=np.array([r[2] for r in records], np.float32).reshape(n, 4),
        areas=np.array([r[3] for r in records], np.float32),
        instance_map=inst,
        track_ids=np.array([r[0].track_id for r in records], np.int64),
        depths=np.array([r[4] for r in records], np.float32),
        face_boxes=parts["face"],
        lefthand_boxes=parts["lefthand"],
        righthand_boxes=parts["righthand"],
        face_valid=valid["face"],
        lefthand_valid=valid["lefthand"],
        righthand_valid=valid["righthand"],
        foot_valid=valid["foot"],
    )


_NOISE_TILE: np.ndarray | None = None


def _noise_tile() -> np.ndarray:
    """(256, 256, 3) float32 unit Gaussian noise, made once from a fixed seed: sensor noise is
    cut from it at a random offset, which costs far less than drawing a fresh field."""
    global _NOISE_TILE
    if _NOISE_TILE is None:
        _NOISE_TILE = np.random.default_rng(0).standard_normal((256, 256, 3), dtype=np.float32)
    return _NOISE_TILE


def degrade(img: np.ndarray, rng: np.random.Generator, jpeg: bool = True) -> np.ndarray:
    """Camera and compression artefacts: colour and exposure jitter, vignetting, blur
    (focus or motion), sensor noise, JPEG; each applied with some probability."""
    h, w = img.shape[:2]
    # Gain, offset and gamma folded into one per-channel lookup table.
    gain = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.7, 1.25)
    gamma = rng.uniform(0.7, 1.4) if rng.random() < 0.4 else 1.0
    levels = np.arange(256, dtype=np.float64)[:, None]
    lut = np.clip(levels * gain + rng.uniform(-20, 20), 0, 255)
    lut = (255.0 * (lut / 255.0) ** gamma).round().astype(np.uint8)
    out = cv2.LUT(img, lut.reshape(256, 1, 3))
    if rng.random() < 0.25:
        yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        fall = 1 - rng.uniform(0.1, 0.45) * (xx**2 + yy**2) / 2
        out = (out * fall[:, :, None]).astype(np.uint8)
    r = rng.random()
    if r < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.5))
    elif r < 0.42:
        k = int(rng.integers(3, 10))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        out = cv2.filter2D(out, -1, kernel / max(kernel.sum(), 1e-6))
    if rng.random() < 0.5:
        tile = _noise_tile()
        reps = (h // 256 + 2, w // 256 + 2, 1)
        oy, ox = rng.integers(0, 256, 2)
        field = np.tile(tile, reps)[oy : oy + h, ox : ox + w]
        out = cv2.add(out, (field * rng.uniform(1, 9)).astype(np.int16), dtype=cv2.CV_8U)
    if jpeg and rng.random() < 0.5:
        q = int(rng.integers(20, 90))
        _, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


def sample_heading(rng: np.random.Generator) -> float:
    """A still image's person heading in radians, 0 facing the camera (see FACING_P)."""
    if rng.random() < FACING_P:
        return float(np.clip(rng.normal(0.0, FACING_SPREAD), -np.pi, np.pi))
    return float(rng.uniform(-np.pi, np.pi))


def sample_actor(
    rng: np.random.Generator, camera: Camera, height_px: float, activity: str | None = None
) -> Actor:
    """A random person about ``height_px`` pixels tall, somewhere across the image."""
    shape = BodyShape.sample(rng)
    look = Appearance.sample(rng)
    style = Style.sample(rng)
    if activity is None:
        activity = ACTIVITIES[rng.choice(len(ACTIVITIES), p=IMAGE_ACTIVITY_P)]
    depth = max(camera.focal * shape.stature / height_px, 1.2)
    u = rng.uniform(-0.08, 1.08) * camera.width
    x = (u - camera.cx) * depth / camera.focal
    angles = pose_for(activity, rng.uniform(0, 2 * np.pi), style, rng)
    place = Placement(x=x, z=depth, yaw=sample_heading(rng))
    return Actor(shape, look, style, activity, 0.0, place, angles=angles)


def make_image(rng: np.random.Generator, config: SceneConfig) -> Sample:
    """A still image with its annotations (the image degraded if ``config.degrade``)."""
    camera = Camera.sample(rng, config.width, config.height)
    background = draw_background(rng, camera)
    lo, hi = config.people
    crowd = rng.random() < config.crowd_p
    count = int(rng.integers(20, 41)) if crowd else int(rng.integers(lo, hi + 1))
    top = min(config.max_height_px, 160.0) if crowd else config.max_height_px
    bottom = min(config.min_height_px, top)
    heights = np.exp(rng.uniform(np.log(bottom), np.log(top), count))
    actors = [sample_actor(rng, camera, float(hpx)) for hpx in heights]
    _, sample = compose(camera, background, actors, sample_light(rng))
    if config.degrade:
        sample.image = degrade(sample.image, rng)
    sample.meta = {"crowd": bool(crowd), "camera": camera}
    return sample
