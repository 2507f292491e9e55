"""``posegraph train CONFIG.yaml [--out DIR] [--resume] [--set key=value]``.

Under torchrun (``WORLD_SIZE`` > 1) every rank runs this; only rank 0 writes and prints.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posegraph train",
        description="train a zoo model (top-down, bottom-up or one-stage) from a config",
    )
    parser.add_argument(
        "config", type=Path, help="YAML file, e.g. training/configs/hrnet_w32_coco.yaml"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from --out's last epoch")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="change a config field"
    )
    return parser


def main(argv: list[str]) -> int:
    """Train; returns the exit status (2 for a config or data error)."""
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    # Under torchrun every rank runs this; only rank 0 reports progress.
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    from training.config import ConfigError, load_config
    from training.trainer import Trainer

    out = args.out or Path("runs") / args.config.stem
    try:
        config = load_config(args.config, args.set)
        trainer = Trainer(config, out, resume=args.resume)
    except (ConfigError, OSError, ValueError) as error:
        console.print(f"error: {error}", markup=False, highlight=False)
        return 2
    history = trainer.fit(console)
    if trainer.dist.main and history:
        last = history[-1]
        best = f", best AP {trainer.best:.4f}" if trainer.best >= 0 else ""
        console.print(
            f"trained {config.model} for {last['epoch'] + 1} epochs ({last['step']} steps), "
            f"last loss {last['loss']:.6f}{best}; checkpoints in {out}"
        )
    return 0
