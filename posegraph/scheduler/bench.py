"""``posegraph bench latency``: per-frame latency as streams and people multiply, with the
device scheduler and without it.

A synthetic load: S streams, each a live camera at ``fps`` frames/s, every frame with P
people. Each stream runs as the pipeline runs it: a detector thread (the default
``detect.synthetic``, the shipped ER-Pose-n) takes the newest frame (older ones are
dropped, as a live source's ``latest`` edge does, and counted), puts P person boxes on it,
cuts the crops (``crop.topdown``) and hands them on to a pose thread (``pose.topdown``,
the shipped HRNet-W16, no flip test). The real nodes run through the device scheduler.

- ``scheduled``: the ``edf`` policy, frame deadline = capture + budget.
- ``baseline``: the ``fifo`` policy: requests in arrival order, one at a time, no deadline.

Latency is from a frame's capture to the end of its pose step, skipped work included (a
skipped frame leaves when its deadline says so, with coasted poses in a pipeline).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from posegraph import scheduler
from posegraph.node import Context, resolve
from posegraph.packet import Detections, Frame

DETECTOR = "erpose_n_320"
POSE = "hrnet_w16_128x96"
WIDTH, HEIGHT = 640, 480


def _first_frame() -> np.ndarray:
    """The first frame of the shipped sample clip (people on a street), 640x480 BGR."""
    import av

    clip = Path(__file__).resolve().parents[2] / "pipelines" / "media" / "street.mp4"
    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="bgr24", width=WIDTH, height=HEIGHT)


def _boxes(people: int, rng: np.random.Generator) -> Detections:
    """``people`` standing-person boxes spread over the frame, best score first."""
    h = rng.uniform(120, 300, people)
    w = h * rng.uniform(0.35, 0.5, people)
    x = rng.uniform(0, WIDTH - w)
    y = rng.uniform(0, HEIGHT - h)
    xyxy = np.stack([x, y, x + w, y + h], 1).astype(np.float32)
    scores = np.sort(rng.uniform(0.5, 0.99, people))[::-1].astype(np.float32)
    return Detections(xyxy, scores, np.zeros(people, np.int64))


class _Stream:
    """One camera: a detector thread and a pose thread, each with its own node instances
    (so each is one client of its model on the scheduler, as nodes of a pipeline are)."""

    def __init__(self, name: str, people: int, fps: float, budget: float, image: np.ndarray):
        self.name, self.people, self.fps, self.budget = name, people, fps, budget
        self.image = image
        ctx = Context(name=name, pipeline="bench-latency")
        self.detector = resolve("detect.synthetic")(model=DETECTOR)
        self.crop = resolve("crop.topdown")(model=POSE, max_persons=max(32, people))
        self.pose = resolve("pose.topdown")(model=POSE, weights="builtin", batch=8)
        for node in (self.detector, self.crop, self.pose):
            node.setup(ctx)
        self.handoff: queue.Queue = queue.Queue(maxsize=1)
        self.latencies: list[float] = []
        self.dropped = 0
        self.frames = 0
        self.rng = np.random.default_rng(hash(name) % 2**32)

    def run(self, start: float, stop: float) -> None:
        pose = threading.Thread(target=self._pose_loop, daemon=True)
        pose.start()
        last = -1
        while True:
            now = time.time()
            if now >= stop:
                break
            index = int((now - start) * self.fps)
            if index == last:
                time.sleep(max(0.0, start + (index + 1) / self.fps - now))
                continue
            self.dropped += max(0, index - last - 1)  # frames that went stale meanwhile
            last = index
            captured = start + index / self.fps
            frame = Frame(
                stream=self.name,
                index=index,
                pts=index / self.fps,
                captured_at=captured,
                deadline=captured + self.budget,
                image=self.image,
            )
            self.frames += 1
            frame = self.detector.process(frame)
            frame = frame.replace(detections=_boxes(self.people, self.rng))
            self.handoff.put(self.crop.process(frame))
        # frames due before the end that the detector never took
        self.dropped += max(0, int((stop - start) * self.fps) - 1 - last)
        self.handoff.put(None)
        pose.join()

    def _pose_loop(self) -> None:
        while (frame := self.handoff.get()) is not None:
            self.pose.process(frame)
            self.latencies.append(time.time() - frame.captured_at)

    def close(self) -> None:
        for node in (self.detector, self.crop, self.pose):
            node.close()


def _cell(
    streams: int,
    people: int,
    mode: str,
    fps: float,
    budget: float,
    seconds: float,
    device: str,
    image: np.ndarray,
) -> dict[str, Any]:
    scheduler.reset(device, "edf" if mode == "scheduled" else "fifo")
    lanes = [_Stream(f"cam{i + 1}", people, fps, budget, image) for i in range(streams)]
    try:
        start = time.time() + 0.2
        stop = start + seconds
        threads = [threading.Thread(target=s.run, args=(start, stop)) for s in lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ended = time.time()
        counts = scheduler.snapshot()[scheduler.canonical(device)]["models"]
    finally:
        for s in lanes:
            s.close()
    items = sum(c["items"] for m in counts.values() for c in m["streams"].values())
    skipped = sum(c["skipped"] for m in counts.values() for c in m["streams"].values())
    latencies = np.array([v for s in lanes for v in s.latencies]) * 1e3
    frames = sum(s.frames for s in lanes)
    dropped = sum(s.dropped for s in lanes)
    done = len(latencies)

    def q(p: float) -> float:
        return round(float(np.percentile(latencies, p)), 1) if done else math.nan

    return {
        "streams": streams,
        "people": people,
        "mode": mode,
        "p50_ms": q(50),
        "p99_ms": q(99),
        "max_ms": round(float(latencies.max()), 1) if done else math.nan,
        "skipped_pct": round(100.0 * skipped / items, 1) if items else 0.0,
        "fps": round(done / (ended - start), 2),
        "frames": frames,
        "dropped_pct": round(100.0 * dropped / max(1, frames + dropped), 1),
    }


def latency(
    streams: tuple[int, ...] = (1, 2, 4, 8),
    people: tuple[int, ...] = (1, 4, 16, 32),
    fps: float = 5.0,
    budget_ms: float = 400.0,
    seconds: float = 4.0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every (streams, people) cell, scheduled and baseline, in one run."""
    image = _first_frame()
    cells = []
    for s in streams:
        for p in people:
            for mode in ("scheduled", "baseline"):
                cells.append(_cell(s, p, mode, fps, budget_ms / 1e3, seconds, device, image))
    scheduler.reset(device, "edf")
    return {
        "device": describe(device),
        "budget_ms": budget_ms,
        "fps_per_stream": fps,
        "seconds": seconds,
        "detector": DETECTOR,
        "pose": POSE,
        "cells": cells,
    }


def describe(device: str) -> str:
    """The device in words: the GPU's name, or the CPU model and its core count."""
    import os
    import platform

    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} cores"


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"latency: {result['device']}; budget {result['budget_ms']:g} ms, "
        f"{result['fps_per_stream']:g} fps per stream, {result['seconds']:g} s per cell"
    )
    for col in (
        "streams",
        "people",
        "mode",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99/p50",
        "skipped %",
        "dropped %",
        "fps",
    ):
        t.add_column(col, justify="right")
    for c in result["cells"]:
        ratio = c["p99_ms"] / c["p50_ms"] if c["p50_ms"] else math.nan
        t.add_row(
            str(c["streams"]),
            str(c["people"]),
            c["mode"],
            f"{c['p50_ms']:.1f}",
            f"{c['p99_ms']:.1f}",
            f"{c['max_ms']:.1f}",
            f"{ratio:.2f}",
            f"{c['skipped_pct']:.1f}",
            f"{c['dropped_pct']:.1f}",
            f"{c['fps']:.2f}",
        )
    t.caption = (
        f"detector {result['detector']}, pose {result['pose']} (shipped weights); "
        "skipped: images and crops not run for their deadline (coasted in a pipeline); "
        "dropped: frames gone stale before the detector was free (live-source policy)"
    )
    Console().print(t)
