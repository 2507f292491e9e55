"""Node, Source and Sink base classes, and the registry from type names to node classes.

A node is a small class: its constructor arguments are its parameters (the YAML ``with:``
keys), ``setup`` acquires resources, ``process`` turns one frame into one frame (or None
to drop it), ``close`` releases. Events (``eos``, ``gap``, ``source_down``, ``source_up``)
go to ``on_event``, which passes them on unless a node overrides it.

The registry is one dictionary. Built-in nodes live in the ``nodes`` package and any
installed package can add more through the ``posegraph.nodes`` entry point group; the
runtime loads them the first time a name is looked up. A ``package.module:Class`` type
names a user node directly.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import math
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from posegraph.packet import Frame

log = logging.getLogger(__name__)

REGISTRY: dict[str, type[Node]] = {}
_plugins_loaded = False
_plugins_lock = threading.Lock()


class NodeError(Exception):
    """A node cannot run: bad parameters, a missing file, an unreachable device...

    Raised from a constructor or ``setup``, it stops the pipeline with one clear line
    instead of a restart loop.
    """


def register(name: str):
    """Class decorator: make a node class available under a registry name."""

    def wrap(cls: type[Node]) -> type[Node]:
        if not (isinstance(cls, type) and issubclass(cls, Node)):
            raise TypeError(f"@register({name!r}) must decorate a Node subclass, got {cls!r}")
        other = REGISTRY.get(name)
        if other is not None and other is not cls:
            raise ValueError(
                f"node type {name!r} is registered twice: {other.__module__}."
                f"{other.__qualname__} and {cls.__module__}.{cls.__qualname__}"
            )
        REGISTRY[name] = cls
        cls.type_name = name
        return cls

    return wrap


def load_plugins() -> None:
    """Import the modules that register node types (the ``posegraph.nodes`` entry points)."""
    global _plugins_loaded
    with _plugins_lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        found = list(entry_points(group="posegraph.nodes"))
        if not any(ep.value == "nodes" for ep in found):
            # A source checkout that was never pip-installed has no entry points.
            importlib.import_module("nodes")
        for ep in found:
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not hide the built-in nodes
                log.warning("could not load node plugin %s (%s): %s", ep.name, ep.value, exc)


class UnknownNodeType(LookupError):
    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(
            f"unknown node type {name!r}{hint} (`posegraph validate` lists the "
            "registered types; a node of your own is given as package.module:Class)"
        )


def resolve(type_name: str) -> type[Node]:
    """The node class for a registry name or a ``package.module:Class`` path."""
    if ":" in type_name:
        module_name, _, attr = type_name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownNodeType(type_name, []) from exc
        cls = getattr(module, attr, None)
        if cls is None:
            names = [
                n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Node)
            ]
            raise UnknownNodeType(type_name, difflib.get_close_matches(attr, names, 3))
        if not (isinstance(cls, type) and issubclass(cls, Node)):
            raise TypeError(f"{type_name} is not a posegraph Node subclass")
        return cls
    if type_name not in REGISTRY:
        load_plugins()
    if type_name not in REGISTRY:
        raise UnknownNodeType(type_name, difflib.get_close_matches(type_name, REGISTRY, 3, 0.5))
    return REGISTRY[type_name]


# ------------------------------------------------------------ parameters


@dataclass
class Param:
    name: str
    annotation: Any
    default: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def parameters(cls: type[Node]) -> dict[str, Param]:
    """The node's parameters, read from its constructor signature and type hints."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    out: dict[str, Param] = {}
    for name, p in list(sig.parameters.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = Param(name, hints.get(name, Any), p.default)
    return out


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {
            "str": "string",
            "int": "integer",
            "float": "number",
            "bool": "boolean",
            "dict": "mapping",
            "list": "list",
        }.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any) -> tuple[bool, Any]:
    """Does ``value`` fit the annotation ``tp``? Returns (ok, value converted where lossless)."""
    if tp is Any or tp is inspect.Parameter.empty:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, conv = check_value(value, arg)
            if ok:
                return True, conv
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False, value
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if args and len(set(args)) == 1:
            conv = []
            for v in value:
                ok, c = check_value(v, args[0])
                if not ok:
                    return False, value
                conv.append(c)
            value = conv
        return True, (list(value) if origin is list else tuple(value))
    if origin is dict:
        return isinstance(value, dict), value
    if tp is type(None):
        return value is None, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        return isinstance(value, int | float), float(value) if isinstance(
            value, int | float
        ) else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return _type_name(tp)


# --------------------------------------------------------------- context


@dataclass
class Context:
    """What the runtime gives a node at ``setup``."""

    name: str
    pipeline: str = "pipeline"
    replica: int = 0
    replicas: int = 1
    latency_budget: float = math.inf
    max_frames: int | None = None
    resume_index: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    extra: dict[str, Any] = field(default_factory=dict)
    # frames the runtime hands to ``process`` at once (threads), for a ``concurrent`` node
    in_flight: int = 1
    # for the last model node on a path: seconds its frames have recently taken from its
    # output to the sinks (the runtime measures it at the sinks and updates it); the node
    # plans its model work to end that much earlier, so frames reach the sinks in time
    tail: float = 0.0
    # Where a source writes its pixels: a shared-memory slot when the frame will leave
    # the process, so the image is written once and never copied again.
    alloc: Callable[[tuple[int, ...]], np.ndarray] | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the pipeline stops first; True when it is stopping."""
        return self.stop_event.wait(max(0.0, seconds))


# ----------------------------------------------------------------- nodes


class Node:
    """A processing step. Subclass it, give ``__init__`` typed parameters, implement ``process``."""

    type_name: str = ""
    #: runs a model on a device (its ``device`` parameter) through that device's scheduler:
    #: the ``procs`` executor puts every such node of one device in one process
    uses_device: bool = False
    #: ``process`` may run on several frames at once, from several threads: the runtime
    #: keeps as many frames in flight as it has input streams (``ctx.in_flight``), so the
    #: requests of several streams meet in one batch on the device scheduler, and still
    #: emits each stream's frames in their order
    concurrent: bool = False
    #: a call may wait as long as something outside the pipeline takes (a reader in the
    #: calling script): the hang watch (``hang_timeout_s``) leaves its calls alone
    waits_outside: bool = False
    ctx: Context

    def setup(self, ctx: Context) -> None:
        """Acquire resources (open files, load weights). Raise NodeError for a clear stop."""
        self.ctx = ctx

    def process(self, frame: Frame) -> Frame | None:
        """Turn one frame into one frame, or None to drop it (the drop is announced)."""
        return frame

    def on_event(self, event: Frame) -> Frame | None:
        """An event of a stream (``gap``, ``source_down``...); passed on by default."""
        return event

    def close(self) -> None:
        """Release resources; called once, also after errors."""


class Source(Node):
    """A node with no input: it yields frames of one stream.

    ``frames`` yields frames made by :meth:`frame` and events made by :meth:`event`;
    the runtime adds ``eos`` when the iterator ends, stops it at ``--max-frames`` and
    when the pipeline stops.

    Every source takes ``stream`` (its id, the node's name by default) and
    ``latency_budget_ms``, which overrides the pipeline's budget for this stream: each frame's
    ``deadline`` is its capture time plus the budget, and the device scheduler works to it.
    Frames of a file read faster than real time (``realtime: false``) have no deadline.
    """

    #: live sources (cameras, RTSP) default their downstream edges to ``latest``
    live: bool = False

    def __init__(self, stream: str | None = None, latency_budget_ms: float | None = None):
        if latency_budget_ms is not None and not latency_budget_ms > 0:
            raise NodeError(f"latency_budget_ms must be a positive number, got {latency_budget_ms}")
        self.stream = stream
        self.latency_budget_ms = latency_budget_ms
        self._next_index = 0

    @property
    def paced(self) -> bool:
        """Frames come at the stream's own rate (a camera, or a file read in real time)."""
        return self.live or bool(getattr(self, "realtime", False))

    @property
    def latency_budget(self) -> float:
        """Seconds from capture to the frame's deadline: the source's own budget, else the
        pipeline's. A file read as fast as it decodes is batch work: no deadline."""
        if not self.paced:
            return math.inf
        if self.latency_budget_ms is not None:
            return self.latency_budget_ms / 1000.0
        return self.ctx.latency_budget

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self.stream = self.stream or ctx.name
        self._next_index = ctx.resume_index

    @property
    def next_index(self) -> int:
        return self._next_index

    def frame(self, image: Any, pts: float, **meta: Any) -> Frame:
        now = time.time()
        f = Frame(
            stream=self.stream,
            index=self._next_index,
            pts=pts,
            captured_at=now,
            deadline=now + self.latency_budget,
            image=image,
            meta=meta,
        )
        self._next_index += 1
        return f

    def image_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A uint8 array to decode the next image into (pass it to :meth:`frame`)."""
        if self.ctx.alloc is not None:
            return self.ctx.alloc(shape)
        return np.empty(shape, np.uint8)

    def event(self, kind: str, **meta: Any) -> Frame:
        return Frame.make_event(self.stream, kind, self._next_index, **meta)

    def skip(self, count: int) -> None:
        """Frames that the source itself lost: the next frame's index moves on by ``count``."""
        self._next_index += count

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def process(self, frame: Frame) -> Frame | None:
        raise NodeError(f"source {self.ctx.name!r} has no input")


class Sink(Node):
    """A node with no output: it consumes frames and events."""

    #: frames and events this sink took but could not write (a disk with no room): the
    #: runtime reports them as its dropped frames
    unwritten: int = 0

    def process(self, frame: Frame) -> None:
        self.write(frame)
        return None

    def on_event(self, event: Frame) -> None:
        self.write(event)
        return None

    def write(self, frame: Frame) -> None:
        raise NotImplementedError
