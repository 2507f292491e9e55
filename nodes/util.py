"""Small general-purpose nodes."""

from __future__ import annotations

import time

from posegraph.node import Node, register
from posegraph.packet import Frame


@register("util.passthrough")
class Passthrough(Node):
    """Passes frames on unchanged; ``delay_ms`` makes it a slow node (for tests and benchmarks)."""

    def __init__(self, delay_ms: float = 0.0):
        self.delay_ms = delay_ms

    def process(self, frame: Frame) -> Frame:
        if self.delay_ms > 0:
            time.sleep(self.delay_ms / 1000.0)
        return frame
