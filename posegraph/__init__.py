"""posegraph: a dataflow runtime for real-time human pose estimation on video streams.

``import posegraph`` stays light: it does not import torch or onnxruntime.
"""

from posegraph.graph import Graph
from posegraph.node import Node, Sink, Source, register
from posegraph.packet import Detections, Frame, Poses

__all__ = ["Detections", "Frame", "Graph", "Node", "Poses", "Sink", "Source", "register"]
__version__ = "0.1.0"
