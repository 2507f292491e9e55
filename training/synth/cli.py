"""``posegraph synth``: write synthetic image sets, videos and preview sheets.

posegraph synth images --n 5000 --out data/synth [--seed 0] [--size 640x480] [--people 1-8]
                       [--workers N]
posegraph synth video --people 8 --seconds 20 --fps 25 --out clips/walk [--seed 0]
posegraph synth preview --out sheet.png [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from posegraph.skeletons import wholebody133

from .coco import CocoBuilder, write_json
from .dataset import SyntheticPeople
from .scene import Sample, SceneConfig
from .video import VideoConfig, write_video

PROG = "posegraph synth"


class UsageError(Exception):
    """A bad command line: the message says what, where and what to do."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        raise UsageError(f"{self.prog}: {message}; see '{self.prog} --help'")


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"'{text}' is not WIDTHxHEIGHT, e.g. 640x480")
    w, h = int(parts[0]), int(parts[1])
    if w < 64 or h < 64 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(
            f"'{text}': width and height must be even and at least 64, e.g. 640x480"
        )
    return w, h


def _people_range(text: str) -> tuple[int, int]:
    parts = text.split("-")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) > int(parts[1]):
        raise argparse.ArgumentTypeError(f"'{text}' is not MIN-MAX with MIN <= MAX, e.g. 1-8")
    return int(parts[0]), int(parts[1])


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"'{text}' must be greater than 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Render synthetic people with exact keypoints.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    images = sub.add_parser("images", help="a COCO-format image set")
    images.add_argument("--n", type=_positive(int), required=True, help="number of images")
    images.add_argument("--out", type=Path, required=True, help="output directory")
    images.add_argument("--seed", type=int, default=0)
    images.add_argument("--size", type=_size, default=(640, 480), help="WIDTHxHEIGHT")
    images.add_argument(
        "--people", type=_people_range, default=None, help="MIN-MAX people per image"
    )
    images.add_argument(
        "--workers",
        type=_positive(int),
        default=None,
        help="rendering processes (default: one per available core); the files are the same "
        "for any number",
    )

    video = sub.add_parser("video", help="an MP4 with MOT and COCO ground truth")
    video.add_argument("--people", type=_positive(int), default=8)
    video.add_argument("--seconds", type=_positive(float), default=20.0)
    video.add_argument("--fps", type=_positive(float), default=25.0)
    video.add_argument("--out", type=Path, required=True, help="FILE: writes FILE.mp4/.csv/.json")
    video.add_argument("--seed", type=int, default=0)
    video.add_argument("--size", type=_size, default=(640, 480), help="WIDTHxHEIGHT")

    preview = sub.add_parser("preview", help="a grid of samples with keypoints drawn")
    preview.add_argument("--out", type=Path, required=True, help="PNG file")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--rows", type=_positive(int), default=3)
    preview.add_argument("--cols", type=_positive(int), default=4)

    bench = sub.add_parser("bench", help="rendering speed in images/s, on one process")
    bench.add_argument("--images", type=_positive(int), default=60)
    bench.add_argument("--size", type=_size, default=(640, 480), help="WIDTHxHEIGHT")
    bench.add_argument("--people", type=_people_range, default=(2, 5), help="MIN-MAX")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class _ImageWriter:
    """Renders image ``i`` of a set and writes it as ``{i:06d}.jpg`` (in a worker process).

    Returns the sample without its pixels: the annotations (with the instance map, for the
    masks) are what the parent needs.
    """

    def __init__(self, data: SyntheticPeople, img_dir: Path) -> None:
        self.data, self.img_dir = data, img_dir

    def __call__(self, index: int) -> Sample:
        sample = self.data[index]
        name = self.img_dir / f"{index:06d}.jpg"
        quality = int(self.data.rng(index).integers(70, 96))
        if not cv2.imwrite(str(name), sample.image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cannot write {name}")
        h, w = sample.image.shape[:2]
        # a (h, w, 0) array keeps the size CocoBuilder records, with no pixels
        return dataclasses.replace(sample, image=np.empty((h, w, 0), np.uint8))


def _images(args, console: Console) -> str:
    people = args.people or (1, 8)
    config = SceneConfig(
        width=args.size[0],
        height=args.size[1],
        people=people,
        crowd_p=0.0 if args.people else SceneConfig.crowd_p,
    )
    data = SyntheticPeople(args.n, seed=args.seed, config=config)
    img_dir = args.out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    coco = CocoBuilder(info={"description": "posegraph synthetic people", "seed": args.seed})
    write = _ImageWriter(data, img_dir)
    workers = min(args.workers or len(os.sched_getaffinity(0)), args.n)
    start = time.perf_counter()
    with _progress(console) as bar:
        task = bar.add_task("rendering", total=args.n)
        if workers == 1:
            samples = map(write, range(args.n))
            pool = None
        else:
            # spawn: the parent may hold threads (torch's) that a fork would copy mid-state
            pool = multiprocessing.get_context("spawn").Pool(workers)
            samples = pool.imap(write, range(args.n), chunksize=4)
        try:
            for i, sample in enumerate(samples):  # in index order, whatever the workers
                coco.add(sample, f"images/{i:06d}.jpg")
                bar.advance(task)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    write_json(coco.keypoints_json(), args.out / "annotations" / "person_keypoints.json")
    write_json(coco.wholebody_json(), args.out / "annotations" / "coco_wholebody.json")
    took = time.perf_counter() - start
    return (
        f"wrote {args.n} images with {len(coco.body)} people to {args.out} "
        f"in {took:.1f} s ({args.n / took:.1f} images/s, "
        f"{workers} process{'es' if workers > 1 else ''})"
    )


def _video(args, console: Console) -> str:
    config = VideoConfig(
        people=args.people,
        seconds=args.seconds,
        fps=args.fps,
        width=args.size[0],
        height=args.size[1],
        seed=args.seed,
    )
    start = time.perf_counter()
    with _progress(console) as bar:
        task = bar.add_task("rendering", total=config.frames)
        summary = write_video(config, args.out, lambda n: bar.update(task, completed=n))
    took = time.perf_counter() - start
    return (
        f"wrote {summary['mp4']} ({summary['frames']} frames, {summary['tracks']} tracks) "
        f"with {summary['csv'].name} and {summary['json'].name} in {took:.1f} s"
    )


def draw_annotations(image: np.ndarray, sample: Sample) -> np.ndarray:
    """A copy of ``image`` with boxes, limbs and keypoints drawn: green visible, red hidden."""
    out = image.copy()
    for n in range(len(sample)):
        x, y, w, h = sample.boxes[n].astype(int)
        cv2.rectangle(out, (x, y), (x + w, y + h), (255, 200, 0), 1)
        kp = sample.keypoints[n]
        for a, b in wholebody133.limbs:
            if kp[a, 2] > 0 and kp[b, 2] > 0 and (a < 23 or a >= 91):
                pa, pb = kp[a, :2].astype(int), kp[b, :2].astype(int)
                cv2.line(out, tuple(pa.tolist()), tuple(pb.tolist()), (0, 255, 255), 1)
        for k, (px, py, v) in enumerate(kp):
            if v > 0:
                colour = (0, 230, 0) if v == 2 else (0, 0, 255)
                radius = 2 if k < 17 else 1
                cv2.circle(out, (int(round(px)), int(round(py))), radius, colour, -1)
    return out


def _preview(args, console: Console) -> str:
    data = SyntheticPeople(args.rows * args.cols, seed=args.seed)
    tiles = []
    with _progress(console) as bar:
        task = bar.add_task("rendering", total=len(data))
        for i in range(len(data)):
            sample = data[i]
            tiles.append(draw_annotations(sample.image, sample))
            bar.advance(task)
    rows = [np.hstack(tiles[r * args.cols : (r + 1) * args.cols]) for r in range(args.rows)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), np.vstack(rows)):
        raise UsageError(f"{PROG} preview: cannot write '{args.out}'; use a .png path")
    return f"wrote {args.out} ({args.rows}x{args.cols} samples, seed {args.seed})"


def _bench(args, console: Console) -> str:
    w, h = args.size
    config = SceneConfig(w, h, people=args.people, crowd_p=0.0)
    data = SyntheticPeople(args.images + 5, seed=1, config=config)
    for i in range(5):  # warm-up: caches and first allocations
        data[i]
    t0 = time.perf_counter()
    people = sum(len(data[i].keypoints) for i in range(5, args.images + 5))
    rate = args.images / (time.perf_counter() - t0)
    result = {
        "images": args.images,
        "size": f"{w}x{h}",
        "people": people,
        "images_per_s": round(rate, 2),
    }
    if args.json:
        return json.dumps(result)
    return f"{rate:.1f} images/s at {w}x{h} ({people} people in {args.images} images, one process)"


def main(argv: list[str]) -> int:
    """Run ``posegraph synth`` with ``argv`` (without the program name); returns the exit
    status: 0 done, 2 bad arguments, 1 failure while writing."""
    console = Console(stderr=True)
    try:
        args = build_parser().parse_args(argv)
        handler = {"images": _images, "video": _video, "preview": _preview, "bench": _bench}[
            args.command
        ]
        summary = handler(args, console)
    except UsageError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        return 2
    except OSError as err:
        console.print(f"[red]error:[/red] {PROG}: {err}", highlight=False, soft_wrap=True)
        return 1
    Console().print(summary, highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
