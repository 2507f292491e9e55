"""The model zoo: sizes against the papers, official key layouts, loading,
input checks, output shapes, ONNX parity, DySample and deformable convolution."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from posegraph import models
from posegraph.models import hrnet
from posegraph.models.cli import main as models_cli
from posegraph.models.dcn import ModulatedDeformConv2d
from posegraph.models.de_hrnet import DySample
from posegraph.models.export import check_parity, export_onnx

# Published parameter counts (millions): HRNet paper (Table 1), SimpleBaseline.
PUBLISHED_PARAMS = {
    "hrnet_w32": 28.5,
    "hrnet_w32_384x288": 28.5,
    "hrnet_w48": 63.6,
    "hrnet_w48_384x288": 63.6,
    "simplebaseline_res50": 34.0,
}
# Published GFLOPs, same sources.
PUBLISHED_GFLOPS = {
    "hrnet_w32": 7.1,
    "hrnet_w32_384x288": 16.0,
    "hrnet_w48": 14.6,
    "hrnet_w48_384x288": 32.9,
    "simplebaseline_res50": 8.9,
}
# YOLOv8-pose parameter counts (Ultralytics), which ER-Pose must stay under.
YOLOV8_POSE_PARAMS = {"erpose_n": 3.3e6, "erpose_s": 11.6e6, "erpose_m": 26.4e6, "erpose_l": 44.4e6}

# The official pose_hrnet W32 layout (deep-high-resolution-net.pytorch), read
# from its module definitions: key -> shape.
OFFICIAL_HRNET_W32_KEYS: dict[str, list[int]] = {
    "conv1.weight": [64, 3, 3, 3],
    "bn1.weight": [64],
    "conv2.weight": [64, 64, 3, 3],
    "bn2.running_var": [64],
    "layer1.0.conv1.weight": [64, 64, 1, 1],
    "layer1.0.conv2.weight": [64, 64, 3, 3],
    "layer1.0.conv3.weight": [256, 64, 1, 1],
    "layer1.0.downsample.0.weight": [256, 64, 1, 1],
    "layer1.0.downsample.1.running_mean": [256],
    "layer1.3.bn3.bias": [256],
    "transition1.0.0.weight": [32, 256, 3, 3],
    "transition1.1.0.0.weight": [64, 256, 3, 3],
    "transition1.1.0.1.running_mean": [64],
    "stage2.0.branches.0.0.conv1.weight": [32, 32, 3, 3],
    "stage2.0.branches.1.3.conv2.weight": [64, 64, 3, 3],
    "stage2.0.fuse_layers.0.1.0.weight": [32, 64, 1, 1],
    "stage2.0.fuse_layers.0.1.1.weight": [32],
    "stage2.0.fuse_layers.1.0.0.0.weight": [64, 32, 3, 3],
    "transition2.2.0.0.weight": [128, 64, 3, 3],
    "stage3.0.branches.2.0.conv1.weight": [128, 128, 3, 3],
    "stage3.3.fuse_layers.0.2.0.weight": [32, 128, 1, 1],
    "stage3.3.fuse_layers.2.0.0.0.weight": [32, 32, 3, 3],
    "stage3.3.fuse_layers.2.0.1.0.weight": [128, 32, 3, 3],
    "stage3.3.fuse_layers.2.1.0.0.weight": [128, 64, 3, 3],
    "transition3.3.0.0.weight": [256, 128, 3, 3],
    "stage4.0.branches.3.3.bn2.num_batches_tracked": [],
    "stage4.0.fuse_layers.3.0.2.0.weight": [256, 32, 3, 3],
    "stage4.0.fuse_layers.3.2.0.0.weight": [256, 128, 3, 3],
    "stage4.1.fuse_layers.1.3.0.weight": [64, 256, 1, 1],
    "stage4.2.fuse_layers.0.3.0.weight": [32, 256, 1, 1],
    "stage4.2.fuse_layers.0.3.1.running_var": [32],
    "final_layer.weight": [17, 32, 1, 1],
    "final_layer.bias": [17],
}
# Every parameter and buffer of the official W32 model, num_batches_tracked included.
OFFICIAL_HRNET_W32_KEY_COUNT = 1754
OFFICIAL_HRNET_W32_ABSENT = (
    "stage4.2.fuse_layers.1.0.0.0.weight",  # the last module fuses into branch 0 only
    "transition1.0.0.bias",  # convs before BN have no bias
)


@pytest.fixture(scope="module")
def hrnet_w32() -> tuple[torch.nn.Module, models.ModelSpec]:
    return models.build("hrnet_w32")


def _meta_build(name: str) -> tuple[torch.nn.Module, models.ModelSpec]:
    spec = models.spec_of(name)
    with torch.device("meta"):
        model, _ = models.build(name)
    return model, spec


# ---------------------------------------------------------------- the zoo


def test_names_and_describe() -> None:
    names = models.names()
    for expected in ("hrnet_w32", "de_hrnet_w32", "hprnet_dla34", "hprnet_hg104", "erpose_n"):
        assert expected in names
    row = models.describe("hrnet_w32")
    assert set(row) == {"name", "paradigm", "skeleton", "input", "params", "gflops"}
    assert row["input"] == "256x192" and row["paradigm"] == "topdown"
    assert models.describe("hprnet_dla34")["skeleton"] == "wholebody133"


@pytest.mark.parametrize("name", ["hrnet_w16_128x96", "de_hrnet_w32"])
def test_hrnet_input_off_its_lowest_stride_is_refused_before_building(name) -> None:
    # 120 is not a multiple of 32: the branches' maps would be a pixel apart in the fuse
    # layers (a broadcast error deep in the forward pass before this check)
    with pytest.raises(ValueError, match=rf"model '{name}': input_size 120x160 .*128x160"):
        models.build(name, input_size=(120, 160))
    assert models.spec_of(name, input_size=(128, 160)).size_divisor == 32


def test_unknown_name_names_the_nearest() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'hrnet_w33'.*hrnet_w32"):
        models.build("hrnet_w33")
    with pytest.raises(ValueError, match="erpose_s"):
        models.describe("erpose-s")


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ValueError, match=r"no setting 'heads_count'.*num_keypoints"):
        models.build("hrnet_w32", heads_count=3)


def test_spec_describes_the_codec(hrnet_w32) -> None:
    _, spec = hrnet_w32
    assert spec.codec == "msra_heatmap" and spec.skeleton == "coco17"
    assert spec.codec_kwargs["heatmap_size"] == (48, 64)
    assert spec.params == models.count_params(hrnet_w32[0])


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_params_match_published(name: str) -> None:
    model, _ = _meta_build(name)
    params = models.count_params(model) / 1e6
    assert params == pytest.approx(PUBLISHED_PARAMS[name], rel=0.005)


@pytest.mark.parametrize("name", sorted(PUBLISHED_GFLOPS))
def test_gflops_match_published(name: str) -> None:
    assert models.describe(name)["gflops"] == pytest.approx(PUBLISHED_GFLOPS[name], rel=0.03)


@pytest.mark.parametrize("name", sorted(YOLOV8_POSE_PARAMS))
def test_erpose_is_smaller_than_yolov8_pose(name: str) -> None:
    model, _ = _meta_build(name)
    assert models.count_params(model) < YOLOV8_POSE_PARAMS[name]


def test_de_hrnet_cost_against_hrnet() -> None:
    # The paper: about 1/5 more parameters and 1/10 more FLOPs than HRNet.
    base, de = models.describe("hrnet_w32"), models.describe("de_hrnet_w32")
    assert 1.15 < de["params"] / base["params"] < 1.25
    assert 1.05 < de["gflops"] / base["gflops"] < 1.2


# ---------------------------------------------------------------- checkpoints


def test_hrnet_w32_has_the_official_layout(hrnet_w32) -> None:
    state = hrnet_w32[0].state_dict()
    assert len(state) == OFFICIAL_HRNET_W32_KEY_COUNT
    for key, shape in OFFICIAL_HRNET_W32_KEYS.items():
        assert key in state, key
        assert list(state[key].shape) == shape, key
    for key in OFFICIAL_HRNET_W32_ABSENT:
        assert key not in state


def test_load_official_style_checkpoint(hrnet_w32, tmp_path) -> None:
    model, _ = hrnet_w32
    # An old-PyTorch, DataParallel checkpoint: "module." prefix, no num_batches_tracked.
    source = {
        f"module.{k}": v.clone() + 1
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "pose_hrnet_w32_256x192.pth"
    torch.save(source, path)
    report = models.load_checkpoint(model, path)
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(model.final_layer.bias, source["module.final_layer.bias"])
    # Our own format round-trips.
    ours = tmp_path / "hrnet_w32.safetensors"
    models.save_checkpoint(model, ours)
    models.load_checkpoint(model, ours)


def test_load_centernet_style_checkpoint() -> None:
    # HPRNet/CenterNet files wrap the weights and keep DLA's ImageNet classifier.
    model, _ = _meta_build("hprnet_dla34")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.base.fc.weight"] = torch.zeros(1000, 512, 1, 1, device="meta")
    report = models.load_checkpoint(model, {"epoch": 140, "state_dict": state})
    assert report.missing == [] and report.unexpected == []
    # CenterNet's DCNv2 layout: offsets and mask from one 27-channel conv.
    offset_mask = model.state_dict()["dla_up.ida_0.proj_1.conv.conv_offset_mask.weight"]
    assert offset_mask.shape == (27, 512, 3, 3)


def test_checkpoint_of_another_architecture_is_rejected(hrnet_w32) -> None:
    other, _ = _meta_build("simplebaseline_res50")
    with pytest.raises(
        ValueError, match=r"checkpoint has keys of SimpleBaseline, model is HRNet: \d+ of 1462"
    ):
        models.load_checkpoint(hrnet_w32[0], other.state_dict())


def test_checkpoint_of_another_width_is_rejected(hrnet_w32) -> None:
    wider, _ = _meta_build("hrnet_w48")
    message = r"other shapes.*transition1.0.0.weight: checkpoint \[48, 256, 3, 3\], model \[32"
    with pytest.raises(ValueError, match=message):
        models.load_checkpoint(hrnet_w32[0], wider.state_dict())


def test_partial_load_reports_keys(hrnet_w32) -> None:
    model, _ = hrnet_w32
    state = dict(model.state_dict())
    del state["final_layer.bias"]
    with pytest.raises(ValueError, match=r"1 keys missing \(first: \['final_layer.bias'\]\)"):
        models.load_checkpoint(model, state)
    report = models.load_checkpoint(model, state, strict=False)
    assert report.missing == ["final_layer.bias"]


def test_hrnet_context_head_starts_as_the_plain_head_and_exports(tmp_path) -> None:
    # Weights without the context head load into a model with it (strict=False) and give
    # the same heatmaps; once its weights grow, the head reads the lower branches, in
    # PyTorch, in NHWC and in the exported ONNX graph alike.
    torch.manual_seed(0)
    overrides = {"input_size": (64, 64)}
    plain, _ = models.build("hrnet_w16_128x96", context_head=False, **overrides)
    model, spec = models.build("hrnet_w16_128x96", context_head=True, **overrides)
    report = models.load_checkpoint(model, plain.state_dict(), strict=False)
    assert report.missing == [f"final_context.{i}.weight" for i in range(3)]
    with pytest.raises(ValueError, match=r"3 keys missing \(first: \['final_context.0.weight'"):
        models.load_checkpoint(model, plain.state_dict())
    plain.eval()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
        for conv in model.final_context:
            conv.weight.normal_(0, 0.1)
        heatmaps = model(x)
        assert (heatmaps - plain(x)).abs().max() > 1e-2
        nhwc = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert torch.allclose(nhwc, heatmaps, atol=1e-5)
    path = export_onnx(model, spec, tmp_path / "context.onnx")
    assert check_parity(model, path, x) < 1e-3


# ---------------------------------------------------------------- inputs and outputs


def test_wrong_inputs_are_explained(hrnet_w32) -> None:
    model, _ = hrnet_w32
    with pytest.raises(ValueError, match=r"expected input width x height 192x256, got 160x256"):
        model(torch.zeros(1, 3, 256, 160))
    with pytest.raises(ValueError, match=r"expected 3 colour channels, got 1"):
        model(torch.zeros(1, 1, 256, 192))
    dla, _ = _meta_build("hprnet_dla34")
    with pytest.raises(ValueError, match=r"multiples of 32, got 500x512; pad the image to 512x512"):
        dla(torch.zeros(1, 3, 512, 500, device="meta"))


def _expected_shapes(name: str, spec: models.ModelSpec) -> object:
    w, h = spec.input_size
    k = spec.num_keypoints
    if spec.codec == "msra_heatmap":
        return (1, k, h // 4, w // 4)
    if spec.codec == "regression_label":
        return (1, k, 2)
    if spec.codec == "erpose":
        anchors = sum((h // s) * (w // s) for s in (8, 16, 32))
        return (1, anchors, 1 + 3 * k)
    heads = spec.codec_kwargs["heads"]
    return {head: (1, c, h // 4, w // 4) for head, c in heads.items()}


def _shapes(output: object) -> object:
    if isinstance(output, dict):
        return {k: tuple(v.shape) for k, v in output.items()}
    return tuple(output.shape)


@pytest.mark.parametrize("name", models.names())
def test_output_shapes(name: str) -> None:
    # On the meta device: real input sizes, no arithmetic.
    model, spec = _meta_build(name)
    w, h = spec.input_size
    model.eval()
    with torch.no_grad():
        output = model(torch.zeros(1, 3, h, w, device="meta"))
    assert _shapes(output) == _expected_shapes(name, spec)


def test_training_outputs_of_whole_image_models() -> None:
    hourglass, _ = _meta_build("hprnet_hg104")
    # Batch 2: training-mode BN needs more than one value at the 1x1 bottom level.
    stacks = hourglass.train()(torch.zeros(2, 3, 128, 128, device="meta"))
    assert len(stacks) == 2 and stacks[1]["hand_lms"].shape == (2, 84, 32, 32)
    assert stacks[0]["hm"].shape == (2, 1, 32, 32)
    erpose, _ = _meta_build("erpose_n")
    levels = erpose.train()(torch.zeros(1, 3, 64, 96, device="meta"))
    assert [tuple(t.shape) for t in levels] == [(1, 52, 8, 12), (1, 52, 4, 6), (1, 52, 2, 3)]


def test_heatmap_heads_start_with_the_focal_prior() -> None:
    model, _ = models.build("hprnet_dla34")
    assert torch.allclose(model.hm[-1].bias, torch.tensor(-2.19))
    assert torch.allclose(model.hm_hp[-1].bias, torch.tensor(-2.19))
    assert torch.count_nonzero(model.hps[-1].bias) == 0


# ---------------------------------------------------------------- ONNX

# One member per family, the smallest variant, small inputs: (name, overrides, export size).
ONNX_CASES = [
    ("hrnet_w32", {"input_size": (64, 64)}, None),
    ("de_hrnet_w32", {"input_size": (64, 64)}, None),
    ("simplebaseline_res50", {"input_size": (64, 64)}, None),
    ("regression_res50", {"input_size": (64, 64)}, None),
    ("hprnet_dla34", {}, (64, 64)),
    ("erpose_n", {}, (96, 64)),
]


@pytest.mark.parametrize(("name", "overrides", "size"), ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_export_matches_pytorch(name, overrides, size, tmp_path) -> None:
    model, spec = models.build(name, **overrides)
    model.eval()
    path = export_onnx(model, spec, tmp_path / f"{name}.onnx", input_size=size)
    w, h = size or spec.input_size
    # Batch 2 against a graph traced with batch 1: the batch axis is dynamic.
    x = torch.randn(2, 3, h, w)
    assert check_parity(model, path, x) < 1e-3


@pytest.mark.parametrize(("name", "overrides", "size"), ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_channels_last_matches_contiguous(name, overrides, size) -> None:
    # Training keeps weights and inputs in NHWC; every family must give the same outputs
    # (no .view() on a tensor that is only contiguous in NCHW order).
    torch.manual_seed(0)
    model, spec = models.build(name, **overrides)
    model.eval()
    w, h = size or spec.input_size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        expected = model(x)
        model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    flat = lambda out: list(out.values()) if isinstance(out, dict) else [out]  # noqa: E731
    for a, b in zip(flat(expected), flat(got), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- building blocks


def test_dysample_by_hand() -> None:
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).expand(1, 4, 2, 2).contiguous()
    up = DySample(4, scale=2, groups=4)
    # The reference layout: (x, y) x 4 groups x 2 x 2 sub-pixels, offsets of +-1/4 pixel.
    assert up.offset.weight.shape == (32, 4, 1, 1)
    assert up.init_pos.shape == (1, 32, 1, 1)
    assert up.init_pos.view(2, 4, 4)[0, 0].tolist() == [-0.25, 0.25, -0.25, 0.25]
    assert up.init_pos.view(2, 4, 4)[1, 0].tolist() == [-0.25, -0.25, 0.25, 0.25]
    torch.nn.init.zeros_(up.offset.weight)
    # Zero offsets: bilinear, sample points at x/2 - 1/4 clamped to the border.
    ramp = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = ramp.view(1, 4) + 2 * ramp.view(4, 1)
    assert torch.allclose(up(x)[0, 2], expected)
    # A learned x offset of +1/2 pixel (bias 2, scaled by 1/4) moves every sample right.
    with torch.no_grad():
        up.offset.bias[:16] = 2.0
    shifted = torch.tensor([0.25, 0.75, 1.0, 1.0])
    assert torch.allclose(up(x)[0, 1], shifted.view(1, 4) + 2 * ramp.view(4, 1))


def test_deformable_conv_against_plain_conv() -> None:
    torch.manual_seed(0)
    dcn = ModulatedDeformConv2d(4, 6)
    x = torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        dcn.conv_offset_mask.bias[18:] = 30.0  # mask -> 1
        plain = F.conv2d(x, dcn.weight, dcn.bias, padding=1)
        assert torch.allclose(dcn(x), plain, atol=1e-5)
        # dx = +1 on every tap (odd channels of cat(o1, o2)) reads one pixel to the right.
        dcn.conv_offset_mask.bias[1:18:2] = 1.0
        shifted = F.conv2d(F.pad(x[..., 1:], (0, 1)), dcn.weight, dcn.bias, padding=1)
        assert torch.allclose(dcn(x)[..., 1:], shifted[..., 1:], atol=1e-5)


def test_deformable_conv_in_bfloat16_on_a_channels_last_map_matches_float32() -> None:
    # HPRNet's up-path gives its deformable convs channels-last bfloat16 maps of this size,
    # which torch's CPU grid_sample reads garbage from (values of 1e38, NaN).
    torch.manual_seed(0)
    dcn = ModulatedDeformConv2d(64, 32).eval()
    with torch.no_grad():
        dcn.conv_offset_mask.weight.normal_(0.0, 0.05)  # offsets of a few pixels
    x = torch.randn(1, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    low = ModulatedDeformConv2d(64, 32).eval()
    low.load_state_dict(dcn.state_dict())
    low.bfloat16()
    with torch.inference_mode():
        want = dcn(x)
        got = low(x.bfloat16()).float()
    assert torch.isfinite(got).all()
    error = (got - want).abs().mean() / want.abs().mean()
    assert error < 0.02, f"bfloat16 off float32 by {error:.3g} of its mean magnitude"


# ---------------------------------------------------------------- command line


def test_cli_json(capsys) -> None:
    assert models_cli(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == models.names()
    keys = {"name", "paradigm", "skeleton", "input", "params", "gflops", "builtin"}
    assert all(set(row) == keys for row in rows)
    shipped = {row["name"] for row in rows if row["builtin"]}
    erpose = {"erpose_n_320", "erpose_n_416", "erpose_n_512"}
    assert shipped == {"hrnet_w16_128x96", "hprnet_dla34_half_256"} | erpose


def test_cli_table(capsys) -> None:
    assert models_cli([]) == 0
    out = capsys.readouterr().out
    assert "hrnet_w32" in out and "GFLOPs" in out


def test_hrnet_variants_are_rows_of_one_table() -> None:
    assert {name for name in models.names() if name.startswith("hrnet_")} == set(hrnet.VARIANTS)
