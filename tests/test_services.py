"""The MQTT, Redis and webhook sinks against real servers that the tests start: every
frame and the eos arrive, a broker restart mid-stream loses nothing within the buffer
and counts what it drops beyond it, and a malformed address stops the run at once.

Each message is read back by an independent client: a paho subscriber in its own
process, XRANGE from the test, the HTTP receiver's log of request bodies.
"""

from __future__ import annotations

import email.utils
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for, write_pipeline
from tests.helpers.brokers import (  # noqa: F401 - fixtures
    HttpReceiver,
    Mosquitto,
    RedisServer,
    Service,
    http_receiver,
    mosquitto,
    redis_server,
)

FRAMES = 125  # 5 s at 25 fps
TOTAL = FRAMES + 1  # and the eos

SUBSCRIBER = textwrap.dedent("""
    import json, sys
    import paho.mqtt.client as mqtt

    port, out = int(sys.argv[1]), open(sys.argv[2], "a")
    # a persistent session with QoS 1: the broker keeps what arrives while this
    # subscriber reconnects after a broker restart
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber",
                         clean_session=False)
    client.reconnect_delay_set(0.1, 0.5)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("posegraph/#", qos=1)
    client.on_subscribe = lambda *a: print("ready", flush=True)

    def on_message(c, u, msg):
        out.write(json.dumps({"topic": msg.topic, "message": json.loads(msg.payload)}) + "\\n")
        out.flush()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_forever(retry_first_connection=True)
""")


class Target:
    """One sink kind: its service, its node parameters, and what a client received."""

    fixture = ""
    node_type = ""

    def __init__(self, service: Service, tmp_path: Path):
        self.service = service
        self.tmp_path = tmp_path

    def params(self) -> dict:
        raise NotImplementedError

    def received(self) -> list[dict]:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the independent client, if it is a process."""


class MqttTarget(Target):
    fixture = "mosquitto"
    node_type = "sink.mqtt"

    def __init__(self, service: Service, tmp_path: Path):
        super().__init__(service, tmp_path)
        self.out = tmp_path / "subscriber.jsonl"
        self.subscriber = subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, str(service.port), str(self.out)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.subscriber.stdout.readline().strip() == "ready"

    def params(self) -> dict:
        return {"host": "127.0.0.1", "port": self.service.port, "qos": 1}

    def received(self) -> list[dict]:
        if not self.out.exists():
            return []
        lines = [json.loads(line) for line in self.out.read_text().splitlines() if line]
        assert {line["topic"] for line in lines} <= {"posegraph/cam"}
        return [line["message"] for line in lines]

    def stop(self) -> None:
        self.subscriber.terminate()
        self.subscriber.wait(10)


class RedisTarget(Target):
    fixture = "redis_server"
    node_type = "sink.redis"

    def params(self) -> dict:
        return {"url": f"redis://127.0.0.1:{self.service.port}/0", "maxlen": 10000}

    def received(self) -> list[dict]:
        import redis

        client = redis.Redis(port=self.service.port, socket_connect_timeout=1)
        try:
            entries = client.xrange("posegraph:cam")
        except redis.ConnectionError:
            return []
        finally:
            client.close()
        out = []
        for _, fields in entries:
            message = json.loads(fields[b"data"])
            # the filter fields agree with the message they come with
            assert fields[b"stream"] == b"cam"
            if "event" in message:
                assert fields[b"event"].decode() == message["event"]
            else:
                assert int(fields[b"index"]) == message["index"]
            out.append(message)
        return out


class WebhookTarget(Target):
    fixture = "http_receiver"
    node_type = "sink.webhook"

    def params(self) -> dict:
        return {
            "url": f"http://127.0.0.1:{self.service.port}/hook",
            "max_batch": 10,
            "max_delay": 0.2,
            "timeout": 2.0,
        }

    def received(self) -> list[dict]:
        posts = self.service.posts
        if not posts.exists():
            return []
        batches = [json.loads(line) for line in posts.read_text().splitlines() if line]
        assert all(isinstance(b, list) and 1 <= len(b) <= 10 for b in batches)
        return [message for batch in batches for message in batch]


TARGETS = {"mqtt": MqttTarget, "redis": RedisTarget, "webhook": WebhookTarget}


@pytest.fixture(params=list(TARGETS))
def target(request, tmp_path):
    kind = TARGETS[request.param]
    made = kind(request.getfixturevalue(kind.fixture), tmp_path)
    yield made
    made.stop()


def key(message: dict) -> tuple:
    return (message["stream"], message.get("index"), message.get("event"))


def unique(messages: list[dict]) -> list[dict]:
    """Delivery is at least once: a message resent after an outage counts once."""
    seen: dict[tuple, dict] = {}
    for m in messages:
        seen.setdefault(key(m), m)
    return list(seen.values())


def pipeline(tmp_path: Path, node_type: str, params: dict, frames: int = FRAMES) -> None:
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 64, "height": 48, "fps": 25, "frames": frames, "realtime": True},
            },
            {
                "name": "out",
                "type": node_type,
                "from": "cam",
                "with": {"backoff": 0.2, "backoff_max": 0.5, **params},
            },
        ],
    )


def summary(stderr: str) -> dict[str, int]:
    """The counts of the sink's closing line."""
    m = re.search(
        r"sink out: closed: (\d+) messages delivered to .*?, (\d+) dropped .*?, "
        r"(\d+) rejected, (\d+) undelivered",
        stderr,
    )
    assert m, f"no closing summary in the log:\n{stderr}"
    return dict(
        zip(("delivered", "dropped", "rejected", "undelivered"), map(int, m.groups()), strict=True)
    )


def run_through_restart(posegraph, target: Target, buffer: int) -> tuple[list[dict], str]:
    """A pipeline publishing at 25 fps while its broker is away for 2 s mid-stream."""
    pipeline(target.tmp_path, target.node_type, {**target.params(), "buffer": buffer})
    # -v: the closing summary is an info line when nothing was lost
    run = posegraph("-v", "run", "p.yaml")
    wait_for(lambda: len(target.received()) >= 25, 20, "messages before the restart")
    target.service.stop()
    time.sleep(2.0)
    assert run.proc.poll() is None, "the pipeline must keep running while the broker is away"
    target.service.start()
    code, _, stderr = run.wait(60)
    assert code == 0, stderr
    wait_for(lambda: any(m.get("event") == "eos" for m in target.received()), 15, "the eos", 0.3)
    return target.received(), stderr


def test_every_message_arrives_across_a_broker_restart(posegraph, target):
    received, stderr = run_through_restart(posegraph, target, buffer=1000)
    messages = unique(received)
    frames = [m for m in messages if "event" not in m]
    assert [m["index"] for m in frames] == list(range(FRAMES))
    assert messages[-1] == {"v": 1, "stream": "cam", "event": "eos"}
    assert set(frames[0]) >= {"v", "stream", "index", "pts", "captured_at", "latency_ms"}
    assert "sink out: cannot deliver to" in stderr, "the outage must be logged"
    assert "reachable again" in stderr
    counts = summary(stderr)
    assert counts["dropped"] == counts["rejected"] == counts["undelivered"] == 0
    assert counts["delivered"] >= TOTAL


def test_a_tiny_buffer_drops_the_oldest_and_counts_them(posegraph, target):
    buffer = 10
    received, stderr = run_through_restart(posegraph, target, buffer=buffer)
    messages = unique(received)
    counts = summary(stderr)
    # 2 s away at 25 fps is about 50 messages; 10 are kept besides one batch in flight
    assert counts["dropped"] >= 20, counts
    assert "buffer full (10 messages)" in stderr and "oldest messages dropped so far" in stderr
    # nothing is lost without being counted, and what is counted was not delivered (up to
    # the batch in flight when the broker went away, which may arrive and be counted too)
    missing = TOTAL - len(messages)
    assert missing <= counts["dropped"] <= missing + buffer, (missing, counts)
    assert counts["undelivered"] == 0
    indices = [m["index"] for m in messages if "event" not in m]
    assert indices[-1] == FRAMES - 1 and messages[-1]["event"] == "eos"
    # the oldest were dropped: what is missing is one run of frames within the outage
    lost = sorted(set(range(FRAMES)) - set(indices))
    assert lost and lost == list(range(lost[0], lost[-1] + 1)), (lost, stderr)


def test_a_broker_that_is_down_at_start_gets_everything_later(posegraph, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisServer(tmp_path / "redis")
    target = RedisTarget(server, tmp_path)
    pipeline(tmp_path, "sink.redis", target.params(), frames=100)
    run = posegraph("run", "p.yaml")
    # the broker comes up once the sink has found it away (the run ends by itself, so
    # this loop does too)
    logged = []
    for line in run.proc.stderr:
        logged.append(line)
        if "sink out: cannot deliver to redis://127.0.0.1" in line:
            break
    assert run.proc.poll() is None, "an unreachable broker at start is not fatal\n" + "".join(
        logged
    )
    server.start()
    try:
        code, _, stderr = run.wait(30)
        assert code == 0, stderr
        messages = unique(target.received())
    finally:
        server.stop()
    assert [m.get("index") for m in messages] == [*range(100), None]
    assert "reachable again" in stderr


@pytest.mark.parametrize(
    ("node_type", "params", "error"),
    [
        ("sink.mqtt", {"host": "tcp://127.0.0.1:1883"}, "is not a host name or IP address"),
        ("sink.mqtt", {"topic": "poses/{camera}"}, "is not a valid template"),
        ("sink.redis", {"url": "127.0.0.1:6379"}, "is not a Redis URL"),
        ("sink.webhook", {"url": "127.0.0.1:8080/hook"}, "is not an HTTP URL"),
        ("sink.mqtt", {"tls": True, "ca_certs": "/no/ca.pem"}, "ca_certs '/no/ca.pem': no such"),
        ("sink.mqtt", {"ca_certs": "/no/ca.pem"}, "ca_certs given without tls: true"),
    ],
)
def test_a_malformed_address_stops_the_run_with_one_line(
    posegraph, tmp_path, node_type, params, error
):
    pipeline(tmp_path, node_type, params, frames=10)
    code, _, stderr = posegraph("run", "p.yaml", "--inproc").wait(30)
    assert code != 0
    lines = [line for line in stderr.splitlines() if error in line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr


def test_retry_after_reads_seconds_and_http_dates():
    from nodes.services import retry_after

    now = 1_700_000_000.0
    assert retry_after("2") == 2.0
    assert retry_after(" 120 ") == 120.0
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after(None) is None
    assert retry_after("soon") is None and retry_after("-1") is None


def test_webhook_waits_as_long_as_retry_after_asks_and_counts_a_refused_batch(posegraph, tmp_path):
    """The first POST is answered 429 with Retry-After: 1, its resend 400, the rest 200."""
    receiver = HttpReceiver(tmp_path / "http", answers="429/1,400")
    receiver.start()
    try:
        target = WebhookTarget(receiver, tmp_path)
        # backoff alone would resend after 0.05 s
        params = {**target.params(), "backoff": 0.05, "backoff_max": 0.1}
        pipeline(tmp_path, "sink.webhook", params, frames=50)
        code, _, stderr = posegraph("run", "p.yaml").wait(60)
        assert code == 0, stderr
        answered = receiver.answered()
    finally:
        receiver.stop()
    assert [a["status"] for a in answered[:3]] == [429, 400, 200]
    assert answered[1]["t"] - answered[0]["t"] >= 0.95, answered[:2]
    assert "HTTP 429 Too Many Requests, retry after 1 s" in stderr
    assert "refused" in stderr and "HTTP 400 Bad Request" in stderr
    counts = summary(stderr)
    messages = unique(target.received())
    # the refused batch is counted, not resent; everything else arrives
    assert 1 <= counts["rejected"] <= 10
    assert counts["delivered"] == len(messages) == 51 - counts["rejected"]
    assert counts["dropped"] == counts["undelivered"] == 0


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, as PEM
    files (elliptic-curve keys: quick to make)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (Debian package openssl)")
    folder.mkdir()
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=posegraph test CA")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return {name: folder / name for name in ("ca.pem", "server.pem", "server.key",
                                             "client.pem", "client.key")}  # fmt: skip


TLS_SUBSCRIBER = SUBSCRIBER.replace(
    'client.connect("127.0.0.1", port)',
    "client.tls_set(ca_certs=sys.argv[3], certfile=sys.argv[4], keyfile=sys.argv[5])\n"
    'client.connect("127.0.0.1", port)',
)


def test_mqtt_over_tls_with_a_client_certificate(posegraph, tmp_path):
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    pem = make_certificates(tmp_path / "pki")
    broker = Mosquitto(
        tmp_path / "mosquitto",
        tls={"cafile": pem["ca.pem"], "certfile": pem["server.pem"], "keyfile": pem["server.key"]},
    )
    broker.start()
    out = tmp_path / "subscriber.jsonl"
    subscriber = subprocess.Popen(
        [sys.executable, "-c", TLS_SUBSCRIBER, str(broker.port), str(out)]
        + [str(pem[name]) for name in ("ca.pem", "client.pem", "client.key")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert subscriber.stdout.readline().strip() == "ready"
        tls = {
            "tls": True,
            "ca_certs": str(pem["ca.pem"]),
            "certfile": str(pem["client.pem"]),
            "keyfile": str(pem["client.key"]),
        }
        pipeline(tmp_path, "sink.mqtt", {"port": broker.port, "qos": 1, **tls}, frames=25)
        code, _, stderr = posegraph("-v", "run", "p.yaml").wait(60)
        assert code == 0, stderr
        assert f"delivered to mqtts://127.0.0.1:{broker.port}" in stderr
        wait_for(lambda: out.exists() and '"eos"' in out.read_text(), 15, "the eos", 0.2)
        messages = unique(json.loads(line)["message"] for line in out.read_text().splitlines())
        assert [m.get("index") for m in messages] == [*range(25), None]

        # checked against the system's authorities, the test CA's certificate is refused:
        # said with the reason, counted, no hang
        del tls["ca_certs"]
        pipeline(
            tmp_path,
            "sink.mqtt",
            {"port": broker.port, "qos": 1, "close_timeout": 1.0, **tls},
            frames=10,
        )
        code, _, stderr = posegraph("run", "p.yaml").wait(60)
        assert code == 0, stderr
        assert f"cannot deliver to mqtts://127.0.0.1:{broker.port} (no connection: " in stderr
        assert "CERTIFICATE_VERIFY_FAILED" in stderr

        # without a client certificate the broker shuts the door, and the log says why
        tls = {"tls": True, "ca_certs": str(pem["ca.pem"])}
        params = {"port": broker.port, "qos": 1, "close_timeout": 1.0, **tls}
        pipeline(tmp_path, "sink.mqtt", params, frames=10)
        code, _, stderr = posegraph("run", "p.yaml").wait(60)
        assert code == 0, stderr
        assert "certificate required" in stderr, stderr
        assert summary(stderr)["undelivered"] == 11
        assert summary(stderr)["undelivered"] == 11
    finally:
        subscriber.terminate()
        subscriber.wait(10)
        broker.stop()
