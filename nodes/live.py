"""A live view: the frames a sink receives, as MJPEG over HTTP, for a browser, VLC or ffplay.

``sink.mjpeg`` serves on its own port:

- ``/``: a page showing every stream live (new streams appear on it as they come);
- ``/stream/NAME``: the stream as ``multipart/x-mixed-replace`` JPEGs (MJPEG), what an
  ``<img>`` tag, VLC, ffplay and OpenCV's ``VideoCapture`` play;
- ``/snapshot/NAME.jpg``: the stream's newest frame;
- ``/streams``: JSON, each stream's state, newest index and size, and its viewers with
  the frames each was sent and skipped.

With ``draw`` it draws the boxes, skeletons and track ids itself (as ``overlay.skeleton``
does, with its settings when ``draw`` is a mapping of them), only on the pictures it
sends: put it after the tracker, and nothing is drawn while nobody watches. It never holds
the pipeline up:
``write`` keeps a copy of each stream's newest image and returns, and each viewer's
thread encodes the newest image when it is ready for the next one. A viewer slower than
the stream (a slow link) skips frames, counted for that viewer in ``/streams`` and in the
log line when it leaves; one that stops reading holds up only its own thread, and is
dropped after ``client_timeout_s``. Nothing is encoded while nobody watches, and a stream
nobody watches keeps a copy of its newest image twice a second (a snapshot is at most
half a second old).
"""

from __future__ import annotations

import base64
import hmac
import http.server
import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import numpy as np

from posegraph.node import NodeError, Sink, parameters, register
from posegraph.packet import Frame

log = logging.getLogger(__name__)

_BOUNDARY = "frame"
#: how often a stream nobody watches keeps its newest image, for snapshots
UNWATCHED_EVERY_S = 0.5

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ background: #111; color: #ddd; font: 14px sans-serif; margin: 1em; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
img {{ max-width: 46vw; background: #222; display: block; }}
</style></head>
<body><h3>{title}</h3><div id="streams"></div>
<script>
async function poll() {{
  try {{
    const streams = (await (await fetch("streams")).json()).streams;
    for (const [name, s] of Object.entries(streams)) {{
      let fig = document.getElementById("s-" + name);
      if (!fig) {{
        fig = document.createElement("figure");
        fig.id = "s-" + name;
        const img = document.createElement("img");
        img.src = "stream/" + encodeURIComponent(name);
        fig.append(img, document.createElement("figcaption"));
        document.getElementById("streams").append(fig);
      }}
      fig.querySelector("figcaption").textContent = name + ": " + s.state + ", frame " + s.index;
    }}
  }} catch (e) {{}}
  setTimeout(poll, 2000);
}}
poll();
</script></body></html>
"""


@dataclass
class _Viewer:
    address: str
    since: float = field(default_factory=time.time)
    sent: int = 0
    skipped: int = 0


@dataclass
class _Live:
    """One stream as the view holds it: its newest image and who watches it."""

    frame: Frame | None = None  # the newest, its image a copy
    index: int = -1
    seq: int = 0  # images kept
    copied_at: float = -1e9  # when the newest was kept (monotonic)
    state: str = "up"  # up, down (its source reconnects), ended
    jpeg: bytes | None = None
    jpeg_seq: int = -1
    encoding: threading.Lock = field(default_factory=threading.Lock)
    viewers: dict[int, _Viewer] = field(default_factory=dict)


@register("sink.mjpeg")
class MjpegSink(Sink):
    """Serves the frames it receives as MJPEG over HTTP, one picture per stream.

    ``host``/``port``: where it listens (127.0.0.1 by default: this host only; 0.0.0.0 for
    others, then with ``user`` and ``password``, HTTP basic authentication); port 0 turns
    the view off (a pipeline that offers one when asked: ``port: "${VIEW_PORT:-0}"``).
    ``quality``: JPEG quality 1-100. ``width``: scale pictures down to this width (aspect
    kept).
    ``draw``: draw the poses on the pictures (true, or ``overlay.skeleton``'s settings).
    ``max_fps``: at most this many pictures a second to each viewer (None: every frame
    it can take). ``max_viewers``: viewers at once, beyond which a viewer gets 503.
    """

    def __init__(
        self,
        port: int = 8090,
        host: str = "127.0.0.1",
        quality: int = 80,
        width: int | None = None,
        max_fps: float | None = None,
        max_viewers: int = 16,
        user: str | None = None,
        password: str | None = None,
        client_timeout_s: float = 10.0,
        draw: bool | dict = False,
    ):
        self.port = port
        self.host = host
        self.quality = quality
        self.width = width
        self.max_fps = max_fps
        self.max_viewers = max_viewers
        self.user = user
        self.password = password
        self.client_timeout_s = client_timeout_s
        self.draw = draw
        self.draw_failed = False
        self.streams: dict[str, _Live] = {}
        self.changed = threading.Condition()
        self.closing = False
        self.server: http.server.ThreadingHTTPServer | None = None
        # the settings are checked here, so that posegraph validate finds them
        if not 0 <= self.port < 65536:
            raise NodeError(f"port {self.port} is not a TCP port (1-65535, or 0 for no view)")
        if not 1 <= self.quality <= 100:
            raise NodeError(f"quality {self.quality} must be 1-100 (JPEG quality)")
        for key in ("width", "max_fps", "max_viewers", "client_timeout_s"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise NodeError(f"{key} {value} must be above 0")
        if (self.user is None) != (self.password is None):
            raise NodeError("give user and password together (HTTP basic authentication)")
        self.overlay = self._overlay() if draw is not False else None

    def setup(self, ctx) -> None:
        super().setup(ctx)
        if self.overlay is not None:
            self.overlay.setup(ctx)
        if self.port == 0:
            log.info("sink %s: no live view (port 0)", ctx.name)
            return
        if self.password is None and not _loopback(self.host):
            log.warning(
                "sink %s: the live view on %s:%d has no password: anyone who can reach this "
                "host can watch (set user and password)",
                ctx.name,
                self.host,
                self.port,
            )
        handler = type("Handler", (_Handler,), {"view": self, "timeout": self.client_timeout_s})
        try:
            self.server = http.server.ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as exc:
            raise NodeError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; choose a "
                "free port (another run or program may hold this one)"
            ) from None
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name=f"{ctx.name}-http",
            daemon=True,
        ).start()
        log.info("sink %s: live view at http://%s:%d/", ctx.name, self.host, self.port)

    def _overlay(self):
        from nodes.overlay import SkeletonOverlay

        settings = {} if self.draw is True else self.draw
        if not isinstance(settings, dict):
            raise NodeError(
                f"draw must be true, false or overlay.skeleton's settings, got {self.draw!r}"
            )
        try:
            overlay = SkeletonOverlay(**settings)
        except TypeError:
            known = parameters(SkeletonOverlay)
            unknown = ", ".join(sorted(set(settings) - set(known)))
            known = ", ".join(known)
            raise NodeError(
                f"draw: unknown setting(s) {unknown}; overlay.skeleton's are: {known}"
            ) from None
        return overlay

    # ------------------------------------------------------------------ pipeline side

    def write(self, frame: Frame) -> None:
        if self.server is None:
            return  # port 0: no view
        with self.changed:
            live = self.streams.get(frame.stream)
            if live is None:
                live = self.streams[frame.stream] = _Live()
            if frame.event == "eos":
                live.state = "ended"
            elif frame.event == "source_down":
                live.state = "down"
            elif frame.event in (None, "source_up"):
                live.state = "up"
            if frame.event is None and frame.image is not None:
                live.index = frame.index
                now = time.monotonic()
                # a copy (the frame's pixels, a shared-memory slot, go back to the pipeline
                # when this returns): of every frame while someone watches the stream, else
                # twice a second, for snapshots
                if live.viewers or now - live.copied_at >= UNWATCHED_EVERY_S:
                    live.frame = frame.replace(image=np.array(frame.image, copy=True))
                    live.seq += 1
                    live.copied_at = now
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()
            # the viewers send what they have not sent yet and leave (one that does not
            # read is not waited for long)
            self.changed.wait_for(lambda: not any(s.viewers for s in self.streams.values()), 2.0)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # ------------------------------------------------------------------ viewer side

    def jpeg(self, live: _Live) -> tuple[bytes, int, int] | None:
        """The newest image as JPEG, encoded once however many watch: (bytes, seq, index)."""
        import cv2

        with live.encoding:
            with self.changed:
                frame, seq = live.frame, live.seq
                if frame is None:
                    return None
                index = frame.index  # the kept image's, which may be older than the newest
                if live.jpeg_seq == seq and live.jpeg is not None:
                    return live.jpeg, seq, index
            image = frame.image
            if self.overlay is not None:
                try:
                    image = self.overlay.process(frame).image
                except NodeError as exc:
                    if not self.draw_failed:
                        log.warning("sink %s: cannot draw the poses: %s", self.ctx.name, exc)
                    self.draw_failed = True
            if self.width is not None and image.shape[1] != self.width:
                h = max(1, round(image.shape[0] * self.width / image.shape[1]))
                image = cv2.resize(image, (self.width, h), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                return None
            with self.changed:
                live.jpeg, live.jpeg_seq = buf.tobytes(), seq
            return live.jpeg, seq, index

    def wait(self, live: _Live, seen: int | None) -> bool | None:
        """Wait up to a second for an image newer than ``seen``: True when there is one,
        False when not yet, None when the view closes or the stream has ended."""
        with self.changed:
            self.changed.wait_for(
                lambda: self.closing or live.seq != seen or live.state == "ended", 1.0
            )
            if live.seq != seen:
                return True  # the newest image, even while closing: the last one too
            if self.closing or live.state == "ended":
                return None
            return False

    def table(self) -> dict:
        with self.changed:
            return {
                name: {
                    "state": live.state,
                    "index": live.index,
                    "size": None if live.frame is None else list(live.frame.image.shape[1::-1]),
                    "viewers": [
                        {
                            "address": v.address,
                            "since": v.since,
                            "sent": v.sent,
                            "skipped": v.skipped,
                        }
                        for v in live.viewers.values()
                    ],
                }
                for name, live in self.streams.items()
            }

    def authorised(self, header: str | None) -> bool:
        if self.password is None:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:], validate=True)
        except ValueError:
            return False
        wanted = f"{self.user}:{self.password}".encode()
        return hmac.compare_digest(given, wanted)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(http.server.BaseHTTPRequestHandler):
    view: MjpegSink
    server_version = "posegraph"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base's name
        log.debug("sink %s: %s %s", self.view.ctx.name, self.address_string(), format % args)

    def _reply(self, code: int, body: bytes, kind: str, **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _text(self, code: int, text: str, **headers: str) -> None:
        self._reply(code, (text + "\n").encode(), "text/plain; charset=utf-8", **headers)

    def _stream_named(self, name: str) -> _Live | None:
        live = self.view.streams.get(name)
        if live is None:
            known = ", ".join(sorted(self.view.streams)) or "none yet"
            self._text(404, f"no stream named {name!r} (streams: {known})")
        return live

    def do_GET(self) -> None:  # noqa: N802 - the base's name
        view = self.view
        if not view.authorised(self.headers.get("Authorization")):
            self._text(401, "user and password needed", WWW_Authenticate='Basic realm="posegraph"')
            return
        path = unquote(urlsplit(self.path).path)
        try:
            if path in ("/", "/index.html"):
                page = _PAGE.format(title=f"{view.ctx.pipeline}: {view.ctx.name}")
                self._reply(200, page.encode(), "text/html; charset=utf-8")
            elif path == "/streams":
                body = json.dumps({"streams": view.table()}).encode()
                self._reply(200, body, "application/json")
            elif path.startswith("/snapshot/") and path.endswith(".jpg"):
                live = self._stream_named(path[len("/snapshot/") : -len(".jpg")])
                if live is not None:
                    got = view.jpeg(live)
                    if got is None:
                        self._text(503, "no frame of this stream yet", Retry_After="1")
                    else:
                        self._reply(200, got[0], "image/jpeg", X_Frame_Index=str(got[2]))
            elif path.startswith("/stream/"):
                live = self._stream_named(path[len("/stream/") :])
                if live is not None:
                    self._stream(path[len("/stream/") :], live)
            else:
                self._text(404, "not here: try /, /streams, /stream/NAME, /snapshot/NAME.jpg")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass

    def _stream(self, name: str, live: _Live) -> None:
        view = self.view
        me = _Viewer(self.address_string())
        with view.changed:
            watching = sum(len(s.viewers) for s in view.streams.values())
            if watching >= view.max_viewers:
                full = True
            else:
                full = False
                live.viewers[id(me)] = me
        if full:
            self._text(503, f"{watching} viewers already (max_viewers)", Retry_After="5")
            return
        log.info("sink %s: a viewer at %s watches %s", view.ctx.name, me.address, name)
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            last = None
            while True:
                news = view.wait(live, last)
                if news is None:
                    break
                if not news:
                    continue
                got = view.jpeg(live)
                if got is None:
                    continue
                jpeg, seq, index = got
                if last is not None:
                    me.skipped += seq - last - 1
                started = time.monotonic()
                head = (
                    f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\nX-Frame-Index: {index}\r\n\r\n"
                )
                self.wfile.write(head.encode() + jpeg + b"\r\n")
                self.wfile.flush()
                me.sent += 1
                last = seq
                if view.max_fps is not None:
                    time.sleep(max(0.0, 1.0 / view.max_fps - (time.monotonic() - started)))
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass
        finally:
            with view.changed:
                live.viewers.pop(id(me), None)
                view.changed.notify_all()  # close() waits for the viewers to leave
            log.info(
                "sink %s: the viewer at %s of %s left: %d frames sent, %d skipped (newer "
                "ones were ready before it took them)",
                view.ctx.name,
                me.address,
                name,
                me.sent,
                me.skipped,
            )
