"""The MQTT, Redis and webhook sinks against real servers that the tests start: every
frame and the eos arrive, a broker restart mid-stream loses nothing within the buffer
and counts what it drops beyond it, and a malformed address stops the run at once.

Each message is read back by an independent client: a paho subscriber in its own
process, XRANGE from the test, the HTTP receiver's log of request bodies.
"""

from __future__ import annotations

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
