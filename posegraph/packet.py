"""The packet that flows along every edge, its wire form, and the message sinks publish.

A :class:`Frame` carries one video frame of one stream, or one event of that stream
(``eos``, ``gap``, ``source_down``, ``source_up``). Between processes it travels as
msgpack with a schema version ``v``; arrays travel as an ext type (dtype, shape, raw
bytes) and, on one host, the image travels as a reference into the shared-memory frame
plane (:class:`ShmRef`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

WIRE_VERSION = 1
MESSAGE_VERSION = 1

EXT_NDARRAY = 1
EXT_SHMREF = 2

EVENTS = ("eos", "gap", "source_down", "source_up")

# Frame.meta keys a model node sets when the device scheduler skipped its work on the frame
# (its deadline could not be met); the tracker then coasts the people (predicted=True).
#: True: the detector (or whole-image pose model) did not run; the frame has no people.
DETECT_SKIPPED = "detect_skipped"
#: list of person rows of ``poses`` whose keypoints were not computed (scores 0).
POSE_SKIPPED = "pose_skipped"


class WireError(ValueError):
    """A message could not be decoded: wrong schema version or a malformed body."""


def _f32(a: Any, shape_tail: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    return arr.reshape((-1, *shape_tail)) if arr.size == 0 else arr


@dataclass
class Detections:
    """Person (or object) boxes of one frame.

    ``xyxy`` (N, 4) float32 image pixels, ``scores`` (N,) float32, ``labels`` (N,) int64.
    """

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        self.xyxy = _f32(self.xyxy, (4,))
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.xyxy)
        if self.xyxy.shape != (n, 4) or len(self.scores) != n or len(self.labels) != n:
            raise ValueError(
                f"Detections: xyxy {self.xyxy.shape}, scores {self.scores.shape} and labels "
                f"{self.labels.shape} must describe the same N boxes as (N,4), (N,), (N,)"
            )

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls) -> Detections:
        """No boxes; built without the checks, as every frame starts with one."""
        d = object.__new__(cls)
        d.xyxy = np.zeros((0, 4), np.float32)
        d.scores = np.zeros((0,), np.float32)
        d.labels = np.zeros((0,), np.int64)
        return d


@dataclass
class Poses:
    """Keypoints of the people in one frame.

    ``keypoints`` (N, K, 2) float32 image pixels, ``scores`` (N, K), ``boxes`` (N, 4) xyxy,
    ``instance_scores`` (N,), ``track_ids`` (N,) int64 with -1 for untracked people,
    ``skeleton`` the keypoint set name (``coco17``, ``wholebody133``...), ``predicted`` (N,)
    bool, true where the tracker coasted the pose instead of a model measuring it.
    """

    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    instance_scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    track_ids: np.ndarray | None = None
    skeleton: str = ""
    predicted: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
        n = len(self.keypoints)
        if self.keypoints.ndim != 3 or self.keypoints.shape[2] != 2:
            raise ValueError(f"Poses.keypoints must be (N, K, 2), got {self.keypoints.shape}")
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(self.keypoints.shape[:2])
        self.boxes = _f32(self.boxes, (4,))
        self.instance_scores = np.asarray(self.instance_scores, dtype=np.float32).reshape(-1)
        if self.track_ids is None:
            self.track_ids = np.full(n, -1, np.int64)
        self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
        if self.predicted is None:
            self.predicted = np.zeros(n, bool)
        self.predicted = np.asarray(self.predicted, dtype=bool).reshape(-1)
        lengths = {
            len(self.boxes),
            len(self.instance_scores),
            len(self.track_ids),
            len(self.predicted),
        }
        if lengths != {n}:
            raise ValueError(f"Poses: every per-person array must have N={n} rows")

    def __len__(self) -> int:
        return len(self.keypoints)

    @classmethod
    def empty(cls) -> Poses:
        """No people; built without the checks, as every frame starts with one."""
        p = object.__new__(cls)
        p.keypoints = np.zeros((0, 0, 2), np.float32)
        p.scores = np.zeros((0, 0), np.float32)
        p.boxes = np.zeros((0, 4), np.float32)
        p.instance_scores = np.zeros((0,), np.float32)
        p.track_ids = np.zeros((0,), np.int64)
        p.skeleton = ""
        p.predicted = np.zeros((0,), bool)
        return p


@dataclass(frozen=True)
class ShmRef:
    """A reference to an image held in a shared-memory pool slot."""

    pool: str
    slot: int
    generation: int
    shape: tuple[int, ...]
    dtype: str


@dataclass
class Frame:
    """One frame (or one event) of one stream; see DESIGN section 2 for each field."""

    stream: str
    index: int
    pts: float = 0.0
    captured_at: float = 0.0
    deadline: float = math.inf
    image: np.ndarray | None = None
    detections: Detections = field(default_factory=Detections.empty)
    poses: Poses = field(default_factory=Poses.empty)
    meta: dict[str, Any] = field(default_factory=dict)
    trace: list[tuple[str, float, float]] = field(default_factory=list)
    event: str | None = None
    # Where ``image`` lives in shared memory, when it is a view into a pool slot that
    # the runtime mapped. The runtime forwards the reference instead of the pixels
    # as long as ``image`` is still that view.
    shm: tuple[ShmRef, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def is_event(self) -> bool:
        return self.event is not None

    @classmethod
    def make_event(cls, stream: str, event: str, index: int, **meta: Any) -> Frame:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}: expected one of {', '.join(EVENTS)}")
        return cls(stream=stream, index=index, event=event, meta=dict(meta))

    def replace(self, **changes: Any) -> Frame:
        """A shallow copy with some fields changed (the image is shared, not copied)."""
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------- wire form


def _pack_array(a: np.ndarray) -> msgpack.ExtType:
    a = np.ascontiguousarray(a)
    return msgpack.ExtType(EXT_NDARRAY, msgpack.packb((a.dtype.str, a.shape, a.tobytes())))


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, ShmRef):
        body = (obj.pool, obj.slot, obj.generation, obj.shape, obj.dtype)
        return msgpack.ExtType(EXT_SHMREF, msgpack.packb(body))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(
        f"cannot put a {type(obj).__name__} on the wire: use numbers, strings, "
        "lists, dicts or numpy arrays"
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        dtype, shape, raw = msgpack.unpackb(data)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    if code == EXT_SHMREF:
        pool, slot, generation, shape, dtype = msgpack.unpackb(data)
        return ShmRef(pool, slot, generation, tuple(shape), dtype)
    return msgpack.ExtType(code, data)


def pack(obj: Any) -> bytes:
    """msgpack with numpy arrays as ext types."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def encode(frame: Frame, image: np.ndarray | ShmRef | None = None) -> bytes:
    """Encode ``frame`` for the wire; ``image`` (an array or a ShmRef) replaces ``frame.image``."""
    img = frame.image if image is None else image
    d = frame.detections
    p = frame.poses
    body: dict[str, Any] = {
        "v": WIRE_VERSION,
        "s": frame.stream,
        "i": frame.index,
        "pts": frame.pts,
        "cap": frame.captured_at,
        "dl": frame.deadline,
        "ev": frame.event,
        "img": img,
        "meta": frame.meta,
        "tr": frame.trace,
    }
    if len(d):
        body["det"] = (d.xyxy, d.scores, d.labels)
    if p.skeleton or len(p):
        body["pose"] = (
            p.keypoints,
            p.scores,
            p.boxes,
            p.instance_scores,
            p.track_ids,
            p.skeleton,
            p.predicted,
        )
    return pack(body)


def decode(data: bytes | memoryview) -> tuple[Frame, ShmRef | None]:
    """Decode a wire message; returns the frame and its image reference, if it has one.

    When a reference comes back, ``frame.image`` is None until the runtime maps it.
    """
    try:
        body = unpack(data)
        version = body["v"]
    except Exception as exc:
        raise WireError(f"malformed frame message ({len(data)} bytes): {exc}") from exc
    if version != WIRE_VERSION:
        raise WireError(
            f"frame message has schema version {version}, this posegraph speaks "
            f"{WIRE_VERSION}: run the same posegraph version on both ends"
        )
    img = body["img"]
    ref = img if isinstance(img, ShmRef) else None
    frame = Frame(
        stream=body["s"],
        index=body["i"],
        pts=body["pts"],
        captured_at=body["cap"],
        deadline=body["dl"],
        image=None if ref is not None else img,
        meta=body["meta"],
        trace=[tuple(t) for t in body["tr"]],
        event=body["ev"],
    )
    if "det" in body:
        frame.detections = Detections(*body["det"])
    if "pose" in body:
        frame.poses = Poses(*body["pose"])
    return frame, ref


# ------------------------------------------------------- the published message


def latency_ms(frame: Frame, now: float) -> float:
    return (now - frame.captured_at) * 1000.0


def to_message(frame: Frame, now: float) -> dict[str, Any]:
    """The message sinks publish to other services, one per frame or event (schema v1)."""
    if frame.event is not None:
        msg: dict[str, Any] = {"v": MESSAGE_VERSION, "stream": frame.stream, "event": frame.event}
        if frame.event == "gap":
            msg["count"] = int(frame.meta.get("count", 0))
        for key in ("reason", "uri"):
            if key in frame.meta:
                msg[key] = frame.meta[key]
        return msg
    p = frame.poses
    people = []
    for n in range(len(p)):
        kpts = np.concatenate([p.keypoints[n], p.scores[n][:, None]], axis=1)
        people.append(
            {
                "track_id": int(p.track_ids[n]),
                "box": [round(float(v), 2) for v in p.boxes[n]],
                "score": round(float(p.instance_scores[n]), 4),
                "keypoints": np.round(kpts.astype(np.float64), 3).tolist(),
                "predicted": bool(p.predicted[n]),
            }
        )
    return {
        "v": MESSAGE_VERSION,
        "stream": frame.stream,
        "index": frame.index,
        "pts": round(frame.pts, 6),
        "captured_at": frame.captured_at,
        "latency_ms": round(latency_ms(frame, now), 3),
        "skeleton": p.skeleton or None,
        "people": people,
    }
