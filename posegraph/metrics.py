"""Pipeline metrics: per node fps, processing latency, queue depth, drops; end-to-end latency.

Workers send a snapshot of each node instance every half second; :class:`Metrics` folds
them together (also across restarts of a process), serves them on a Prometheus endpoint
and renders the live table and the summary line of ``posegraph run``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WINDOW = 20000
TAIL_WINDOW = 300  # frames at the sinks that the tail after a model node is judged on
COUNTERS = ("in", "out", "dropped", "lost", "errors", "gaps")
#: /healthz fails when the supervising loop has not turned for this long (it turns 4 times
#: a second)
STALE_TICK_S = 10.0


class Window:
    """The last ``size`` samples, in a float64 ring taken whole at creation: its memory is
    the same from the first sample to the billionth (a deque of Python floats grows by 32
    bytes a sample until full, which on a long run reads like a leak)."""

    def __init__(self, size: int = WINDOW):
        self.buf = np.full(size, np.nan)  # written through: every page resident now
        self.n = 0  # samples ever added

    def extend(self, samples) -> None:
        values = np.asarray(samples, dtype=float).ravel()
        size = len(self.buf)
        if len(values) >= size:
            values = values[-size:]
        start = self.n % size
        first = min(len(values), size - start)
        self.buf[start : start + first] = values[:first]
        self.buf[: len(values) - first] = values[first:]
        self.n += len(values)

    def __len__(self) -> int:
        return min(self.n, len(self.buf))

    def values(self) -> np.ndarray:
        """The samples held, in no particular order."""
        return self.buf[: len(self)]


def percentiles(samples, qs=(50, 90, 99)) -> dict[str, float]:
    if len(samples) == 0:
        return {f"p{q}": float("nan") for q in qs}
    if isinstance(samples, Window):
        arr = samples.values()
    else:
        arr = np.fromiter(samples, float, len(samples))
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}


@dataclass
class NodeMetrics:
    name: str
    base: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    last: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    queue: int = 0
    proc_ms: Window = field(default_factory=Window)
    queue_ms: Window = field(default_factory=Window)
    rate: deque = field(default_factory=lambda: deque(maxlen=20))  # (time, frames out)
    last_index: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    busy_s: float = 0.0  # how long its oldest unfinished call has lasted, at the last report

    def total(self, key: str) -> int:
        return self.base[key] + self.last[key]

    def fps(self) -> float:
        if len(self.rate) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.rate[0], self.rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class Metrics:
    def __init__(self, pipeline: str, order: list[str] | None = None):
        self.pipeline = pipeline
        self.order = {name: i for i, name in enumerate(order or [])}
        self.nodes: dict[str, NodeMetrics] = {}
        self.e2e_ms = Window()
        self.hop_ms = Window()
        self.e2e_count = 0
        self.window = (float("inf"), 0.0)  # first capture, last delivery, over all sinks
        self.plane: dict[str, dict[str, int]] = {}
        # (device, model, stream) -> the scheduler's counts (requests, items, done,
        # skipped, late), as last reported; kept after the model's node has closed
        self.scheduled: dict[tuple[str, str, str], dict[str, int]] = {}
        # node -> ms from its output to a sink, recent frames (see tails())
        self.tail_ms: dict[str, deque] = {}
        # (device, model) -> batches run per bucket size, as last reported
        self.batches: dict[tuple[str, str], dict[str, int]] = {}
        # stream -> at the sinks: newest capture time, up/down/ended and since when
        self.streams: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()
        self.running = False  # every node set up and the sources let go
        self.stopping = False  # draining, or ended
        self.last_tick = time.monotonic()  # the supervising loop's last turn
        self._lock = threading.Lock()

    def update(self, snapshot: dict[str, Any], group: str = "main") -> None:
        now = time.monotonic()
        with self._lock:
            for name, snap in snapshot.items():
                if name == "_plane":
                    self.plane[group] = snap
                    continue
                if name == "_scheduler":
                    for device, sched in snap.items():
                        for model, info in sched["models"].items():
                            for stream, counts in info["streams"].items():
                                self.scheduled[(device, model, stream)] = counts
                            self.batches[(device, model)] = dict(info["batches"])
                    continue
                m = self.nodes.setdefault(name, NodeMetrics(name))
                for key in COUNTERS:
                    m.last[key] = snap[key]
                m.queue = snap["queue"]
                m.busy_s = snap.get("busy_s", 0.0)
                m.proc_ms.extend(snap["proc_ms"])
                m.queue_ms.extend(snap["queue_ms"])
                m.rate.append((now, m.total("out") + (m.total("in") if not m.total("out") else 0)))
                m.last_index.update(snap["last_index"])
                self.e2e_ms.extend(snap["e2e_ms"])
                self.e2e_count += len(snap["e2e_ms"])
                self.hop_ms.extend(snap["hop_ms"])
                for node, samples in snap.get("tail_ms", {}).items():
                    self.tail_ms.setdefault(node, deque(maxlen=TAIL_WINDOW)).extend(samples)
                first, last = snap["window"]
                self.window = (min(self.window[0], first), max(self.window[1], last))
                for stream, st in snap.get("streams", {}).items():
                    # Several sinks: each one's latest report, and the change that came in
                    # last wins (by arrival: the wall clock may have been set back since).
                    known = self.streams.setdefault(stream, {**st, "sinks": {}})
                    before = known["sinks"].get(name)
                    known["sinks"][name] = st
                    if before is None or (st["state"], st["since"]) != (
                        before["state"],
                        before["since"],
                    ):
                        known["state"], known["since"] = st["state"], st["since"]
                    known["capture"] = max(s["capture"] for s in known["sinks"].values())

    def restarted(self, names: list[str]) -> None:
        """A process restarted: its counters start again from zero."""
        with self._lock:
            for name in names:
                # one that failed before its first report is counted too
                m = self.nodes.setdefault(name, NodeMetrics(name))
                for key in COUNTERS:
                    m.base[key] += m.last[key]
                    m.last[key] = 0
                m.restarts += 1

    # ---------------------------------------------------------------- views

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            nodes = sorted(
                self.nodes.values(), key=lambda m: self.order.get(m.name, len(self.order))
            )
            for m in nodes:
                row = {
                    "node": m.name,
                    "fps": m.fps(),
                    "queue": m.queue,
                    **{k: m.total(k) for k in COUNTERS},
                    "restarts": m.restarts,
                    "busy_s": round(m.busy_s, 3),
                }
                row.update({f"proc_{k}": v for k, v in percentiles(m.proc_ms).items()})
                out.append(row)
            return out

    def e2e(self) -> dict[str, float]:
        with self._lock:
            return percentiles(self.e2e_ms)

    def tails(self, nodes: Iterable[str]) -> dict[str, float]:
        """Seconds from each of ``nodes``' output to the sinks: the 95th percentile of the
        recent frames, of every sink they reach (nodes not measured yet are left out)."""
        with self._lock:
            return {
                n: float(np.percentile(self.tail_ms[n], 95)) / 1000.0
                for n in nodes
                if self.tail_ms.get(n)
            }

    def hops(self) -> dict[str, float]:
        """Transport time per hop, from a node's output to the next node's input."""
        with self._lock:
            return percentiles(self.hop_ms)

    def skipped(self) -> dict[str, dict[str, int]]:
        """Per stream: model items the scheduler took in, ran, and skipped (deadlines)."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for (_, _, stream), counts in self.scheduled.items():
                row = out.setdefault(stream, {"items": 0, "done": 0, "skipped": 0})
                for key in row:
                    row[key] += counts[key]
            return out

    def work_by_model(self) -> dict[str, tuple[int, int]]:
        """Per model (``MODEL on DEVICE``): work items the scheduler took in, and ran."""
        with self._lock:
            out: dict[str, tuple[int, int]] = {}
            for (device, model, _), c in self.scheduled.items():
                items, done = out.get(f"{model} on {device}", (0, 0))
                out[f"{model} on {device}"] = (items + c["items"], done + c["done"])
            return out

    def batching(self) -> dict[str, dict[str, Any]]:
        """Per model (``device/model``): batches run per bucket size, and the mean number
        of items (images, crops) a batch held."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for (device, model), per_bucket in self.batches.items():
                done = sum(
                    c["done"] + c["late"]
                    for (d, m, _), c in self.scheduled.items()
                    if (d, m) == (device, model)
                )
                runs = sum(per_bucket.values())
                out[f"{device}/{model}"] = {
                    "batches": dict(per_bucket),
                    "mean_items": round(done / runs, 3) if runs else 0.0,
                }
            return out

    def summary(self) -> dict[str, Any]:
        rows = self.rows()
        e2e = self.e2e()
        skipped = self.skipped()
        return {
            "pipeline": self.pipeline,
            "seconds": round(time.monotonic() - self.started, 3),
            "frames": max((r["in"] for r in rows), default=0) if rows else 0,
            "delivered": self.e2e_count,
            # from the first frame's capture to the last frame's arrival at a sink
            "delivery_s": max(0.0, self.window[1] - self.window[0]),
            "dropped": sum(r["dropped"] for r in rows),
            "lost": sum(r["lost"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "restarts": sum(r["restarts"] for r in rows),
            "skipped": sum(s["skipped"] for s in skipped.values()),
            "skipped_by_stream": skipped,
            "batching": self.batching(),
            "e2e_ms": e2e,
            "hop_ms": self.hops(),
            "nodes": rows,
        }

    @staticmethod
    def line_from(s: dict[str, Any]) -> str:
        """The one-line summary printed when a run ends."""
        e = s["e2e_ms"]

        def ms(v: float) -> str:
            return "-" if v != v else f"{v:.1f}"

        return (
            f"{s['pipeline']}: {s['delivered']} frames delivered in {s['seconds']:.1f} s, "
            f"end-to-end p50 {ms(e['p50'])} ms p90 {ms(e['p90'])} ms p99 {ms(e['p99'])} ms, "
            f"dropped {s['dropped']}, lost {s['lost']}, errors {s['errors']}, "
            f"restarts {s['restarts']}, skipped {s.get('skipped', 0)} (deadlines)"
        )

    def table(self):
        from rich.table import Table

        t = Table(title=f"posegraph · {self.pipeline}", title_justify="left")
        for col in (
            "node",
            "fps",
            "proc p50 ms",
            "proc p99 ms",
            "queue",
            "in",
            "out",
            "dropped",
            "lost",
            "errors",
            "restarts",
        ):
            t.add_column(col, justify="left" if col == "node" else "right")
        for r in self.rows():
            t.add_row(
                r["node"],
                f"{r['fps']:.1f}",
                _ms(r["proc_p50"]),
                _ms(r["proc_p99"]),
                str(r["queue"]),
                str(r["in"]),
                str(r["out"]),
                str(r["dropped"]),
                str(r["lost"]),
                str(r["errors"]),
                str(r["restarts"]),
            )
        e = self.e2e()
        skipped = sum(s["skipped"] for s in self.skipped().values())
        t.caption = (
            f"end-to-end latency p50 {_ms(e['p50'])} ms · p90 {_ms(e['p90'])} ms · "
            f"p99 {_ms(e['p99'])} ms · skipped for deadlines {skipped}"
        )
        return t

    # ----------------------------------------------------------- prometheus

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rows = self.rows()
        fams = {
            "frames_in": CounterMetricFamily(
                "posegraph_node_frames_in", "Frames taken in", labels=["pipeline", "node"]
            ),
            "frames_out": CounterMetricFamily(
                "posegraph_node_frames_out", "Frames passed on", labels=["pipeline", "node"]
            ),
            "dropped": CounterMetricFamily(
                "posegraph_node_dropped",
                "Frames dropped by the queue policy or the node",
                labels=["pipeline", "node"],
            ),
            "lost": CounterMetricFamily(
                "posegraph_node_lost", "Frames lost in transit", labels=["pipeline", "node"]
            ),
            "errors": CounterMetricFamily(
                "posegraph_node_errors", "Frames the node failed on", labels=["pipeline", "node"]
            ),
            "restarts": CounterMetricFamily(
                "posegraph_node_restarts", "Process restarts", labels=["pipeline", "node"]
            ),
        }
        fps = GaugeMetricFamily(
            "posegraph_node_fps", "Frames per second", labels=["pipeline", "node"]
        )
        queue = GaugeMetricFamily(
            "posegraph_node_queue_depth",
            "Frames waiting in the input queue",
            labels=["pipeline", "node"],
        )
        busy = GaugeMetricFamily(
            "posegraph_node_busy_seconds",
            "How long the node's oldest call in progress has lasted (0: idle); a process "
            "is killed as stuck past runtime hang_timeout_s",
            labels=["pipeline", "node"],
        )
        proc = GaugeMetricFamily(
            "posegraph_node_latency_ms",
            "Processing latency quantiles",
            labels=["pipeline", "node", "quantile"],
        )
        for r in rows:
            lab = [self.pipeline, r["node"]]
            fams["frames_in"].add_metric(lab, r["in"])
            fams["frames_out"].add_metric(lab, r["out"])
            for k in ("dropped", "lost", "errors", "restarts"):
                fams[k].add_metric(lab, r[k])
            fps.add_metric(lab, r["fps"])
            queue.add_metric(lab, r["queue"])
            busy.add_metric(lab, r["busy_s"])
            for q in (50, 90, 99):
                proc.add_metric([*lab, f"0.{q}"], r[f"proc_p{q}"])
        e2e = GaugeMetricFamily(
            "posegraph_e2e_latency_ms",
            "End-to-end latency, capture to sink, quantiles",
            labels=["pipeline", "quantile"],
        )
        for k, v in self.e2e().items():
            e2e.add_metric([self.pipeline, f"0.{k[1:]}"], v)
        scheduled = CounterMetricFamily(
            "posegraph_scheduler_items",
            "Model work items (an image, a person crop) the device scheduler took in, by "
            "outcome: done, skipped (the deadline could not be met), late (run, too late)",
            labels=["pipeline", "device", "model", "stream", "outcome"],
        )
        with self._lock:
            counts = list(self.scheduled.items())
        for (device, model, stream), c in counts:
            for outcome in ("done", "skipped", "late"):
                scheduled.add_metric([self.pipeline, device, model, stream, outcome], c[outcome])
        batches = CounterMetricFamily(
            "posegraph_scheduler_batches",
            "Batches the device scheduler ran, by bucket size (items per batch, padded)",
            labels=["pipeline", "device", "model", "bucket"],
        )
        with self._lock:
            per_model = list(self.batches.items())
        for (device, model), per_bucket in per_model:
            for bucket, n in per_bucket.items():
                batches.add_metric([self.pipeline, device, model, bucket], n)
        up = GaugeMetricFamily(
            "posegraph_stream_up",
            "1 while the stream's frames reach the sinks; 0 after its source_down event "
            "until source_up, and after its end",
            labels=["pipeline", "stream"],
        )
        age = GaugeMetricFamily(
            "posegraph_stream_last_frame_age_seconds",
            "Seconds since the newest frame that reached a sink was captured",
            labels=["pipeline", "stream"],
        )
        now = time.time()
        for stream, st in self.stream_states().items():
            up.add_metric([self.pipeline, stream], 1.0 if st["state"] == "up" else 0.0)
            if st["capture"]:
                age.add_metric([self.pipeline, stream], max(0.0, now - st["capture"]))
        yield from fams.values()
        yield from (fps, queue, busy, proc, e2e, scheduled, batches, up, age)

    def stream_states(self) -> dict[str, dict[str, Any]]:
        """Per stream, at the sinks: ``capture`` (the newest frame's capture time, 0 before
        any), ``state`` (up, down or ended) and ``since`` (when it became so)."""
        with self._lock:
            return {
                stream: {k: v for k, v in st.items() if k != "sinks"}
                for stream, st in self.streams.items()
            }

    def health(self, ready: bool) -> tuple[int, dict[str, Any]]:
        """``/healthz`` (``ready`` False) and ``/readyz``: the HTTP status and a JSON body.

        Alive while the loop that supervises the run turns (it marks ``last_tick`` every
        quarter second), or while the run starts (loading models may take long); ready
        while it runs: every node set up, not draining."""
        age = time.monotonic() - self.last_tick
        state = "stopping" if self.stopping else "running" if self.running else "starting"
        with self._lock:
            streams = {name: st["state"] for name, st in sorted(self.streams.items())}
        body = {
            "pipeline": self.pipeline,
            "state": state,
            "supervisor_tick_age_s": round(age, 3),
            "streams": streams,
        }
        alive = age < STALE_TICK_S or state == "starting"
        ok = alive and (state == "running" or not ready)
        return (200 if ok else 503), body

    def serve(self, port: int, addr: str = "127.0.0.1"):
        """Serve the metrics on http://addr:port/metrics, and ``/healthz`` and ``/readyz``
        (see :meth:`health`); returns the server (``shutdown()`` ends it)."""
        import json
        import socketserver
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import CollectorRegistry, make_wsgi_app

        registry = CollectorRegistry()
        registry.register(self)
        metrics_app = make_wsgi_app(registry)

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path in ("/healthz", "/readyz"):
                code, body = self.health(ready=path == "/readyz")
                reason = "OK" if code == 200 else "Service Unavailable"
                start_response(f"{code} {reason}", [("Content-Type", "application/json")])
                return [json.dumps(body).encode()]
            return metrics_app(environ, start_response)

        class Server(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args) -> None:  # no line per scrape on the run's stderr
                pass

        server = make_server(addr, port, app, Server, handler_class=Quiet)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server


def _ms(v: float) -> str:
    return "-" if v != v else f"{v:.2f}"


class ServiceWatch:
    """Says in the log when a model has served none of the work given to it for
    ``window`` seconds (every image or crop skipped or late: its device cannot meet the
    frames' deadlines), again every ``repeat`` seconds while that lasts, and when it
    serves again. The counts are there all along; this puts the state where an operator
    reads."""

    def __init__(self, window: float, repeat: float = 600.0):
        self.window = window
        self.repeat = repeat
        self.history: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()
        self.warned: dict[str, float] = {}  # model -> when last said
        self.since: dict[str, float] = {}  # model -> start of the window it served nothing in

    def check(self, metrics: Metrics, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.history and now - self.history[-1][0] < 1.0:
            return
        totals = metrics.work_by_model()
        self.history.append((now, totals))
        while len(self.history) > 1 and now - self.history[1][0] >= self.window:
            self.history.popleft()
        then, before = self.history[0]
        if now - then < self.window:
            return
        for model, (items, done) in totals.items():
            items0, done0 = before.get(model, (0, 0))
            if items < items0 or done < done0:
                continue  # its process restarted: counts from zero
            if done > done0:
                if model in self.since:
                    log.info(
                        "model %s serves again, after %.0f s without",
                        model,
                        now - self.since.pop(model),
                    )
                    self.warned.pop(model, None)
                continue
            if items == items0:
                continue  # given nothing
            self.since.setdefault(model, then)
            if now - self.warned.get(model, -math.inf) >= self.repeat:
                self.warned[model] = now
                log.warning(
                    "model %s has served none of its work for %.0f s (%d items, images or "
                    "person crops, in the last %.0f s, each past its deadline first: "
                    "skipped or late); its device cannot keep up: raise latency_budget_ms, "
                    "lower max_persons or the model's input size, or give it a GPU",
                    model,
                    now - self.since[model],
                    items - items0,
                    now - then,
                )
