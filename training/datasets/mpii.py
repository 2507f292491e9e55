"""MPII in MMPose's json list format, for top-down models (16 keypoints, ``mpii16``).

Each entry holds ``image``, ``center`` and ``scale`` (the person's extent in units of 200
pixels, MATLAB 1-based coordinates), ``joints`` (16, 2) and ``joints_vis`` (16,). As in MMPose's
``TopDownMpiiDataset`` and the official HRNet ``mpii.py``, the centre moves down 15 * scale
pixels and the scale grows 1.25 times so that limbs are not cut, and all coordinates move to
0-based pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from posegraph import skeletons
from training.datasets.coco import PersonInstance, read_json

logger = logging.getLogger(__name__)

_NAMES = skeletons.get("mpii16").keypoint_names
UPPER_NECK, HEAD_TOP = _NAMES.index("upper_neck"), _NAMES.index("head_top")


def head_size(keypoints: np.ndarray) -> float:
    """PCKh's normaliser: the head segment length (upper neck to head top) in pixels, or 0.

    The MPII toolkit derives it from head boxes that MMPose ships as a separate ``.mat`` file;
    the json list has no head boxes, so the labelled head segment stands in (the definition of
    Andriluka et al., CVPR 2014). People without both points get 0 and are left out of PCKh.
    """
    if keypoints[UPPER_NECK, 2] <= 0 or keypoints[HEAD_TOP, 2] <= 0:
        return 0.0
    return float(np.linalg.norm(keypoints[HEAD_TOP, :2] - keypoints[UPPER_NECK, :2]))


def load_mpii(annotations: Path, images: Path | None = None) -> list[PersonInstance]:
    """The people of an MPII json list file.

    Args:
        annotations: the json list file.
        images: folder of the ``image`` names; default: the json's folder.

    Returns:
        one :class:`PersonInstance` per entry, ``image_id`` being the entry's position.
    """
    annotations = Path(annotations)
    entries = read_json(annotations, "MPII annotation file")
    if not isinstance(entries, list):
        raise ValueError(
            f"{annotations}: expected MMPose's MPII json list (center, scale, joints, "
            "joints_vis per person); got a json object. COCO-format files load with CocoPersons"
        )
    folder = Path(images) if images else annotations.parent
    instances = []
    for index, entry in enumerate(entries):
        center = np.asarray(entry["center"], dtype=np.float32)
        scale = np.full(2, entry["scale"], dtype=np.float32)
        if center[0] != -1:
            center[1] += 15 * scale[1]
            scale *= 1.25
        center -= 1
        joints = np.asarray(entry["joints"], dtype=np.float32).reshape(-1, 2) - 1
        visible = np.asarray(entry["joints_vis"], dtype=np.float32).reshape(-1, 1)
        if joints.shape[0] != len(_NAMES):
            raise ValueError(
                f"{annotations}: entry {index} has {joints.shape[0]} joints; MPII has 16"
            )
        keypoints = np.concatenate([joints, np.minimum(visible, 1.0)], axis=1)
        keypoints[keypoints[:, 2] <= 0, :2] = 0
        instances.append(
            PersonInstance(
                folder / entry["image"],
                index,
                keypoints,
                center,
                scale,
                head_size=head_size(keypoints),
            )
        )
    logger.info("%s: %d people", annotations, len(instances))
    return instances
