"""The execution plan: which node instances run in which process and how they connect."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

from posegraph.graph import Graph, RuntimeOptions
from posegraph.node import Sink, Source, UnknownNodeType, resolve
from posegraph.runtime.curve import RunKeys


@dataclass
class OutputSpec:
    consumer: str
    block: bool
    targets: list[tuple[str, str]]  # (process group, PULL address) per consumer replica


@dataclass
class InstanceSpec:
    node: str
    replica: int
    replicas: int
    type: str
    params: dict[str, Any]
    group: str
    policy: str
    capacity: int
    address: str
    is_source: bool
    is_sink: bool
    streams: list[str]  # streams that pass through this node
    eos_expected: dict[str, int]  # stream -> upstream nodes that carry it
    replicated_inputs: dict[str, int]  # upstream node -> its replica count
    in_flight: int = 1  # frames handed to the node at once (see Node.concurrent)
    last_model: bool = False  # a model node with no model node after it: learns its tail
    remote_inputs: bool = False
    outputs: list[OutputSpec] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.node if self.replicas == 1 else f"{self.node}.{self.replica}"


@dataclass
class Plan:
    run_id: str
    pipeline: str
    rundir: str
    groups: dict[str, list[InstanceSpec]]
    rows: dict[str, int]  # process group -> frame-plane accounting row
    options: RuntimeOptions
    latency_budget: float
    max_frames: int | None
    base_dir: str | None
    control: str = ""
    shm: bool = True
    # tcp runs: the run's CURVE keys (posegraph.runtime.curve), None on ipc
    curve: RunKeys | None = None
    # process group -> the resource label of the cluster host that runs it (others: here)
    placement: dict[str, str] = field(default_factory=dict)

    def instances(self) -> list[InstanceSpec]:
        """Every node instance, sources first (topological order)."""
        return [i for g in self.groups.values() for i in g]


def device_of(type_name: str, params: dict[str, Any]) -> str | None:
    """The device a model node runs on (``cpu``, ``cuda:0``...), None for other nodes."""
    try:
        cls = resolve(type_name)
    except (UnknownNodeType, TypeError):
        return None
    if not cls.uses_device:
        return None
    device = str(params.get("device", "cpu"))
    return "cuda:0" if device == "cuda" else device


MAX_IN_FLIGHT = 16


def in_flight_of(type_name: str, streams: int, option: int | None) -> int:
    """Frames a node works on at once: one, or for a concurrent node the pipeline's
    ``in_flight`` option, by default one per stream it serves (at most MAX_IN_FLIGHT)."""
    try:
        cls = resolve(type_name)
    except (UnknownNodeType, TypeError):
        return 1
    if not cls.concurrent:
        return 1
    return max(1, min(MAX_IN_FLIGHT, option if option is not None else streams))


def free_port(host: str) -> int:
    """A tcp port free on ``host`` now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stream_of(graph: Graph, source: str) -> str:
    return str(graph.nodes[source].params.get("stream") or source)


#: the longest temporary folder a run's sockets are made in (longer: /tmp)
MAX_BASE = 64


def rundir_of(run_id: str) -> str:
    """The folder of a run: its ipc sockets and its supervisor's pid, in the temporary
    folder (TMPDIR, else /tmp, else /var/tmp; /tmp for a TMPDIR over MAX_BASE characters)."""
    try:
        base = tempfile.gettempdir()  # the first writable of TMPDIR, /tmp, /var/tmp...
    except FileNotFoundError:
        base = "/tmp"  # none is: the run says so when it makes its folder
    if len(base) > MAX_BASE and os.access("/tmp", os.W_OK):
        base = "/tmp"  # a socket's path holds 107 bytes: a TMPDIR that long leaves no room
    return os.path.join(base, f"posegraph-{run_id}")


def build_plan(graph: Graph, executor: str, max_frames: int | None = None) -> Plan:
    """Place every node instance: one process group per node (or per ``process:`` value)
    with ``procs``, a single group with ``inproc``."""
    opts = graph.runtime
    run_id = uuid.uuid4().hex[:10]
    rundir = rundir_of(run_id)
    tcp = opts.transport == "tcp"

    numbers = {name: i for i, name in enumerate(graph.nodes)}

    def address(node: str, replica: int) -> str:
        if tcp:
            return f"tcp://{opts.host}:{free_port(opts.host)}"
        # a socket's path has room for 107 bytes: a node's number, and as much of its
        # name as fits (a long TMPDIR leaves less), to tell which node it is
        room = 100 - len(rundir) - len(f"/{numbers[node]}-.{replica}")
        name = f"-{node[: max(0, min(32, room))]}" if room > 0 else ""
        return f"ipc://{rundir}/{numbers[node]}{name}.{replica}"

    streams: dict[str, set[str]] = {}
    for name in graph.order():
        spec = graph.nodes[name]
        if not spec.inputs:
            streams[name] = {stream_of(graph, name)}
        else:
            streams[name] = set().union(*(streams[s] for s in spec.inputs))

    # model nodes, and the nodes with a model node somewhere after them
    models = {n for n, spec in graph.nodes.items() if device_of(spec.type, spec.params)}
    before_model: set[str] = set()
    for name in reversed(graph.order()):
        if any(c in models or c in before_model for c in graph.consumers(name)):
            before_model.add(name)

    instances: dict[str, list[InstanceSpec]] = {}
    for name in graph.order():
        spec = graph.nodes[name]
        device = device_of(spec.type, spec.params)
        if executor == "inproc":
            group_of = lambda r: "main"  # noqa: E731
        elif spec.process:
            group_of = lambda r, s=spec: s.process  # noqa: E731
        elif device is not None:
            # one process per device (of each host): its model nodes share one scheduler
            at = f"@{spec.place}" if spec.place else ""
            group_of = lambda r, d=device, at=at: f"device-{d}{at}"  # noqa: E731
        else:
            group_of = lambda r, s=spec: s.name if s.replicas == 1 else f"{s.name}.{r}"  # noqa: E731
        eos_expected: dict[str, int] = {}
        for src in spec.inputs:
            for st in streams[src]:
                eos_expected[st] = eos_expected.get(st, 0) + 1
        instances[name] = [
            InstanceSpec(
                node=name,
                replica=r,
                replicas=spec.replicas,
                type=spec.type,
                params=dict(spec.params),
                group=group_of(r),
                policy=graph.policy(name),
                capacity=spec.queue.capacity,
                address=address(name, r),
                is_source=issubclass(spec.cls, Source),
                is_sink=issubclass(spec.cls, Sink),
                streams=sorted(streams[name]),
                eos_expected=eos_expected,
                in_flight=in_flight_of(spec.type, len(streams[name]), opts.in_flight),
                last_model=name in models and name not in before_model,
                replicated_inputs={
                    s: graph.nodes[s].replicas for s in spec.inputs if graph.nodes[s].replicas > 1
                },
            )
            for r in range(spec.replicas)
        ]
    for name, insts in instances.items():
        for inst in insts:
            for consumer in graph.consumers(name):
                targets = [(c.group, c.address) for c in instances[consumer]]
                inst.outputs.append(
                    OutputSpec(consumer, graph.policy(consumer) == "block", targets)
                )
                for c in instances[consumer]:
                    if c.group != inst.group:
                        c.remote_inputs = True
    groups: dict[str, list[InstanceSpec]] = {}
    placement: dict[str, str] = {}
    for name, insts in instances.items():
        for inst in insts:
            groups.setdefault(inst.group, []).append(inst)
            if graph.nodes[name].place and executor != "inproc":
                placement[inst.group] = graph.nodes[name].place
    base_dir = getattr(graph, "base_dir", None)
    plan = Plan(
        run_id=run_id,
        pipeline=graph.name,
        rundir=rundir,
        groups=groups,
        rows={g: i for i, g in enumerate(groups)},
        options=opts,
        latency_budget=graph.latency_budget,
        max_frames=max_frames,
        base_dir=str(base_dir) if base_dir else None,
        shm=opts.shm and not tcp and executor != "inproc",
        placement=placement,
    )
    plan.control = f"tcp://127.0.0.1:{free_port('127.0.0.1')}" if tcp else f"ipc://{rundir}/control"
    if tcp and opts.curve and executor != "inproc":
        plan.curve = RunKeys.generate()
    return plan
