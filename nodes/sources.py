"""Sources: video files, RTSP cameras, local cameras, image folders and a synthetic pattern."""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from posegraph.node import NodeError, Source, register
from posegraph.packet import Frame

log = logging.getLogger(__name__)


def resolve_path(ctx, path: str) -> Path:
    """A relative path is taken from the working directory, else from the pipeline's folder."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists():
        return p
    base = ctx.extra.get("base_dir")
    if base and (Path(base) / p).exists():
        return Path(base) / p
    return p


def redact(uri: str) -> str:
    """``uri`` with the password of its user info hidden (``rtsp://admin:***@host/...``),
    for logs, errors and the events that sinks publish to other services."""
    try:
        parts = urlsplit(uri)
        if parts.password is None:
            return uri
    except ValueError:  # not a URL urllib can read: hide whatever could be user info
        return re.sub(r"(://[^/@]*?:)[^/]*@", r"\1***@", uri)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def to_bgr(vf, out: np.ndarray | None = None) -> np.ndarray:
    """A decoded PyAV frame as BGR pixels, written into ``out`` when given.

    The common yuv420p case converts with OpenCV straight into ``out`` (a frame-plane slot,
    usually), which is faster than converting in swscale and copying afterwards.
    """
    h, w = vf.height, vf.width
    if vf.format.name == "yuv420p" and h % 2 == 0 and w % 2 == 0:
        yuv = vf.to_ndarray()
        return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420, dst=out)
    bgr = vf.to_ndarray(format="bgr24")
    if out is None:
        return bgr
    np.copyto(out, bgr)
    return out


#: clockwise quarter turns -> OpenCV's rotation
_TURNS = {1: cv2.ROTATE_90_CLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_COUNTERCLOCKWISE}


def upright(vf, buffer: Callable[[tuple[int, ...]], np.ndarray]) -> np.ndarray:
    """A decoded PyAV frame as BGR pixels the right way up, in ``buffer(shape)``.

    Phones record sideways and store how to turn the picture (a display matrix): it is
    applied, as players and OpenCV do, so people stand up for the detector and pose model.
    """
    # the matrix's angle turns the picture counter-clockwise
    turn = round(-float(getattr(vf, "rotation", 0) or 0) / 90) % 4
    if turn == 0:
        return to_bgr(vf, buffer((vf.height, vf.width, 3)))
    shape = (vf.height, vf.width, 3) if turn == 2 else (vf.width, vf.height, 3)
    return cv2.rotate(to_bgr(vf), _TURNS[turn], dst=buffer(shape))


class _Decimator:
    """Keeps at most ``max_fps`` frames a second of media time (None: every frame).

    By the frames' pts, so a file gives the same frames at any speed and after a restart:
    30 fps at ``max_fps: 10`` keeps every third frame, 25 fps keeps 10 a second as evenly
    as 25 allows. A pts that jumps (a camera reconnecting, a clock reset) starts afresh.
    """

    def __init__(self, max_fps: float | None):
        self.period = 1.0 / max_fps if max_fps else 0.0
        self.next: float | None = None

    def keep(self, pts: float) -> bool:
        if not self.period:
            return True
        eps = 1e-3
        if self.next is None or not self.next - self.period - eps <= pts < self.next + self.period:
            self.next = pts + self.period
            return True
        if pts < self.next - eps:
            return False
        self.next += self.period
        return True


def check_max_fps(max_fps: float | None) -> None:
    if max_fps is not None and (isinstance(max_fps, bool) or not max_fps > 0):
        raise NodeError(f"max_fps must be a positive number of frames a second, got {max_fps!r}")


class _Pacer:
    """Holds frames back to their media time when ``realtime`` is on."""

    def __init__(self, ctx, enabled: bool):
        self.ctx = ctx
        self.enabled = enabled
        self.t0: float | None = None
        self.pts0 = 0.0

    def wait(self, pts: float) -> bool:
        """True when the pipeline is stopping."""
        if not self.enabled:
            return self.ctx.stopping
        now = time.monotonic()
        if self.t0 is None or pts < self.pts0:
            self.t0, self.pts0 = now, pts
            return self.ctx.stopping
        return self.ctx.sleep(self.t0 + (pts - self.pts0) - now)


@register("source.video")
class VideoSource(Source):
    """A video file (any container and codec ffmpeg reads), decoded with PyAV.

    ``realtime`` paces frames at the file's own rate, ``loop`` starts again at the end
    (indices go on, pts go on by the clip's length), ``start`` and ``end`` are seconds. A
    clip recorded sideways with a rotation flag (phones) comes out the right way up.
    ``max_fps`` passes on at most that many frames a second of the clip (as for cameras).
    """

    def __init__(
        self,
        uri: str,
        loop: bool = False,
        realtime: bool = False,
        start: float = 0.0,
        end: float | None = None,
        stream: str | None = None,
        latency_budget_ms: float | None = None,
        threads: int = 0,
        max_fps: float | None = None,
    ):
        super().__init__(stream, latency_budget_ms)
        check_max_fps(max_fps)
        self.max_fps = max_fps
        self.uri = uri
        self.loop = loop
        self.realtime = realtime
        self.start = start
        self.end = end
        self.threads = threads

    def setup(self, ctx) -> None:
        super().setup(ctx)
        import av

        self.path = resolve_path(ctx, self.uri)
        if not self.path.is_file():
            where = ""
            if not os.path.isabs(self.uri):
                dirs = dict.fromkeys([os.getcwd(), ctx.extra.get("base_dir") or os.getcwd()])
                where = f" (looked in {' and '.join(dirs)})"
            raise NodeError(
                f"video file not found: {self.uri}{where}: give the path of an existing file"
            )
        if self.end is not None and self.end <= self.start:
            raise NodeError(f"end ({self.end} s) must come after start ({self.start} s)")
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    kinds = ", ".join(st.type for st in container.streams) or "no streams"
                    raise NodeError(
                        f"{self.uri} has no video stream (FFmpeg reads it as "
                        f"{container.format.name}: {kinds}): give a video file, or check "
                        "it with ffprobe"
                    )
                vs = container.streams.video[0]
                self.duration = float(container.duration / 1e6) if container.duration else None
                self.rate = float(vs.average_rate) if vs.average_rate else 25.0
                next(container.decode(vs))
        except NodeError:
            raise
        except (av.error.FFmpegError, StopIteration, OSError) as exc:
            why = str(exc) or "no frame could be decoded"
            raise NodeError(
                f"cannot decode {self.uri}: {why}; the file is corrupt, truncated "
                "or not a video (check it with ffprobe)"
            ) from None

    def frames(self) -> Iterator[Frame]:
        import av

        pacer = _Pacer(self.ctx, self.realtime)
        decimator = _Decimator(self.max_fps)
        offset = 0.0
        skip = self.next_index  # after a restart, go on where the last process stopped
        corrupt = 0
        while True:
            last_pts = None
            with av.open(str(self.path)) as container:
                vs = container.streams.video[0]
                vs.thread_type = "AUTO"
                if self.threads:
                    vs.thread_count = self.threads
                if self.start > 0:
                    container.seek(int(self.start / vs.time_base), stream=vs)
                demux = container.demux(vs)
                while True:
                    try:
                        packet = next(demux)
                        decoded = packet.decode()
                    except StopIteration:
                        break
                    except av.error.FFmpegError as exc:
                        corrupt += 1
                        if corrupt == 1:
                            log.warning(
                                "source %s: skipping unreadable data in %s: %s",
                                self.ctx.name,
                                self.uri,
                                exc,
                            )
                        continue
                    for vf in decoded:
                        t = (
                            float(vf.time)
                            if vf.time is not None
                            else ((last_pts or 0.0) + 1.0 / self.rate)
                        )
                        if t < self.start - 1e-6:
                            continue
                        if self.end is not None and t >= self.end:
                            break
                        last_pts = t
                        pts = t + offset
                        if not decimator.keep(pts):
                            continue
                        if skip > 0:  # the frames kept before the restart
                            skip -= 1
                            continue
                        if pacer.wait(pts):
                            return
                        yield self.frame(upright(vf, self.image_buffer), pts)
                    else:
                        continue
                    break
            if not self.loop or last_pts is None:
                if corrupt:
                    log.warning(
                        "source %s: %d unreadable packets in %s", self.ctx.name, corrupt, self.uri
                    )
                return
            offset += (last_pts - self.start) + 1.0 / self.rate


@register("source.rtsp")
class RtspSource(Source):
    """An RTSP camera through PyAV (TCP by default), reconnecting with exponential backoff.

    A camera that stops sending for ``stall_timeout`` seconds is taken as down: the source
    emits ``source_down``, retries every ``backoff`` seconds (doubling up to
    ``backoff_max``), and emits ``source_up`` when frames flow again. The pipeline keeps
    running meanwhile.

    A password in the URL (``rtsp://user:password@host/...``) is shown as ``***`` in the
    log and in the events, which sinks publish to other services.

    ``max_fps`` passes on at most that many frames a second (a camera's 30 served at 10):
    the others are decoded, as a video stream needs, but not converted or passed on, and
    the frames passed on are numbered without gaps.
    """

    live = True

    def __init__(
        self,
        uri: str,
        transport: str = "tcp",
        stall_timeout: float = 5.0,
        open_timeout: float = 5.0,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        stream: str | None = None,
        latency_budget_ms: float | None = None,
        max_fps: float | None = None,
    ):
        super().__init__(stream, latency_budget_ms)
        check_max_fps(max_fps)
        self.max_fps = max_fps
        self.uri = uri
        self.shown = redact(uri)  # what logs and events say
        self.transport = transport
        self.stall_timeout = stall_timeout
        self.open_timeout = open_timeout
        self.backoff = backoff
        self.backoff_max = backoff_max

    def setup(self, ctx) -> None:
        super().setup(ctx)
        if not self.uri.startswith(("rtsp://", "rtsps://")):
            raise NodeError(f"{self.shown!r} is not an RTSP URL: write rtsp://host:port/path")
        if self.transport not in ("tcp", "udp"):
            raise NodeError(f"transport must be tcp or udp, got {self.transport!r}")

    def frames(self) -> Iterator[Frame]:
        import av

        delay = self.backoff
        down = False
        down_since = 0.0
        attempts = 0
        t0 = time.monotonic()
        decimator = _Decimator(self.max_fps)
        while not self.ctx.stopping:
            reason = ""
            got_frame = False
            try:
                options = {"rtsp_transport": self.transport}
                with av.open(
                    self.uri, options=options, timeout=(self.open_timeout, self.stall_timeout)
                ) as container:
                    vs = container.streams.video[0]
                    vs.thread_type = "AUTO"
                    for vf in container.decode(vs):
                        if not got_frame:
                            got_frame = True
                            delay = self.backoff
                            attempts = 0
                            if down:
                                down = False
                                log.warning("source %s: %s is back", self.ctx.name, self.shown)
                                yield self.event("source_up", uri=self.shown)
                        if self.ctx.stopping:
                            return
                        pts = float(vf.time) if vf.time is not None else time.monotonic() - t0
                        if decimator.keep(pts):
                            yield self.frame(upright(vf, self.image_buffer), pts)
                reason = "the stream ended"
            except (av.error.FFmpegError, OSError, IndexError) as exc:
                # FFmpeg's messages may quote the URL
                reason = (str(exc) or type(exc).__name__).replace(self.uri, self.shown)
            attempts += 1
            if not down:
                down = True
                down_since = time.monotonic()
                yield self.event("source_down", uri=self.shown, reason=reason)
            # a camera away for days: the first tries, then one line every 30 (5 minutes
            # at the longest backoff), not a line every few seconds
            if attempts <= 3 or attempts % 30 == 0:
                log.warning(
                    "source %s: cannot read %s (%s); retrying in %.1f s (attempt %d, down "
                    "for %.0f s)",
                    self.ctx.name,
                    self.shown,
                    reason,
                    delay,
                    attempts,
                    time.monotonic() - down_since,
                )
            if self.ctx.sleep(delay):
                return
            delay = min(self.backoff_max, delay * 2)


@register("source.camera")
class CameraSource(Source):
    """A local camera through OpenCV: a device index (0) or a device path (/dev/video0).

    ``max_fps`` passes on at most that many frames a second; the others are taken from the
    camera and dropped unconverted.
    """

    live = True

    def __init__(
        self,
        device: int | str = 0,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        stream: str | None = None,
        latency_budget_ms: float | None = None,
        max_fps: float | None = None,
    ):
        super().__init__(stream, latency_budget_ms)
        check_max_fps(max_fps)
        self.max_fps = max_fps
        self.device = device
        self.width, self.height, self.fps = width, height, fps

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.device)
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, self.width),
            (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
            (cv2.CAP_PROP_FPS, self.fps),
        ):
            if value:
                cap.set(prop, value)
        return cap

    def setup(self, ctx) -> None:
        super().setup(ctx)
        cap = self._open()
        ok = cap.isOpened() and cap.read()[0]
        cap.release()
        if not ok:
            devices = sorted(glob.glob("/dev/video*"))
            raise NodeError(
                f"camera {self.device!r} does not exist or cannot be read; "
                f"cameras here: {', '.join(devices) or 'none'}"
            )

    def frames(self) -> Iterator[Frame]:
        t0 = time.monotonic()
        decimator = _Decimator(self.max_fps)
        down_since: float | None = None  # when the camera stopped giving frames
        tries = 0
        while not self.ctx.stopping:
            cap = self._open()
            while not self.ctx.stopping:
                if self.max_fps and not decimator.keep(time.monotonic() - t0):
                    if not cap.grab():  # taken from the camera, not converted
                        break
                    continue
                ok, image = cap.read()
                if not ok:
                    break
                if down_since is not None:
                    # back only when a frame comes, not when the device merely opens
                    log.warning("source %s: camera %r is back", self.ctx.name, self.device)
                    yield self.event("source_up")
                    down_since, tries = None, 0
                yield self.frame(image, time.monotonic() - t0)
            cap.release()
            if self.ctx.stopping:
                return
            tries += 1
            if down_since is None:
                down_since = time.monotonic()
                yield self.event("source_down", reason="camera read failed")
            if tries <= 3 or tries % 30 == 0:  # unplugged for days: not a line a second
                log.warning(
                    "source %s: camera %r gives no frames; reopening in 1 s (try %d, down "
                    "for %.0f s)",
                    self.ctx.name,
                    self.device,
                    tries,
                    time.monotonic() - down_since,
                )
            if self.ctx.sleep(1.0):
                return


@register("source.auto")
class AutoSource(Source):
    """A camera, a stream or a file, picked from ``uri``, for pipelines that take any of
    them from one setting (``uri: "${CAM1:-media/street.mp4}"``):

    - ``rtsp://``, ``rtsps://``: ``source.rtsp`` (reconnects);
    - a device index (``0``) or ``/dev/videoN``: ``source.camera``;
    - anything else: ``source.video`` (``realtime`` and ``loop`` apply to files only).

    ``max_fps`` applies to all three.
    """

    def __new__(
        cls,
        uri: str | int,
        realtime: bool = False,
        loop: bool = False,
        stream: str | None = None,
        latency_budget_ms: float | None = None,
        max_fps: float | None = None,
    ) -> Source:
        text = str(uri)
        common = {"stream": stream, "latency_budget_ms": latency_budget_ms, "max_fps": max_fps}
        if text.startswith(("rtsp://", "rtsps://")):
            return RtspSource(text, **common)
        if text.isdigit():
            return CameraSource(int(text), **common)
        if text.startswith("/dev/video"):
            return CameraSource(text, **common)
        return VideoSource(text, loop=loop, realtime=realtime, **common)

    def __init__(
        self,
        uri: str | int,
        realtime: bool = False,
        loop: bool = False,
        stream: str | None = None,
        latency_budget_ms: float | None = None,
        max_fps: float | None = None,
    ):  # never runs: __new__ returns the concrete source; here for the parameter list
        super().__init__(stream, latency_budget_ms)


@register("source.images")
class ImageSource(Source):
    """Images from a folder or a glob pattern, in name order, at ``fps`` media rate."""

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

    def __init__(
        self,
        path: str,
        fps: float = 10.0,
        loop: bool = False,
        realtime: bool = False,
        stream: str | None = None,
        latency_budget_ms: float | None = None,
    ):
        super().__init__(stream, latency_budget_ms)
        self.path = path
        self.fps = fps
        self.loop = loop
        self.realtime = realtime

    def setup(self, ctx) -> None:
        super().setup(ctx)
        p = resolve_path(ctx, self.path)
        if p.is_dir():
            files = [str(f) for f in sorted(p.iterdir()) if f.suffix.lower() in self.EXTENSIONS]
        else:
            files = sorted(f for f in glob.glob(str(p)) if f.lower().endswith(self.EXTENSIONS))
        if not files:
            raise NodeError(
                f"no images found at {self.path!r}: give a folder of images or a "
                "glob such as 'frames/*.jpg'"
            )
        if self.fps <= 0:
            raise NodeError(f"fps must be positive, got {self.fps}")
        self.files = files

    def frames(self) -> Iterator[Frame]:
        pacer = _Pacer(self.ctx, self.realtime)
        n = 0
        while True:
            for f in self.files:
                if n < self.next_index:
                    n += 1
                    continue
                image = cv2.imread(f, cv2.IMREAD_COLOR)
                pts = n / self.fps
                n += 1
                if image is None:
                    log.warning("source %s: cannot read image %s; skipped", self.ctx.name, f)
                    self.skip(1)
                    continue
                if pacer.wait(pts):
                    return
                yield self.frame(image, pts, file=os.path.basename(f))
            if not self.loop:
                return


@register("source.synthetic")
class SyntheticSource(Source):
    """A test pattern of moving shapes at any size and rate, for tests and benchmarks.

    ``frames`` limits the length (None: endless); ``realtime`` paces at ``fps``.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 25.0,
        frames: int | None = None,
        realtime: bool = False,
        shapes: int = 4,
        seed: int = 0,
        stream: str | None = None,
        latency_budget_ms: float | None = None,
    ):
        super().__init__(stream, latency_budget_ms)
        self.width, self.height, self.fps = width, height, fps
        self.count = frames
        self.realtime = realtime
        self.shapes = shapes
        self.seed = seed

    def setup(self, ctx) -> None:
        super().setup(ctx)
        if self.width < 16 or self.height < 16 or self.fps <= 0:
            raise NodeError("width and height must be at least 16 and fps positive")
        rng = np.random.default_rng(self.seed)
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0:w]
        self.background = np.stack(
            [(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)), np.full((h, w), 64)], axis=-1
        ).astype(np.uint8)
        self.motion = rng.uniform(0.2, 1.0, (self.shapes, 4))
        self.colours = rng.integers(0, 256, (self.shapes, 3))

    def render(self, n: int) -> np.ndarray:
        image = self.background.copy()
        h, w = self.height, self.width
        t = n / self.fps
        for k, (fx, fy, px, py) in enumerate(self.motion):
            cx = int((0.5 + 0.4 * np.sin(fx * t + 6 * px)) * w)
            cy = int((0.5 + 0.4 * np.cos(fy * t + 6 * py)) * h)
            r = max(4, min(h, w) // (8 + k))
            colour = tuple(int(c) for c in self.colours[k])
            if k % 2:
                cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
            else:
                cv2.circle(image, (cx, cy), r, colour, -1)
        cv2.putText(
            image,
            f"{self.stream} {n}",
            (8, min(h - 8, 32)),
            cv2.FONT_HERSHEY_SIMPLEX,
            max(0.4, h / 720),
            (255, 255, 255),
            2,
        )
        return image

    def frames(self) -> Iterator[Frame]:
        pacer = _Pacer(self.ctx, self.realtime)
        n = self.next_index
        while self.count is None or n < self.count:
            pts = n / self.fps
            if pacer.wait(pts):
                return
            yield self.frame(self.render(n), pts)
            n += 1
