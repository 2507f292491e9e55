"""Small general-purpose nodes."""

from __future__ import annotations

import random
import time

from posegraph.node import Node, register
from posegraph.packet import Frame


@register("util.passthrough")
class Passthrough(Node):
    """Passes frames on unchanged.

    ``delay_ms`` (plus a random ``jitter_ms``) makes it a slow node, for tests and benchmarks.
    """

    def __init__(self, delay_ms: float = 0.0, jitter_ms: float = 0.0):
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms

    def process(self, frame: Frame) -> Frame:
        delay = self.delay_ms + (random.uniform(0, self.jitter_ms) if self.jitter_ms else 0.0)
        if delay > 0:
            time.sleep(delay / 1000.0)
        return frame
