"""CURVE security: the runtime's run keys, `posegraph keys`, and sink.zmq over CURVE,
on real sockets and with subscribers in their own processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import zmq

from posegraph.runtime import curve
from tests.conftest import free_port, write_pipeline, write_zmq_pipeline


def _delivered(push: zmq.Socket, pull: zmq.Socket, timeout_ms: int = 1500) -> bool:
    """Whether a message sent on ``push`` arrives on ``pull`` within the timeout."""
    push.send(b"hello")
    return bool(pull.poll(timeout_ms)) and pull.recv() == b"hello"


def test_run_keys_let_in_only_the_runs_own_client(caplog):
    keys = curve.RunKeys.generate()
    ctx = zmq.Context()
    auth = curve.authenticator(ctx, [keys.client_public])
    socks = []

    def sock(kind):
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        socks.append(s)
        return s

    try:
        pull = sock(zmq.PULL)
        keys.serve(pull)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        address = f"tcp://127.0.0.1:{port}"

        own = sock(zmq.PUSH)
        keys.connect_as_client(own)
        own.connect(address)
        assert _delivered(own, pull)

        plain = sock(zmq.PUSH)  # no CURVE at all: the handshake fails
        plain.connect(address)
        assert not _delivered(plain, pull)

        # a client with a key pair of its own that knows the server's public key: CURVE
        # lets it through the handshake, the ZAP handler refuses it
        stranger = sock(zmq.PUSH)
        public, secret = zmq.curve_keypair()
        curve.as_client(stranger, public, secret, keys.server_public)
        with caplog.at_level("WARNING", logger="posegraph.runtime.curve"):
            stranger.connect(address)
            assert not _delivered(stranger, pull)
        assert public.decode() in caplog.text
    finally:
        for s in socks:
            s.close()
        auth.stop()
        ctx.term()


def test_keys_command_writes_a_pair_and_refuses_to_overwrite_it(tmp_path, posegraph):
    code, out, err = posegraph("keys", "site1", "--dir", "keys").wait()
    assert code == 0, err
    public, secret = tmp_path / "keys/site1.key", tmp_path / "keys/site1.key_secret"
    assert (public.stat().st_mode & 0o777, secret.stat().st_mode & 0o777) == (0o644, 0o600)
    assert curve.load_public_key(public) == curve.load_key_pair(secret)[0]
    code, _, err = posegraph("keys", "site1", "--dir", "keys").wait()
    assert code == 2 and "already exists" in err and err.count("\n") == 1


def test_key_files_that_cannot_be_used_say_so(tmp_path):
    public, _ = curve.make_certificates(tmp_path, "a")
    (tmp_path / "junk.key_secret").write_text("not a certificate\n")
    text = public.read_text()
    key = text.split('public-key = "')[1][:40]
    (tmp_path / "cut.key").write_text(text.replace(key, key[:30]))
    cases = [
        (lambda: curve.load_key_pair(tmp_path / "none.key_secret"), "no such file"),
        (lambda: curve.load_key_pair(public), "holds only a public key"),
        (lambda: curve.load_key_pair(tmp_path / "junk.key_secret"), "not a ZeroMQ certificate"),
        (lambda: curve.load_public_key(tmp_path / "cut.key"), "not 40 Z85 characters"),
        (lambda: curve.load_client_keys(tmp_path / "nowhere"), "no such folder"),
        (lambda: curve.load_client_keys(tmp_path / "empty"), "no such folder"),
        (lambda: curve.make_certificates(tmp_path, "../b"), "plain file name"),
    ]
    for call, message in cases:
        with pytest.raises(curve.CurveError, match=message):
            call()
    (tmp_path / "empty").mkdir()
    with pytest.raises(curve.CurveError, match="holds no NAME.key file"):
        curve.load_client_keys(tmp_path / "empty")


# A subscriber in its own process: CURVE keys from files when given, prints "ready", then
# the JSON list of what it received (until eos, or until 6 s pass with nothing).
SUBSCRIBER = textwrap.dedent("""
    import json, sys
    import msgpack, zmq, zmq.auth
    address, secret, server = sys.argv[1:4]
    sock = zmq.Context().socket(zmq.SUB)
    if secret != "-":
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(secret)
        sock.curve_serverkey = zmq.auth.load_certificate(server)[0]
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(address)
    print("ready", flush=True)
    got = []
    while sock.poll(6000):
        msg = msgpack.unpackb(sock.recv_multipart()[-1])
        got.append(msg)
        if msg.get("event") == "eos":
            break
    print(json.dumps(got))
""")


def test_zmq_sink_over_curve_reaches_known_subscribers_only(tmp_path, posegraph):
    """The sink binds as a CURVE server letting in the keys in clients/: the known
    subscriber gets every message, one with an unknown key and one without CURVE get none."""
    keys, clients = tmp_path / "keys", tmp_path / "clients"
    curve.make_certificates(keys, "sink")
    curve.make_certificates(keys, "known")
    curve.make_certificates(keys, "unknown")
    clients.mkdir()
    (clients / "known.key").write_bytes((keys / "known.key").read_bytes())
    address = f"tcp://127.0.0.1:{free_port()}"
    subs = {}
    for name in ("known", "unknown", "plain"):
        secret = "-" if name == "plain" else str(keys / f"{name}.key_secret")
        subs[name] = subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, address, secret, str(keys / "sink.key")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert subs[name].stdout.readline().strip() == "ready"
    write_zmq_pipeline(
        tmp_path / "p.yaml", address, curve_key="keys/sink.key_secret", curve_clients="clients"
    )
    code, _, stderr = posegraph("run", "p.yaml").wait()
    assert code == 0, stderr
    got = {name: json.loads(p.communicate(timeout=30)[0]) for name, p in subs.items()}
    frames = [m for m in got["known"] if "event" not in m]
    # what is published before the subscriber's handshake ends is not sent to it (PUB)
    assert len(frames) >= 50 and got["known"][-1]["event"] == "eos"
    assert got["unknown"] == [] and got["plain"] == []
    assert "refused a CURVE client" in stderr


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"curve_clients": "any"}, "curve_clients given without curve_key"),
        ({"curve_key": "k/s.key_secret"}, "needs curve_clients"),
        (
            {
                "curve_key": "k/s.key_secret",
                "curve_server_key": "k/s.key",
                "bind": False,
                "curve_clients": "any",
            },
            "curve_clients is for a binding sink",
        ),
        ({"curve_key": "k/s.key_secret", "bind": False}, "needs curve_server_key"),
        (
            {"curve_key": "k/s.key_secret", "curve_clients": "any", "curve_server_key": "k/s.key"},
            "curve_server_key is for a connecting sink",
        ),
        ({"curve_key": "k/s.key", "curve_clients": "any"}, "holds only a public key"),
        ({"curve_key": "k/none.key_secret", "curve_clients": "any"}, "no such file"),
        ({"curve_key": "k/s.key_secret", "curve_clients": "k2"}, "no such folder"),
    ],
)
def test_zmq_sink_curve_settings_that_do_not_fit_stop_with_one_line(
    tmp_path, posegraph, settings, message
):
    curve.make_certificates(tmp_path / "k", "s")
    address = f"tcp://127.0.0.1:{free_port()}"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.synthetic", "with": {"frames": 5}},
            {
                "name": "pub",
                "type": "sink.zmq",
                "from": "cam",
                "with": {"address": address, **settings},
            },
        ],
    )
    code, _, stderr = posegraph("run", "p.yaml").wait()
    assert code != 0
    lines = [line for line in stderr.splitlines() if message in line]
    assert len(lines) == 1, stderr
    assert "pub" in lines[0]
