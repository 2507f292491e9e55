"""Real services for the sink tests: mosquitto, redis-server and an HTTP receiver, each a
process of its own on a free 127.0.0.1 port, which a test can stop and start again on
the same port.

Both brokers keep their data across a restart (mosquitto's persistence file, Redis's RDB
saved at shutdown), as a production broker would, so a test sees what was delivered
before the outage as well as after it.

Run as a script, this module is the HTTP receiver: ``python brokers.py PORT LOG REQUESTS
[ANSWERS]`` answers every POST 200 and appends its body to LOG, one line per request;
ANSWERS (``429/1,400``: a status, optionally a Retry-After in seconds) scripts the answers
to the first requests instead. REQUESTS gets one JSON line per request: its arrival time
(``time.time()``) and the status it was answered.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Service:
    """A server process on a fixed port; ``stop`` and ``start`` again keep the port."""

    name = "service"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: the broker saves its data and closes its connections."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class Mosquitto(Service):
    """mosquitto; with ``tls`` (cafile, certfile, keyfile: paths) it listens with TLS only
    and asks each client for a certificate that ``cafile`` signed."""

    name = "mosquitto"

    def __init__(self, workdir: Path, tls: dict[str, Path] | None = None):
        super().__init__(workdir)
        self.tls = tls

    def command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        tls = ""
        if self.tls:
            tls = "".join(f"{key} {path}\n" for key, path in self.tls.items())
            tls += "require_certificate true\n"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n" + tls + "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 100000\n"
            # started as root, mosquitto would switch to its own user, which cannot
            # write the test's folder
            "user root\n"
        )
        return [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]


class RedisServer(Service):
    name = "redis-server"

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "3600 1",
            "--appendonly",
            "no",
        ]


class HttpReceiver(Service):
    """This module run as a script: every POST body becomes a line of ``posts``."""

    name = "http-receiver"

    def __init__(self, workdir: Path, answers: str = ""):
        super().__init__(workdir)
        self.posts = self.workdir / "posts.jsonl"
        self.requests = self.workdir / "requests.jsonl"
        self.answers = answers

    def command(self) -> list[str]:
        script = str(Path(__file__).resolve())
        return [sys.executable, script, str(self.port), str(self.posts), str(self.requests)] + (
            [self.answers] if self.answers else []
        )

    def answered(self) -> list[dict]:
        """Each request so far: ``t`` (its arrival, time.time()) and ``status``."""
        if not self.requests.exists():
            return []
        return [json.loads(line) for line in self.requests.read_text().splitlines() if line]


def _service(kind: type[Service], binary: str | None, package: str, tmp_path: Path):
    if binary is not None and shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (Debian package {package}; .ci/run installs it)")
    service = kind(tmp_path / kind.name)
    service.start()
    return service


@pytest.fixture
def mosquitto(tmp_path):
    service = _service(Mosquitto, "mosquitto", "mosquitto", tmp_path)
    yield service
    service.stop()


@pytest.fixture
def redis_server(tmp_path):
    service = _service(RedisServer, "redis-server", "redis-server", tmp_path)
    yield service
    service.stop()


@pytest.fixture
def http_receiver(tmp_path):
    service = _service(HttpReceiver, None, "", tmp_path)
    yield service
    service.stop()


def _receive(port: int, log_path: str, requests_path: str, answers: str = "") -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    log = open(log_path, "ab")  # noqa: SIM115 - open for the life of the server
    requests = open(requests_path, "a")  # noqa: SIM115
    script = [answer.split("/") for answer in answers.split(",") if answer]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrived = time.time()
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, *after = script.pop(0) if script else ("200",)
            requests.write(json.dumps({"t": arrived, "status": int(status)}) + "\n")
            requests.flush()
            if status == "200":
                # written before the answer: what was answered 200 is in the log
                log.write(body.replace(b"\n", b" ") + b"\n")
                log.flush()
            self.send_response(int(status))
            if after:
                self.send_header("Retry-After", after[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args) -> None:
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    _receive(int(sys.argv[1]), *sys.argv[2:])
