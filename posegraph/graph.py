"""Graph: the nodes of a pipeline and their edges; validation and topological order.

Built from YAML by :mod:`posegraph.config` or in Python::

    g = Graph("demo")
    cam = g.add("cam", "source.video", uri="clip.mp4")
    g.add("out", "sink.jsonl", cam, path="out.jsonl")
    g.run(executor="procs", max_frames=100)
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from posegraph.node import (
    NodeError,
    Sink,
    Source,
    UnknownNodeType,
    check_value,
    describe_type,
    parameters,
    resolve,
)

if TYPE_CHECKING:
    from posegraph.packet import Frame

POLICIES = ("block", "drop_oldest", "latest")
DEFAULT_CAPACITY = 4


@dataclass
class Where:
    """A place in a YAML file, for error messages."""

    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Problem:
    message: str
    where: Where = field(default_factory=Where)

    def __str__(self) -> str:
        w = str(self.where)
        return f"{w}: {self.message}" if w else self.message


class GraphError(Exception):
    """The pipeline is not valid; ``problems`` lists every finding with its place."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _type_path(cls: builtins.type) -> str:
    """``module:Class`` for a class given to :meth:`Graph.add` (validation then checks
    that it is a node class)."""
    if "<locals>" in cls.__qualname__:
        raise GraphError(
            [
                Problem(
                    f"node class {cls.__qualname__} is defined inside a function: define it "
                    "at the top level of a module, where node processes can import it"
                )
            ]
        )
    return f"{cls.__module__}:{cls.__qualname__}"


@dataclass
class QueueSpec:
    capacity: int = DEFAULT_CAPACITY
    policy: str | None = None  # None: decided from the upstream sources (live -> latest)


@dataclass
class NodeSpec:
    name: str
    type: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    process: str | None = None
    replicas: int = 1
    queue: QueueSpec = field(default_factory=QueueSpec)
    # a host of the runtime's Ray cluster with this resource label runs it (None: this one)
    place: str | None = None
    where: Where = field(default_factory=Where)
    param_lines: dict[str, int] = field(default_factory=dict)
    input_line: int | None = None
    cls: type | None = None

    def at(self, key: str | None = None) -> Where:
        line = self.param_lines.get(key) if key else None
        if key == "from" and self.input_line:
            line = self.input_line
        return Where(self.where.file, line or self.where.line)


@dataclass
class RuntimeOptions:
    """Pipeline-wide runtime settings (the YAML ``runtime:`` mapping)."""

    shm: bool = True  # images through the shared-memory frame plane on one host
    shm_slots: int = 32  # slots per pool
    transport: str = "ipc"  # ipc (one host) or tcp (bytes inline)
    host: str = "127.0.0.1"  # tcp bind address
    # tcp: encrypt every socket and let in only the run's own processes (CURVE keys drawn
    # per run); false sends in the clear (a debugging aid)
    curve: bool = True
    max_restarts: int = 3  # node process failures within the window before the pipeline stops
    restart_window_s: float = 300.0
    drain_timeout_s: float = 30.0
    # a node process whose node has been in one call (or that has sent no report) this
    # long is killed and restarted; 0 turns the watch off
    hang_timeout_s: float = 120.0
    # a node process that has not set up its nodes (loaded its models) this long: the first
    # time, the run stops with that error; after a restart, it is killed and restarted
    setup_timeout_s: float = 600.0
    # a model that serves none of its work (all past deadlines) this long is said in the
    # log, again every 10 minutes while it lasts; 0: not said
    skip_warn_s: float = 30.0
    metrics_port: int | None = None  # Prometheus endpoint (and health checks), off when None
    metrics_host: str = "127.0.0.1"  # the address it listens on (0.0.0.0 in a container)
    reorder_timeout_s: float = 2.0
    # frames a concurrent (model) node works on at once; None: one per stream it serves
    in_flight: int | None = None
    # the Ray cluster whose hosts run the nodes with ``place`` ("auto", "HOST:6379",
    # "ray://HOST:10001"); None: every node on this host
    cluster: str | None = None


class Graph:
    def __init__(
        self,
        name: str = "pipeline",
        latency_budget_ms: float | None = None,
        runtime: RuntimeOptions | None = None,
        file: str | None = None,
    ):
        self.name = name
        self.latency_budget_ms = latency_budget_ms
        self.runtime = runtime or RuntimeOptions()
        self.file = file
        self.nodes: dict[str, NodeSpec] = {}
        self.problems: list[Problem] = []

    # ------------------------------------------------------------ building

    def add(
        self,
        name: str,
        type: str | builtins.type,
        *inputs: str,
        process: str | None = None,
        replicas: int = 1,
        queue: dict[str, Any] | None = None,
        place: str | None = None,
        **params: Any,
    ) -> str:
        """Add a node reading from ``inputs``; returns its name, to use as another's input.

        ``type`` is a registry name, a ``package.module:Class`` path, or a Node subclass
        itself (defined at the top level of a module, the script's included: node
        processes import it from there).
        """
        if isinstance(type, builtins.type):
            type = _type_path(type)
        spec = NodeSpec(
            name=name,
            type=type,
            params=params,
            inputs=list(inputs),
            process=process,
            replicas=replicas,
            queue=QueueSpec(**(queue or {})),
            place=place,
        )
        self.add_spec(spec)
        return name

    def add_spec(self, spec: NodeSpec) -> None:
        if spec.name in self.nodes:
            first = self.nodes[spec.name].where
            self.problems.append(
                Problem(
                    f"duplicate node name {spec.name!r} (first defined at {first or 'above'}): "
                    "give each node its own name",
                    spec.where,
                )
            )
            return
        self.nodes[spec.name] = spec

    @property
    def latency_budget(self) -> float:
        return math.inf if self.latency_budget_ms is None else self.latency_budget_ms / 1000.0

    # ---------------------------------------------------------- validation

    def validate(self) -> Graph:
        """Check everything that can be checked before any process starts; raise GraphError."""
        problems = list(self.problems)
        for spec in self.nodes.values():
            problems += self._check_node(spec)
        problems += self._check_cycles()
        problems += self._check_placement()
        if problems:
            raise GraphError(problems)
        return self

    def _check_node(self, spec: NodeSpec) -> list[Problem]:
        out: list[Problem] = []
        if not spec.name or not spec.name.replace("_", "").replace("-", "").isalnum():
            out.append(
                Problem(f"node name {spec.name!r}: use letters, digits, '_' and '-'", spec.where)
            )
        try:
            spec.cls = resolve(spec.type)
        except UnknownNodeType as exc:
            out.append(Problem(f"node {spec.name!r}: {exc}", spec.at("type")))
            return out
        except (ImportError, TypeError) as exc:
            out.append(
                Problem(
                    f"node {spec.name!r}: cannot load type {spec.type!r}: {exc}", spec.at("type")
                )
            )
            return out
        params = parameters(spec.cls)
        for key, value in spec.params.items():
            p = params.get(key)
            if p is None:
                near = difflib.get_close_matches(key, params, 2)
                hint = (
                    f"did you mean {' or '.join(near)}?"
                    if near
                    else f"known parameters: {', '.join(params) or 'none'}"
                )
                out.append(
                    Problem(
                        f"node {spec.name!r} ({spec.type}): unknown parameter {key!r}; {hint}",
                        spec.at(key),
                    )
                )
                continue
            ok, conv = check_value(value, p.annotation)
            if not ok:
                out.append(
                    Problem(
                        f"node {spec.name!r} ({spec.type}): parameter {key!r} must be "
                        f"{describe_type(p.annotation)}, got {type(value).__name__} {value!r}",
                        spec.at(key),
                    )
                )
            else:
                spec.params[key] = conv
        for p in params.values():
            if p.required and p.name not in spec.params:
                out.append(
                    Problem(
                        f"node {spec.name!r} ({spec.type}): missing parameter "
                        f"{p.name!r} ({describe_type(p.annotation)})",
                        spec.where,
                    )
                )
        if not out:
            # what a constructor refuses (a polygon of two points, an unknown skeleton) is
            # found now, not when the node's process starts; constructors only take their
            # parameters (resources are set-up's), so making one here costs nothing
            try:
                spec.cls(**spec.params)
            except NodeError as exc:
                out.append(Problem(f"node {spec.name!r} ({spec.type}): {exc}", spec.where))
            except Exception:  # noqa: BLE001, S110 - set-up reports anything else, as it did
                pass
        is_source = issubclass(spec.cls, Source)
        if is_source and spec.inputs:
            out.append(
                Problem(
                    f"node {spec.name!r} is a source ({spec.type}) and takes no "
                    "input: remove its 'from'",
                    spec.at("from"),
                )
            )
        if not is_source and not spec.inputs:
            out.append(
                Problem(
                    f"node {spec.name!r} ({spec.type}) has no input: add 'from: <node name>'",
                    spec.where,
                )
            )
        for src in spec.inputs:
            if src not in self.nodes:
                near = difflib.get_close_matches(src, self.nodes, 2)
                hint = f"; did you mean {' or '.join(near)}?" if near else ""
                out.append(
                    Problem(
                        f"node {spec.name!r} reads from unknown node {src!r}{hint}", spec.at("from")
                    )
                )
            elif self.nodes[src].cls is not None and issubclass(self.nodes[src].cls, Sink):
                out.append(
                    Problem(
                        f"node {spec.name!r} reads from {src!r}, a sink, which has no output",
                        spec.at("from"),
                    )
                )
        if len(set(spec.inputs)) != len(spec.inputs):
            out.append(Problem(f"node {spec.name!r} names the same input twice", spec.at("from")))
        if spec.queue.policy is not None and spec.queue.policy not in POLICIES:
            out.append(
                Problem(
                    f"node {spec.name!r}: queue policy {spec.queue.policy!r} is not "
                    f"one of {', '.join(POLICIES)}",
                    spec.at("queue"),
                )
            )
        if not isinstance(spec.queue.capacity, int) or spec.queue.capacity < 1:
            out.append(
                Problem(
                    f"node {spec.name!r}: queue capacity must be a whole number "
                    f">= 1, got {spec.queue.capacity!r}",
                    spec.at("queue"),
                )
            )
        if not isinstance(spec.replicas, int) or spec.replicas < 1:
            out.append(
                Problem(
                    f"node {spec.name!r}: replicas must be a whole number >= 1, got "
                    f"{spec.replicas!r}",
                    spec.at("replicas"),
                )
            )
        elif spec.replicas > 1 and (is_source or spec.process is not None):
            what = "a source" if is_source else "a node grouped with 'process:'"
            out.append(
                Problem(f"node {spec.name!r}: {what} cannot have replicas", spec.at("replicas"))
            )
        return out

    def _check_placement(self) -> list[Problem]:
        out: list[Problem] = []
        placed = [s for s in self.nodes.values() if s.place is not None]
        for spec in placed:
            if not isinstance(spec.place, str) or not spec.place.strip():
                out.append(
                    Problem(
                        f"node {spec.name!r}: place must be the name of a resource that "
                        f"hosts of the Ray cluster declare, got {spec.place!r}",
                        spec.at("place"),
                    )
                )
            elif self.runtime.cluster is None:
                out.append(
                    Problem(
                        f"node {spec.name!r}: place {spec.place!r} needs the runtime option "
                        "cluster (the Ray cluster's address, e.g. cluster: auto)",
                        spec.at("place"),
                    )
                )
        if self.runtime.cluster is not None and self.runtime.transport != "tcp":
            out.append(
                Problem(
                    "runtime option cluster: nodes on other hosts need transport: tcp",
                    Where(self.file),
                )
            )
        first: dict[str, NodeSpec] = {}
        for spec in self.nodes.values():
            if spec.process is None:
                continue
            other = first.setdefault(spec.process, spec)
            if other.place != spec.place:
                out.append(
                    Problem(
                        f"nodes {other.name!r} and {spec.name!r} share process "
                        f"{spec.process!r} but not their place ({other.place!r}, "
                        f"{spec.place!r}): one process runs on one host",
                        spec.at("place"),
                    )
                )
        return out

    def _check_cycles(self) -> list[Problem]:
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(n: str) -> list[str] | None:
            state[n] = 1
            stack.append(n)
            for m in self.nodes[n].inputs:
                if m not in self.nodes:
                    continue
                if state.get(m) == 1:
                    return stack[stack.index(m) :] + [m]
                if m not in state:
                    cyc = visit(m)
                    if cyc:
                        return cyc
            stack.pop()
            state[n] = 2
            return None

        for n in self.nodes:
            if n not in state:
                cyc = visit(n)
                if cyc:
                    path = " <- ".join(cyc)
                    return [
                        Problem(
                            f"the graph has a cycle: {path}; a pipeline must be a DAG",
                            self.nodes[cyc[0]].at("from"),
                        )
                    ]
        return []

    # --------------------------------------------------------------- queries

    def order(self) -> list[str]:
        """Node names in topological order (sources first), stable with respect to the file."""
        indeg = {n: len(s.inputs) for n, s in self.nodes.items()}
        ready = [n for n, d in indeg.items() if d == 0]
        out: list[str] = []
        while ready:
            n = ready.pop(0)
            out.append(n)
            for m in self.consumers(n):
                indeg[m] -= 1
                if indeg[m] == 0:
                    ready.append(m)
        return out

    def consumers(self, name: str) -> list[str]:
        return [n for n, s in self.nodes.items() if name in s.inputs]

    def sources(self) -> list[str]:
        return [n for n, s in self.nodes.items() if not s.inputs]

    def upstream_sources(self, name: str) -> set[str]:
        spec = self.nodes[name]
        if not spec.inputs:
            return {name}
        out: set[str] = set()
        for src in spec.inputs:
            out |= self.upstream_sources(src)
        return out

    def policy(self, name: str) -> str:
        """The input queue policy of a node: as set, else ``latest`` behind a live source."""
        spec = self.nodes[name]
        if spec.queue.policy:
            return spec.queue.policy
        live = any(getattr(self.nodes[s].cls, "live", False) for s in self.upstream_sources(name))
        return "latest" if live else "block"

    def set_param(self, dotted: str, value: Any) -> None:
        """Apply a ``--set node.param=value`` override."""
        node, _, param = dotted.partition(".")
        if not param:
            raise GraphError([Problem(f"--set {dotted}: write it as node.param=value")])
        if node not in self.nodes:
            near = difflib.get_close_matches(node, self.nodes, 2)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise GraphError([Problem(f"--set {dotted}: there is no node {node!r}{hint}")])
        self.nodes[node].params[param] = value
        self.nodes[node].param_lines.pop(param, None)

    def to_dot(self) -> str:
        """The graph in Graphviz DOT."""
        lines = [f'digraph "{self.name}" {{', "  rankdir=LR;", "  node [shape=box, style=rounded];"]
        for n, s in self.nodes.items():
            label = f"{n}\\n{s.type}" + (f" x{s.replicas}" if s.replicas > 1 else "")
            label += f"\\n@{s.place}" if s.place else ""
            shape = ", shape=ellipse" if not s.inputs else ""
            lines.append(f'  "{n}" [label="{label}"{shape}];')
        for n, s in self.nodes.items():
            for src in s.inputs:
                lines.append(f'  "{src}" -> "{n}" [label="{self.policy(n)}"];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ----------------------------------------------------------------- run

    def run(
        self,
        executor: str = "procs",
        max_frames: int | None = None,
        duration: float | None = None,
        **kwargs: Any,
    ):
        """Validate and run the graph until the sources end or a limit is reached."""
        from posegraph.runtime import run

        return run(self, executor=executor, max_frames=max_frames, duration=duration, **kwargs)

    def results(self, *nodes: str, images: bool = False, **run_args: Any) -> Results:
        """Run the graph and hand every frame and event that leaves ``nodes`` to this
        process, in order per stream: ``for frame in graph.results("track"): ...``.

        Each item is a :class:`~posegraph.packet.Frame` with all it carries (detections,
        poses, meta; ``frame.meta["node"]`` names the node when there are several), its
        image too with ``images=True``, and events (``gap``, ``eos``...) as frames with
        ``event`` set. ``run_args`` are :meth:`run`'s (``executor``, ``max_frames``,
        ``duration``). The pipeline waits for the reader: each frame is acknowledged when
        the loop asks for the next, so nothing is dropped for a slow or paused loop;
        leaving the loop early stops it, and the run's summary is ``.summary`` once it has
        ended.
        """
        return Results(self, nodes, images, run_args)


class Results:
    """The frames a running graph hands back to this process; see :meth:`Graph.results`."""

    def __init__(self, graph: Graph, nodes: tuple[str, ...], images: bool, run_args: dict):
        import copy
        import uuid

        if not nodes:
            raise GraphError([Problem("results: name the node(s) whose frames to hand back")])
        missing = [n for n in nodes if n not in graph.nodes]
        if missing:
            known = ", ".join(graph.nodes)
            raise GraphError([Problem(f"results: no node {missing[0]!r} (nodes: {known})")])
        self.summary: dict[str, Any] | None = None
        self._graph = copy.copy(graph)
        self._graph.nodes = dict(graph.nodes)
        self._graph.problems = list(graph.problems)
        from posegraph.runtime.plan import rundir_of

        # beside the runs' folders, where a socket's path is short enough
        self._path = rundir_of(f"results-{uuid.uuid4().hex[:10]}")
        self.address = f"ipc://{self._path}"
        for k, node in enumerate(nodes):
            name = f"results-{k}"
            while name in self._graph.nodes:
                name += "x"
            self._graph.add(
                name, "sink.caller", node, address=self.address, images=images, node=node
            )
        self._run_args = run_args

    def __iter__(self) -> Iterator[Frame]:
        import threading

        import zmq

        from posegraph.packet import decode
        from posegraph.runtime import run

        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.address)

        def take() -> tuple[Frame, list[bytes]]:
            """The next frame, and the acknowledgement its sink waits for."""
            peer, _, seq, node, body = sock.recv_multipart()
            frame, _ = decode(body)
            frame.meta["node"] = node.decode()
            return frame, [peer, b"", seq]

        stop = threading.Event()
        outcome: dict[str, Any] = {}

        def go() -> None:
            try:
                outcome["summary"] = run(self._graph, stop=stop, **self._run_args)
            except BaseException as exc:  # noqa: BLE001 - raised again in the reader
                outcome["error"] = exc

        runner = threading.Thread(target=go, name="posegraph-results", daemon=True)
        runner.start()
        ack: list[bytes] | None = None  # owed for the frame the loop has
        try:
            while True:
                if sock.poll(100):
                    frame, ack = take()
                    yield frame
                    sock.send_multipart(ack)  # the loop asked for the next one
                    ack = None
                elif not runner.is_alive():
                    if sock.poll(0):
                        continue  # what came after the last look
                    break
            if "error" in outcome:
                raise outcome["error"]
            self.summary = outcome["summary"]
        finally:
            if ack is not None:  # the loop had that frame, and left with it
                sock.send_multipart(ack)
            if runner.is_alive():  # the loop was left early: the run drains and ends
                stop.set()
                while runner.is_alive():
                    while sock.poll(0):
                        sock.send_multipart(take()[1])  # let the sinks finish
                    runner.join(0.1)
                self.summary = outcome.get("summary")
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self._path)


__all__ = [
    "Graph",
    "GraphError",
    "Results",
    "NodeError",
    "NodeSpec",
    "Problem",
    "QueueSpec",
    "RuntimeOptions",
    "Where",
]
