"""``posegraph bench ...``: benchmarks as commands, each with its baseline measured in the same run."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def make_clip(path: Path, frames: int, width: int, height: int, fps: int = 30) -> Path:
    """An H.264 clip of moving shapes, the kind of content a camera sends."""
    import av
    import cv2

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28"}
        for n in range(frames):
            img = base.copy()
            cx = int((0.5 + 0.4 * np.sin(n / 20)) * width)
            cv2.circle(img, (cx, height // 2), height // 6, (0, 200, 255), -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def raw_decode_fps(path: Path) -> tuple[int, float]:
    """Frames and frames/s of decoding the clip to BGR arrays exactly as the video source
    does, in one process with nothing else: the best of two passes."""
    import av

    from nodes.sources import to_bgr

    best = 0.0
    for _ in range(2):
        n = 0
        t0 = time.perf_counter()
        with av.open(str(path)) as container:
            vs = container.streams.video[0]
            vs.thread_type = "AUTO"
            for vf in container.decode(vs):
                to_bgr(vf)
                n += 1
        best = max(best, n / (time.perf_counter() - t0))
    return n, best


def _echo(address_in: str, address_out: str) -> None:
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(address_in)
    push = ctx.socket(zmq.PUSH)
    push.connect(address_out)
    while (msg := pull.recv()) != b"":
        push.send(msg)
    ctx.destroy(0)


def ipc_floor(pings: int = 1000, size: int = 160) -> dict[str, float]:
    """One-way latency of a bare ZeroMQ ipc message between two Python processes (the
    floor under any per-hop figure on this machine): half the round trip of ``pings``
    messages of ``size`` bytes, 1 ms apart."""
    import multiprocessing as mp

    import zmq

    with tempfile.TemporaryDirectory(prefix="posegraph-ipc-") as tmp:
        a, b = f"ipc://{tmp}/a", f"ipc://{tmp}/b"
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(a)
        pull = ctx.socket(zmq.PULL)
        pull.bind(b)
        proc = mp.get_context("spawn").Process(target=_echo, args=(a, b))
        proc.start()
        body = b"x" * size
        push.send(body)
        pull.recv()  # connected both ways
        one_way = []
        for _ in range(pings):
            t0 = time.perf_counter()
            push.send(body)
            pull.recv()
            one_way.append((time.perf_counter() - t0) * 500.0)
            time.sleep(0.001)
        push.send(b"")
        proc.join(5)
        ctx.destroy(0)
    p50, p99 = np.percentile(one_way, [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def transport(
    frames: int = 300, width: int = 1920, height: int = 1080, clip: str | None = None, hops: int = 4
) -> dict:
    """Frames of a clip through ``hops`` pass-through processes, shared memory vs inline."""
    from posegraph.graph import Graph

    with tempfile.TemporaryDirectory(prefix="posegraph-bench-") as tmp:
        path = Path(clip) if clip else make_clip(Path(tmp) / "clip.mp4", frames, width, height)
        n, decode_fps = raw_decode_fps(path)
        result = {
            "frames": n,
            "width": width,
            "height": height,
            "hops": hops,
            "raw_decode_fps": round(decode_fps, 1),
            "ipc_floor": ipc_floor(),
            "modes": [],
        }
        for mode in ("shm", "inline"):
            g = Graph(f"transport-{mode}")
            g.runtime.shm = mode == "shm"
            prev = g.add("src", "source.video", uri=str(path))
            for k in range(hops):
                prev = g.add(f"hop{k + 1}", "util.passthrough", prev)
            g.add("sink", "sink.null", prev)
            summary = g.run(executor="procs")
            fps = summary["delivered"] / summary["delivery_s"]
            result["modes"].append(
                {
                    "transport": mode,
                    "fps": round(fps, 1),
                    "vs_raw_decode": round(fps / decode_fps, 3),
                    "hop_p50_ms": round(summary["hop_ms"]["p50"], 3),
                    "hop_p99_ms": round(summary["hop_ms"]["p99"], 3),
                    "e2e_p50_ms": round(summary["e2e_ms"]["p50"], 2),
                    "lost": summary["lost"] + summary["dropped"],
                }
            )
    return result


def surveillance_graph(clip: Path, jsonl: Path, flip_test: bool = True, name: str = "bench"):
    """The graph of pipelines/surveillance.yaml without its drawing and video sinks: the
    clip, unpaced, through detect.synthetic, crop, the shipped HRNet and the tracker."""
    from posegraph.graph import Graph

    g = Graph(name)
    src = g.add("cam", "source.video", uri=str(clip))
    people = g.add("people", "detect.synthetic", src, score_threshold=0.3, input_size=(256, 192))
    crops = g.add("crops", "crop.topdown", people, model="hrnet_w16_128x96")
    pose = g.add(
        "pose",
        "pose.topdown",
        crops,
        model="hrnet_w16_128x96",
        weights="builtin",
        flip_test=flip_test,
    )
    track = g.add(  # as in surveillance.yaml, for the shipped HRNet's low scores
        "track",
        "track.bytetrack",
        pose,
        high_thresh=0.25,
        new_track_thresh=0.3,
        fuse_score=False,
        keypoint_thresh=0.5,
    )
    g.add("jsonl", "sink.jsonl", track, path=str(jsonl))
    return g


def pipeline(
    people: tuple[int, ...] = (1, 4, 16), seconds: float = 4.0, flip_test: bool = True
) -> dict:
    """The surveillance pipeline on synthetic clips of 1, 4 and 16 people, in one process
    (inproc) and one process per node (procs): frames/s, end-to-end latency, and the mean
    OKS of its poses against the clip's ground truth."""
    from posegraph import scoring
    from training.synth.video import VideoConfig, write_video

    result: dict = {"width": 640, "height": 480, "fps": 15, "seconds": seconds, "cells": []}
    with tempfile.TemporaryDirectory(prefix="posegraph-bench-") as tmp:
        for n in people:
            config = VideoConfig(people=n, seconds=seconds, fps=15, width=640, height=480, seed=n)
            made = write_video(config, Path(tmp) / f"people{n}")
            truth = scoring.Truth(made["json"])
            for executor in ("inproc", "procs"):
                out = Path(tmp) / f"people{n}-{executor}.jsonl"
                g = surveillance_graph(made["mp4"], out, flip_test, f"bench-{n}-{executor}")
                summary = g.run(executor=executor)
                scored = scoring.score(scoring.read_jsonl(out), truth)
                result["cells"].append(
                    {
                        "people": n,
                        "executor": executor,
                        "frames": summary["delivered"],
                        "fps": round(summary["delivered"] / summary["delivery_s"], 2),
                        "p50_ms": round(summary["e2e_ms"]["p50"], 1),
                        "p99_ms": round(summary["e2e_ms"]["p99"], 1),
                        "lost": summary["lost"] + summary["dropped"],
                        "mean_oks": round(scored["mean_oks"], 3),
                        "AP": round(scored["AP"], 3),
                    }
                )
    return result


def _print_pipeline(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"surveillance pipeline: {result['width']}x{result['height']} synthetic clips, "
        f"{result['seconds']:g} s at {result['fps']} fps, source unpaced"
    )
    for col in (
        "people",
        "executor",
        "frames",
        "fps",
        "e2e p50 ms",
        "e2e p99 ms",
        "lost",
        "mean OKS",
        "AP",
    ):
        t.add_column(col, justify="right")
    for c in result["cells"]:
        t.add_row(
            str(c["people"]),
            c["executor"],
            str(c["frames"]),
            f"{c['fps']:.2f}",
            f"{c['p50_ms']:.1f}",
            f"{c['p99_ms']:.1f}",
            str(c["lost"]),
            f"{c['mean_oks']:.3f}",
            f"{c['AP']:.3f}",
        )
    t.caption = (
        "unpaced: frames/s is throughput; latency includes the time frames wait in queues "
        "(block policy). mean OKS and AP against the clips' ground truth, body keypoints"
    )
    Console().print(t)


def main(args) -> int:
    if args.bench == "latency":
        from posegraph.scheduler import bench

        result = bench.latency(
            tuple(int(v) for v in args.streams.split(",")),
            tuple(int(v) for v in args.people.split(",")),
            args.fps,
            args.budget_ms,
            args.seconds,
            args.device,
        )
        if args.json:
            print(json.dumps(result))
        else:
            bench.print_table(result)
        return 0
    if args.bench == "pipeline":
        people = tuple(int(v) for v in args.people.split(","))
        result = pipeline(people, args.seconds, not args.no_flip)
        if args.json:
            print(json.dumps(result))
        else:
            _print_pipeline(result)
        return 0
    if args.bench == "transport":
        result = transport(args.frames, args.width, args.height, args.clip)
        if args.json:
            print(json.dumps(result))
            return 0
        from rich.console import Console
        from rich.table import Table

        t = Table(
            title=f"transport: {result['frames']} frames {result['width']}x"
            f"{result['height']} through {result['hops']} pass-through processes"
        )
        for col in ("transport", "fps", "vs raw decode", "hop p50 ms", "hop p99 ms", "lost"):
            t.add_column(col, justify="right")
        floor = result["ipc_floor"]
        t.add_row(
            "raw decode (baseline)",
            f"{result['raw_decode_fps']:.1f}",
            "1.000",
            f"{floor['p50_ms']:.3f}",
            f"{floor['p99_ms']:.3f}",
            "-",
        )
        for m in result["modes"]:
            t.add_row(
                m["transport"],
                f"{m['fps']:.1f}",
                f"{m['vs_raw_decode']:.3f}",
                f"{m['hop_p50_ms']:.3f}",
                f"{m['hop_p99_ms']:.3f}",
                str(m["lost"]),
            )
        t.caption = (
            "hop latency of the baseline row: a bare ZeroMQ ipc message between two "
            "processes, the floor on this machine"
        )
        Console().print(t)
        return 0
    raise SystemExit(f"unknown benchmark {args.bench!r}")
