"""The model zoo: architectures by name, each with a :class:`ModelSpec`.

>>> model, spec = build("hrnet_w32")
>>> spec.input_size, spec.codec
((192, 256), 'msra_heatmap')

Every architecture lives in its own module with its variants as rows of a
``VARIANTS`` table (name -> config dataclass) and two functions,
``make_model(name, config)`` and ``make_spec(name, config)``; this module only
maps names to them. Keyword overrides replace fields of the variant's config,
e.g. ``build("hrnet_w32", num_keypoints=133)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from posegraph.models import de_hrnet, erpose, hprnet, hrnet, regression, simplebaseline
from posegraph.models.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
from posegraph.models.flops import count_params, profile
from posegraph.models.spec import ModelSpec

__all__ = [
    "ModelSpec",
    "build",
    "checkpoint_metadata",
    "count_params",
    "cpu_has_bfloat16",
    "describe",
    "load_checkpoint",
    "names",
    "profile",
    "save_checkpoint",
    "spec_of",
]

logger = logging.getLogger(__name__)

_FAMILIES: tuple[ModuleType, ...] = (hrnet, de_hrnet, simplebaseline, regression, hprnet, erpose)


@functools.cache
def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 in hardware (AMX tiles or AVX512-BF16): where
    it does not, bfloat16 is emulated and slower than float32."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


@functools.cache
def _registry() -> dict[str, ModuleType]:
    table: dict[str, ModuleType] = {}
    for family in _FAMILIES:
        for name in family.VARIANTS:
            if name in table:
                raise RuntimeError(f"model name {name!r} is defined twice in the zoo")
            table[name] = family
    return table


def names() -> list[str]:
    """All zoo names, in table order."""
    return list(_registry())


def _family(name: str) -> ModuleType:
    try:
        return _registry()[name]
    except KeyError:
        nearest = difflib.get_close_matches(name, names(), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(nearest)}?" if nearest else "see `posegraph models`"
        raise ValueError(f"unknown model {name!r}: {hint}") from None


def _config(name: str, overrides: dict[str, Any]) -> Any:
    base = _family(name).VARIANTS[name]
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"model {name!r} has no setting {', '.join(map(repr, unknown))}; "
            f"settings are: {', '.join(sorted(fields))}"
        )
    if "input_size" in overrides:
        overrides = {**overrides, "input_size": tuple(overrides["input_size"])}
    try:
        return dataclasses.replace(base, **overrides)
    except ValueError as error:  # a config that checks its own fields
        raise ValueError(f"model {name!r}: {error}") from None


def _cache_path() -> Path:
    """Where counts are kept between runs, keyed by the source of this package.

    A meta-device forward costs about a second for a large model, too slow to
    repeat for every ``posegraph models``; any change to a model file changes
    the key, so a stale count is never shown.
    """
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "posegraph" / f"zoo-counts-{digest.hexdigest()[:16]}.json"


@functools.cache
def _disk_counts() -> dict[str, list[float]]:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _store_counts(counts: dict[str, list[float]]) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(counts, indent=0, sort_keys=True))
        tmp.replace(path)
    except OSError as error:
        logger.debug("cannot keep model counts in %s: %s", path, error)


@functools.cache
def _measure(name: str, frozen_overrides: tuple[tuple[str, Any], ...]) -> tuple[int, float]:
    """(params, GFLOPs) from a build on the meta device: no memory, no arithmetic."""
    key = f"{name}{list(frozen_overrides) if frozen_overrides else ''}"
    counts = _disk_counts()
    if key in counts:
        params, gflops = counts[key]
        return int(params), float(gflops)
    config = _config(name, dict(frozen_overrides))
    family = _family(name)
    with torch.device("meta"):
        model = family.make_model(name, config)
    w, h = family.make_spec(name, config).input_size
    result = profile(model, (1, 3, h, w))
    counts[key] = [result.params, round(result.gflops, 2)]
    _store_counts(counts)
    return result.params, round(result.gflops, 2)


def _frozen(overrides: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()))


def spec_of(name: str, **overrides: Any) -> ModelSpec:
    """The spec of ``name`` (with counts) without building its weights."""
    config = _config(name, overrides)
    params, gflops = _measure(name, _frozen(overrides))
    spec = _family(name).make_spec(name, config)
    return dataclasses.replace(spec, params=params, gflops=gflops)


def build(name: str, **overrides: Any) -> tuple[nn.Module, ModelSpec]:
    """Build the model ``name`` with fresh weights, and its spec.

    Args:
        name: a zoo name (see :func:`names`).
        **overrides: fields of the variant's config to change, e.g.
            ``input_size=(96, 128)`` or ``num_keypoints=133``.

    Returns:
        ``(model, spec)``; the model is on the CPU in training mode, the spec
        carries params and GFLOPs at ``spec.input_size``.
    """
    spec = spec_of(name, **overrides)
    model = _family(name).make_model(name, _config(name, overrides))
    return model, spec


def describe(name: str) -> dict[str, Any]:
    """One zoo entry as plain data.

    Returns:
        ``{"name", "paradigm", "skeleton", "input": "HxW", "params", "gflops"}`` (height first,
        as the papers write 256x192);
        the counts come from a cached meta-device build.
    """
    spec = spec_of(name)
    w, h = spec.input_size
    return {
        "name": spec.name,
        "paradigm": spec.paradigm,
        "skeleton": spec.skeleton,
        "input": f"{h}x{w}",
        "params": spec.params,
        "gflops": spec.gflops,
    }
