"""The device scheduling layer: deadline-driven batching across streams and people.

Every model node gets its model's :class:`ModelHandle` from the one
:class:`DeviceScheduler` of its device in this process (:func:`for_device`) and runs its
work through :meth:`ModelHandle.run`. See :mod:`posegraph.scheduler.core` for the policy.
"""

from __future__ import annotations

import threading
from typing import Any

from posegraph.scheduler.core import (
    POLICIES,
    ROLES,
    Client,
    DeviceScheduler,
    ModelHandle,
    Result,
    StreamCounts,
    bucket_sizes,
    model_key,
)
from posegraph.scheduler.timing import RunTimes

__all__ = [
    "POLICIES",
    "ROLES",
    "Client",
    "DeviceScheduler",
    "ModelHandle",
    "Result",
    "RunTimes",
    "StreamCounts",
    "bucket_sizes",
    "canonical",
    "reset",
    "model_key",
    "for_device",
    "snapshot",
]

_schedulers: dict[str, DeviceScheduler] = {}
_lock = threading.Lock()


def canonical(device: str) -> str:
    """``cuda`` is ``cuda:0``."""
    return "cuda:0" if device == "cuda" else device


def for_device(device: str, policy: str | None = None) -> DeviceScheduler:
    """This process's scheduler of ``device`` (``cpu``, ``cuda``, ``cuda:N``), made on first
    use (``edf`` unless ``policy`` says otherwise). Every model node on that device shares
    it."""
    device = canonical(device)
    with _lock:
        scheduler = _schedulers.get(device)
        if scheduler is None:
            scheduler = _schedulers[device] = DeviceScheduler(device, policy or "edf")
        elif policy is not None and scheduler.policy != policy:
            raise ValueError(
                f"the {device} scheduler runs the {scheduler.policy} policy, a node asked "
                f"for {policy}: give every model node on one device the same scheduler policy"
            )
        return scheduler


def reset(device: str, policy: str = "edf") -> DeviceScheduler:
    """Replace ``device``'s scheduler by a fresh one with ``policy`` (benchmarks compare
    policies in one run). Every model on the old one must be closed."""
    device = canonical(device)
    with _lock:
        old = _schedulers.pop(device, None)
        if old is not None:
            if old.handles:
                _schedulers[device] = old
                raise RuntimeError(
                    f"the {device} scheduler still serves {', '.join(old.handles)}: close "
                    "their nodes first"
                )
            old.close()
        scheduler = _schedulers[device] = DeviceScheduler(device, policy)
        return scheduler


def snapshot() -> dict[str, Any]:
    """Counts of every scheduler of this process, by device."""
    with _lock:
        schedulers = list(_schedulers.values())
    return {s.device: s.snapshot() for s in schedulers}


def forget_retired() -> None:
    """Drop what models closed before a run began left for the metrics of this process."""
    with _lock:
        schedulers = list(_schedulers.values())
    for s in schedulers:
        s.forget_retired()
