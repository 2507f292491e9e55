"""``SyntheticPeople``: a map-style dataset of rendered people, deterministic per index."""

from __future__ import annotations

import numpy as np

from .scene import Sample, SceneConfig, make_image


class SyntheticPeople:
    """``len(ds)`` images of people, image ``i`` drawn from ``seed`` and ``i`` alone.

    Usable as a map-style dataset in any DataLoader (no torch needed here): every worker
    renders on the fly, and the same (seed, index) gives the same bytes on every machine with
    the same library versions.

    >>> ds = SyntheticPeople(1000, seed=0)
    >>> sample = ds[3]
    >>> sample.image.shape, sample.keypoints.shape[1:]
    ((480, 640, 3), (133, 3))
    """

    def __init__(self, length: int, seed: int = 0, config: SceneConfig | None = None) -> None:
        if length < 0:
            raise ValueError(f"SyntheticPeople length must be >= 0, got {length}")
        self.length = length
        self.seed = seed
        self.config = config or SceneConfig()

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        """The generator that draws image ``index``: seeded by (seed, index) only."""
        return np.random.default_rng([self.seed, index])

    def __getitem__(self, index: int) -> Sample:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        index %= self.length
        return make_image(self.rng(index), self.config)
