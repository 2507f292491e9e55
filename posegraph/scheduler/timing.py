"""Online run-time estimates per batch bucket, and the clocks that feed them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# a run is counted as at most this many times the estimate it came to
OUTLIER = 4.0


class RunTimes:
    """Run time of one model per bucket size, learnt from every batch it runs.

    The estimate is an exponential moving average of the run time plus ``spread`` times
    the moving average of its absolute deviation: a high quantile, not the mean, since a
    batch that runs long misses its deadline. A bucket not measured yet borrows from the
    nearest measured one, scaled by size (run time grows at most linearly in the batch).
    """

    def __init__(self, buckets: tuple[int, ...], alpha: float = 0.2, spread: float = 2.0):
        self.buckets = buckets
        self.alpha = alpha
        self.spread = spread
        self.mean: dict[int, float] = {}
        self.dev: dict[int, float] = {}
        self.count: dict[int, int] = dict.fromkeys(buckets, 0)

    def add(self, bucket: int, seconds: float) -> None:
        if self.mean:
            # one stall (a machine paused, swapping) moves the estimate at most this far;
            # a lasting change still gets through in a few runs
            seconds = min(seconds, OUTLIER * self.estimate(bucket))
        if bucket not in self.mean:
            self.mean[bucket], self.dev[bucket] = seconds, 0.25 * seconds
        else:
            err = seconds - self.mean[bucket]
            self.mean[bucket] += self.alpha * err
            self.dev[bucket] += self.alpha * (abs(err) - self.dev[bucket])
        self.count[bucket] += 1

    def remeasure(self, bucket: int, seconds: float) -> None:
        """A run made to check an estimate that had kept the model from running: the
        estimate starts again from it, and the other buckets' come down in proportion (a
        busy spell slowed them alike, and they are not run to find out)."""
        old = self.mean.get(bucket)
        if old and seconds < old:
            for b in self.mean:
                self.mean[b] *= seconds / old
                self.dev[b] *= seconds / old
        self.mean[bucket], self.dev[bucket] = seconds, 0.25 * seconds
        self.count[bucket] += 1

    def relax(self, bucket: int, factor: float = 0.95) -> None:
        """Lower the estimate of ``bucket`` a little: work skipped on the strength of an
        estimate is never measured again, so an estimate that came out high (a warm-up on a
        busy machine) would otherwise skip that work for good. The next run measures it."""
        if bucket in self.mean:
            self.mean[bucket] *= factor
            self.dev[bucket] *= factor

    def estimate(self, bucket: int) -> float:
        """Seconds a batch of this bucket is expected to take, at most (0 when nothing is
        measured yet)."""
        if bucket in self.mean:
            return self.mean[bucket] + self.spread * self.dev[bucket]
        if not self.mean:
            return 0.0
        nearest = min(self.mean, key=lambda b: abs(b - bucket))
        scale = max(1.0, bucket / nearest)
        return scale * (self.mean[nearest] + self.spread * self.dev[nearest])

    def snapshot(self) -> dict[int, dict[str, float]]:
        return {
            b: {
                "mean_ms": 1e3 * self.mean[b],
                "estimate_ms": 1e3 * self.estimate(b),
                "batches": self.count[b],
            }
            for b in self.buckets
            if b in self.mean
        }


def timer_for(device: str) -> Callable[[Callable[[], Any]], tuple[Any, float]]:
    """``timed(fn) -> (fn(), seconds)``: CUDA events on a CUDA device, wall clock on CPU.

    On CUDA the interval runs from an event recorded before the call to one recorded after
    it; the call itself ends by copying outputs to the host, so the interval covers the
    input copy, the kernels and the output copy.
    """
    if device.startswith("cuda"):
        import torch

        dev = torch.device(device)

        def timed_cuda(fn: Callable[[], Any]) -> tuple[Any, float]:
            with torch.cuda.device(dev):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn()
                end.record()
                end.synchronize()
                return out, start.elapsed_time(end) / 1e3

        return timed_cuda

    def timed_wall(fn: Callable[[], Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    return timed_wall
