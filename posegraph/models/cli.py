"""``posegraph models [--json]``: the zoo as a table or as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from posegraph import models
from posegraph import weights as shipped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posegraph models", description="List the model zoo with its size and cost."
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON list of objects instead of a table"
    )
    return parser


def main(argv: list[str]) -> int:
    """Print the zoo; returns the exit status.

    With ``--json`` the output is one JSON list of objects with keys
    ``name, paradigm, skeleton, input, params, gflops, builtin`` (params as an integer,
    GFLOPs as the HRNet paper counts them, see :mod:`posegraph.models.flops`; builtin:
    whether weights ship with posegraph, ``weights: builtin`` in a pipeline).
    """
    args = _parser().parse_args(argv)
    have = shipped.available()
    rows = [{**models.describe(name), "builtin": name in have} for name in models.names()]
    if args.json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return 0
    table = Table(title="posegraph model zoo")
    for column in ("name", "paradigm", "skeleton", "input", "params", "GFLOPs", "weights"):
        table.add_column(column, justify="right" if column in ("params", "GFLOPs") else "left")
    for row in rows:
        table.add_row(
            row["name"],
            row["paradigm"],
            row["skeleton"],
            row["input"],
            f"{row['params'] / 1e6:.1f}M",
            f"{row['gflops']:.2f}",
            "builtin" if row["builtin"] else "",
        )
    console = Console()
    console.print(table)
    console.print(
        f"{len(rows)} models; GFLOPs = multiply-accumulates / 2**30 at the listed input; "
        "builtin: trained weights ship with posegraph (weights: builtin)"
    )
    return 0
