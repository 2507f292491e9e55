"""A user-defined node, referred to as tests.helpers.custom_nodes:Stamp."""

from posegraph import Frame, Node, Sink


class Stamp(Node):
    def __init__(self, label: str = "stamped"):
        self.label = label

    def process(self, frame: Frame) -> Frame:
        frame.meta["label"] = self.label
        return frame


class Crash(Node):
    """Ends its process abruptly at frame ``at``: a node with a fatal bug."""

    def __init__(self, at: int = 5):
        self.at = at

    def process(self, frame: Frame) -> Frame:
        if frame.index >= self.at:
            import os

            os._exit(1)
        return frame


class Hang(Node):
    """Never returns from frame ``at`` on its first run (a deadlock, a read that never
    ends); after a restart (``marker`` exists) it passes every frame on. ``spin``: stuck
    holding the interpreter's lock (a C call that never lets go) instead of waiting."""

    def __init__(self, marker: str, at: int = 10, spin: bool = False):
        self.marker = marker
        self.at = at
        self.spin = spin

    def process(self, frame: Frame) -> Frame:
        import os
        import re
        import time

        if frame.index >= self.at and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            if self.spin:
                # backtracks for ever inside the regex engine, which keeps the lock
                re.match(r"(a|aa)+$", "a" * 64 + "b")
            while True:
                time.sleep(1.0)
        return frame


class SlowSetup(Node):
    """Takes ``seconds`` to set up (a model loading), then passes frames on."""

    def __init__(self, seconds: float = 3.0):
        self.seconds = seconds

    def setup(self, ctx) -> None:
        import time

        super().setup(ctx)
        time.sleep(self.seconds)

    def process(self, frame: Frame) -> Frame:
        return frame


class SetupRaises(Node):
    """Fails to set up with an error no node library anticipates."""

    def setup(self, ctx) -> None:
        raise RuntimeError("the device is on fire")


class SetupHang(Node):
    """Never finishes setting up (a model load or a device that never answers) while
    ``hang`` exists; ``crash_at``: on a start with no ``hang`` file, makes it and ends the
    process at that frame, so the restart is the one that hangs."""

    def __init__(self, hang: str, crash_at: int | None = None):
        self.hang = hang
        self.crash_at = crash_at

    def setup(self, ctx) -> None:
        import os
        import time

        super().setup(ctx)
        if os.path.exists(self.hang) and os.path.getsize(self.hang) == 0:
            with open(self.hang, "w") as f:
                f.write("hung once")  # the next start sets up
            while True:
                time.sleep(1.0)

    def process(self, frame: Frame) -> Frame:
        import os

        if self.crash_at is not None and frame.index >= self.crash_at:
            if not os.path.exists(self.hang):
                open(self.hang, "w").close()
                os._exit(1)
        return frame


class OnePose(Node):
    """Gives each frame one coco17 person, track 7, whose only keypoint scoring above 0 is
    the right shoulder at ``at``."""

    def __init__(self, at: tuple[float, float] = (40.0, 60.0)):
        self.at = at

    def process(self, frame: Frame) -> Frame:
        import numpy as np

        from posegraph.packet import Poses

        keypoints = np.zeros((1, 17, 2), np.float32)
        scores = np.zeros((1, 17), np.float32)
        keypoints[0, 6], scores[0, 6] = self.at, 1.0
        x, y = self.at
        return frame.replace(
            poses=Poses(
                keypoints=keypoints,
                scores=scores,
                boxes=np.array([[x - 20, y - 30, x + 20, y + 30]], np.float32),
                instance_scores=np.ones(1, np.float32),
                track_ids=np.array([7]),
                skeleton="coco17",
            )
        )


class BarLog(Sink):
    """A sink that appends "index x" for each frame, x where tests.conftest.write_video's
    orange bar (BGR 0, 200, 255) begins: which frame of the clip the frame is."""

    def __init__(self, path: str):
        self.path = path

    def write(self, frame: Frame) -> None:
        import numpy as np

        if frame.event is None:
            orange = np.abs(frame.image.astype(int) - (0, 200, 255)).sum(axis=2) < 60
            x = int(np.argmax(orange.mean(axis=0) > 0.9))
            with open(self.path, "a") as f:
                f.write(f"{frame.index} {x}\n")


class Refuse(Node):
    """Cannot work with the frames it is given: raises NodeError at the first one."""

    def process(self, frame: Frame) -> Frame:
        from posegraph.node import NodeError

        raise NodeError("frames of this stream carry no poses: put a pose node before me")


class RefuseConcurrently(Refuse):
    """Refuse, working on several frames at once."""

    concurrent = True


class Overlapping(Node):
    """Works on several frames at once (``concurrent``): each takes ``delay_ms`` less the
    frame's position in a cycle of three, so later frames often finish first. ``peak``
    (class-wide) is the most frames it has had in hand at once."""

    concurrent = True
    peak = 0

    def __init__(self, delay_ms: float = 30.0, slow: dict[str, float] | None = None):
        import threading

        self.delay = delay_ms / 1000.0
        self.slow = slow or {}  # stream -> milliseconds each of its frames takes instead
        self.lock = threading.Lock()
        self.busy = 0

    def process(self, frame: Frame) -> Frame:
        import time

        with self.lock:
            self.busy += 1
            Overlapping.peak = max(Overlapping.peak, self.busy)
        if frame.stream in self.slow:
            time.sleep(self.slow[frame.stream] / 1000.0)
        else:
            time.sleep(self.delay * (3 - frame.index % 3) / 3)
        with self.lock:
            self.busy -= 1
        return frame


class TailProbe(Node):
    """Stands where a model node stands (``uses_device``): appends the time to the sinks
    the runtime has told it (``ctx.tail``, seconds) to ``path``, one line per frame."""

    uses_device = True

    def __init__(self, path: str, device: str = "cpu"):
        self.path = path
        self.device = device

    def process(self, frame: Frame) -> Frame:
        with open(self.path, "a") as f:
            f.write(f"{self.ctx.tail}\n")
        return frame


class Leak(Node):
    """Keeps ``mb`` megabytes of every frame it sees, for ever: a node with a leak."""

    def __init__(self, mb: float = 1.0):
        self.mb = mb
        self.kept: list[bytearray] = []

    def process(self, frame: Frame) -> Frame:
        self.kept.append(bytearray(b"\x01" * int(self.mb * 2**20)))
        return frame


class SlowClose(Node):
    """Takes ``seconds`` to close (a recorder finishing its file): a run's drain lasts that
    long."""

    def __init__(self, seconds: float = 2.0):
        self.seconds = seconds

    def process(self, frame: Frame) -> Frame:
        return frame

    def close(self) -> None:
        import time

        time.sleep(self.seconds)


class TouchShared(Node):
    """Maps a shared segment of ``size_mb`` and touches ``mb`` more of it with every frame:
    its resident set grows as a frame-plane reader's does, its private memory does not."""

    def __init__(self, size_mb: int = 256, mb: int = 1):
        import mmap

        self.region = mmap.mmap(-1, size_mb * 2**20)  # MAP_SHARED: shmem pages
        self.step = mb * 2**20
        self.at = 0

    def process(self, frame: Frame) -> Frame:
        for page in range(self.at, min(self.at + self.step, len(self.region)), 4096):
            self.region[page] = 1
        self.at = min(self.at + self.step, len(self.region))
        return frame


class SlowSpell(Node):
    """A model node on the device scheduler whose model takes ``seconds`` a frame for
    frames ``slow_from`` to ``slow_until`` (a device that cannot keep up for a while) and
    10 ms otherwise."""

    uses_device = True

    def __init__(self, slow_from: int = 0, slow_until: int = 0, seconds: float = 1.0):
        self.slow_from, self.slow_until, self.seconds = slow_from, slow_until, seconds

    def setup(self, ctx) -> None:
        import numpy as np

        from posegraph.scheduler import Client

        super().setup(ctx)

        def model(batch):
            import time

            index = int(batch[0, 0])
            slow = self.slow_from <= index < self.slow_until
            time.sleep(self.seconds if slow else 0.01)
            return {"same": batch}

        self.client = Client.attach("cpu", "slow-spell", model, (1,), np.full(1, -1.0))

    def process(self, frame: Frame) -> Frame:
        import numpy as np

        result = self.client.run(
            np.full((1, 1), float(frame.index)), frame.deadline, frame.stream, frame.captured_at
        )
        self.client.finished()
        frame.meta["served"] = bool(result.done.all())
        return frame
