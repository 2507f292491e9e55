"""The weights that ship with posegraph: fp16, under the size budget, each loading into its
zoo model, each with a model card that says how it was made and what it scores."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from nodes.pose import TopDownPose
from posegraph import codecs, skeletons, weights
from posegraph.models import build, load_checkpoint
from posegraph.node import Context, NodeError
from tests.helpers.people import person_at_heading
from training.evaluate import to_tensor
from training.transforms.topdown import TopDownAffine, box_to_center_scale

SHIPPED = weights.available()
CARD_MUST_SAY = ("training/configs/", "posegraph train", "posegraph eval", "AP", "steps")


def test_the_default_models_ship_under_60_mb():
    files = {"hrnet_w16_128x96", "erpose_n_320", "hprnet_dla34_half_256"}
    assert {p.stem for p in SHIPPED.values()} == files
    assert set(SHIPPED) == files | {"erpose_n_416", "erpose_n_512"}  # erpose_n_320's file
    assert sum(p.stat().st_size for p in set(SHIPPED.values())) < 60 * 2**20


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_are_fp16_and_load_into_their_model(name):
    path = weights.path(name)
    with safe_open(str(path), "pt") as f:
        dtypes = {f.get_tensor(key).dtype for key in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes, dtypes
    model, _ = build(name)
    load_checkpoint(model, path)  # raises on a missing, extra or misshapen tensor
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_model_has_a_card(name):
    card = weights.card(name)
    for needed in CARD_MUST_SAY:
        assert needed in card, f"{name}.md does not say {needed!r}"


def test_builtin_for_a_model_without_shipped_weights_is_a_clear_error():
    node = TopDownPose(model="hrnet_w32", weights="builtin")
    with pytest.raises(NodeError, match=r"no built-in weights for 'hrnet_w32'.*hrnet_w16_128x96"):
        node.setup(Context("pose"))
    with pytest.raises(ValueError, match="they ship for"):
        weights.path("hrnet_w48")


def test_shipped_hrnet_puts_left_and_right_on_their_sides_for_people_facing_the_camera():
    """Facing the camera, a person's left is on the image right. A model that learnt one map
    for both sides (as this one did on synthetic people drawn at every heading) puts the
    left and right shoulder on one point and fails this. People facing away still get
    their sides swapped by the shipped model (see its card): not tested here."""
    model, spec = build("hrnet_w16_128x96")
    load_checkpoint(model, weights.path("hrnet_w16_128x96"))
    model.eval()
    codec = codecs.build(spec.codec, **spec.codec_kwargs)
    transform = TopDownAffine(spec.input_size, skeletons.get("coco17").flip_indices)
    right, total = 0, 0
    for seed in range(6):
        for yaw in (-0.6, 0.0, 0.6):
            sample = person_at_heading(yaw, seed, grey=110)
            truth = sample.keypoints[0, :17]
            assert truth[5, 0] > truth[6, 0] and truth[11, 0] > truth[12, 0]
            center, scale = box_to_center_scale(sample.boxes[0], transform.aspect_ratio)
            crop = transform(sample.image, truth, center, scale)
            with torch.no_grad():
                heatmaps = model(to_tensor(crop.image[None], spec)).numpy()
            points = codec.decode(heatmaps)[0][0]
            for left, right_side in ((5, 6), (11, 12)):  # shoulders, hips
                total += 1
                right += bool(points[left, 0] > points[right_side, 0] + 1.0)
    assert right >= 0.9 * total, f"left on the image right for {right} of {total} pairs"
