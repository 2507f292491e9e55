"""The weights that ship with posegraph: fp16, under the size budget, each loading into its
zoo model, each with a model card that says how it was made and what it scores."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from nodes.pose import TopDownPose
from posegraph import weights
from posegraph.models import build, load_checkpoint
from posegraph.node import Context, NodeError

SHIPPED = weights.available()
CARD_MUST_SAY = ("training/configs/", "posegraph train", "posegraph eval", "AP", "steps")


def test_the_default_models_ship_under_60_mb():
    assert set(SHIPPED) == {"hrnet_w16_128x96", "erpose_n_320", "hprnet_dla34_half_256"}
    assert sum(p.stat().st_size for p in SHIPPED.values()) < 60 * 2**20


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
