"""The ``posegraph`` command: run | validate | graph | score | keys | doctor | models | bench
| synth | train | eval | export."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("posegraph")

# Command families that live in their own modules; each module has main(argv) -> int.
DELEGATED = {
    "doctor": ("posegraph.doctor", "what this host gives posegraph: packages, GPUs, /dev/shm"),
    "models": ("posegraph.models.cli", "list the model zoo"),
    "synth": ("training.synth.cli", "generate synthetic people: images, videos, previews"),
    "train": ("training.cli", "train a model from a config"),
    "eval": ("training.evaluate", "evaluate a model on COCO-format annotations"),
    "export": ("training.export", "export a model to ONNX and safetensors"),
}
# Benchmarks that need synthetic data live with it, in the training package.
DELEGATED_BENCH = {
    "tracking": ("training.tracking", "track.bytetrack on a synthetic clip: MOTA, IDF1"),
    "training": ("training.bench", "a training config's images/s, and variants' against it"),
}


def _delegate(command: str, module_name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return _err(f"`posegraph {command}` is not available in this installation ({exc})")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return int(module.main(argv) or 0)


def _err(message: str) -> int:
    """One line on stderr per error, never wrapped, so that it can be grepped."""
    from posegraph.logs import error_line

    print(error_line(message), file=sys.stderr, flush=True)
    return 2


def _load(args):
    """The validated graph of ``args.file`` with the ``--set`` overrides; None after printing
    every problem found, one line each."""
    from posegraph.config import load
    from posegraph.graph import GraphError

    try:
        return load(args.file, overrides=args.set)
    except GraphError as exc:
        for p in exc.problems:
            _err(str(p))
        return None


def cmd_validate(args) -> int:
    graph = _load(args)
    if graph is None:
        return 2
    n = len(graph.nodes)
    print(
        f"{args.file}: OK, pipeline {graph.name!r}, {n} nodes, "
        f"{sum(len(s.inputs) for s in graph.nodes.values())} edges"
    )
    return 0


def cmd_graph(args) -> int:
    graph = _load(args)
    if graph is None:
        return 2
    for name in graph.order():
        s = graph.nodes[name]
        src = f" <- {', '.join(s.inputs)}" if s.inputs else ""
        extra = f" x{s.replicas}" if s.replicas > 1 else ""
        extra += f" @{s.place}" if s.place else ""
        queue = f"  [{graph.policy(name)}/{s.queue.capacity}]" if s.inputs else ""
        print(f"{name} ({s.type}{extra}){src}{queue}")
    dot = args.dot or str(Path(args.file).with_suffix(".dot").name)
    Path(dot).write_text(graph.to_dot())
    print(f"Graphviz DOT written to {dot} (render: dot -Tpng {dot} -o graph.png)")
    return 0


def cmd_run(args) -> int:
    from posegraph.runtime import PipelineError, run

    graph = _load(args)
    if graph is None:
        return 2
    if args.metrics_port is not None:
        graph.runtime.metrics_port = args.metrics_port
    if not args.quiet:
        for url in _views(graph):
            print(f"live view: {url}", file=sys.stderr, flush=True)
    live = None
    on_tick = None
    if sys.stdout.isatty() and not args.quiet:
        from rich.live import Live

        live = Live(refresh_per_second=4, transient=False)
        live.start()
        on_tick = lambda m: live.update(m.table())  # noqa: E731
    metrics_holder = {}

    def tick(m) -> None:
        metrics_holder["m"] = m
        if on_tick is not None:
            on_tick(m)

    try:
        summary = run(
            graph,
            executor="inproc" if args.inproc else "procs",
            max_frames=args.max_frames,
            duration=args.duration,
            on_tick=tick,
        )
    except PipelineError as exc:
        if live is not None:
            live.stop()
        return _err(str(exc))
    finally:
        if live is not None and "m" in metrics_holder:
            live.update(metrics_holder["m"].table())
            live.stop()
    if args.json:
        print(json.dumps(summary))
    else:
        from posegraph.metrics import Metrics

        print(Metrics.line_from(summary))
    return 0


def _views(graph) -> list[str]:
    """The addresses of the graph's live views (sink.mjpeg nodes with a port)."""
    out = []
    for spec in graph.nodes.values():
        if spec.type == "sink.mjpeg" and spec.params.get("port", 8090):
            host = spec.params.get("host", "127.0.0.1")
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            out.append(f"http://{shown}:{spec.params.get('port', 8090)}/")
    return out


def cmd_score(args) -> int:
    from posegraph import scoring

    if not 0.0 < args.iou <= 1.0:
        return _err(f"--iou {args.iou}: give a box IoU above 0 and at most 1, e.g. 0.5")

    def last_run(path: str) -> list[dict]:
        runs = scoring.split_runs(scoring.read_jsonl(path))
        if len(runs) > 1:
            print(
                f"note: {path} holds {len(runs)} runs (sink.jsonl appends); scoring the "
                f"last, {len(runs[-1])} messages",
                file=sys.stderr,
            )
        return runs[-1] if runs else []

    try:
        poses = last_run(args.poses)
        if args.reference is not None:
            reference = last_run(args.reference)
            result = scoring.compare(poses, reference, args.stream, args.iou)
        else:
            result = scoring.score(poses, scoring.Truth(args.truth), args.stream)
    except (OSError, ValueError, KeyError) as exc:
        return _err(f"{args.poses}: {exc}")
    if args.json:
        print(json.dumps(result))
    elif args.reference is not None:
        oks = result["keypoint_oks"]
        print(
            f"{result['frames']} frames, {result['reference_people']} reference people: "
            f"box recall {result['box_recall']:.3f}, precision {result['box_precision']:.3f} "
            f"at IoU {args.iou} (mean IoU {result['mean_iou']:.3f}); keypoint OKS "
            + ("-" if oks is None else f"{oks:.3f}")
        )
    else:
        print(
            f"{result['frames']} frames, {result['people']} people: mean OKS "
            f"{result['mean_oks']:.3f}, recall@OKS0.5 {result['recall_50']:.3f}, "
            f"{result['extra']} extra; AP {result['AP']:.3f} AP50 {result['AP50']:.3f} "
            f"AR {result['AR']:.3f}"
        )
    return 0


def cmd_keys(args) -> int:
    from posegraph.runtime.curve import CurveError, make_certificates

    try:
        public, secret = make_certificates(args.dir, args.name)
    except CurveError as exc:
        return _err(str(exc))
    except OSError as exc:
        return _err(f"cannot write the key pair in {args.dir}: {exc.strerror}")
    print(f"public key: {public}  (give it to the other end)")
    print(f"secret key: {secret}  (stays on this host; readable by you only)")
    return 0


def cmd_bench(args) -> int:
    from posegraph import benchmarks

    return benchmarks.main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posegraph", description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines as text (default) or as JSON objects, one a line, for a collector",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def pipeline_args(sp) -> None:
        sp.add_argument("file", help="pipeline YAML file")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="NODE.PARAM=VALUE",
            help="override a node parameter (repeatable)",
        )

    r = sub.add_parser("run", help="run a pipeline")
    pipeline_args(r)
    r.add_argument("--inproc", action="store_true", help="run every node in this process")
    r.add_argument("--max-frames", type=int, help="stop each source after N frames")
    r.add_argument("--duration", type=float, help="stop after SECONDS")
    r.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.add_argument("-q", "--quiet", action="store_true", help="no live table")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("validate", help="check a pipeline without running it")
    pipeline_args(v)
    v.set_defaults(fn=cmd_validate)

    g = sub.add_parser("graph", help="print a pipeline's graph and write Graphviz DOT")
    pipeline_args(g)
    g.add_argument("--dot", help="where to write the DOT file (default: FILE.dot here)")
    g.set_defaults(fn=cmd_graph)

    s = sub.add_parser(
        "score", help="score published poses (JSON lines) against a clip's truth or a reference"
    )
    s.add_argument("poses", help="the JSON lines a sink.jsonl wrote")
    against = s.add_mutually_exclusive_group(required=True)
    against.add_argument("--truth", help="the clip's ground truth (synth video .json)")
    against.add_argument(
        "--reference", help="another pipeline's JSON lines on the same video, read as the truth"
    )
    s.add_argument("--iou", type=float, default=0.5, help="box IoU of a match (--reference)")
    s.add_argument("--stream", help="score this stream only (default: all frames)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_score)

    k = sub.add_parser(
        "keys", help="make a CURVE key pair for sink.zmq: NAME.key (public), NAME.key_secret"
    )
    k.add_argument("name", help="the pair's name, e.g. the host or service it is for")
    k.add_argument("--dir", default=".", help="folder to write the two files in (default: here)")
    k.set_defaults(fn=cmd_keys)

    b = sub.add_parser("bench", help="benchmarks; each prints ratios against a baseline")
    bsub = b.add_subparsers(dest="bench", metavar="NAME", required=True)
    t = bsub.add_parser("transport", help="frames through 4 pass-through processes: shm vs inline")
    t.add_argument("--frames", type=int, default=300)
    t.add_argument("--width", type=int, default=1920)
    t.add_argument("--height", type=int, default=1080)
    t.add_argument("--clip", help="a video clip to use instead of a generated one")
    t.add_argument("--json", action="store_true")
    pl = bsub.add_parser("pipeline", help="the surveillance pipeline on 1, 4 and 16 people")
    pl.add_argument("--people", default="1,4,16", help="people per clip, comma-separated")
    pl.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    pl.add_argument("--no-flip", action="store_true", help="pose without the flip test")
    pl.add_argument(
        "--bf16",
        action="store_true",
        help="each cell again with the pose node in bfloat16 (bf16: true), against float32",
    )
    pl.add_argument("--json", action="store_true")
    st = bsub.add_parser(
        "streams", help="S clips through shared model nodes: one frame per stream in flight"
    )
    st.add_argument("--streams", default="1,3", help="streams per cell, comma-separated")
    st.add_argument("--people", type=int, default=4, help="people per clip")
    st.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    st.add_argument("--repeat", type=int, default=1, help="run every cell this many times")
    st.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    st.add_argument("--json", action="store_true")
    lt = bsub.add_parser(
        "latency", help="S streams x P people through detector + pose: scheduler vs baseline"
    )
    lt.add_argument("--streams", default="1,2,4,8", help="streams per cell, comma-separated")
    lt.add_argument("--people", default="1,4,16,32", help="people per frame, comma-separated")
    lt.add_argument("--fps", type=float, default=5.0, help="frames/s of each stream")
    lt.add_argument("--budget-ms", type=float, default=400.0, help="per-frame latency budget")
    lt.add_argument("--seconds", type=float, default=4.0, help="length of each cell")
    lt.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    lt.add_argument("--json", action="store_true")
    cr = bsub.add_parser(
        "crops", help="a top-down model's crops of one frame: OpenCV vs sampled on the device"
    )
    cr.add_argument("--people", default="1,4,16,32", help="crops per frame, comma-separated")
    cr.add_argument("--frame", default="1920x1080", help="frame size WxH")
    cr.add_argument("--model", default="hrnet_w16_128x96", help="zoo model: the crop size")
    cr.add_argument("--repeat", type=int, default=20, help="runs per cell (the median counts)")
    cr.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    cr.add_argument("--json", action="store_true")
    so = bsub.add_parser(
        "soak", help="run a pipeline for a long while: does any process grow? (memory, fds)"
    )
    so.add_argument("file", help="pipeline YAML file (a looping or live source)")
    so.add_argument("--seconds", type=float, default=1800.0, help="how long to run it")
    so.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    so.add_argument(
        "--warmup", type=float, default=0.2, help="share of the run before the baseline"
    )
    so.add_argument(
        "--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="as for run"
    )
    so.add_argument("--json", action="store_true")
    for name, (_module, help_text) in DELEGATED_BENCH.items():
        bsub.add_parser(name, help=help_text, add_help=False)
    b.set_defaults(fn=cmd_bench)

    for name, (_module, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and len(argv) > 1 and argv[1] in DELEGATED_BENCH:
        return _delegate(f"bench {argv[1]}", DELEGATED_BENCH[argv[1]][0], argv[2:])
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], DELEGATED[argv[0]][0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.log_format is not None:
        from posegraph.logs import ENV

        os.environ[ENV] = args.log_format  # node processes inherit it
    from posegraph.logs import configure

    configure(level, "%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "fn", None):
        parser.print_help()
        return 1
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
