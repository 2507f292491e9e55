"""Synthetic people for top-down training: rendered on the fly, or written once as COCO files.

On the fly, item ``i`` renders image ``i`` of :class:`training.synth.SyntheticPeople` and crops
one of its people, chosen with the item's random generator; nothing is stored, and an epoch
of N items shows N images. Written to disk, the images and their COCO keypoint and
COCO-WholeBody files load with :class:`training.datasets.coco.CocoPersons`, as evaluation
needs a fixed set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from posegraph import skeletons
from training.datasets.coco import PersonInstance, crop_item
from training.datasets.draws import Draw, as_draw, draw_rng
from training.synth import CocoBuilder, SceneConfig, SyntheticPeople, write_json
from training.transforms.topdown import TopDownAffine, box_to_center_scale

#: Where each skeleton's keypoints sit among the generator's 133 (COCO-WholeBody order).
_KEYPOINTS_OF = {"coco17": slice(0, 17), "wholebody133": slice(0, 133)}


def write_synthetic_coco(
    out: Path, length: int, seed: int = 0, config: SceneConfig | None = None
) -> tuple[Path, Path]:
    """Render ``length`` images into ``out/images`` and write their annotation files.

    Returns:
        (``out/annotations/person_keypoints.json``, ``out/annotations/coco_wholebody.json``);
        image file names are relative to ``out``.
    """
    out = Path(out)
    people = SyntheticPeople(length, seed=seed, config=config)
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco = CocoBuilder(info={"description": "posegraph synthetic people", "seed": seed})
    for index in range(length):
        sample = people[index]
        name = f"images/{index:06d}.png"
        cv2.imwrite(str(out / name), sample.image)
        coco.add(sample, name)
    body = out / "annotations" / "person_keypoints.json"
    whole = out / "annotations" / "coco_wholebody.json"
    write_json(coco.keypoints_json(), body)
    write_json(coco.wholebody_json(), whole)
    return body, whole


@dataclass
class SyntheticTopDown:
    """Person crops and codec targets from images rendered on demand (map-style dataset).

    Args:
        length: number of items (= rendered images) per epoch.
        transform: the crop, with augmentation.
        encode: the codec's ``encode``.
        skeleton: ``coco17`` or ``wholebody133``.
        seed: selects the images and, with the epoch, the person and augmentation.
        config: what the images look like.
        min_keypoints: people with fewer labelled keypoints are not chosen; an image with
            nobody eligible gives the next image's person instead.
    """

    length: int
    transform: TopDownAffine
    encode: Callable[..., dict[str, np.ndarray]] | None
    skeleton: str = "coco17"
    seed: int = 0
    config: SceneConfig = field(default_factory=SceneConfig)
    min_keypoints: int = 1
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.skeleton not in _KEYPOINTS_OF:
            raise ValueError(
                f"synthetic people carry {sorted(_KEYPOINTS_OF)} keypoints, not {self.skeleton!r}"
            )
        self.people = SyntheticPeople(self.length, seed=self.seed, config=self.config)
        self.num_keypoints = skeletons.get(self.skeleton).num_keypoints

    def set_epoch(self, epoch: int) -> None:
        """Pick people and augmentation of ``epoch``; the images stay the same."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | Draw) -> dict[str, np.ndarray]:
        """As :meth:`training.datasets.coco.TopDownDataset.__getitem__`."""
        draw = as_draw(key, self.epoch)
        index = draw.index
        rng = draw_rng(self.seed, draw)
        for offset in range(self.length):
            sample = self.people[(index + offset) % self.length]
            keypoints = sample.keypoints[:, _KEYPOINTS_OF[self.skeleton]].copy()
            keypoints[..., 2] = np.minimum(keypoints[..., 2], 1.0)
            eligible = np.flatnonzero((keypoints[..., 2] > 0).sum(axis=1) >= self.min_keypoints)
            if len(eligible):
                break
        else:
            raise ValueError(
                f"none of the {self.length} synthetic images has a person with "
                f"{self.min_keypoints} labelled keypoints; lower min_keypoints"
            )
        chosen = int(rng.choice(eligible))
        center, scale = box_to_center_scale(sample.boxes[chosen], self.transform.aspect_ratio)
        person = PersonInstance(
            Path(f"synthetic:{self.seed}:{index}"),
            index,
            keypoints[chosen],
            center,
            scale,
            box=sample.boxes[chosen],
        )
        return crop_item(self.transform, self.encode, sample.image, person, rng, index)
