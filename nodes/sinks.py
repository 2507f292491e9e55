"""Sinks: JSON lines, ZeroMQ publish/push, MP4 video, and null.

Every sink that publishes writes the message of DESIGN section 2 (``v`` = 1), one per
frame or event, so a consumer sees ``gap``, ``source_down``, ``source_up`` and ``eos``
as well as keypoints.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import msgpack

from posegraph.node import NodeError, Sink, register
from posegraph.packet import Frame, to_message

log = logging.getLogger(__name__)


@register("sink.jsonl")
class JsonlSink(Sink):
    """One line of JSON per frame or event, flushed as it is written."""

    def __init__(self, path: str, events: bool = True):
        self.path = path
        self.events = events

    def setup(self, ctx) -> None:
        super().setup(ctx)
        p = Path(self.path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            self.file = p.open("a", encoding="utf-8")
        except OSError as exc:
            raise NodeError(f"cannot write {self.path}: {exc.strerror}") from None

    def write(self, frame: Frame) -> None:
        if frame.event is not None and not self.events:
            return
        self.file.write(json.dumps(to_message(frame, time.time()), separators=(",", ":")) + "\n")
        self.file.flush()

    def close(self) -> None:
        if hasattr(self, "file"):
            self.file.close()


@register("sink.zmq")
class ZmqSink(Sink):
    """Publishes each message on a ZeroMQ PUB (topic = stream) or PUSH socket.

    Never blocks the pipeline: a PUSH peer that does not keep up loses messages, which
    are counted and logged.

    CURVE encryption and authentication (for publishing beyond this host): ``curve_key``
    is this end's secret key file (``NAME.key_secret``, made by ``posegraph keys NAME``).
    A binding sink is the server: ``curve_clients`` is a folder of the public key files
    (``NAME.key``) of the clients it lets in, or ``any`` for every client that knows its
    public key. A connecting sink (``bind: false``) is the client of the server whose
    public key file is ``curve_server_key``. Relative paths are read from the working
    directory, else from the pipeline's folder.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:5555",
        socket: Literal["pub", "push"] = "pub",
        bind: bool = True,
        format: Literal["msgpack", "json"] = "msgpack",
        hwm: int = 1000,
        curve_key: str | None = None,
        curve_clients: str | None = None,
        curve_server_key: str | None = None,
    ):
        self.address = address
        self.kind = socket
        self.bind = bind
        self.format = format
        self.hwm = hwm
        self.curve_key = curve_key
        self.curve_clients = curve_clients
        self.curve_server_key = curve_server_key
        self.dropped = 0
        self._auth = None

    def _check_curve(self) -> None:
        """One clear error for a CURVE setting that does not fit ``bind``."""
        role = "binding (bind: true)" if self.bind else "connecting (bind: false)"
        if self.curve_key is None:
            given = [
                n for n in ("curve_clients", "curve_server_key") if getattr(self, n) is not None
            ]
            if given:
                raise NodeError(
                    f"{given[0]} given without curve_key, this end's secret key file "
                    "(make a pair with `posegraph keys NAME`)"
                )
        elif self.bind:
            if self.curve_server_key is not None:
                raise NodeError(
                    "curve_server_key is for a connecting sink (bind: false); a binding sink "
                    "is the server: give curve_clients instead"
                )
            if self.curve_clients is None:
                raise NodeError(
                    f"a {role} sink with curve_key needs curve_clients: a folder of the "
                    "public key files (NAME.key) of the clients to let in, or 'any'"
                )
        else:
            if self.curve_clients is not None:
                raise NodeError(
                    "curve_clients is for a binding sink (bind: true); a connecting sink "
                    "gives the server's public key file as curve_server_key"
                )
            if self.curve_server_key is None:
                raise NodeError(
                    f"a {role} sink with curve_key needs curve_server_key, the public key "
                    "file (NAME.key) of the server it connects to"
                )

    def _secure(self, sock) -> None:
        """Set ``sock`` up as a CURVE server or client from the key files; starts the
        context's ZAP handler for a server."""
        from nodes.sources import resolve_path
        from posegraph.runtime import curve

        try:
            public, secret = curve.load_key_pair(resolve_path(self.ctx, self.curve_key))
            if self.bind:
                clients = None
                if self.curve_clients != "any":
                    clients = curve.load_client_keys(resolve_path(self.ctx, self.curve_clients))
                self._auth = curve.authenticator(self.zctx, clients)
                curve.as_server(sock, public, secret)
                log.info(
                    "sink %s: CURVE server at %s, letting in %s",
                    self.ctx.name,
                    self.address,
                    "any client" if clients is None else f"{len(clients)} client key(s)",
                )
            else:
                server = curve.load_public_key(resolve_path(self.ctx, self.curve_server_key))
                curve.as_client(sock, public, secret, server)
        except curve.CurveError as exc:
            raise NodeError(str(exc)) from None

    def setup(self, ctx) -> None:
        super().setup(ctx)
        import zmq

        self._check_curve()
        self._zmq = zmq
        # CURVE gets a context of its own: its ZAP handler answers for this sink only
        self.zctx = zmq.Context() if self.curve_key else zmq.Context.instance()
        self.sock = self.zctx.socket(zmq.PUB if self.kind == "pub" else zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, self.hwm)
        self.sock.setsockopt(zmq.LINGER, 1000)
        try:
            if self.curve_key:
                self._secure(self.sock)
            if self.bind:
                self.sock.bind(self.address)
            else:
                self.sock.connect(self.address)
        except zmq.ZMQError as exc:
            self.close(linger=0)
            raise NodeError(
                f"cannot {'bind' if self.bind else 'connect'} {self.address}: "
                f"{exc}; choose a free address or set bind: false"
            ) from None
        except NodeError:
            self.close(linger=0)
            raise

    def write(self, frame: Frame) -> None:
        msg = to_message(frame, time.time())
        body = (
            json.dumps(msg).encode()
            if self.format == "json"
            else msgpack.packb(msg, use_bin_type=True)
        )
        parts = [frame.stream.encode(), body] if self.kind == "pub" else [body]
        try:
            self.sock.send_multipart(parts, flags=self._zmq.NOBLOCK)
        except self._zmq.Again:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning(
                    "sink %s: %d messages dropped: no peer at %s is taking them",
                    self.ctx.name,
                    self.dropped,
                    self.address,
                )

    def close(self, linger: int | None = None) -> None:
        if hasattr(self, "sock"):
            self.sock.close(linger)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self.curve_key and hasattr(self, "zctx") and not self.zctx.closed:
            self.zctx.term()


@register("sink.video")
class VideoSink(Sink):
    """Writes frames to an MP4 file (H.264 through PyAV), one file per stream.

    With several streams, ``{stream}`` in the path names each file; without it the stream
    name is added before the suffix.
    """

    def __init__(self, path: str, fps: float = 25.0, codec: str = "libx264", crf: int = 23):
        self.path = path
        self.fps = fps
        self.codec = codec
        self.crf = crf
        self.outputs: dict[str, tuple] = {}

    def setup(self, ctx) -> None:
        super().setup(ctx)
        import av

        if self.codec not in av.codecs_available:
            raise NodeError(
                f"codec {self.codec!r} is not available in this PyAV build; use libx264 or mpeg4"
            )
        Path(self.path.replace("{stream}", "x")).parent.mkdir(parents=True, exist_ok=True)

    def _output(self, frame: Frame):
        out = self.outputs.get(frame.stream)
        if out is not None:
            return out
        from fractions import Fraction

        import av

        if "{stream}" in self.path:
            path = self.path.format(stream=frame.stream)
        elif self.outputs:
            p = Path(self.path)
            path = str(p.with_name(f"{p.stem}-{frame.stream}{p.suffix}"))
        else:
            path = self.path
        h, w = frame.image.shape[:2]
        container = av.open(path, "w")
        stream = container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1000))
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        out = (container, stream)
        self.outputs[frame.stream] = out
        return out

    def write(self, frame: Frame) -> None:
        if frame.event is not None or frame.image is None:
            return
        import av

        container, stream = self._output(frame)
        image = frame.image[: stream.height, : stream.width]
        vf = av.VideoFrame.from_ndarray(image, format="bgr24")
        for packet in stream.encode(vf):
            container.mux(packet)

    def close(self) -> None:
        for container, stream in self.outputs.values():
            for packet in stream.encode():
                container.mux(packet)
            container.close()
        self.outputs.clear()


@register("sink.null")
class NullSink(Sink):
    """Consumes and counts; for benchmarks and for measuring the rest of a pipeline."""

    def __init__(self):
        self.frames = 0
        self.events = 0

    def write(self, frame: Frame) -> None:
        if frame.event is None:
            self.frames += 1
        else:
            self.events += 1
