"""Sinks: JSON lines, ZeroMQ publish/push, MP4 video, and null.

Every sink that publishes writes the message of DESIGN section 2 (``v`` = 1), one per
frame or event, so a consumer sees ``gap``, ``source_down``, ``source_up`` and ``eos``
as well as keypoints.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import string
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgpack

from posegraph.node import NodeError, Sink, register
from posegraph.packet import Frame, to_message

log = logging.getLogger(__name__)

#: write errors that mean "no room": a full disk, a quota, a file size limit (FAT32's 4 GB,
#: ulimit -f)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class _Room:
    """A file sink's way with a disk that has no room: the frames it cannot write are
    counted (``unwritten``, reported as the sink's dropped frames) and skipped, not fatal,
    and it tries again every ``retry_s``; the error is logged when it starts and when it
    ends, not per frame. Any other error is raised as before."""

    def __init__(self, sink: str, retry_s: float) -> None:
        self.sink = sink
        self.retry_s = retry_s
        self.unwritten = 0  # all along
        self._since: float | None = None  # when the outage began (monotonic)
        self._retry_at = 0.0
        self._missed = 0  # in this outage

    def waiting(self) -> bool:
        """True while it waits to try again: the caller skips the frame (counted here)."""
        if self._since is None or time.monotonic() >= self._retry_at:
            return False
        self.skip()
        return True

    def skip(self, frames: int = 1) -> None:
        self.unwritten += frames
        self._missed += frames

    def failed(self, exc: OSError, path: object, frames: int = 1) -> bool:
        """Count ``frames`` and wait if ``exc`` says "no room"; False for any other error."""
        if exc.errno not in NO_ROOM:
            return False
        now = time.monotonic()
        if self._since is None:
            self._since = now
            log.error(
                "sink %s: no room to write %s (%s): frames are not written (counted as "
                "dropped) until there is; trying again every %g s",
                self.sink,
                path,
                exc.strerror or exc,
                self.retry_s,
            )
        self._retry_at = now + self.retry_s
        self.skip(frames)
        return True

    def wrote(self, path: object) -> None:
        if self._since is not None:
            log.warning(
                "sink %s: writing %s again after %.0f s without room; %d frames and events "
                "were not written",
                self.sink,
                path,
                time.monotonic() - self._since,
                self._missed,
            )
            self._since = None
            self._missed = 0


class _FileSink(Sink):
    """A sink that writes files: what it cannot write for want of room is counted."""

    room: _Room | None = None  # made at setup

    @property
    def unwritten(self) -> int:
        return self.room.unwritten if self.room is not None else 0


@register("sink.jsonl")
class JsonlSink(_FileSink):
    """One line of JSON per frame or event, flushed as it is written, appended to what
    the file holds.

    ``max_mb`` rotates the file when it reaches that size, as logrotate and Python's
    RotatingFileHandler do: ``out.jsonl`` becomes ``out.jsonl.1``, ``.1`` becomes ``.2``...
    and ``keep`` of them stay (5 unless given; the oldest beyond are removed); a reader
    following the file by name (``tail -F``) goes on with the new one.

    A disk with no room does not stop the pipeline: the lines that cannot be written are
    counted as the sink's dropped frames and it tries again every ``retry_s`` (a line
    written in part is cut off again, so the file holds whole lines only).
    """

    def __init__(
        self,
        path: str,
        events: bool = True,
        max_mb: float | None = None,
        keep: int | None = None,
        retry_s: float = 5.0,
    ):
        self.path = path
        self.events = events
        self.max_mb = max_mb
        self.keep = keep
        self.retry_s = retry_s

    def setup(self, ctx) -> None:
        super().setup(ctx)
        if self.max_mb is not None and self.max_mb <= 0:
            raise NodeError(f"max_mb must be above 0, got {self.max_mb}")
        if self.keep is not None and (self.max_mb is None or self.keep < 1):
            raise NodeError(
                f"keep {self.keep}: give a number of rotated files >= 1, with max_mb (the "
                "size at which the file rotates)"
            )
        if self.retry_s <= 0:
            raise NodeError(f"retry_s must be above 0, got {self.retry_s}")
        self.max_bytes = None if self.max_mb is None else int(self.max_mb * 1e6)
        self.room = _Room(ctx.name, self.retry_s)
        self._open()

    def _open(self) -> None:
        p = Path(self.path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: a line goes out whole in one write, or is cut off again
            self.file = p.open("ab", buffering=0)
        except OSError as exc:
            raise NodeError(f"cannot write {self.path}: {exc.strerror}") from None

    def _rotate(self) -> None:
        self.file.close()
        keep = self.keep if self.keep is not None else 5
        p = Path(self.path)
        for k in range(keep, 0, -1):
            older = p.with_name(f"{p.name}.{k}")
            if older.exists():
                if k == keep:
                    older.unlink()
                else:
                    older.rename(p.with_name(f"{p.name}.{k + 1}"))
        p.rename(p.with_name(f"{p.name}.1"))
        self._open()

    def write(self, frame: Frame) -> None:
        if frame.event is not None and not self.events:
            return
        if self.room.waiting():
            return
        line = json.dumps(to_message(frame, time.time()), separators=(",", ":")) + "\n"
        data = line.encode()
        done = 0
        try:
            while done < len(data):
                done += self.file.write(data[done:])
        except OSError as exc:
            if not self.room.failed(exc, self.path):
                raise
            if done:  # cut the part that went out: the file holds whole lines only
                try:
                    os.ftruncate(self.file.fileno(), self.file.tell() - done)
                except OSError:
                    pass
            return
        self.room.wrote(self.path)
        if self.max_bytes is not None and self.file.tell() >= self.max_bytes:
            self._rotate()

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
class VideoSink(_FileSink):
    """Writes frames to MP4 files (H.264 through PyAV), one file per stream.

    With several streams, ``{stream}`` in the path names each file; without it the stream
    name is added before the suffix of the second stream's and later ones'.

    Made for recording that runs for months:

    - ``segment_s`` starts a new file every so many seconds of video. ``{start}`` in the
      path is the wall-clock time of a file's first frame, with a strftime format, e.g.
      ``rec/{stream}-{start:%Y%m%d-%H%M%S}.mp4``; without it that time is added before the
      suffix. ``keep`` then removes a stream's oldest files beyond that many (the files
      the path's pattern matches, whichever run wrote them).
    - MP4 and MOV files are fragmented, a fragment at each key frame (every
      ``keyframe_s``) written as it ends, so a file stays playable up to its last
      fragment when the process is killed or the host loses power.
    - A file that exists is never written over: the new one gets ``-1``, ``-2``... before
      the suffix (after a restart of the sink's process, say).
    - A stream whose picture changes size (a camera set to another resolution) ends its
      file and goes on in a new one, neither squeezed nor cut.
    - A disk with no room does not stop the pipeline: the file being written is closed
      (playable up to its last fragment), the frames are counted as the sink's dropped
      frames (with those the encoder held), and every ``retry_s`` it tries again with a
      new file.
    """

    def __init__(
        self,
        path: str,
        fps: float = 25.0,
        codec: str = "libx264",
        crf: int = 23,
        segment_s: float | None = None,
        keep: int | None = None,
        keyframe_s: float = 2.0,
        retry_s: float = 5.0,
    ):
        self.path = path
        self.fps = fps
        self.codec = codec
        self.crf = crf
        self.segment_s = segment_s
        self.keep = keep
        self.keyframe_s = keyframe_s
        self.retry_s = retry_s
        self.outputs: dict[str, _Recording] = {}
        self.streams: list[str] = []  # in the order they first came

    def setup(self, ctx) -> None:
        super().setup(ctx)
        import av

        if self.codec not in av.codecs_available:
            raise NodeError(
                f"codec {self.codec!r} is not available in this PyAV build; use libx264 or mpeg4"
            )
        if self.fps <= 0 or self.keyframe_s <= 0 or self.retry_s <= 0:
            raise NodeError(
                f"fps ({self.fps}), keyframe_s ({self.keyframe_s}) and retry_s "
                f"({self.retry_s}) must be above 0"
            )
        self.room = _Room(ctx.name, self.retry_s)
        if self.segment_s is not None and self.segment_s * self.fps < 1:
            raise NodeError(
                f"segment_s {self.segment_s} holds no frame at {self.fps} fps; give at least "
                f"{1 / self.fps:g} s"
            )
        if self.keep is not None and (self.segment_s is None or self.keep < 1):
            raise NodeError(
                f"keep {self.keep}: give a number of files >= 1, with segment_s (a single "
                "file per stream has nothing to remove)"
            )
        self.template = self._template()
        try:
            self.template.format(stream="cam", start=datetime.now())
        except (KeyError, IndexError, ValueError) as exc:
            raise NodeError(
                f"path {self.path!r} cannot be filled in ({type(exc).__name__}: {exc}); "
                "its placeholders are {stream} and {start} (a strftime format after a colon)"
            ) from None
        # the folder up to the first placeholder exists and can be written now, not at the
        # first frame
        folder = Path(self.template.split("{")[0] + "x").parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NodeError(f"cannot make the folder {folder}: {exc.strerror}") from None
        if not os.access(folder, os.W_OK):
            raise NodeError(f"cannot write in {folder}: permission denied")

    def _template(self) -> str:
        template = self.path
        if self.segment_s is not None and "{start" not in template:
            p = Path(template)
            template = str(p.with_name(f"{p.stem}-{{start:%Y%m%d-%H%M%S}}{p.suffix}"))
        return template

    def _stream_template(self, stream: str) -> str:
        """The path template of ``stream``'s files: without ``{stream}`` in it, the first
        stream takes it as it is and the others add their name before the suffix."""
        if "{stream}" in self.template or not self.streams or stream == self.streams[0]:
            return self.template
        p = Path(self.template)
        return str(p.with_name(f"{p.stem}-{stream}{p.suffix}"))

    def _path_for(self, stream: str, start: float) -> Path:
        template = self._stream_template(stream)
        path = Path(template.format(stream=stream, start=datetime.fromtimestamp(start)))
        free, k = path, 0
        while free.exists():
            k += 1
            free = path.with_name(f"{path.stem}-{k}{path.suffix}")
        if free != path:
            log.warning(
                "sink %s: %s exists; writing %s (a file is never written over)",
                self.ctx.name,
                path,
                free.name,
            )
        return free

    def _open(self, frame: Frame) -> _Recording:
        from fractions import Fraction

        import av

        if frame.stream not in self.streams:
            self.streams.append(frame.stream)
        path = self._path_for(frame.stream, frame.captured_at or time.time())
        path.parent.mkdir(parents=True, exist_ok=True)
        options = {}
        if path.suffix.lower() in (".mp4", ".mov", ".m4v"):
            # a fragment per key frame, each written out as it ends: playable after a kill
            options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
        container = av.open(str(path), "w", options={**options, "flush_packets": "1"})
        stream = container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1000))
        h, w = frame.image.shape[:2]
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        gop = max(1, round(self.keyframe_s * self.fps))
        stream.codec_context.gop_size = gop
        if self.codec == "libx264":
            stream.options = {"crf": str(self.crf), "preset": "veryfast", "g": str(gop)}
        rec = _Recording(path, container, stream, fragmented=bool(options))
        self.outputs[frame.stream] = rec
        if self.keep is not None:
            self._prune(frame.stream, rec.path)
        return rec

    def _prune(self, stream: str, current: Path) -> None:
        """Remove the stream's oldest files beyond ``keep``, by modification time."""
        pattern = _file_pattern(self._stream_template(stream), stream)
        files = [f for f in current.parent.iterdir() if pattern.fullmatch(f.name) and f.is_file()]
        files.sort(key=lambda f: (f.stat().st_mtime, f.name))
        others = [f for f in files if f != current]
        for old in others[: max(0, len(others) + 1 - self.keep)]:
            try:
                old.unlink()
                log.info("sink %s: removed %s (keep %d)", self.ctx.name, old, self.keep)
            except OSError as exc:
                log.warning("sink %s: cannot remove %s: %s", self.ctx.name, old, exc.strerror)

    def write(self, frame: Frame) -> None:
        if frame.event is not None or frame.image is None:
            return
        if self.room.waiting():
            return
        rec = self.outputs.get(frame.stream)
        given = False  # to an encoder: then counted among the frames it held
        try:
            if rec is not None and self.segment_s is not None:
                if rec.frames >= round(self.segment_s * self.fps):
                    self.outputs.pop(frame.stream)
                    rec.close()
                    rec = None
            if rec is not None and not rec.fits(frame.image):
                # a camera set to another resolution: neither squeezed nor cut, a new file
                log.warning(
                    "sink %s: stream %s changed size from %dx%d to %dx%d; %s ends, a new "
                    "file begins",
                    self.ctx.name,
                    frame.stream,
                    rec.stream.width,
                    rec.stream.height,
                    frame.image.shape[1],
                    frame.image.shape[0],
                    rec.path,
                )
                self.outputs.pop(frame.stream)
                rec.close()
                rec = None
            if rec is None:
                rec = self._open(frame)
            given = True
            rec.encode(frame.image)
        except OSError as exc:
            if exc.errno not in NO_ROOM:
                raise
            # the file ends at its last whole fragment; what its encoder held is lost too
            self.outputs.pop(frame.stream, None)
            held = rec.abandon() if rec is not None else 0
            self.room.failed(exc, rec.path if rec is not None else self.path, held + (not given))
            return
        self.room.wrote(rec.path)

    def close(self) -> None:
        for rec in self.outputs.values():
            try:
                rec.close()
            except OSError as exc:
                if exc.errno not in NO_ROOM:
                    raise
                log.error("sink %s: no room to finish %s: %s", self.ctx.name, rec.path, exc)
        self.outputs.clear()


@dataclass
class _Recording:
    """One open file of ``sink.video``."""

    path: Path
    container: Any
    stream: Any
    fragmented: bool = False  # a fragment per key frame, written out when the next begins
    frames: int = 0  # given to the encoder
    muxed: int = 0  # packets handed to the container
    safe: int = 0  # frames known to be in the file

    def fits(self, image) -> bool:
        """Whether ``image`` has this file's size (odd sizes lose their last row or column)."""
        h, w = image.shape[:2]
        return (w - w % 2, h - h % 2) == (self.stream.width, self.stream.height)

    def encode(self, image) -> None:
        import av

        image = image[: self.stream.height, : self.stream.width]
        vf = av.VideoFrame.from_ndarray(image, format="bgr24")
        self.frames += 1
        for packet in self.stream.encode(vf):
            self._mux(packet)

    def _mux(self, packet) -> None:
        keyframe = packet.is_keyframe
        self.container.mux(packet)
        if not self.fragmented or keyframe:
            # a key frame's packet went in: the fragment before it was written out whole
            self.safe = self.muxed + (not self.fragmented)
        self.muxed += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self._mux(packet)
        self.container.close()
        self.safe = self.frames

    def abandon(self) -> int:
        """Close a file that could not be written, as far as it can be; the frames given
        to the encoder that are not in it (the one that failed among them)."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001, S110 - no room for its trailer either
            pass
        return max(0, self.frames - self.safe)


def _file_pattern(template: str, stream: str) -> re.Pattern:
    """The names of the files a ``sink.video`` path template makes for ``stream``: its
    ``{start}`` any text, ``-N`` allowed before the suffix."""
    name = Path(template).name
    stem, suffix = name[: len(name) - len(Path(name).suffix)], Path(name).suffix
    parts = []
    for literal, field, _spec, _conv in string.Formatter().parse(stem):
        parts.append(re.escape(literal))
        if field == "stream":
            parts.append(re.escape(stream))
        elif field is not None:
            parts.append(".+?")
    return re.compile("".join(parts) + r"(-\d+)?" + re.escape(suffix))


@register("sink.caller")
class CallerSink(Sink):
    """Sends every frame and event back to the Python process running the graph, which
    binds ``address`` (:meth:`posegraph.Graph.results` adds this sink and reads it).

    Frames keep all they carry (detections, poses, meta), the image only with ``images``.
    Each frame waits for the caller to take it (an acknowledgement), so nothing sits in a
    socket's buffer when the run ends, and a reader slower than the pipeline slows it
    rather than losing frames; a loop paused for long (a breakpoint) is waited for, the
    hang watch leaving it alone. Once the run is stopping, a frame the caller does not
    take within 2 s is counted as not written (the caller has left).
    """

    waits_outside = True

    def __init__(self, address: str, images: bool = False, node: str = ""):
        self.address = address
        self.images = images
        self.node = node  # the node whose frames these are, for the caller
        self.sock = None
        self.sent = 0

    def setup(self, ctx) -> None:
        super().setup(ctx)
        import zmq

        self._zmq = zmq
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            self.sock.connect(self.address)
        except zmq.ZMQError as exc:
            raise NodeError(f"cannot connect to the caller at {self.address}: {exc}") from None

    def write(self, frame: Frame) -> None:
        from posegraph.packet import encode

        if not self.images and frame.image is not None:
            frame = frame.replace(image=None)
        self.sent += 1
        seq = str(self.sent).encode()
        self.sock.send_multipart([b"", seq, self.node.encode(), encode(frame)], copy=False)
        waited = 0.0
        while True:
            if self.sock.poll(100):
                if self.sock.recv_multipart()[-1] == seq:  # a late answer to an older one
                    return
                continue
            waited += 0.1
            if self.ctx.stopping and waited >= 2.0:
                self.unwritten += 1
                if self.unwritten == 1:
                    log.warning(
                        "sink %s: the caller is not taking frames; counting them as lost",
                        self.ctx.name,
                    )
                return

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


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
