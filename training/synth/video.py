"""Synthetic videos: people walk, run, stop, wave, cross and occlude each other, leave and come
back, under a fixed camera; every frame comes with exact keypoints and track identities.

A person keeps one ``track_id`` (1-based, as MOT numbers them) for the whole video, including
after leaving the picture and coming back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .background import draw_background
from .body import Appearance, BodyShape
from .coco import CocoBuilder, write_json
from .motion import Style, gait_phase_rate, pose_for
from .render import Camera, Placement
from .scene import Actor, Sample, compose, sample_light

log = logging.getLogger(__name__)

_PAUSE_ACTIVITIES = ("stand", "wave", "arms_up", "crouch", "bend")


@dataclass
class _Walker:
    """One person's state while the video runs."""

    actor: Actor
    route: list[tuple[float, float]]  # ground waypoints (x, z), metres
    speed: float  # metres per second
    gait: str  # walk or run
    pause_p: float  # chance of stopping at a waypoint
    pause_left: float = 0.0
    pause_activity: str = "stand"
    yaw: float = 0.0
    angles: np.ndarray | None = None
    clock: float = 0.0
    done: bool = False
    history: list = field(default_factory=list)


@dataclass(frozen=True)
class VideoConfig:
    """A video: ``people`` tracks over ``seconds`` at ``fps``, ``width`` x ``height`` pixels."""

    people: int = 8
    seconds: float = 20.0
    fps: float = 25.0
    width: int = 640
    height: int = 480
    seed: int = 0

    @property
    def frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))


def _ground_area(camera: Camera) -> tuple[float, float, float]:
    """Near and far walking depth and the half-width of the picture at depth 1, metres."""
    near = max(3.0, camera.ground_depth_for_row(camera.height * 0.98) + 1.0)
    far = max(near + 4.0, min(22.0, camera.focal * 1.7 / 45.0))
    return near, far, camera.width / 2 / camera.focal


def _plan(
    rng: np.random.Generator, camera: Camera, index: int, seconds: float
) -> tuple[list[tuple[float, float]], float]:
    """Waypoints for one person and the time they start, seconds.

    The first person always crosses, leaves the picture, waits and comes back, so every
    video exercises re-identification; the others wander, some entering from the sides.
    """
    near, far, half = _ground_area(camera)

    def inside() -> tuple[float, float]:
        z = rng.uniform(near, far)
        return (rng.uniform(-0.85, 0.85) * half * z, z)

    def outside(side: float) -> tuple[float, float]:
        z = rng.uniform(near, far)
        return (side * (half * z + 2.5), z)

    side = 1.0 if rng.random() < 0.5 else -1.0
    if index == 0:
        # Near the camera and out by the nearest side, so the return fits in a short clip.
        z = rng.uniform(near, near + 3.0)
        start = (rng.uniform(-0.5, 0.5) * half * z, z)
        out = (np.sign(start[0] or 1.0) * (half * z + 1.5), z)
        return [start, out, out, inside(), inside()], 0.0
    start = outside(side) if rng.random() < 0.4 else inside()
    route = [start] + [inside() for _ in range(int(rng.integers(2, 6)))]
    if rng.random() < 0.35:
        route.append(outside(-side if rng.random() < 0.5 else side))
    return route, float(rng.uniform(0, seconds * 0.3)) if rng.random() < 0.3 else 0.0


def _step(w: _Walker, dt: float, rng: np.random.Generator) -> None:
    """Advance one person by ``dt`` seconds: walk toward the next waypoint or hold a pause."""
    a = w.actor
    w.clock += dt
    if w.pause_left > 0 or w.done:
        w.pause_left -= dt
        a.activity = w.pause_activity
        a.phase += 2 * np.pi * dt
        return
    x, z = a.place.x, a.place.z
    tx, tz = w.route[0]
    dx, dz = tx - x, tz - z
    dist = float(np.hypot(dx, dz))
    move = w.speed * dt
    if dist <= move:
        w.route.pop(0)
        if not w.route:
            w.done, w.pause_activity = True, "stand"
        elif rng.random() < w.pause_p:
            w.pause_left = rng.uniform(1.0, 4.0)
            w.pause_activity = _PAUSE_ACTIVITIES[rng.integers(len(_PAUSE_ACTIVITIES))]
        elif dist < 1e-6:
            # A repeated waypoint is a wait off-screen before coming back.
            w.pause_left, w.pause_activity = rng.uniform(1.0, 2.5), "stand"
        move = dist
    if dist > 1e-6:
        target = float(np.arctan2(dx, -dz))
        turn = (target - w.yaw + np.pi) % (2 * np.pi) - np.pi
        w.yaw += float(np.clip(turn, -4.0 * dt, 4.0 * dt))
        x, z = x + dx / dist * move, z + dz / dist * move
    a.activity = w.gait
    a.phase += gait_phase_rate(w.gait, a.shape.stature) * move
    a.place = Placement(x=x, z=z, yaw=w.yaw)


def _walkers(rng: np.random.Generator, camera: Camera, config: VideoConfig) -> list[_Walker]:
    out = []
    for i in range(config.people):
        route, start = _plan(rng, camera, i, config.seconds)
        running = rng.random() < 0.15
        actor = Actor(
            shape=BodyShape.sample(rng),
            look=Appearance.sample(rng),
            style=Style.sample(rng),
            activity="stand",
            phase=rng.uniform(0, 2 * np.pi),
            place=Placement(route[0][0], route[0][1], 0.0),
            track_id=i + 1,
        )
        w = _Walker(
            actor=actor,
            route=route[1:],
            speed=rng.uniform(2.5, 3.5) if running else rng.uniform(1.2 if i == 0 else 0.9, 1.6),
            gait="run" if running else "walk",
            pause_p=0.0 if i == 0 else rng.uniform(0.0, 0.5),
        )
        w.yaw = float(np.arctan2(route[1][0] - route[0][0], -(route[1][1] - route[0][1])))
        w.pause_left = start
        w.pause_activity = "stand"
        out.append(w)
    return out


def frames(config: VideoConfig) -> Iterator[Sample]:
    """Render the video frame by frame; each Sample carries ``track_ids`` and, in ``meta``,
    ``frame_index`` (0-based)."""
    rng = np.random.default_rng([config.seed, 0x51DE0])
    camera = Camera.sample(rng, config.width, config.height)
    camera = Camera(**{**camera.__dict__, "pitch": min(camera.pitch, 0.15)})
    background = draw_background(rng, camera)
    light = sample_light(rng)
    walkers = _walkers(rng, camera, config)
    dt = 1.0 / config.fps
    smooth = 1.0 - np.exp(-dt / 0.12)  # joint angles ease between activities over ~0.1 s
    for index in range(config.frames):
        actors = []
        for w in walkers:
            a = w.actor
            target = pose_for(a.activity, a.phase, a.style)
            w.angles = target if w.angles is None else w.angles + smooth * (target - w.angles)
            a.angles = w.angles
            actors.append(a)
        _, sample = compose(camera, background, actors, light)
        sample.meta = {"frame_index": index, "camera": camera}
        yield sample
        for w in walkers:
            _step(w, dt, rng)


def write_video(
    config: VideoConfig, out: Path, progress: Callable[[int], None] | None = None
) -> dict:
    """Write ``out`` (.mp4, H.264 yuv420p), ``out`` .csv (MOT ground truth) and .json
    (per-frame COCO with COCO-WholeBody fields and ``track_id``). Returns a summary dict."""
    import av  # here: rendering stills and training need no video library

    base = out.with_suffix("") if out.suffix == ".mp4" else out
    base.parent.mkdir(parents=True, exist_ok=True)
    mp4, csv, js = base.with_suffix(".mp4"), base.with_suffix(".csv"), base.with_suffix(".json")
    coco = CocoBuilder(info={"description": "posegraph synthetic video", "fps": config.fps})
    rows: list[str] = []
    ids: set[int] = set()
    container = av.open(str(mp4), mode="w")
    try:
        stream = container.add_stream("libx264", rate=int(round(config.fps)))
        stream.width, stream.height, stream.pix_fmt = config.width, config.height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for sample in frames(config):
            index = sample.meta["frame_index"]
            coco.add(sample, f"{mp4.name}#{index}", frame_index=index)
            for tid, (x, y, w, h) in zip(sample.track_ids, sample.boxes, strict=True):
                rows.append(f"{index + 1},{tid},{x:.2f},{y:.2f},{w:.2f},{h:.2f},1,-1,-1,-1")
                ids.add(int(tid))
            frame = av.VideoFrame.from_ndarray(sample.image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
            if progress is not None:
                progress(index + 1)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    csv.write_text("\n".join(rows) + "\n")
    write_json(coco.wholebody_json(), js)
    log.info("wrote %s, %s, %s", mp4, csv, js)
    return {"mp4": mp4, "csv": csv, "json": js, "frames": config.frames, "tracks": len(ids)}
