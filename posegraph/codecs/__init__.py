"""Codecs: training targets from keypoints, and keypoints from model outputs.

One codec object serves both ``training`` (``encode``) and the decoder nodes (``decode``), so
the two cannot drift apart. Codecs use numpy and OpenCV only: they run in light decoder
processes that never import torch.

>>> from posegraph import codecs
>>> codec = codecs.build("udp_heatmap", input_size=(192, 256), heatmap_size=(48, 64))
"""

from __future__ import annotations

import difflib
from typing import Any

from posegraph.codecs.common import PoseInstances
from posegraph.codecs.erpose import ERPoseCodec, anchor_grid, keypoints_to_raw, raw_to_keypoints
from posegraph.codecs.hprnet import HEADS as HPRNET_HEADS
from posegraph.codecs.hprnet import HPRNetCodec
from posegraph.codecs.msra_heatmap import MSRAHeatmap
from posegraph.codecs.oks import oks, oks_nms
from posegraph.codecs.regression import RegressionLabel
from posegraph.codecs.simcc import SimCCLabel
from posegraph.codecs.udp_heatmap import UDPHeatmap

#: Codec name (as in ``ModelSpec.codec``) -> class.
CODECS: dict[str, type] = {
    "msra_heatmap": MSRAHeatmap,
    "udp_heatmap": UDPHeatmap,
    "simcc": SimCCLabel,
    "regression_label": RegressionLabel,
    "hprnet": HPRNetCodec,
    "erpose": ERPoseCodec,
}


def build(name: str, **kwargs: Any) -> Any:
    """Make the codec registered as ``name`` with its constructor arguments.

    Raises:
        ValueError: for an unknown name, listing the nearest known ones.
    """
    try:
        cls = CODECS[name]
    except KeyError:
        near = difflib.get_close_matches(name, CODECS, n=3, cutoff=0.4)
        hint = f"; nearest: {near}" if near else ""
        raise ValueError(f"unknown codec {name!r}{hint}; known codecs: {sorted(CODECS)}") from None
    return cls(**kwargs)


__all__ = [
    "CODECS",
    "ERPoseCodec",
    "HPRNET_HEADS",
    "HPRNetCodec",
    "MSRAHeatmap",
    "PoseInstances",
    "RegressionLabel",
    "SimCCLabel",
    "UDPHeatmap",
    "anchor_grid",
    "build",
    "keypoints_to_raw",
    "oks",
    "oks_nms",
    "raw_to_keypoints",
]
