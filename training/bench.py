"""``posegraph bench training``: a training config's steps per second under variants of its
settings, as ratios against the config as written, measured in the same run.

Each variant builds its own :class:`~training.trainer.Trainer` from the config with the
variant's ``--set`` overrides (no validation, no checkpoint), trains ``--warmup`` steps that
are not counted (the loader's start, cuDNN's benchmark), then ``--steps``
timed ones. The clock starts when the device has finished the warm-up and stops at the end, where the
host waits for the last losses, so queued device work is counted.

With ``--profile N``, the config as written then trains once more under ``torch.profiler``
(apart from the timed runs, which it would slow), and the N operators that took the most
time (device time on CUDA) are printed: what bounds a step. The loader is also timed alone,
without the model: a rate near the config's says the data, not the step, sets the pace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

#: The variants measured when none is named: on CUDA, what can make a small model's step
#: faster there; on a CPU, the memory layout and, where the CPU has it in hardware,
#: bfloat16 (``cpu_amp``).
CUDA_VARIANTS = {
    "config": [],
    "bf16": ["amp_dtype=bfloat16"],
    "bf16, cudnn benchmark": ["amp_dtype=bfloat16", "deterministic=false"],
}
CPU_VARIANTS = {"config": [], "channels first": ["channels_last=false"]}


class _StepClock:
    """Stands in for the progress bar: notes when each step was handed to the device (after
    step ``wait_at``, when the device has finished it), and calls ``on_step`` then."""

    def __init__(self, on_step: Any = None, wait_at: int = 0, device: Any = None) -> None:
        self.times: list[float] = []
        self.on_step, self.wait_at, self.device = on_step, wait_at, device

    def update(self, task: Any, **fields: Any) -> None:
        if len(self.times) + 1 == self.wait_at and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        if self.on_step is not None:
            self.on_step()


def measure(config_path: Path, overrides: list[str], warmup: int, steps: int) -> dict[str, Any]:
    """Images per second of ``steps`` training steps after ``warmup`` untimed ones.

    Returns ``images_per_s``, ``ms_per_step``, ``warmup_s`` (the untimed steps, the loader's
    start included), ``batch`` (images a step, all processes) and ``device``.
    """
    with _trainer(config_path, overrides, warmup + steps) as trainer:
        clock = _StepClock(wait_at=warmup, device=trainer.device)
        started = time.perf_counter()
        trainer.train_epoch(clock, None)
        # the epoch ends with a read of the last losses: the host waited for the device there
        ended = time.perf_counter()
    timed = ended - clock.times[warmup - 1]
    batch = trainer.config.batch_size * trainer.dist.world_size
    return {
        "images_per_s": steps * batch / timed,
        "ms_per_step": 1000 * timed / steps,
        "warmup_s": clock.times[warmup - 1] - started,
        "batch": batch,
        "device": str(trainer.device),
    }


def loader_rate(config_path: Path, overrides: list[str], warmup: int, steps: int) -> float:
    """Images per second the config's loader delivers alone (no model), timed as
    :func:`measure` times steps: what the data could feed a step at most."""
    with _trainer(config_path, overrides, warmup + steps) as trainer:
        times = [time.perf_counter() for _ in trainer.epoch_data(0)]
        images = trainer.config.batch_size * trainer.dist.world_size
    return steps * images / (times[-1] - times[warmup - 1])


def profile_steps(
    config_path: Path, overrides: list[str], warmup: int, steps: int, rows: int
) -> dict[str, Any]:
    """The ``rows`` operators that took the most time over ``steps`` profiled steps after
    ``warmup`` (device time on CUDA, host time on a CPU), per step, and on CUDA the kernel
    launches per step."""
    from torch.profiler import ProfilerActivity, profile, schedule

    with _trainer(config_path, overrides, warmup + steps) as trainer:
        cuda = trainer.device.type == "cuda"
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
        plan = schedule(wait=warmup - 1, warmup=1, active=steps, repeat=1)
        with profile(activities=activities, schedule=plan) as prof:
            trainer.train_epoch(_StepClock(prof.step), None)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    table = [
        {
            "op": e.key,
            "calls_per_step": e.count / steps,
            "ms_per_step": getattr(e, key) / 1000 / steps,
            "share": getattr(e, key) / total,
        }
        for e in events[:rows]
    ]
    launches = sum(e.count for e in events if e.key.startswith("cudaLaunchKernel"))
    return {"operators": table, "kernel_launches_per_step": launches / steps if cuda else None}


@contextlib.contextmanager
def _trainer(config_path: Path, overrides: list[str], steps: int) -> Iterator[Any]:
    """A trainer of one epoch of ``steps`` steps, without validation or checkpoints, whose
    loader is stopped on the way out."""
    from training.config import load_config
    from training.trainer import Trainer

    settings = [*overrides, "data.val=null", f"schedule.steps_per_epoch={steps}"]
    with tempfile.TemporaryDirectory(prefix="posegraph-bench-train-") as out:
        trainer = Trainer(load_config(config_path, settings), Path(out))
        try:
            yield trainer
        finally:
            trainer.close()


def _variants(named: list[str] | None, cuda: bool) -> dict[str, list[str]]:
    """``NAME=KEY=VALUE,KEY=VALUE`` strings as a dict; the defaults when none are named."""
    if not named:
        if cuda:
            return dict(CUDA_VARIANTS)
        from posegraph.models import cpu_has_bfloat16

        variants = dict(CPU_VARIANTS)
        if cpu_has_bfloat16():
            variants["bf16"] = ["cpu_amp=true"]
        return variants
    variants: dict[str, list[str]] = {"config": []}
    for text in named:
        name, _, settings = text.partition("=")
        if not name or "=" not in settings:
            raise ValueError(f"--variant {text!r}: write NAME=KEY=VALUE[,KEY=VALUE]")
        variants[name] = settings.split(",")
    return variants


def main(argv: list[str]) -> int:
    """``posegraph bench training``: steps per second of a training config, and of variants
    of it, as ratios against the config as written."""
    parser = argparse.ArgumentParser(prog="posegraph bench training", description=main.__doc__)
    parser.add_argument("config", type=Path, help="a training config (training/configs/*.yaml)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="for every variant"
    )
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=KEY=VALUE[,KEY=VALUE]",
        help="a variant to measure against the config (repeat; default: per device)",
    )
    parser.add_argument("--steps", type=int, default=50, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print the N costliest operators"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    if not args.config.is_file():
        parser.error(f"config {args.config} not found")
    from training.config import ConfigError, load_config

    try:
        base = load_config(args.config, args.set)
    except ConfigError as error:
        parser.error(str(error))
    cuda = torch.cuda.is_available() and base.device != "cpu"
    try:
        variants = _variants(args.variant, cuda)
    except ValueError as error:
        parser.error(str(error))
    for name, overrides in variants.items():
        try:
            load_config(args.config, [*args.set, *overrides])
        except ConfigError as error:
            parser.error(f"variant {name!r}: {error}")
    results = {
        name: measure(args.config, [*args.set, *overrides], args.warmup, args.steps)
        for name, overrides in variants.items()
    }
    baseline = results["config"]["images_per_s"]
    for result in results.values():
        result["ratio"] = result["images_per_s"] / baseline
    loader = loader_rate(args.config, args.set, args.warmup, args.steps)
    profiled = None
    if args.profile:
        profiled = profile_steps(args.config, args.set, args.warmup, args.steps, args.profile)
    if args.json:
        report = {
            "config": str(args.config),
            "variants": results,
            "loader_images_per_s": loader,
            "profile": profiled,
        }
        print(json.dumps(report))
        return 0
    _print(args.config, results, loader, profiled)
    return 0


def _print(
    config: Path, results: dict[str, Any], loader: float, profiled: dict[str, Any] | None
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    first = next(iter(results.values()))
    baseline = first["images_per_s"]
    if profiled is not None:
        table = Table(title=f"costliest operators per step, config as written ({first['device']})")
        for column in ("operator", "calls", "ms", "share"):
            table.add_column(column, justify="left" if column == "operator" else "right")
        for row in profiled["operators"]:
            table.add_row(
                row["op"][:60],
                f"{row['calls_per_step']:.0f}",
                f"{row['ms_per_step']:.2f}",
                f"{100 * row['share']:.1f}%",
            )
        console.print(table)
        if profiled["kernel_launches_per_step"] is not None:
            console.print(f"kernel launches per step: {profiled['kernel_launches_per_step']:.0f}")
    table = Table(title=f"training throughput: {config} ({first['device']})")
    for column in ("variant", "images/s", "ms/step", "vs config", "warm-up s"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, result in results.items():
        table.add_row(
            name,
            f"{result['images_per_s']:.1f}",
            f"{result['ms_per_step']:.1f}",
            f"{result['ratio']:.2f}x",
            f"{result['warmup_s']:.1f}",
        )
    table.add_row("(the loader alone)", f"{loader:.1f}", "", f"{loader / baseline:.2f}x", "")
    console.print(table)
    console.print(f"batch {first['batch']} images a step; times end where the host waited")
