"""``posegraph bench ...``: benchmarks as commands, each with its baseline measured in the same run."""

from __future__ import annotations

import json
import logging
import os
import sys
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
    """Frames of a clip through ``hops`` pass-through processes: shared memory, inline over
    ipc, and over tcp in the clear and with CURVE (what encrypting every hop costs)."""
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
        for mode in ("shm", "inline", "tcp", "tcp+curve"):
            g = Graph(f"transport-{mode.replace('+', '-')}")
            g.runtime.shm = mode == "shm"
            g.runtime.transport = "tcp" if mode.startswith("tcp") else "ipc"
            g.runtime.curve = mode == "tcp+curve"
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


def surveillance_graph(
    clip: Path | list[Path],
    jsonl: Path,
    flip_test: bool = True,
    name: str = "bench",
    device: str = "cpu",
    bf16: bool = False,
):
    """The graph of pipelines/surveillance.yaml without its drawing and video sinks: the
    clip, unpaced, through detect.synthetic, crop, the shipped HRNet and the tracker.
    Several clips are several streams (``cam``, ``cam1``...) through the same nodes."""
    from posegraph.graph import Graph

    g = Graph(name)
    clips = clip if isinstance(clip, list) else [clip]
    srcs = [
        g.add("cam" if i == 0 else f"cam{i}", "source.video", uri=str(c))
        for i, c in enumerate(clips)
    ]
    people = g.add(
        "people",
        "detect.synthetic",
        *srcs,
        score_threshold=0.3,
        input_size=(256, 192),
        device=device,
    )
    crops = g.add("crops", "crop.topdown", people, model="hrnet_w16_128x96")
    pose = g.add(
        "pose",
        "pose.topdown",
        crops,
        model="hrnet_w16_128x96",
        weights="builtin",
        flip_test=flip_test,
        device=device,
        bf16=bf16,
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
    people: tuple[int, ...] = (1, 4, 16),
    seconds: float = 4.0,
    flip_test: bool = True,
    bf16: bool = False,
) -> dict:
    """The surveillance pipeline on synthetic clips of 1, 4 and 16 people, in one process
    (inproc) and one process per node (procs): frames/s, end-to-end latency, and the mean
    OKS of its poses against the clip's ground truth. With ``bf16`` each cell runs again
    with the pose node in bfloat16, its frames/s as a ratio to float32's (the detector
    stays in float32)."""
    from posegraph import scoring
    from training.synth.video import VideoConfig, write_video

    result: dict = {"width": 640, "height": 480, "fps": 15, "seconds": seconds, "cells": []}
    with tempfile.TemporaryDirectory(prefix="posegraph-bench-") as tmp:
        for n in people:
            config = VideoConfig(people=n, seconds=seconds, fps=15, width=640, height=480, seed=n)
            made = write_video(config, Path(tmp) / f"people{n}")
            truth = scoring.Truth(made["json"])
            for executor in ("inproc", "procs"):
                baseline = None
                for precision in ("fp32", "bf16") if bf16 else ("fp32",):
                    out = Path(tmp) / f"people{n}-{executor}-{precision}.jsonl"
                    name = f"bench-{n}-{executor}-{precision}"
                    g = surveillance_graph(
                        made["mp4"], out, flip_test, name, bf16=precision == "bf16"
                    )
                    summary = g.run(executor=executor)
                    scored = scoring.score(scoring.read_jsonl(out), truth)
                    fps = summary["delivered"] / summary["delivery_s"]
                    baseline = baseline or fps
                    result["cells"].append(
                        {
                            "people": n,
                            "executor": executor,
                            "precision": precision,
                            "frames": summary["delivered"],
                            "fps": round(fps, 2),
                            "fps_ratio": round(fps / baseline, 3),
                            "p50_ms": round(summary["e2e_ms"]["p50"], 1),
                            "p99_ms": round(summary["e2e_ms"]["p99"], 1),
                            "lost": summary["lost"] + summary["dropped"],
                            "mean_oks": round(scored["mean_oks"], 3),
                            "AP": round(scored["AP"], 3),
                        }
                    )
    return result


def streams(
    counts: tuple[int, ...] = (1, 3),
    people: int = 4,
    seconds: float = 4.0,
    repeat: int = 1,
    device: str = "cpu",
) -> dict:
    """S synthetic clips through one set of surveillance nodes (inproc, unpaced), the model
    nodes working on one frame at a time (``baseline``) and on one per stream
    (``in_flight``, the default): frames/s, and the images and crops a batch held."""
    from training.synth.video import VideoConfig, write_video

    result: dict = {
        "device": device,
        "people": people,
        "seconds": seconds,
        "fps": 15,
        "cells": [],
    }
    with tempfile.TemporaryDirectory(prefix="posegraph-bench-") as tmp:
        clips = [
            write_video(
                VideoConfig(people=people, seconds=seconds, fps=15, width=640, height=480, seed=i),
                Path(tmp) / f"clip{i}",
            )["mp4"]
            for i in range(max(counts))
        ]
        for _ in range(repeat):
            for n in counts:
                base = None
                for mode, in_flight in (("baseline", 1), ("in_flight", None)):
                    out = Path(tmp) / f"streams{n}-{mode}.jsonl"
                    name = f"bench-streams-{n}-{mode}"
                    g = surveillance_graph(clips[:n], out, True, name, device)
                    g.runtime.in_flight = in_flight
                    summary = g.run(executor="inproc")
                    fps = summary["delivered"] / summary["delivery_s"]
                    base = fps if base is None else base
                    mean = {
                        ("detector" if "hprnet" in key else "pose"): b["mean_items"]
                        for key, b in summary["batching"].items()
                    }
                    result["cells"].append(
                        {
                            "streams": n,
                            "mode": mode,
                            "frames": summary["delivered"],
                            "fps": round(fps, 2),
                            "vs_baseline": round(fps / base, 3),
                            "detector_batch": mean.get("detector", 0.0),
                            "pose_batch": mean.get("pose", 0.0),
                        }
                    )
    return result


def crops(
    people: tuple[int, ...] = (1, 4, 16, 32),
    frame_size: tuple[int, int] = (1920, 1080),
    model: str = "hrnet_w16_128x96",
    device: str = "cpu",
    repeat: int = 20,
) -> dict:
    """A top-down model's input for P people of one frame, ready on ``device``: cut with
    OpenCV on the CPU and copied over (``opencv``, the baseline) against the frame copied
    once and every crop sampled there (``device``, what ``pose.topdown`` does with
    ``crop_on: device``). Median milliseconds of ``repeat`` runs, and the largest
    difference between the two inputs (normalised units)."""
    import torch

    from nodes.crop import DeviceFrames, box_to_center_scale, center_scale_to_affine, warp_crops
    from nodes.pose import Normalise
    from posegraph.models import spec_of

    spec = spec_of(model)
    size = tuple(spec.input_size)
    normalise = Normalise(spec.mean, spec.std, spec.color)
    target = torch.device(device)
    width, height = frame_size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    table = DeviceFrames.on(device)

    def sync() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    def opencv(affine: np.ndarray) -> torch.Tensor:
        cut = warp_crops(image, affine, size)
        return normalise.torch(torch.from_numpy(cut).to(target), torch.float32)

    def sampled(inverse: np.ndarray) -> torch.Tensor:
        fid = table.add(image)
        try:
            return normalise.torch_planar(
                table.crops(DeviceFrames.rows(fid, inverse), size), torch.float32
            )
        finally:
            table.remove(fid)

    result: dict = {
        "device": device,
        "frame": [width, height],
        "crop": list(size),
        "model": model,
        "repeat": repeat,
        "cells": [],
    }
    for n in people:
        h = rng.uniform(0.2, 0.6, n) * height  # standing people, a third as wide as tall
        x = rng.uniform(0, width - h / 3)
        y = rng.uniform(0, height - h)
        boxes = np.stack([x, y, x + h / 3, y + h], 1).astype(np.float32)
        center, scale = box_to_center_scale(boxes, size[0] / size[1])
        affine, inverse = center_scale_to_affine(center, scale, size)
        with torch.inference_mode():
            diff = float((opencv(affine) - sampled(inverse)).abs().max())
            base = None
            for mode, run, matrices in (("opencv", opencv, affine), ("device", sampled, inverse)):
                times = []
                for _ in range(repeat):
                    start = time.perf_counter()
                    run(matrices)
                    sync()
                    times.append(time.perf_counter() - start)
                ms = float(np.median(times) * 1000)
                base = ms if base is None else base
                result["cells"].append(
                    {
                        "people": n,
                        "mode": mode,
                        "ms_p50": round(ms, 3),
                        "speedup": round(base / ms, 3),
                        "max_diff": round(diff, 5),
                    }
                )
    return result


def _print_table(title: str, columns: tuple[str, ...], rows: list[list[str]], caption: str):
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, caption=caption)
    for col in columns:
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    Console().print(t)


def _print_streams(result: dict) -> None:
    _print_table(
        f"streams sharing the surveillance nodes on {result['device']}: "
        f"{result['people']} people a clip, {result['seconds']:g} s at {result['fps']} fps, "
        "inproc, unpaced",
        ("streams", "mode", "frames", "fps", "vs baseline", "images/batch", "crops/batch"),
        [
            [
                str(c["streams"]),
                c["mode"],
                str(c["frames"]),
                f"{c['fps']:.2f}",
                f"{c['vs_baseline']:.3f}",
                f"{c['detector_batch']:.2f}",
                f"{c['pose_batch']:.2f}",
            ]
            for c in result["cells"]
        ],
        "baseline: each model node works on one frame at a time; in_flight: on one frame "
        "per stream, so the streams' images and crops share batches",
    )


def _print_crops(result: dict) -> None:
    w, h = result["frame"]
    cw, ch = result["crop"]
    _print_table(
        f"crops of one {w}x{h} frame at {cw}x{ch} ({result['model']}), normalised, on "
        f"{result['device']}: median of {result['repeat']} runs",
        ("people", "mode", "ms", "speed-up", "max diff"),
        [
            [
                str(c["people"]),
                c["mode"],
                f"{c['ms_p50']:.2f}",
                f"{c['speedup']:.2f}",
                f"{c['max_diff']:.4f}",
            ]
            for c in result["cells"]
        ],
        "opencv: cv2.warpAffine per crop on the CPU, crops copied to the device; device: "
        "the frame copied once, crops sampled there (pose.topdown crop_on: device); max diff: "
        "the largest difference of the two inputs, in normalised units",
    )


def _print_pipeline(result: dict) -> None:
    _print_table(
        f"surveillance pipeline: {result['width']}x{result['height']} synthetic clips, "
        f"{result['seconds']:g} s at {result['fps']} fps, source unpaced",
        (
            "people",
            "executor",
            "precision",
            "frames",
            "fps",
            "vs fp32",
            "e2e p50 ms",
            "e2e p99 ms",
            "lost",
            "mean OKS",
            "AP",
        ),
        [
            [
                str(c["people"]),
                c["executor"],
                c["precision"],
                str(c["frames"]),
                f"{c['fps']:.2f}",
                f"{c['fps_ratio']:.3f}",
                f"{c['p50_ms']:.1f}",
                f"{c['p99_ms']:.1f}",
                str(c["lost"]),
                f"{c['mean_oks']:.3f}",
                f"{c['AP']:.3f}",
            ]
            for c in result["cells"]
        ],
        "unpaced: frames/s is throughput; latency includes the time frames wait in queues "
        "(block policy). mean OKS and AP against the clips' ground truth, body keypoints",
    )


def _print_transport(result: dict) -> None:
    floor = result["ipc_floor"]
    baseline = [
        "raw decode (baseline)",
        f"{result['raw_decode_fps']:.1f}",
        "1.000",
        f"{floor['p50_ms']:.3f}",
        f"{floor['p99_ms']:.3f}",
        "-",
    ]
    _print_table(
        f"transport: {result['frames']} frames {result['width']}x"
        f"{result['height']} through {result['hops']} pass-through processes",
        ("transport", "fps", "vs raw decode", "hop p50 ms", "hop p99 ms", "lost"),
        [
            baseline,
            *(
                [
                    m["transport"],
                    f"{m['fps']:.1f}",
                    f"{m['vs_raw_decode']:.3f}",
                    f"{m['hop_p50_ms']:.3f}",
                    f"{m['hop_p99_ms']:.3f}",
                    str(m["lost"]),
                ]
                for m in result["modes"]
            ),
        ],
        "hop latency of the baseline row: a bare ZeroMQ ipc message between two "
        "processes, the floor on this machine; inline: pixels in the messages over ipc; "
        "tcp: over 127.0.0.1 in the clear, tcp+curve: encrypted (the tcp default)",
    )


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def machine(device: str) -> dict:
    """What a benchmark ran on, for its figures to be read against: the device in words and
    the 1-minute load average just before it (near the core count: something else was
    running, and the figures are not this machine's best)."""
    from posegraph.scheduler.bench import describe

    return {"machine": describe(device), "load_before": round(os.getloadavg()[0], 2)}


def main(args) -> int:
    ran_on = machine(getattr(args, "device", "cpu"))
    if args.bench == "latency":
        from posegraph.scheduler import bench

        result = bench.latency(
            _numbers(args.streams),
            _numbers(args.people),
            args.fps,
            args.budget_ms,
            args.seconds,
            args.device,
        )
        show = bench.print_table
    elif args.bench == "pipeline":
        result = pipeline(_numbers(args.people), args.seconds, not args.no_flip, args.bf16)
        show = _print_pipeline
    elif args.bench == "streams":
        result = streams(
            _numbers(args.streams), args.people, args.seconds, args.repeat, args.device
        )
        show = _print_streams
    elif args.bench == "crops":
        w, h = _numbers(args.frame.replace("x", ","))
        result = crops(_numbers(args.people), (w, h), args.model, args.device, args.repeat)
        show = _print_crops
    elif args.bench == "transport":
        result = transport(args.frames, args.width, args.height, args.clip)
        show = _print_transport
    elif args.bench == "soak":
        from posegraph import soak

        try:
            result = soak.soak(args.file, args.seconds, args.every, args.set, args.warmup)
        except (ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        show = soak.print_soak
    else:
        raise SystemExit(f"unknown benchmark {args.bench!r}")
    result.update(ran_on)
    if args.json:
        print(json.dumps(result))
    else:
        from rich.console import Console

        show(result)
        Console().print(
            f"on {ran_on['machine']}; 1-minute load average before the run "
            f"{ran_on['load_before']:.2f}"
        )
    return 0
