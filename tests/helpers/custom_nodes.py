"""A user-defined node, referred to as tests.helpers.custom_nodes:Stamp."""

from posegraph import Frame, Node


class Stamp(Node):
    def __init__(self, label: str = "stamped"):
        self.label = label

    def process(self, frame: Frame) -> Frame:
        frame.meta["label"] = self.label
        return frame
