"""``posegraph bench soak``: does a pipeline hold steady over time?

A pipeline that is to run for months must not grow: not in memory, open files, threads
or shared memory. This runs ``posegraph run FILE --duration S`` as users do (its own
process tree, its own summary) and samples every process of the run every ``every``
seconds: memory, open file descriptors, threads, and the run's shared-memory segments.

Memory is judged by a process's private memory (Linux: ``RssAnon`` of
``/proc/PID/status``, the heap and anonymous mappings where a leak shows), not by its
resident set: that also counts the pages of shared segments a process has touched, so a
reader of the frame plane grows in it as its queues deepen and it maps more slots or
another pool, up to the size of those segments, which are measured as the run's shared
memory instead. The resident set and its shared part are reported beside it. Where
``/proc`` has no such line (not Linux), the resident set is judged.

The run's clock starts when it is set up: the soak listens as systemd would
(``NOTIFY_SOCKET``, a socket of its own) for the run's ``READY=1``, which comes once every
process has loaded its models and the sources are let go; samples before it are not
judged, nor those that may have been taken once it said ``STOPPING=1`` (its drain, which
also begins when ``--duration`` ends: processes close sockets and end threads, the run's
segments are removed). After a warm-up (the first ``warmup`` share of the run from there:
buffers and caches fill), each process's figures are compared with themselves: the
baseline is the mean of the first quarter of its samples after the warm-up, the end the mean of the last quarter
(a decoder's buffers swing by MBs from one sample to the next), and the slope a
least-squares line over all of them (MB an hour). A process whose memory grew by more
than 2% (and at least 1 MB) and was still growing in the second half of the samples (by
half that: a buffer that fills and then stays full is not a leak), or that holds more
descriptors or threads all through the last quarter than at any time in the first, is
flagged; so is the run's shared memory when it grew in the second half. A worker that
was restarted starts a new series.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: A process's memory may grow this much over the run after the warm-up before it is
#: flagged: a share of its baseline, and at least this many MB.
GROWTH_SHARE = 0.02
GROWTH_MIN_MB = 1.0


def _name(proc, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "supervisor"
    name = proc.name()
    if name.startswith("pg:"):
        return name
    cmdline = " ".join(proc.cmdline())
    if "resource_tracker" in cmdline:
        return "resource tracker"
    return name


def _status_mb(pid: int) -> dict[str, float]:
    """``RssAnon`` and ``RssShmem`` of ``/proc/PID/status`` in MB; empty where there is none."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssShmem"):
                    out[key] = int(value.split()[0]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _sample(root, root_pid: int) -> dict[str, dict[str, Any]]:
    import psutil

    out = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            with proc.oneshot():
                rss = proc.memory_info().rss / 2**20
                status = _status_mb(proc.pid)
                out[_name(proc, root_pid)] = {
                    "pid": proc.pid,
                    "rss_mb": rss,
                    "private_mb": status.get("RssAnon", rss),
                    "shared_mb": status.get("RssShmem", 0.0),
                    "fds": proc.num_fds(),
                    "threads": proc.num_threads(),
                }
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return out


def _run_id(pid: int, pids: set[int]) -> str | None:
    """The run id of the supervisor ``pid``: from its folder (which holds
    ``supervisor.pid``) or, where that is gone (cleaned out of /tmp by age), from a segment
    that one of the run's processes ``pids`` made (``pg-RUN-OWNER-PID-SERIAL``)."""
    from posegraph.runtime.plan import rundir_of
    from posegraph.runtime.shm import segment_writer, supervisor_pid

    parent, prefix = os.path.split(rundir_of(""))
    try:
        folders = [f for f in os.listdir(parent) if f.startswith(prefix)]
    except OSError:
        folders = []
    for folder in folders:
        if supervisor_pid(os.path.join(parent, folder)) == pid:
            return folder[len(prefix) :]
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return None
    for name in names:
        if segment_writer(name) in pids:
            return name.split("-")[1]
    return None


def _shm_mb(run_id: str | None) -> float:
    """The size of the run's shared-memory segments (``pg-RUN-*``), not other runs'."""
    if run_id is None:
        return 0.0
    total = 0
    for name in os.listdir("/dev/shm"):
        if name.startswith(f"pg-{run_id}-"):
            try:
                total += os.path.getsize(os.path.join("/dev/shm", name))
            except OSError:
                continue
    return total / 2**20


def _heard(sock: socket.socket) -> set[bytes]:
    """The notification fields (``READY=1``, ``STOPPING=1``...) the run has sent since the
    last look."""
    fields: set[bytes] = set()
    while True:
        try:
            fields.update(sock.recv(4096).split(b"\n"))
        except BlockingIOError:
            return fields


def _series(
    samples: list[tuple[float, dict[str, dict[str, Any]]]], name: str, start: float, end: float
) -> list[tuple[float, dict[str, Any]]]:
    """The samples of process ``name`` from ``start`` until ``end``, from its last start (a
    restarted worker has a new pid)."""
    rows = [(t, s[name]) for t, s in samples if name in s and start <= t < end]
    if rows:
        last_pid = rows[-1][1]["pid"]
        rows = [(t, r) for t, r in rows if r["pid"] == last_pid]
    return rows


def _judge(rows: list[tuple[float, dict[str, Any]]]) -> dict[str, Any] | None:
    if len(rows) < 3:
        return None
    t = np.array([r[0] for r in rows])
    mem = np.array([r[1]["private_mb"] for r in rows])
    # the first and last quarter of the samples (at least 3, at most half): a decoder's or
    # an encoder's buffers make a process's memory swing by MBs from one sample to the next
    k = min(max(3, len(rows) // 4), len(rows) // 2) or 1

    def ends(key: str) -> tuple[float, float]:
        values = np.array([r[1][key] for r in rows])
        return float(values[:k].mean()), float(values[-k:].mean())

    half = len(rows) // 2

    def more_at_the_end(key: str) -> bool:
        """Even the fewest in the last quarter above the most in the first (held for good,
        not a file or thread that comes and goes) and above the count half-way: still
        rising in the second half. A leak rises all along; a pool or a library's
        thread made once, the first time it is needed, is a step that stays flat after it
        (one in the first half is not flagged; one in the second cannot be told from a
        leak that starts late, and is)."""
        values = [r[1][key] for r in rows]
        fewest_late = min(values[-k:])
        return fewest_late > max(values[:k]) and fewest_late > values[half - 1]

    first, last = ends("private_mb")
    slope = float(np.polyfit(t / 3600.0, mem, 1)[0]) if np.ptp(t) > 0 else 0.0
    # the slope over the second half alone: a buffer that fills and stays full (a bounded
    # queue, a window of samples) grows early and then not, a leak grows all along
    late = float(np.polyfit(t[half:] / 3600.0, mem[half:], 1)[0]) if np.ptp(t[half:]) > 0 else 0.0
    late_growth = late * float(np.ptp(t[half:])) / 3600.0
    fds = (rows[0][1]["fds"], rows[-1][1]["fds"])
    threads = (rows[0][1]["threads"], rows[-1][1]["threads"])
    held = more_at_the_end("fds") or more_at_the_end("threads")
    allowed = max(GROWTH_MIN_MB, GROWTH_SHARE * first)
    grew = last - first > allowed and late_growth > allowed / 2
    step = max(1, len(rows) // 100)
    return {
        "samples": len(rows),
        # private memory: what is judged
        "mb_start": round(first, 1),
        "mb_end": round(last, 1),
        "mb_peak": round(float(mem.max()), 1),
        "ratio": round(last / first, 4) if first else None,
        "mb_per_hour": round(slope, 2),
        "mb_per_hour_late": round(late, 2),
        # (seconds from the start, MB), at most about 100 of them
        "series": [[round(float(a), 1), round(float(b), 1)] for a, b in zip(t, mem, strict=True)][
            ::step
        ],
        # the resident set, and its pages of shared segments, for reference
        "rss_mb": [round(v, 1) for v in ends("rss_mb")],
        "shared_mb": [round(v, 1) for v in ends("shared_mb")],
        "fds": list(fds),
        "threads": list(threads),
        "flag": grew or held,
    }


def soak(
    file: str,
    seconds: float,
    every: float = 10.0,
    sets: list[str] | None = None,
    warmup: float = 0.2,
) -> dict[str, Any]:
    """Run the pipeline ``file`` for ``seconds`` and judge every process's growth."""
    import psutil

    if seconds <= 0 or every <= 0 or not 0 <= warmup < 1:
        raise ValueError(
            f"--seconds ({seconds}) and --every ({every}) must be above 0, --warmup "
            f"({warmup}) a share of the run in [0, 1)"
        )
    if not Path(file).is_file():
        raise ValueError(f"pipeline {file!r}: no such file")
    cmd = [sys.executable, "-m", "posegraph.cli", "run", file, "--quiet", "--json"]
    cmd += ["--duration", str(seconds)]
    for s in sets or []:
        cmd += ["--set", s]
    run_id: str | None = None
    # (taken at, done at, figures): a sample of many processes takes a while on a busy host
    samples: list[tuple[float, float, dict[str, dict[str, Any]]]] = []
    shm: list[tuple[float, float, float]] = []
    ready_at: float | None = None
    # the last look at the socket that heard no STOPPING=1 (none yet): the drain began
    # after it; every sample is followed by a look
    quiet_until = 0.0
    stopping = False

    def listen() -> None:
        nonlocal ready_at, quiet_until, stopping
        now = time.monotonic()
        heard = _heard(notify)
        if b"READY=1" in heard and ready_at is None:
            ready_at = now
        if b"STOPPING=1" in heard:
            stopping = True
        elif not stopping:
            quiet_until = now

    with (
        tempfile.TemporaryDirectory(prefix="pg-soak-") as folder,
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
    ):
        # the run says READY=1 here once it is set up, as it would to systemd
        notify.bind(os.path.join(folder, "notify"))
        notify.setblocking(False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        env["NOTIFY_SOCKET"] = os.path.join(folder, "notify")
        # files, not pipes: a run of hours writes more than a pipe holds
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        launched = time.monotonic()
        root = psutil.Process(proc.pid)
        try:
            while proc.poll() is None:
                now = time.monotonic()
                sample = _sample(root, proc.pid)
                samples.append((now, time.monotonic(), sample))
                run_id = run_id or _run_id(proc.pid, {p["pid"] for p in sample.values()})
                shm.append((now, time.monotonic(), _shm_mb(run_id)))
                deadline = time.monotonic() + every
                while True:
                    # read every notification, not only up to READY: the run's STATUS lines
                    # would fill the socket's queue
                    listen()
                    if proc.poll() is not None or time.monotonic() >= deadline:
                        break
                    time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait()
        listen()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the run ended with status {proc.returncode}: {last}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    if ready_at is None:
        raise RuntimeError(
            "the run never said it was set up (READY=1 on NOTIFY_SOCKET); nothing to judge"
        )
    # seconds on the run's own clock, from the moment it was set up; none that may have
    # been taken in the drain: a soak on a busy host hears READY=1 late by up to a sample,
    # so the drain can begin before the run's clock here ends
    samples = [(t - ready_at, s) for t, done, s in samples if done < quiet_until]
    shm = [(t - ready_at, mb) for t, done, mb in shm if done < quiet_until]
    start = warmup * seconds
    names = sorted({n for _, s in samples for n in s})
    processes = {}
    for name in names:
        # before the run's own clock ends (it starts after the set-up): no sample of the
        # drain, when processes close sockets and end threads
        judged = _judge(_series(samples, name, start, seconds))
        if judged is not None:
            pids = {s[name]["pid"] for _, s in samples if name in s}
            judged["starts"] = len(pids)
            processes[name] = judged
    shm_window = [(t, mb) for t, mb in shm if start <= t < seconds]
    shm_after = [mb for _, mb in shm_window]
    # segments are whole files, made when a process first writes an image of a size: one
    # that appears in the second half of the run (a source that starts late makes its
    # pool after the warm-up) is a new one for an old size
    shm_grew = bool(shm_after) and shm_after[-1] > shm_after[len(shm_after) // 2]
    flagged = sorted(n for n, p in processes.items() if p["flag"])
    if shm_grew:
        flagged.append("shared memory")
    return {
        "pipeline": file,
        "seconds": seconds,
        "every": every,
        "setup_s": round(ready_at - launched, 1),
        "warmup_s": round(start, 1),
        "processes": processes,
        "shm_mb": [round(min(shm_after), 1), round(max(shm_after), 1)] if shm_after else None,
        "shm_grew": shm_grew,
        # (seconds from the start, MB), at most about 100 of them
        "shm_series": [[round(t, 1), round(mb, 1)] for t, mb in shm_window][
            :: max(1, len(shm_window) // 100)
        ],
        "flagged": flagged,
        "run": {
            k: summary.get(k)
            for k in ("delivered", "dropped", "lost", "errors", "restarts", "skipped")
        },
    }


def print_soak(result: dict[str, Any]) -> None:
    from posegraph.benchmarks import _print_table

    rows = []
    for name, p in result["processes"].items():
        rows.append(
            [
                name,
                f"{p['mb_start']:.1f}",
                f"{p['mb_end']:.1f}",
                f"{p['ratio']:.3f}" if p["ratio"] else "-",
                f"{p['mb_per_hour']:+.2f}",
                f"{p['rss_mb'][0]:.1f} -> {p['rss_mb'][1]:.1f}",
                f"{p['shared_mb'][0]:.1f} -> {p['shared_mb'][1]:.1f}",
                f"{p['fds'][0]} -> {p['fds'][1]}",
                f"{p['threads'][0]} -> {p['threads'][1]}",
                "grows" if p["flag"] else "steady",
            ]
        )
    run = result["run"]
    shm = result["shm_mb"]
    _print_table(
        f"soak: {result['pipeline']} for {result['seconds']:g} s, sampled every "
        f"{result['every']:g} s from the end of its set-up ({result['setup_s']:g} s), compared "
        f"after {result['warmup_s']:g} s",
        (
            "process",
            "private MB start",
            "end",
            "ratio",
            "MB/h",
            "resident MB",
            "of it shared",
            "fds",
            "threads",
            "",
        ),
        rows,
        f"{run['delivered']} frames delivered, dropped {run['dropped']}, lost {run['lost']}, "
        f"errors {run['errors']}, restarts {run['restarts']}; shared memory "
        + (f"{shm[0]:.1f}-{shm[1]:.1f} MB" if shm else "none")
        + "; flagged: "
        + (", ".join(result["flagged"]) or "none"),
    )
