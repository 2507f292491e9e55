"""Keypoint sets: consistent tables, flips that mirror, sigmas as the evaluations use them."""

import numpy as np
import pytest

from posegraph import skeletons
from posegraph.skeletons import Skeleton


@pytest.mark.parametrize("name", sorted(skeletons.SKELETONS))
def test_tables_are_consistent(name: str) -> None:
    skel = skeletons.get(name)
    k = skel.num_keypoints
    flip = skel.flip_indices
    assert flip.shape == (k,)
    np.testing.assert_array_equal(flip[flip], np.arange(k))  # an involution
    assert skel.sigmas.shape == (k,)
    assert (skel.sigmas > 0).all()
    covered = sorted(i for span in skel.parts.values() for i in span)
    assert covered == list(range(k))
    assert all(0 <= a < k and 0 <= b < k for a, b in skel.limbs)


@pytest.mark.parametrize("name", sorted(skeletons.SKELETONS))
def test_flip_swaps_left_and_right_names(name: str) -> None:
    skel = skeletons.get(name)
    for k, src in enumerate(skel.flip_indices):
        here, there = skel.keypoint_names[k], skel.keypoint_names[src]
        if here.startswith("left_"):
            assert there == "right_" + here[5:]
        elif here.startswith("right_"):
            assert there == "left_" + here[6:]


def test_sizes_and_sigmas() -> None:
    assert skeletons.coco17.num_keypoints == 17
    assert skeletons.mpii16.num_keypoints == 16
    assert skeletons.crowdpose14.num_keypoints == 14
    wb = skeletons.wholebody133
    assert wb.num_keypoints == 133
    assert {n: (r.start, r.stop) for n, r in wb.parts.items()} == {
        "body": (0, 17),
        "foot": (17, 23),
        "face": (23, 91),
        "left_hand": (91, 112),
        "right_hand": (112, 133),
    }
    np.testing.assert_allclose(wb.sigmas[:17], skeletons.coco17.sigmas)
    assert wb.sigmas[wb.index("left_big_toe")] == pytest.approx(0.068)
    assert wb.sigmas[wb.index("face-47")] == pytest.approx(0.034)  # the outlier in the eval table
    np.testing.assert_array_equal(wb.sigmas[91:112], wb.sigmas[112:133])
    assert skeletons.coco17.sigmas[0] == pytest.approx(0.026)
    assert skeletons.crowdpose14.keypoint_names[12:] == ("top_head", "neck")


def test_wholebody_face_mirrors_ibug68() -> None:
    wb = skeletons.wholebody133

    def mirror(i: int) -> int:
        return int(wb.flip_indices[wb.index(f"face-{i}")]) - 23

    assert mirror(0) == 16  # jaw ends
    assert mirror(8) == 8  # chin on the axis
    assert mirror(36) == 45  # outer eye corners
    assert mirror(40) == 47  # lower lids
    assert mirror(48) == 54  # mouth corners
    assert mirror(62) == 62
    assert wb.flip_indices[wb.index("left_hand_root")] == wb.index("right_hand_root")
    assert wb.flip_indices[wb.index("left_pinky_finger4")] == wb.index("right_pinky_finger4")


def test_unknown_names_say_what_is_known() -> None:
    with pytest.raises(ValueError, match=r"coco18.*coco17"):
        skeletons.get("coco18")
    with pytest.raises(ValueError, match="left_wrist"):
        skeletons.coco17.index("left_wirst")


def test_bad_tables_are_refused() -> None:
    names = ("a", "left_b", "right_b")
    good = dict(name="t", keypoint_names=names, limbs=(), sigmas=np.ones(3), parts={})
    with pytest.raises(ValueError, match="two pairs"):
        Skeleton(flip_pairs=((1, 2), (2, 0)), **good)
    with pytest.raises(ValueError, match="sigmas"):
        Skeleton(flip_pairs=(), **{**good, "sigmas": np.ones(2)})
    with pytest.raises(ValueError, match="overlap"):
        Skeleton(flip_pairs=(), **{**good, "parts": {"x": range(0, 2), "y": range(1, 3)}})
