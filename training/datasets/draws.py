"""Which random draw of a training item a loader asks for.

A training set's item is a function of the seed, the epoch and the index alone, so that a run
is repeatable with any number of loader workers and a resumed run sees the same data. When an
epoch holds more steps than one pass over a small set, its later passes are drawn afresh: the
key also names the pass. The trainer's loader asks for items by :class:`Draw`; a plain index
is the first pass of the dataset's current epoch (``set_epoch``), as evaluation and tests
index a dataset.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Draw(NamedTuple):
    """Item ``index`` as pass ``repeat`` of ``epoch`` draws it."""

    index: int
    epoch: int
    repeat: int = 0


def as_draw(key: int | Draw, epoch: int) -> Draw:
    """``key`` as a :class:`Draw`; a plain index is pass 0 of ``epoch``."""
    if isinstance(key, Draw):
        return key
    return Draw(int(key), epoch)


def draw_rng(seed: int, draw: Draw) -> np.random.Generator:
    """The generator of every random choice of one item: ``default_rng([seed, epoch, index])``
    for the first pass of an epoch, as a plain index draws it, with the pass appended for the
    later ones."""
    key = [seed, draw.epoch, draw.index]
    if draw.repeat:
        key.append(draw.repeat)
    return np.random.default_rng(key)
