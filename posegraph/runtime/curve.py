"""CURVE security for the ZeroMQ sockets that go over tcp.

CurveZMQ (ZeroMQ RFC 26) encrypts a connection between a server socket, which holds a
long-term key pair, and a client socket, which must know the server's public key to
connect at all. A ZAP handler (RFC 27) then lets the server accept only the client
public keys it knows. Two users here:

- the runtime's own sockets when a pipeline runs with ``transport: tcp`` (edges and the
  supervisor's control channel): each run draws a server and a client key pair
  (:class:`RunKeys`), which reach the worker processes with the plan and are never
  written to disk, so only the run's own processes can connect or read;
- ``sink.zmq`` with key files made by ``posegraph keys`` (ZeroMQ's certificate format:
  ``NAME.key`` holds the public key, ``NAME.key_secret`` both), so that keypoints can be
  published to other hosts.

Keys are handled as ZeroMQ does, Z85-encoded (40 characters).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


class CurveError(ValueError):
    """A key file that cannot be used, or CURVE asked of a ZeroMQ built without it."""


def require_curve() -> None:
    if not zmq.has("curve"):
        raise CurveError(
            f"this ZeroMQ ({zmq.zmq_version()}) was built without CURVE security; install "
            "pyzmq's wheel (it bundles libzmq with libsodium) or set runtime transport: ipc"
        )


@dataclass(frozen=True)
class RunKeys:
    """A run's keys: its binding sockets serve with the server pair and let in only the
    client public key; its connecting sockets present the client pair."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> RunKeys:
        require_curve()
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public, server_secret, client_public, client_secret)

    def serve(self, sock: zmq.Socket) -> None:
        as_server(sock, self.server_public, self.server_secret)

    def connect_as_client(self, sock: zmq.Socket) -> None:
        as_client(sock, self.client_public, self.client_secret, self.server_public)


def as_server(sock: zmq.Socket, public: bytes, secret: bytes) -> None:
    """Make ``sock`` a CURVE server; set before it binds."""
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def as_client(sock: zmq.Socket, public: bytes, secret: bytes, server_public: bytes) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is given; set before it
    connects."""
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


class _KnownClients:
    """ZAP credentials: the client public keys let in (Z85). A refused client that keeps
    trying (ZeroMQ reconnects every 100 ms) is logged at its 1st, 10th, 100th... try."""

    def __init__(self, keys: Iterable[bytes]):
        self.keys = frozenset(keys)
        self.refused: dict[bytes, int] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        if len(self.refused) >= 1000:  # bounded, whatever a stranger sends
            self.refused.clear()
        n = self.refused[key] = self.refused.get(key, 0) + 1
        if n == 10 ** (len(str(n)) - 1):
            log.warning(
                "refused a CURVE client whose public key is not known: %s (%d time%s)",
                key.decode(),
                n,
                "" if n == 1 else "s",
            )
        return False


def authenticator(ctx: zmq.Context, clients: Iterable[bytes] | None) -> ThreadAuthenticator:
    """Start the ZAP handler of ``ctx``: its CURVE server sockets then let in only the
    ``clients`` public keys, or any client that knows the server's key when None.

    One per context (ZAP has one address per context); stop it before the context ends.
    Start it before the server sockets bind, so that no handshake is done without it.
    """
    auth = ThreadAuthenticator(ctx)
    auth.start()
    if clients is None:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    else:
        auth.configure_curve_callback(domain="*", credentials_provider=_KnownClients(clients))
    return auth


# --------------------------------------------------------------------------- key files

HOW = "make a pair with `posegraph keys NAME`"


def make_certificates(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (both keys, mode 0600) in
    ``folder``; returns their paths. Refuses to overwrite a key pair."""
    require_curve()
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise CurveError(f"key name {name!r} must be a plain file name (no folder, no dot first)")
    folder = Path(folder)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise CurveError(f"{path} already exists; remove it or choose another name")
    folder.mkdir(parents=True, exist_ok=True)
    mask = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        written_public, written_secret = zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(mask)
    os.chmod(written_public, 0o644)
    return Path(written_public), Path(written_secret)


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise CurveError(f"{what} {str(path)!r}: no such file ({HOW})")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise CurveError(
            f"{what} {str(path)!r} is not a ZeroMQ certificate: {exc} ({HOW})"
        ) from None
    for key in (public, secret):
        if key is not None and not _is_z85_key(key):
            raise CurveError(
                f"{what} {str(path)!r} holds a key that is not 40 Z85 characters: the file "
                f"was changed or cut; make it again ({HOW})"
            )
    return public, secret


def _is_z85_key(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        zmq.utils.z85.decode(key)
    except (ValueError, KeyError, struct.error):  # a character outside Z85, an overflow
        return False
    return True


def load_key_pair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from a ``NAME.key_secret`` file."""
    public, secret = _load(Path(path), "secret key file")
    if not secret:
        raise CurveError(
            f"secret key file {str(path)!r} holds only a public key: give the NAME.key_secret "
            "file of the pair, which stays on this host"
        )
    return public, secret


def load_public_key(path: str | os.PathLike) -> bytes:
    """The public key of a ``NAME.key`` (or ``NAME.key_secret``) file."""
    return _load(Path(path), "public key file")[0]


def load_client_keys(folder: str | os.PathLike) -> list[bytes]:
    """The public keys of every ``*.key`` file in ``folder``: the clients let in."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CurveError(
            f"client key folder {str(folder)!r}: no such folder; put the NAME.key files of "
            "the clients to let in there, or give 'any' to let in every client that knows "
            "this end's public key"
        )
    files = sorted(folder.glob("*.key"))
    if not files:
        raise CurveError(
            f"client key folder {str(folder)!r} holds no NAME.key file; copy there the public "
            f"key of each client to let in ({HOW} on the client's host)"
        )
    return [load_public_key(f) for f in files]
