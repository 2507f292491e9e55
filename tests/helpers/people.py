"""One synthetic person, standing alone in front of a plain wall, for tests that need to
know exactly which way a person faces."""

from __future__ import annotations

import numpy as np

from training.synth import Actor, Appearance, BodyShape, Camera, Placement, Style, compose
from training.synth.body import NUM_DOF
from training.synth.scene import Sample


def person_at_heading(yaw: float, seed: int = 5, grey: int = 128) -> Sample:
    """A standing adult about 130 px tall in a 320x240 image, turned ``yaw`` radians from
    the camera (0 faces it, pi faces away); ``seed`` draws their build and clothes."""
    rng = np.random.default_rng(seed)
    camera = Camera(320, 240, 300.0, 160.0, 120.0, 1.5, 0.0)
    actor = Actor(
        BodyShape.sample(rng, child=False),
        Appearance.sample(rng),
        Style(np.zeros(NUM_DOF), (0.0, 0.0), (0.3, 0.3), False),
        "stand",
        0.0,
        Placement(0.0, 4.0, yaw),
    )
    background = np.full((240, 320, 3), grey, np.uint8)
    _, sample = compose(camera, background, [actor], np.array([0.0, -1.0]))
    return sample
