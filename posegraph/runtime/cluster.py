"""Process groups on other hosts: Ray places them, ZeroMQ over tcp (CURVE) links them.

A node with ``place: LABEL`` runs on a host of the Ray cluster named by the runtime
option ``cluster`` that declares the resource ``LABEL`` (``ray start --resources
'{"LABEL": 1}'``; every host also has ``node:IP``). The label is a label, not a count:
each process asks for a thousandth of it, so any number of them fit on its host.

For each placed process group the supervisor starts one Ray actor there
(:class:`GroupHost`), asks it for its address and free ports, and points the plan's
addresses at them: every process binds on its own host's address, the supervisor's
control channel on this host's. The actor then runs the group's worker process as the
supervisor would here (a child process that ends with it) and reports its exit status,
so restarts, hang watch and drains work as on one host. The groups without ``place``
run on this host. The frames travel inline (``transport: tcp``); the files a placed
node reads (weights, videos) must be at the same paths on its host, with posegraph and
the node's code installed there.

A host that is lost ends its actor; its process counts as failed (exit status -9) and is
started again on a host with its label only if that host has the same address, so the
pipeline stops after ``max_restarts`` such failures.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

from posegraph.runtime.plan import Plan, free_port

log = logging.getLogger(__name__)

#: how long to wait for the actors to start on their hosts
START_TIMEOUT_S = 60.0
#: the share of a label resource each process asks for
LABEL_SHARE = 0.001


class ClusterError(RuntimeError):
    pass


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "runtime option cluster needs Ray on every host: pip install 'posegraph[cluster]'"
        ) from None
    return ray


class GroupHost:
    """The Ray actor on a placed group's host: runs its worker process, one at a time."""

    def __init__(self) -> None:
        self.proc = None

    def where(self, ports: int) -> dict[str, Any]:
        import ray

        ip = ray.util.get_node_ip_address()
        return {
            "ip": ip,
            "host": socket.gethostname(),
            "node": ray.get_runtime_context().get_node_id(),
            "ports": [free_port(ip) for _ in range(ports)],
        }

    def run(self, plan: Plan, group: str, resume: dict[str, int], log_level: int) -> int:
        """Start the group's worker and wait for it; its exit status."""
        import multiprocessing as mp

        from posegraph.runtime.supervisor import worker_main

        proc = mp.get_context("spawn").Process(
            target=worker_main,
            name=f"posegraph:{group}",
            args=(plan, group, resume, log_level),
            daemon=False,
        )
        proc.start()
        self.proc = proc
        proc.join()
        return proc.exitcode

    def signal(self, sig: int) -> None:
        proc = self.proc
        if proc is not None and proc.exitcode is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass


class RemoteProcess:
    """A group's worker on another host, seen as a ``multiprocessing.Process``."""

    def __init__(self, cluster: Cluster, group: str, args: tuple) -> None:
        self.cluster = cluster
        self.group = group
        self.args = args
        self._done = None
        self._code: int | None = None

    def start(self) -> None:
        self._done = self.cluster.actors[self.group].run.remote(*self.args)

    def _finished(self, timeout: float | None = 0) -> bool:
        if self._code is not None:
            return True
        ray = self.cluster.ray
        ready, _ = ray.wait([self._done], timeout=timeout)
        if not ready:
            return False
        try:
            self._code = int(ray.get(self._done))
        except Exception as exc:  # noqa: BLE001 - the actor or its host is gone
            log.error("the host of process %s is gone: %s", self.group, exc)
            self._code = -signal.SIGKILL
        return True

    def is_alive(self) -> bool:
        return not self._finished()

    @property
    def exitcode(self) -> int | None:
        return self._code if self._finished() else None

    def join(self, timeout: float | None = None) -> None:
        self._finished(timeout)

    def terminate(self) -> None:
        self.cluster.actors[self.group].signal.remote(signal.SIGTERM)

    def kill(self) -> None:
        self.cluster.actors[self.group].signal.remote(signal.SIGKILL)


class Cluster:
    """The run's connection to the Ray cluster and its actors, one per placed group."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.ray = _ray()
        self.actors: dict[str, Any] = {}
        self.placement: dict[str, dict[str, Any]] = {}
        address = plan.options.cluster
        try:
            self.ray.init(
                address=address,
                logging_level=logging.WARNING,
                log_to_driver=True,
                configure_logging=False,
            )
        except Exception as exc:  # noqa: BLE001 - Ray raises several kinds
            raise ClusterError(
                f"cannot reach the Ray cluster at {address!r}: {exc}; start one with "
                "`ray start --head` (and `ray start --address HEAD:6379 --resources "
                "'{\"LABEL\": 1}'` on each host) or fix runtime option cluster"
            ) from None

    def place(self) -> None:
        """Start an actor on each placed group's host and point the plan at them."""
        plan, ray = self.plan, self.ray
        labels: dict[tuple[str, str], set[str]] = {}  # (address, Ray node id) -> resources
        for node in ray.nodes():
            if node.get("Alive"):
                key = (node["NodeManagerAddress"], node["NodeID"][:12])
                labels[key] = set(node.get("Resources", {}))
        for group, label in plan.placement.items():
            if not any(label in have for have in labels.values()):
                hosts = "; ".join(
                    f"{ip} ({node}): "
                    + (", ".join(sorted(r for r in have if not _builtin(r))) or "none")
                    for (ip, node), have in sorted(labels.items())
                )
                nodes = ", ".join(i.node for i in plan.groups[group])
                raise ClusterError(
                    f"node {nodes}: place {label!r}: no host of the Ray cluster has that "
                    f"resource (labels by host: {hosts}); start the host with `ray start "
                    f"--resources '{{\"{label}\": 1}}'` or use one of those"
                )
        remote = ray.remote(num_cpus=0, max_concurrency=4)(GroupHost)
        for group, label in plan.placement.items():
            self.actors[group] = remote.options(resources={label: LABEL_SHARE}).remote()
        pending = {
            group: actor.where.remote(len(plan.groups[group]))
            for group, actor in self.actors.items()
        }
        deadline = time.monotonic() + START_TIMEOUT_S
        for group, ref in pending.items():
            try:
                self.placement[group] = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001
                raise ClusterError(
                    f"process {group} did not start on a host with {plan.placement[group]!r} "
                    f"within {START_TIMEOUT_S:.0f} s: {exc}"
                ) from None
        here = ray.util.get_node_ip_address()
        moved: dict[str, str] = {}
        for group, insts in plan.groups.items():
            where = self.placement.get(group)
            ip = where["ip"] if where else here
            ports = where.pop("ports") if where else [free_port(here) for _ in insts]
            for inst, port in zip(insts, ports, strict=True):
                moved[inst.address] = f"tcp://{ip}:{port}"
                inst.address = moved[inst.address]
        for inst in plan.instances():
            for out in inst.outputs:
                out.targets = [(g, moved[a]) for g, a in out.targets]
        plan.control = f"tcp://{here}:{free_port(here)}"
        for group, where in self.placement.items():
            log.info(
                "process %s placed on %s (%s, Ray node %s)",
                group,
                where["host"],
                where["ip"],
                where["node"][:12],
            )

    def process(self, group: str, args: tuple) -> RemoteProcess:
        return RemoteProcess(self, group, args)

    def close(self) -> None:
        for actor in self.actors.values():
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001, S110 - gone already
                pass
        self.actors.clear()
        self.ray.shutdown()


def _builtin(resource: str) -> bool:
    return resource in ("CPU", "GPU", "memory", "object_store_memory") or resource.startswith(
        ("node:", "accelerator_type:")
    )
