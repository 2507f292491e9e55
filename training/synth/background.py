"""Procedural backgrounds: walls and floors, streets, parks, abstract textures, and clutter.

Backgrounds follow the scene's camera (the horizon and the perspective of the floor come from
it) so that people standing on the ground look as if they belong there. Everything is drawn
with whole-array numpy and OpenCV calls: a 640x480 background costs a few milliseconds.
"""

from __future__ import annotations

import cv2
import numpy as np

from .render import Camera

KINDS = ("indoor", "street", "park", "abstract")


def _random_colour(rng: np.random.Generator, lo: float = 30, hi: float = 230) -> np.ndarray:
    return rng.uniform(lo, hi, 3)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """(h, w) float32 noise in about [-1, 1], smooth at a scale of w / cells pixels."""
    ch = max(2, int(cells * h / max(w, 1)))
    small = rng.standard_normal((ch, cells), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _vertical_gradient(h: int, w: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    col = (top[None, None, :] * (1 - t) + bottom[None, None, :] * t).astype(np.float32)
    return cv2.resize(col, (w, h), interpolation=cv2.INTER_NEAREST)


def _floor_lines(img: np.ndarray, camera: Camera, rng: np.random.Generator, colour) -> None:
    """Perspective grid (tiles, planks, lanes) on the ground plane."""
    spacing = rng.uniform(0.4, 3.0)
    x_only = rng.random() < 0.3
    thick = int(rng.integers(1, 3))
    far = 60.0
    for x in np.arange(-40, 40, spacing * rng.uniform(1.0, 2.5)):
        a = camera.to_camera(np.array([[x, 0.0, 0.5], [x, 0.0, far]]))
        if a[:, 2].min() <= 0.1:
            continue
        p = camera.project(a).astype(int)
        cv2.line(img, tuple(p[0].tolist()), tuple(p[1].tolist()), colour, thick, cv2.LINE_AA)
    if x_only:
        return
    z = 0.5
    while z < far:
        a = camera.to_camera(np.array([[-60.0, 0.0, z], [60.0, 0.0, z]]))
        p = camera.project(a).astype(int)
        cv2.line(img, tuple(p[0].tolist()), tuple(p[1].tolist()), colour, thick, cv2.LINE_AA)
        z += spacing


def _box(img, rng, x0, y0, x1, y1, colour) -> None:
    """A flat-faced block with a lit and a shaded edge."""
    cv2.rectangle(img, (x0, y0), (x1, y1), colour.tolist(), -1)
    edge = max(1, (x1 - x0) // 12)
    cv2.rectangle(img, (x0, y0), (x0 + edge, y1), (colour * 1.2).clip(0, 255).tolist(), -1)
    cv2.rectangle(img, (x1 - edge, y0), (x1, y1), (colour * 0.7).tolist(), -1)


def _clutter(img: np.ndarray, camera: Camera, rng: np.random.Generator, n: int) -> None:
    """Objects standing on the ground (poles, boxes, cars, trees, bins) and loose shapes."""
    h, w = img.shape[:2]
    horizon = camera.horizon
    for _ in range(n):
        kind = rng.integers(6)
        row = rng.uniform(max(horizon + 2, 0), h * 1.05)
        depth = camera.ground_depth_for_row(row)
        px_per_m = camera.focal / max(depth, 0.5)
        u = int(rng.uniform(-0.05, 1.05) * w)
        base = int(row)
        colour = _random_colour(rng)
        if kind == 0:  # pole or post: thin and tall, a hard negative for limbs
            tall = int(rng.uniform(1.0, 4.0) * px_per_m)
            half = max(1, int(rng.uniform(0.03, 0.12) * px_per_m))
            _box(img, rng, u - half, base - tall, u + half, base, colour)
        elif kind == 1:  # crate, bin, bench block
            bw, bh = (rng.uniform(0.3, 1.5, 2) * px_per_m).astype(int) + 1
            _box(img, rng, u - bw // 2, base - bh, u + bw // 2, base, colour)
        elif kind == 2:  # car: body, cabin, wheels
            length, height = int(4.2 * px_per_m), int(1.0 * px_per_m)
            _box(img, rng, u, base - height, u + length, base - int(0.25 * px_per_m), colour)
            cab = (u + length // 4, base - int(1.5 * px_per_m), u + 3 * length // 4, base - height)
            cv2.rectangle(img, cab[:2], cab[2:], (colour * 0.6).tolist(), -1)
            r = max(1, int(0.33 * px_per_m))
            for wx in (u + length // 5, u + 4 * length // 5):
                cv2.circle(img, (wx, base - r), r, (25, 25, 25), -1, cv2.LINE_AA)
        elif kind == 3:  # tree: trunk and a crown of blobs
            tall = int(rng.uniform(2.5, 6.0) * px_per_m)
            half = max(1, int(0.15 * px_per_m))
            _box(img, rng, u - half, base - tall, u + half, base, np.array([40, 60, 90.0]))
            green = np.array([rng.uniform(20, 80), rng.uniform(90, 170), rng.uniform(30, 90)])
            for _ in range(6):
                c = (
                    u + int(rng.normal(0, 0.6) * px_per_m),
                    base - tall + int(rng.normal(0, 0.5) * px_per_m),
                )
                cv2.circle(
                    img,
                    c,
                    max(1, int(rng.uniform(0.6, 1.3) * px_per_m)),
                    (green * rng.uniform(0.7, 1.2)).tolist(),
                    -1,
                    cv2.LINE_AA,
                )
        elif kind == 4:  # loose blob or polygon
            pts = (
                rng.normal(0, 1, (int(rng.integers(3, 8)), 2)) * rng.uniform(5, 60) + [u, row]
            ).astype(np.int32)
            cv2.fillPoly(img, [cv2.convexHull(pts)], colour.tolist(), cv2.LINE_AA)
        else:  # ball or round sign
            r = max(1, int(rng.uniform(0.1, 0.5) * px_per_m))
            cv2.circle(img, (u, base - r), r, colour.tolist(), -1, cv2.LINE_AA)


def _facades(img, camera: Camera, rng: np.random.Generator) -> None:
    """A row of buildings on the horizon, with windows."""
    h, w = img.shape[:2]
    horizon = int(np.clip(camera.horizon, 0, h))
    x = int(rng.uniform(-50, 0))
    while x < w:
        bw = int(rng.uniform(0.1, 0.4) * w)
        top = int(horizon - rng.uniform(0.1, 0.9) * max(horizon, 20))
        colour = _random_colour(rng, 60, 220)
        cv2.rectangle(img, (x, top), (x + bw, horizon + 2), colour.tolist(), -1)
        win = (colour * rng.uniform(0.3, 0.6)).tolist()
        step = max(4, int(rng.uniform(0.03, 0.08) * w))
        for wy in range(top + step // 2, horizon - step // 2, step):
            for wx in range(x + step // 3, x + bw - step // 2, step):
                cv2.rectangle(img, (wx, wy), (wx + step // 2, wy + step // 2), win, -1)
        x += bw + int(rng.uniform(0, 0.05) * w)


def draw_background(rng: np.random.Generator, camera: Camera) -> np.ndarray:
    """(H, W, 3) uint8 BGR background seen through ``camera``."""
    h, w = camera.height, camera.width
    kind = KINDS[rng.choice(len(KINDS), p=[0.32, 0.3, 0.2, 0.18])]
    horizon = int(np.clip(camera.horizon, 0, h))
    if kind == "abstract":
        img = _vertical_gradient(h, w, _random_colour(rng), _random_colour(rng))
        for cells in (3, 9, 27):
            amp = rng.uniform(5, 40)
            tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
            img += _smooth_noise(rng, h, w, cells)[:, :, None] * amp * tint
    else:
        if kind == "indoor":
            upper = _random_colour(rng, 90, 240)
            img = _vertical_gradient(h, w, upper * rng.uniform(0.8, 1.0), upper)
            ground = _random_colour(rng, 40, 200)
        elif kind == "street":
            sky = np.array([rng.uniform(180, 255), rng.uniform(140, 220), rng.uniform(80, 200)])
            img = _vertical_gradient(h, w, sky, sky * 0.85 + 30)
            ground = np.full(3, rng.uniform(60, 140)) + rng.normal(0, 6, 3)
        else:
            sky = np.array([rng.uniform(200, 255), rng.uniform(160, 220), rng.uniform(100, 200)])
            img = _vertical_gradient(h, w, sky, sky * 0.9)
            ground = np.array([rng.uniform(30, 80), rng.uniform(100, 170), rng.uniform(40, 100)])
        floor = _vertical_gradient(h - horizon, w, ground * 0.8, ground * 1.1)
        img[horizon:] = floor
        grain = _smooth_noise(rng, h, w, int(rng.integers(20, 120)))
        img += grain[:, :, None] * rng.uniform(3, 14)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if kind == "street":
        _facades(img, camera, rng)
    if kind == "indoor" and rng.random() < 0.8:
        _indoor_walls(img, camera, rng)
    if kind != "abstract" and horizon < h:
        line_col = (
            rng.uniform(0.5, 1.3) * np.array(img[min(h - 1, horizon + 2), w // 2], np.float64)
        ).clip(0, 255)
        _floor_lines(img, camera, rng, line_col.tolist())
    _clutter(img, camera, rng, int(rng.integers(2, 14)))
    return img


def _indoor_walls(img, camera: Camera, rng: np.random.Generator) -> None:
    """Doors, windows, pictures and a skirting board on the back wall."""
    h, w = img.shape[:2]
    horizon = int(np.clip(camera.horizon, 0, h))
    cv2.rectangle(
        img, (0, horizon - max(2, h // 60)), (w, horizon), _random_colour(rng).tolist(), -1
    )
    for _ in range(int(rng.integers(1, 5))):
        x0 = int(rng.uniform(0, w))
        bw, bh = int(rng.uniform(0.05, 0.25) * w), int(rng.uniform(0.1, 0.5) * h)
        y1 = horizon - (0 if rng.random() < 0.4 else int(rng.uniform(0.1, 0.4) * h))
        colour = _random_colour(rng)
        cv2.rectangle(img, (x0, y1 - bh), (x0 + bw, y1), colour.tolist(), -1)
        cv2.rectangle(img, (x0, y1 - bh), (x0 + bw, y1), (colour * 0.5).tolist(), max(1, bw // 25))
