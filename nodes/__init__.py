"""The posegraph node library, one module per role.

Importing this package registers every built-in node type; it does not import torch or
onnxruntime (model nodes import them when they start).
"""

from nodes import (  # noqa: F401 - imported to register the node types
    crop,
    decoders,
    detectors,
    live,
    overlay,
    pose,
    regions,
    services,
    sinks,
    sources,
    trackers,
    util,
)
