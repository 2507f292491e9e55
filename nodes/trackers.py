"""Trackers: ``track.bytetrack`` gives each person a track id that lasts across frames.

ByteTrack (Zhang et al., ECCV 2022) associates every detection box, low-scored ones too:
high-score people are matched first to the Kalman-predicted tracks, then the tracks still
unmatched get a second chance with the low-score people, which are often the partly
occluded ones. Tracks that lose their person are kept for a buffer of frames, so an id
survives a short occlusion.

Where the frame carries poses, the matching cost is one minus the Object Keypoint
Similarity of each track's last keypoints (moved with its predicted box) and each person's
keypoints, with the sigmas of the frame's skeleton (the person's keypoints as they are or
with left and right swapped, whichever matches better: pose models swap the sides of people
seen from the back); two people whose boxes overlap while they cross keep their ids because
their keypoints differ. Without keypoints (a frame with
detections only, an unknown skeleton, or a pair with fewer than four confident keypoints in
common) the cost is one minus the box IoU.

What the node writes:

- a frame with poses: ``poses.track_ids`` (N,), -1 for a person no confirmed track owns yet;
- a frame with detections only: ``poses`` is rebuilt from the detections, one person per box
  with K = 0 keypoints (``boxes``, ``instance_scores`` = detection scores, ``track_ids``), so
  that every sink publishes the ids in the same message; ``detections`` is left as it came.

With ``coast: true``, tracks lost for at most ``coast_frames`` frames are added as predicted
people (``predicted=True``): box from the Kalman filter, keypoints moved with it. A frame with
detections only in a stream that had poses before then gets the stream's keypoints for its
tracked people too, moved with their boxes and marked predicted, so a frame whose pose step
was skipped still carries poses.

Frames whose model work the device scheduler skipped (``posegraph.scheduler``) are coasted
whatever ``coast`` says: with ``meta["detect_skipped"]`` every track seen in the last
``coast_frames`` frames goes on as a predicted person and none counts as lost; the people
listed in ``meta["pose_skipped"]`` keep their track's last keypoints, moved with their box.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from posegraph import skeletons
from posegraph.codecs.oks import oks
from posegraph.node import Context, Node, NodeError, register
from posegraph.packet import DETECT_SKIPPED, POSE_SKIPPED, Frame, Poses

log = logging.getLogger(__name__)

# ByteTrack's noise model: position noise is 1/20 and velocity noise 1/160 of the box height
# per frame, so the filter trusts a small far person's box as much as a large near one's.
_STD_POSITION = 1.0 / 20
_STD_VELOCITY = 1.0 / 160
# Two tracks whose boxes overlap this much describe one person: the younger one goes.
_DUPLICATE_IOU = 0.85
# OKS over fewer keypoints than this says little (one shoulder of a hidden person can sit
# on anyone's shoulder): such pairs are compared by their boxes.
_MIN_SHARED_KEYPOINTS = 4
# The frame rate the ``track_buffer`` is counted in, as ByteTrack counts it.
_BUFFER_FPS = 30.0
_TRACKED, _LOST = "tracked", "lost"


# ------------------------------------------------------------------ boxes


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) centre x, centre y, aspect w/h, height."""
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h], axis=1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(N, 4) centre x, centre y, aspect w/h, height -> (N, 4) x1, y1, x2, y2."""
    w = xyah[:, 2] * xyah[:, 3]
    h = xyah[:, 3]
    cx, cy = xyah[:, 0], xyah[:, 1]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (Na, 4) and (Nb, 4) xyxy boxes -> (Na, Nb) float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def move_with_box(keypoints: np.ndarray, from_box: np.ndarray, to_box: np.ndarray) -> np.ndarray:
    """Keypoints (..., K, 2) that sat in ``from_box`` (..., 4), carried into ``to_box``.

    They move with the box centre and scale with its height. The width is left out: it
    swings with the arms and legs, where the height follows the person's size.
    """
    src_c = (from_box[..., None, :2] + from_box[..., None, 2:]) / 2
    dst_c = (to_box[..., None, :2] + to_box[..., None, 2:]) / 2
    src_h = from_box[..., None, 3:] - from_box[..., None, 1:2]
    dst_h = to_box[..., None, 3:] - to_box[..., None, 1:2]
    return (dst_c + (keypoints - src_c) * (dst_h / np.maximum(src_h, 1e-6))).astype(np.float32)


# ----------------------------------------------------------------- Kalman


class BoxKalman:
    """Constant-velocity Kalman filter on boxes, one step per frame, batched over tracks.

    The state (8,) is (cx, cy, a, h) in pixels (a = w / h) and their velocities per frame;
    the measurement (4,) is (cx, cy, a, h). Means are (N, 8), covariances (N, 8, 8).
    """

    def __init__(self) -> None:
        self.motion = np.eye(8)
        self.motion[:4, 4:] = np.eye(4)

    @staticmethod
    def _std(h: np.ndarray, position: float, aspect: float, scale: float = 1.0) -> np.ndarray:
        """(N, 4) standard deviations for (cx, cy, a, h) of boxes of height ``h`` (N,)."""
        s = scale * position * h
        return np.stack([s, s, np.full_like(h, aspect), s], axis=1)

    def initiate(self, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks from (N, 4) measurements, with unknown (zero-mean, wide) velocity."""
        h = xyah[:, 3]
        mean = np.concatenate([xyah, np.zeros_like(xyah)], axis=1)
        std = np.concatenate(
            [self._std(h, _STD_POSITION, 1e-2, 2.0), self._std(h, _STD_VELOCITY, 1e-5, 10.0)],
            axis=1,
        )
        return mean, _diag(std**2)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead."""
        h = mean[:, 3]
        std = np.concatenate(
            [self._std(h, _STD_POSITION, 1e-2), self._std(h, _STD_VELOCITY, 1e-5)], axis=1
        )
        mean = mean @ self.motion.T
        cov = self.motion @ cov @ self.motion.T + _diag(std**2)
        return mean, cov

    def update(
        self, mean: np.ndarray, cov: np.ndarray, xyah: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct (N, 8) predictions with (N, 4) measurements."""
        innovation_cov = cov[:, :4, :4] + _diag(self._std(mean[:, 3], _STD_POSITION, 1e-1) ** 2)
        # gain = P H^T S^-1, solved rather than inverted; S is symmetric
        cross = cov[:, :, :4]
        gain = np.linalg.solve(innovation_cov, cross.transpose(0, 2, 1)).transpose(0, 2, 1)
        mean = mean + (gain @ (xyah - mean[:, :4])[:, :, None])[:, :, 0]
        cov = cov - gain @ innovation_cov @ gain.transpose(0, 2, 1)
        return mean, cov


def _diag(values: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D, D) diagonal matrices."""
    out = np.zeros((*values.shape, values.shape[-1]))
    idx = np.arange(values.shape[-1])
    out[:, idx, idx] = values
    return out


def assign(cost: np.ndarray, limit: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Minimum-cost matching of rows (tracks) to columns (people), no pair above ``limit``.

    Leaving a row or a column unmatched costs ``limit / 2``, so the solver prefers leaving
    both unmatched to any pair dearer than ``limit``: a pair is never forced just because
    the matrix is rectangular. Returns (matches, unmatched rows, unmatched columns).
    """
    from scipy.optimize import linear_sum_assignment

    n, m = cost.shape
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    forbidden = limit + 1e6
    square = np.full((n + m, m + n), forbidden)
    square[:n, :m] = np.where(cost <= limit, cost, forbidden)
    square[np.arange(n), m + np.arange(n)] = limit / 2
    square[n + np.arange(m), np.arange(m)] = limit / 2
    square[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(square)
    matches = [(r, c) for r, c in zip(rows, cols, strict=True) if r < n and c < m]
    matched_rows = {r for r, _ in matches}
    matched_cols = {c for _, c in matches}
    return (
        matches,
        [r for r in range(n) if r not in matched_rows],
        [c for c in range(m) if c not in matched_cols],
    )


# ----------------------------------------------------------------- tracks


class OneEuro:
    """One-Euro filter (Casiez et al., CHI 2012) on an array of coordinates.

    A low-pass filter whose cutoff rises with speed: a still joint stops jittering and a fast
    one does not lag. ``min_cutoff`` in Hz, ``beta`` in Hz per pixel/second, ``d_cutoff`` in
    Hz for the speed estimate.
    """

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.value: np.ndarray | None = None
        self.speed: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        """Filter ``x`` (any shape, fixed per filter) observed ``dt`` seconds after the last."""
        x = np.asarray(x, np.float64)
        if self.value is None or self.value.shape != x.shape:
            self.value, self.speed = x.copy(), np.zeros_like(x)
            return x.astype(np.float32)
        speed = (x - self.value) / dt
        self.speed = self.speed + self._alpha(self.d_cutoff, dt) * (speed - self.speed)
        cutoff = self.min_cutoff + self.beta * np.abs(self.speed)
        self.value = self.value + self._alpha(cutoff, dt) * (x - self.value)
        return self.value.astype(np.float32)


@dataclass
class Track:
    """One person followed over frames of one stream.

    ``keypoints`` (K, 2) and ``keypoint_scores`` (K,) are the last measured keypoints (None
    before any), valid in ``keypoint_box`` (4,) xyxy, the filtered box of that frame;
    ``shown`` (K, 2) are the keypoints last emitted (smoothed when smoothing is on).
    """

    mean: np.ndarray
    cov: np.ndarray
    first_seen: int
    last_seen: int
    last_pts: float
    score: float
    track_id: int = -1
    state: str = _TRACKED
    keypoints: np.ndarray | None = None
    keypoint_scores: np.ndarray | None = None
    keypoint_box: np.ndarray | None = None
    shown: np.ndarray | None = None
    smoother: OneEuro | None = None

    @property
    def confirmed(self) -> bool:
        return self.track_id >= 0

    @property
    def box(self) -> np.ndarray:
        """(4,) xyxy of the filter's current (predicted or corrected) state."""
        return xyah_to_xyxy(self.mean[None, :4])[0]


@dataclass
class People:
    """The people of one frame as the tracker sees them.

    ``boxes`` (N, 4) xyxy, ``scores`` (N,); with poses, ``keypoints`` (N, K, 2) and
    ``keypoint_scores`` (N, K), and ``sigmas`` (K,) and ``flip`` (K,) (each keypoint's
    mirror) when the skeleton is known.
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray | None = None
    keypoint_scores: np.ndarray | None = None
    sigmas: np.ndarray | None = None
    flip: np.ndarray | None = None


@dataclass
class StreamState:
    """The tracks of one stream and its clock."""

    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1
    last_index: int | None = None
    first_index: int = 0
    first_pts: float = 0.0
    clock_index: int = 0
    clock_pts: float = 0.0
    skeleton: str = ""
    num_keypoints: int = 0


# ---------------------------------------------------------------- the node


@register("track.bytetrack")
class ByteTrack(Node):
    """ByteTrack over people's boxes, with an OKS cost where keypoints are known.

    Parameters (the thresholds and the buffer default to ByteTrack's):
        high_thresh: people scoring above it are matched in the first round and may start
            tracks; those between ``low_thresh`` and it only in the second round.
        low_thresh: people at or below it are ignored.
        new_track_thresh: an unmatched high-score person starts a track from this score.
        match_thresh: the highest cost (1 - similarity x score) of a first-round match.
        low_match_thresh: the highest cost (1 - similarity) of a second-round match.
        unconfirmed_match_thresh: the highest cost that confirms a track started on the
            previous frame (it is dropped otherwise).
        track_buffer: frames at 30 fps that a lost track is kept; scaled by the stream's
            frame rate.
        frame_rate: the stream's frame rate; None measures it from the frames' ``pts``.
        keypoint_thresh: keypoints scoring at or below it, in the track or the person, do
            not count in the OKS.
        coast: add tracks lost for at most ``coast_frames`` frames as predicted people.
        coast_frames: see ``coast``.
        smooth: One-Euro smoothing of each track's keypoints.
        min_cutoff, beta, d_cutoff: the One-Euro parameters (Hz, Hz per pixel/s, Hz).
        fuse_score: weigh the similarity by the person's score in the first round and when
            confirming new tracks (ByteTrack's ``fuse_score``); turn it off for models whose
            scores run low, or every match costs too much.
        mirror_invariant: a person's keypoints match a track as they are or with left and
            right swapped, whichever is the closer (pose models swap the sides of people
            seen from the back, not always the same way from frame to frame).
    """

    def __init__(
        self,
        high_thresh: float = 0.5,
        low_thresh: float = 0.1,
        new_track_thresh: float = 0.6,
        match_thresh: float = 0.8,
        low_match_thresh: float = 0.5,
        unconfirmed_match_thresh: float = 0.7,
        track_buffer: int = 30,
        frame_rate: float | None = None,
        keypoint_thresh: float = 0.3,
        coast: bool = False,
        coast_frames: int = 5,
        smooth: bool = False,
        min_cutoff: float = 1.0,
        beta: float = 0.2,
        d_cutoff: float = 1.0,
        fuse_score: bool = True,
        mirror_invariant: bool = True,
    ):
        self.high_thresh = high_thresh
        self.low_thresh = low_thresh
        self.new_track_thresh = new_track_thresh
        self.match_thresh = match_thresh
        self.low_match_thresh = low_match_thresh
        self.unconfirmed_match_thresh = unconfirmed_match_thresh
        self.track_buffer = track_buffer
        self.frame_rate = frame_rate
        self.keypoint_thresh = keypoint_thresh
        self.coast = coast
        self.coast_frames = coast_frames
        self.smooth = smooth
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.fuse_score = fuse_score
        self.mirror_invariant = mirror_invariant
        self.kalman = BoxKalman()
        self.streams: dict[str, StreamState] = {}
        self._unknown_skeletons: set[str] = set()

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        for name in (
            "high_thresh",
            "low_thresh",
            "new_track_thresh",
            "match_thresh",
            "low_match_thresh",
            "unconfirmed_match_thresh",
            "keypoint_thresh",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise NodeError(f"{ctx.name}: {name} must be in [0, 1], got {value}")
        if self.low_thresh > self.high_thresh:
            raise NodeError(
                f"{ctx.name}: low_thresh ({self.low_thresh}) must not exceed high_thresh "
                f"({self.high_thresh}): people between the two make the second round"
            )
        if self.track_buffer < 1:
            raise NodeError(f"{ctx.name}: track_buffer must be 1 or more frames")
        if self.frame_rate is not None and self.frame_rate <= 0:
            raise NodeError(
                f"{ctx.name}: frame_rate must be positive, got {self.frame_rate}; "
                "leave it out to measure it from the stream"
            )
        if self.coast_frames < 1:
            raise NodeError(f"{ctx.name}: coast_frames must be 1 or more")
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise NodeError(
                f"{ctx.name}: One-Euro needs min_cutoff > 0, d_cutoff > 0 and beta >= 0, got "
                f"{self.min_cutoff}, {self.d_cutoff} and {self.beta}"
            )
        # the solver's import takes about half a second: here, not on the first frame,
        # whose deadline it would cost
        import scipy.optimize  # noqa: F401

    # ------------------------------------------------------------- events

    def on_event(self, event: Frame) -> Frame:
        state = self.streams.get(event.stream)
        if event.event == "eos":
            self.streams.pop(event.stream, None)
        elif event.event == "gap" and state is not None and state.last_index is not None:
            # The missing frames still pass for the tracks: predictions move on, and a track
            # lost for longer than the buffer is gone when frames come back.
            self._advance(state, event.index + int(event.meta.get("count", 0)) - 1)
        return event

    def close(self) -> None:
        self.streams.clear()

    # ------------------------------------------------------------- frames

    def process(self, frame: Frame) -> Frame:
        state = self.streams.setdefault(frame.stream, StreamState())
        first = state.last_index is None
        if first:
            state.first_index, state.first_pts = frame.index, frame.pts
            state.last_index = frame.index
        if first or frame.index > state.clock_index:
            state.clock_index, state.clock_pts = frame.index, frame.pts
        self._advance(state, frame.index)
        if frame.meta.get(DETECT_SKIPPED):
            # The detector did not run on this frame (its deadline could not be met): every
            # recent track goes on as predicted, and no track counts as lost for it.
            frame.poses = self._coast_all(state, frame.index)
            return frame
        skipped = frozenset(frame.meta.get(POSE_SKIPPED, ()))
        people = self._people(frame, state)
        owners = self._associate(state, people, frame.index, frame.pts, first)
        self._remember(state, people, owners, frame.index, frame.pts, skipped)
        frame.poses = self._output(frame, state, people, owners, skipped)
        return frame

    def _coast_all(self, state: StreamState, index: int) -> Poses:
        """The confirmed tracks seen in the last ``coast_frames`` frames, all predicted."""
        k = state.num_keypoints
        empty = Poses(
            np.zeros((0, k, 2), np.float32),
            np.zeros((0, k), np.float32),
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            state.skeleton,
            np.zeros(0, bool),
        )
        for t in state.tracks:
            if t.confirmed and t.state == _TRACKED:
                t.last_seen = index  # not lost: the frame was not looked at
        return _append_coasted(empty, state, index, self.coast_frames, everyone=True)

    def _fps(self, state: StreamState) -> float:
        if self.frame_rate is not None:
            return self.frame_rate
        span = state.clock_pts - state.first_pts
        frames = state.clock_index - state.first_index
        # Until two frames with increasing pts are seen, count as ByteTrack does (30 fps).
        return frames / span if frames > 0 and span > 0 else _BUFFER_FPS

    def _max_lost(self, state: StreamState) -> int:
        return max(1, int(round(self.track_buffer * self._fps(state) / _BUFFER_FPS)))

    def _advance(self, state: StreamState, index: int) -> None:
        """Move every track's prediction on to frame ``index``; drop tracks lost too long."""
        assert state.last_index is not None
        steps = index - state.last_index
        if steps <= 0:
            return
        max_lost = self._max_lost(state)
        state.tracks = [t for t in state.tracks if index - t.last_seen <= max_lost]
        state.last_index = index
        if not state.tracks:
            return
        mean = np.stack([t.mean for t in state.tracks])
        cov = np.stack([t.cov for t in state.tracks])
        # A lost track keeps moving but stops growing or shrinking (as ByteTrack does).
        mean[[t.state == _LOST for t in state.tracks], 7] = 0.0
        for _ in range(steps):
            mean, cov = self.kalman.predict(mean, cov)
        for t, m, c in zip(state.tracks, mean, cov, strict=True):
            t.mean, t.cov = m, c

    def _people(self, frame: Frame, state: StreamState) -> People:
        """The frame's people: its poses when it has any, else its detections."""
        poses = frame.poses
        if not (len(poses) or poses.skeleton):
            d = frame.detections
            return People(d.xyxy.astype(np.float64), d.scores.astype(np.float64))
        boxes = poses.boxes.astype(np.float64)
        k = poses.keypoints.shape[1]
        if len(poses) and k:
            boxes = _fill_empty_boxes(boxes, poses.keypoints, poses.scores, self.keypoint_thresh)
        sigmas = flip = None
        if k:
            sigmas = self._sigmas(poses.skeleton, k)
            state.skeleton, state.num_keypoints = poses.skeleton, k
            if sigmas is not None and self.mirror_invariant:
                flip = np.asarray(skeletons.get(poses.skeleton).flip_indices, np.int64)
        return People(
            boxes,
            poses.instance_scores.astype(np.float64),
            poses.keypoints,
            poses.scores,
            sigmas,
            flip,
        )

    def _sigmas(self, skeleton: str, k: int) -> np.ndarray | None:
        try:
            sigmas = skeletons.get(skeleton).sigmas
        except ValueError:
            sigmas = None
        if sigmas is not None and len(sigmas) == k:
            return sigmas
        if skeleton not in self._unknown_skeletons:
            self._unknown_skeletons.add(skeleton)
            log.warning(
                "%s: poses of skeleton %r with %d keypoints have no OKS sigmas in "
                "posegraph.skeletons; tracking them by box IoU",
                self.ctx.name,
                skeleton,
                k,
            )
        return None

    # -------------------------------------------------------- association

    def _cost(
        self, tracks: list[Track], people: People, cols: np.ndarray, weigh: bool = False
    ) -> np.ndarray:
        """(T, C) 1 - similarity between ``tracks`` and the people ``cols``; with ``weigh``,
        the similarity is multiplied by each person's score."""
        if not tracks or not len(cols):
            return np.zeros((len(tracks), len(cols)))
        track_boxes = np.stack([t.box for t in tracks])
        similarity = box_iou(track_boxes, people.boxes[cols])
        if people.sigmas is not None:
            k = len(people.sigmas)
            rows = [
                i for i, t in enumerate(tracks) if t.keypoints is not None and len(t.keypoints) == k
            ]
            if rows:
                known = [tracks[i] for i in rows]
                predicted = move_with_box(
                    np.stack([t.keypoints for t in known]),
                    np.stack([t.keypoint_box for t in known]),
                    track_boxes[rows],
                )
                sure = np.stack([t.keypoint_scores for t in known])[:, None] > self.keypoint_thresh
                scores = people.keypoint_scores[cols]
                confident = sure & (scores[None] > self.keypoint_thresh)
                # The person's box area stands in for COCO's segment area as the scale s^2.
                boxes = people.boxes[cols]
                areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                pose_similarity = oks(
                    predicted, people.keypoints[cols], areas, people.sigmas, confident
                )
                if people.flip is not None:
                    # a pose model that swaps a person's sides from one frame to the next
                    # (people seen from the back) still shows the same person
                    flip = people.flip
                    mirrored = people.keypoints[cols][:, flip]
                    confident_mirrored = sure & (scores[:, flip][None] > self.keypoint_thresh)
                    pose_similarity = np.maximum(
                        pose_similarity,
                        oks(predicted, mirrored, areas, people.sigmas, confident_mirrored),
                    )
                similarity[rows] = np.where(
                    confident.sum(-1) >= _MIN_SHARED_KEYPOINTS, pose_similarity, similarity[rows]
                )
        if weigh and self.fuse_score:
            similarity = similarity * people.scores[cols][None]
        return 1.0 - similarity

    def _associate(
        self, state: StreamState, people: People, index: int, pts: float, first: bool
    ) -> list[Track | None]:
        """ByteTrack's rounds; returns the track that owns each person (N,), or None."""
        scores = people.scores
        high = np.flatnonzero(scores > self.high_thresh)
        low = np.flatnonzero((scores > self.low_thresh) & (scores <= self.high_thresh))
        owners: list[Track | None] = [None] * len(scores)
        pool = [t for t in state.tracks if t.confirmed]
        unconfirmed = [t for t in state.tracks if not t.confirmed]

        # Round 1: confirmed tracks, tracked or lost, against the high-score people; the
        # score weighs the similarity, so a sure person wins a contested track.
        cost = self._cost(pool, people, high, weigh=True)
        matches, rest, free_high = assign(cost, self.match_thresh)
        for r, c in matches:
            owners[high[c]] = pool[r]

        # Round 2: tracks that were being followed until now get the low-score people,
        # often the partly hidden ones. Lost tracks wait for a high-score person.
        waiting = [pool[r] for r in rest if pool[r].state == _TRACKED]
        matches, missed, _ = assign(self._cost(waiting, people, low), self.low_match_thresh)
        for r, c in matches:
            owners[low[c]] = waiting[r]
        for r in missed:
            waiting[r].state = _LOST

        # Tracks started on the last frame are confirmed by a second sighting, or dropped.
        left = high[free_high]
        cost = self._cost(unconfirmed, people, left, weigh=True)
        matches, dropped, free = assign(cost, self.unconfirmed_match_thresh)
        for r, c in matches:
            owners[left[c]] = unconfirmed[r]
            unconfirmed[r].track_id, state.next_id = state.next_id, state.next_id + 1
        gone = {id(unconfirmed[r]) for r in dropped}
        state.tracks = [t for t in state.tracks if id(t) not in gone]

        # New tracks from the sure people nobody owns; on a stream's first frame they are
        # confirmed at once, as there is nothing to confuse them with.
        new = [int(left[c]) for c in free if scores[left[c]] >= self.new_track_thresh]
        if new:
            mean, cov = self.kalman.initiate(xyxy_to_xyah(people.boxes[new]))
            for j, m, c in zip(new, mean, cov, strict=True):
                track = Track(m, c, index, index, pts, float(scores[j]))
                if first:
                    track.track_id, state.next_id = state.next_id, state.next_id + 1
                state.tracks.append(track)
                owners[j] = track
        return owners

    def _remember(
        self,
        state: StreamState,
        people: People,
        owners: list[Track | None],
        index: int,
        pts: float,
        skipped: frozenset[int] = frozenset(),
    ) -> None:
        """Correct the owning tracks with their people (``skipped``: rows without a pose of
        their own); drop duplicated tracks."""
        fps = self._fps(state)
        updated = [(j, t) for j, t in enumerate(owners) if t is not None]
        # Seconds since each track's last keypoints, for the smoother; frames count when
        # the stream's pts do not move on.
        elapsed = [
            pts - t.last_pts if pts > t.last_pts else max(index - t.last_seen, 1) / fps
            for _, t in updated
        ]
        corrected = [(j, t) for j, t in updated if t.first_seen != index]
        if corrected:
            mean, cov = self.kalman.update(
                np.stack([t.mean for _, t in corrected]),
                np.stack([t.cov for _, t in corrected]),
                xyxy_to_xyah(people.boxes[[j for j, _ in corrected]]),
            )
            for (j, t), m, c in zip(corrected, mean, cov, strict=True):
                t.mean, t.cov, t.state = m, c, _TRACKED
                t.last_seen, t.score = index, float(people.scores[j])
        with_keypoints = people.keypoints is not None and people.keypoints.shape[1] > 0
        for (j, t), dt in zip(updated, elapsed, strict=True):
            t.last_pts = pts
            if not with_keypoints or j in skipped:
                # a person whose pose step was skipped keeps the track's last keypoints
                continue
            t.keypoints = people.keypoints[j].copy()
            t.keypoint_scores = people.keypoint_scores[j].copy()
            t.keypoint_box = t.box
            if self.smooth:
                if t.smoother is None:
                    t.smoother = OneEuro(self.min_cutoff, self.beta, self.d_cutoff)
                t.shown = t.smoother(t.keypoints, dt)
            else:
                t.shown = t.keypoints
        self._drop_duplicates(state)

    def _drop_duplicates(self, state: StreamState) -> None:
        """A lost track and a followed one on the same box: keep the one followed longer."""
        tracked = [t for t in state.tracks if t.state == _TRACKED]
        lost = [t for t in state.tracks if t.state == _LOST]
        if not tracked or not lost:
            return
        overlap = box_iou(np.stack([t.box for t in tracked]), np.stack([t.box for t in lost]))
        gone: set[int] = set()
        for a, b in zip(*np.nonzero(overlap > _DUPLICATE_IOU), strict=True):
            ta, tb = tracked[a], lost[b]
            younger = ta if ta.last_seen - ta.first_seen <= tb.last_seen - tb.first_seen else tb
            gone.add(id(younger))
        state.tracks = [t for t in state.tracks if id(t) not in gone]

    # ------------------------------------------------------------- output

    def _output(
        self,
        frame: Frame,
        state: StreamState,
        people: People,
        owners: list[Track | None],
        skipped: frozenset[int] = frozenset(),
    ) -> Poses:
        """The frame's poses with track ids, plus coasted tracks when ``coast`` is on; the
        people in ``skipped`` get their track's keypoints, moved with the box, predicted."""
        alive = {id(t) for t in state.tracks}
        ids = np.array(
            [t.track_id if t is not None and id(t) in alive else -1 for t in owners], np.int64
        )
        n = len(owners)
        if people.keypoints is not None:
            poses = frame.poses
            keypoints = poses.keypoints.copy()
            scores, predicted = poses.scores, poses.predicted
            if self.smooth:
                for j, t in enumerate(owners):
                    if t is not None and t.shown is not None and len(t.shown) == len(keypoints[j]):
                        keypoints[j] = t.shown
            if skipped:
                scores, predicted = scores.copy(), predicted.copy()
                k = keypoints.shape[1]
                for j in skipped:
                    t = owners[j] if j < n else None
                    if t is not None and ids[j] >= 0 and k and _has_keypoints(t, k):
                        keypoints[j] = move_with_box(t.shown, t.keypoint_box, t.box)
                        scores[j] = t.keypoint_scores
                        predicted[j] = True
            measured = Poses(
                keypoints,
                scores,
                poses.boxes,
                poses.instance_scores,
                ids,
                poses.skeleton,
                predicted,
            )
        elif self.coast and state.num_keypoints:
            # The pose step skipped this frame: tracked people keep their keypoints, moved
            # with their new boxes and marked predicted.
            k = state.num_keypoints
            keypoints = np.zeros((n, k, 2), np.float32)
            scores = np.zeros((n, k), np.float32)
            predicted = np.zeros(n, bool)
            for j, t in enumerate(owners):
                if ids[j] >= 0 and t is not None and _has_keypoints(t, k):
                    keypoints[j] = move_with_box(t.shown, t.keypoint_box, t.box)
                    scores[j] = t.keypoint_scores
                    predicted[j] = True
            measured = Poses(
                keypoints, scores, people.boxes, people.scores, ids, state.skeleton, predicted
            )
        else:
            measured = Poses(
                np.zeros((n, 0, 2), np.float32),
                np.zeros((n, 0), np.float32),
                people.boxes,
                people.scores,
                ids,
            )
        if not self.coast:
            return measured
        return _append_coasted(measured, state, frame.index, self.coast_frames)


def _has_keypoints(track: Track, k: int) -> bool:
    return track.shown is not None and len(track.shown) == k and track.keypoint_box is not None


def _append_coasted(
    poses: Poses, state: StreamState, index: int, coast_frames: int, everyone: bool = False
) -> Poses:
    """``poses`` plus the confirmed tracks lost for at most ``coast_frames`` frames (with
    ``everyone``, the followed ones too)."""
    coasting = [
        t
        for t in state.tracks
        if t.confirmed and (everyone or t.state == _LOST) and index - t.last_seen <= coast_frames
    ]
    if not coasting:
        return poses
    k = poses.keypoints.shape[1]
    boxes = np.stack([t.box for t in coasting]).astype(np.float32)
    keypoints = np.zeros((len(coasting), k, 2), np.float32)
    scores = np.zeros((len(coasting), k), np.float32)
    for i, t in enumerate(coasting):
        if k and _has_keypoints(t, k):
            keypoints[i] = move_with_box(t.shown, t.keypoint_box, boxes[i])
            scores[i] = t.keypoint_scores
    return Poses(
        np.concatenate([poses.keypoints, keypoints]),
        np.concatenate([poses.scores, scores]),
        np.concatenate([poses.boxes, boxes]),
        np.concatenate([poses.instance_scores, [t.score for t in coasting]]),
        np.concatenate([poses.track_ids, [t.track_id for t in coasting]]),
        poses.skeleton,
        np.concatenate([poses.predicted, np.ones(len(coasting), bool)]),
    )


def _fill_empty_boxes(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, threshold: float
) -> np.ndarray:
    """Boxes (N, 4) where those without area (a model that gives no boxes) become the
    extent of their confident keypoints (N, K, 2)."""
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if not empty.any():
        return boxes
    boxes = boxes.copy()
    for j in np.flatnonzero(empty):
        points = keypoints[j][scores[j] > threshold]
        if len(points):
            boxes[j] = [*points.min(0), *points.max(0)]
    return boxes
