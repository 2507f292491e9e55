"""Bottom-up and one-stage training pieces: HPRNet and ER-Pose losses, whole-image transforms."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from posegraph import models, skeletons
from posegraph.codecs import HPRNET_HEADS, ERPoseCodec, HPRNetCodec, oks
from training.losses.erpose import ERPoseLoss, smooth_oks_loss
from training.losses.hprnet import HPRNetLoss, focal_loss, reg_l1_loss, stack_targets
from training.transforms.bottomup import BottomUpSample, Mosaic, RandomAffine, letterbox

COCO = skeletons.get("coco17")
WHOLEBODY = skeletons.get("wholebody133")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def person(box: tuple[float, float, float, float], k: int, seed: int) -> np.ndarray:
    """(K, 2) keypoints spread over a box, reproducibly."""
    rng = np.random.default_rng(seed)
    x1, y1, x2, y2 = box
    return np.stack([rng.uniform(x1, x2, k), rng.uniform(y1, y2, k)], -1).astype(np.float32)


# --- HPRNet ----------------------------------------------------------------------------------


def test_focal_loss_matches_hand_computation() -> None:
    probs = torch.tensor([0.8, 0.3, 0.1, 0.6])
    target = torch.tensor([1.0, 0.5, 0.0, 1.0])
    logits = torch.log(probs / (1 - probs)).view(1, 1, 1, 4)
    expected = (
        -(
            math.log(0.8) * 0.2**2
            + math.log(0.7) * 0.3**2 * 0.5**4
            + math.log(0.9) * 0.1**2 * 1.0**4
            + math.log(0.6) * 0.4**2
        )
        / 2
    )
    assert focal_loss(logits, target.view(1, 1, 1, 4)).item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_is_zero_for_perfect_heatmaps() -> None:
    target = torch.zeros(1, 2, 16, 16)
    target[0, 0, 5, 7] = 1.0
    target[0, 0, 5, 8] = 0.6  # a Gaussian shoulder, not a peak
    target[0, 1, 9, 3] = 1.0
    perfect = torch.where(target.eq(1), 30.0, -30.0)
    assert focal_loss(perfect, target).item() < 1e-6
    assert focal_loss(torch.zeros_like(target), target).item() > 0.1


def test_reg_l1_ignores_masked_entries() -> None:
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, :, 1, 2] = torch.tensor([1.0, 2.0])  # cell 6
    maps[0, :, 3, 3] = torch.tensor([100.0, -100.0])  # cell 15, masked out
    ind = torch.tensor([[6, 15]])
    target = torch.tensor([[[1.5, 2.0], [0.0, 0.0]]])
    row_mask = torch.tensor([[1.0, 0.0]])
    assert reg_l1_loss(maps, ind, row_mask, target).item() == pytest.approx(0.25, rel=1e-3)
    entry_mask = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    assert reg_l1_loss(maps, ind, entry_mask, target).item() == pytest.approx(0.0, abs=1e-6)
    assert reg_l1_loss(maps, ind, torch.zeros(1, 2), target).item() == 0.0


def wholebody_targets(size: int) -> dict[str, np.ndarray]:
    codec = HPRNetCodec(input_size=(size, size))
    keypoints = person((30, 20, 90, 110), 133, seed=1)[None]
    # Face and hands compact, so their part boxes are part-sized.
    keypoints[0, 23:91] = person((50, 22, 66, 38), 68, seed=2)
    keypoints[0, 91:112] = person((32, 60, 42, 70), 21, seed=3)
    keypoints[0, 112:133] = person((78, 60, 88, 70), 21, seed=4)
    box = np.array([[28, 18, 92, 112]], np.float32)
    return codec.encode(keypoints, np.full((1, 133), 2.0), box)


def test_hprnet_loss_trains_dla34() -> None:
    model, spec = models.build("hprnet_dla34")
    assert spec.codec == "hprnet"
    targets = stack_targets([wholebody_targets(128)])
    image = torch.randn(1, 3, 128, 128)
    criterion = HPRNetLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    model.train()
    losses = []
    for _ in range(4):
        total, parts = criterion(model(image), targets)
        assert torch.isfinite(total)
        assert set(parts) == set(spec.codec_kwargs["heads"])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    # Every supervised term saw a target: the synthetic person has all parts.
    assert all(parts[head] > 0 for head in ("hps", "face_lms", "hand_lms", "wh_face"))
    assert losses[-1] < 0.9 * losses[0], losses


def test_hprnet_loss_averages_stacks() -> None:
    targets = stack_targets([wholebody_targets(64)])
    heads = HPRNET_HEADS
    one = {h: torch.randn(1, c, 16, 16) for h, c in heads.items()}
    two = {h: torch.randn(1, c, 16, 16) for h, c in heads.items()}
    loss = HPRNetLoss()
    single, _ = loss([one], targets)
    double, _ = loss([one, two], targets)
    other, _ = loss(two, targets)
    assert double.item() == pytest.approx((single.item() + other.item()) / 2, rel=1e-5)


# --- ER-Pose ---------------------------------------------------------------------------------


def test_smooth_oks_loss_zero_at_target_and_grows_with_error() -> None:
    target = torch.from_numpy(person((20, 20, 100, 120), 17, seed=5))[None]
    weights = torch.ones(1, 17)
    areas = torch.tensor([80.0 * 100.0])
    sigmas = torch.tensor(COCO.sigmas)
    assert smooth_oks_loss(target, target, weights, areas, sigmas).item() < 1e-6
    direction = torch.randn(1, 17, 2)
    values = [
        smooth_oks_loss(target + e * direction, target, weights, areas, sigmas).item()
        for e in (0.5, 2.0, 8.0, 32.0, 128.0)
    ]
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    # Near the target it is 1 - OKS exactly; far from it, unlike 1 - OKS, it keeps growing.
    near = target + 0.5 * direction
    one_minus_oks = 1 - oks(near[0:1].numpy(), target.numpy(), areas.numpy(), COCO.sigmas)[0, 0]
    assert values[0] == pytest.approx(float(one_minus_oks), rel=1e-3)
    assert values[-1] > 1.5
    # Unannotated keypoints do not count.
    masked = weights.clone()
    masked[0, 0] = 0
    moved = target.clone()
    moved[0, 0] += 50
    assert smooth_oks_loss(moved, target, masked, areas, sigmas).item() < 1e-6


def erpose_targets(size: int) -> dict[str, np.ndarray]:
    codec = ERPoseCodec(input_size=(size, size))
    keypoints = np.stack(
        [
            person((10, 10, 50, 70), 17, seed=6),
            person((70, 40, 120, 120), 17, seed=7),
            person((60, 8, 76, 30), 17, seed=8),
        ]
    )
    return codec.encode(keypoints, np.full((3, 17), 2.0))


def test_erpose_one_to_one_gives_each_person_one_anchor_near_them() -> None:
    loss = ERPoseLoss(COCO.sigmas, topk=10, one_to_one=True)
    anchors, strides = loss.anchors_for((128, 128))
    target = erpose_targets(128)
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.01, 0.2, anchors.shape[0])
    # An untrained model: every keypoint near its anchor's cell.
    predicted = np.repeat((anchors * strides[:, None])[:, None], 17, axis=1)
    predicted += rng.normal(0, 3, predicted.shape)
    result = loss.assign(scores, predicted, target, anchors, strides)
    chosen = result.one_to_one
    assert (chosen >= 0).all() and len(set(chosen.tolist())) == 3
    for p, anchor in enumerate(chosen):
        keypoints = target["keypoints"][p]
        low, high = keypoints.min(0), keypoints.max(0)
        where = anchors[anchor] * strides[anchor]
        slack = strides[anchor] / 2
        assert (where >= low - slack).all() and (where <= high + slack).all()
    # Scores are supervised at those anchors only; regression at up to topk+1 per person.
    assert set(np.nonzero(result.score_target)[0]) <= set(chosen.tolist())
    for p in range(3):
        assert 1 <= (result.people == p).sum() <= 11
        assert chosen[p] in result.anchors[result.people == p]
    # One-to-many scoring marks every regressed anchor.
    many = ERPoseLoss(COCO.sigmas, topk=10, one_to_one=False)
    spread = many.assign(scores, predicted, target, anchors, strides)
    assert (spread.score_target > 0).sum() > 3


def test_erpose_assignment_prefers_the_better_prediction() -> None:
    loss = ERPoseLoss(COCO.sigmas, topk=5)
    anchors, strides = loss.anchors_for((128, 128))
    target = {k: v[:1] for k, v in erpose_targets(128).items()}
    predicted = np.repeat((anchors * strides[:, None])[:, None], 17, axis=1)
    inside = loss.candidates(target["keypoints"], target["keypoint_weights"] > 0, anchors, strides)
    good = np.nonzero(inside[0])[0][3]
    predicted[good] = target["keypoints"][0]
    result = loss.assign(np.full(anchors.shape[0], 0.1), predicted, target, anchors, strides)
    assert result.one_to_one[0] == good
    assert result.score_target[good] == pytest.approx(1.0, abs=1e-3)


def test_erpose_loss_trains_erpose_n() -> None:
    model, spec = models.build("erpose_n")
    assert spec.codec == "erpose"
    criterion = ERPoseLoss(COCO.sigmas)
    target = erpose_targets(128)
    image = torch.rand(1, 3, 128, 128)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(8):
        total, parts = criterion(model(image), [target])
        assert torch.isfinite(total) and set(parts) == {"score", "keypoints", "visibility"}
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert min(losses[-3:]) < 0.8 * losses[0], losses


def test_erpose_loss_handles_an_image_without_people() -> None:
    model, _ = models.build("erpose_n")
    model.train()
    empty = ERPoseCodec(input_size=(64, 64)).encode(np.zeros((0, 17, 2)), np.zeros((0, 17)))
    total, parts = ERPoseLoss(COCO.sigmas)(model(torch.rand(1, 3, 64, 64)), [empty])
    total.backward()
    assert parts["keypoints"].item() == 0 and parts["score"].item() > 0


# --- transforms ------------------------------------------------------------------------------


def dotted_sample(
    size: tuple[int, int], points: np.ndarray, flags: np.ndarray | None = None
) -> BottomUpSample:
    """A dark image with a bright 3x3 dot at each keypoint of one person."""
    w, h = size
    image = np.zeros((h, w, 3), np.uint8)
    for x, y in points.round().astype(int):
        image[y - 1 : y + 2, x - 1 : x + 2] = 255
    k = points.shape[0]
    flags = np.full(k, 2.0) if flags is None else flags
    keypoints = np.concatenate([points, flags[:, None]], -1)[None].astype(np.float32)
    box = np.array([[*points.min(0) - 2, *points.max(0) + 2]], np.float32)
    return BottomUpSample(image, keypoints, box)


def assert_on_dots(sample: BottomUpSample) -> int:
    """Every flagged keypoint sits on a bright pixel; returns how many were checked."""
    checked = 0
    for x, y, flag in sample.keypoints.reshape(-1, 3):
        if flag > 0:
            assert sample.image[int(round(y)), int(round(x))].max() > 100, (x, y)
            checked += 1
    return checked


def test_random_affine_keeps_keypoints_on_their_content() -> None:
    points = np.array([[40.0, 30.0], [150.0, 90.0], [100.0, 60.0], [20.0, 100.0]])
    sample = dotted_sample((200, 120), np.round(points))
    affine = RandomAffine(
        256, np.arange(4), scale=(0.8, 1.2), rotation=30, translate=0.05, flip_prob=0.5
    )
    rng = np.random.default_rng(3)
    for _ in range(6):
        out = affine(sample, rng)
        assert out.image.shape == (256, 256, 3)
        assert assert_on_dots(out) >= 3
        # The box still holds every visible keypoint.
        visible = out.keypoints[0, out.keypoints[0, :, 2] > 0, :2]
        assert (visible >= out.boxes[0, :2] - 1e-3).all()
        assert (visible <= out.boxes[0, 2:] + 1e-3).all()


def test_flip_swaps_left_and_right() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(20, 100, (17, 2)).round()
    sample = dotted_sample((128, 128), points)
    flip = RandomAffine(128, COCO.flip_indices, scale=(1, 1), translate=0.0, flip_prob=1.0)
    out = flip(sample, rng)
    left_shoulder, right_shoulder = COCO.index("left_shoulder"), COCO.index("right_shoulder")
    # At zoom 1 and no shift the flip is x -> 127 - x; the left shoulder takes the right's place.
    np.testing.assert_allclose(out.keypoints[0, left_shoulder, 0], 127 - points[right_shoulder, 0])
    np.testing.assert_allclose(out.keypoints[0, left_shoulder, 1], points[right_shoulder, 1])
    np.testing.assert_allclose(out.keypoints[0, COCO.index("nose"), 0], 127 - points[0, 0])
    assert assert_on_dots(out) == 17
    np.testing.assert_array_equal(out.image, sample.image[:, ::-1])


def test_flip_swaps_hand_boxes() -> None:
    points = np.random.default_rng(1).uniform(20, 100, (133, 2)).round()
    sample = dotted_sample((128, 128), points)
    sample.part_boxes = np.array([[[50, 10, 70, 30], [10, 60, 30, 80], [90, 60, 110, 80]]], float)
    sample.part_valid = np.array([[1, 1, 0]])
    out = RandomAffine(128, WHOLEBODY.flip_indices, scale=(1, 1), translate=0.0, flip_prob=1.0)(
        sample, np.random.default_rng(0)
    )
    # The right hand (90..110) mirrors to 17..37 and becomes the left hand, flags with it.
    np.testing.assert_allclose(out.part_boxes[0, 1], [17, 60, 37, 80])
    np.testing.assert_allclose(out.part_boxes[0, 2], [97, 60, 117, 80])
    np.testing.assert_array_equal(out.part_valid[0], [1, 0, 1])
    assert assert_on_dots(out) == 133


def test_letterbox_round_trip() -> None:
    points = np.array([[10.0, 10.0], [290.0, 140.0], [150.0, 75.0]])
    sample = dotted_sample((300, 150), points)
    out = letterbox(sample, 160)
    assert out.image.shape == (160, 160, 3)
    assert assert_on_dots(out) == 3
    back = cv2.transform(
        out.keypoints[..., :2].astype(np.float64), cv2.invertAffineTransform(out.matrix)
    )
    np.testing.assert_allclose(back[0], points, atol=1e-4)


def test_mosaic_keeps_keypoints_on_their_content() -> None:
    rng = np.random.default_rng(5)
    samples = [
        dotted_sample((w, h), rng.uniform(8, min(w, h) - 8, (17, 2)).round())
        for w, h in ((160, 120), (100, 140), (140, 140), (120, 90))
    ]
    mosaic = Mosaic(RandomAffine(128, COCO.flip_indices, scale=(0.9, 1.1), translate=0.05))
    checked = 0
    for _ in range(4):
        out = mosaic(samples, rng)
        assert out.image.shape == (128, 128, 3)
        assert out.keypoints.shape[1:] == (17, 3)
        checked += assert_on_dots(out)
    assert checked > 17
