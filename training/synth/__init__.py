"""Synthetic people: images and videos of articulated, shaded people with exact COCO-WholeBody
keypoints, visibility flags read from what is drawn, and track identities.

The data that ships with posegraph is trained on this generator, and it is the test bed of the
detector, tracker and whole-body nodes. No torch is imported here.

>>> from training.synth import SyntheticPeople
>>> sample = SyntheticPeople(10_000, seed=0)[42]   # image (H, W, 3) BGR, keypoints (N, 133, 3)
"""

from .body import Appearance, BodyShape, pose_figure
from .coco import CocoBuilder, person_category, write_json
from .dataset import SyntheticPeople
from .motion import ACTIVITIES, Style, pose_for
from .render import Camera, Placement, render_person
from .scene import Actor, Sample, SceneConfig, compose, degrade, make_image
from .video import VideoConfig, frames, write_video

__all__ = [
    "ACTIVITIES",
    "Actor",
    "Appearance",
    "BodyShape",
    "Camera",
    "CocoBuilder",
    "Placement",
    "Sample",
    "SceneConfig",
    "Style",
    "SyntheticPeople",
    "VideoConfig",
    "compose",
    "degrade",
    "frames",
    "make_image",
    "person_category",
    "pose_figure",
    "pose_for",
    "render_person",
    "write_json",
    "write_video",
]
