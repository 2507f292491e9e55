"""pose.topdown, pose.bottomup, pose.onestage and the decoders: random zoo weights saved to
safetensors here, ONNX models exported here (a zoo HRNet, and a tiny SimCC model with known
peaks), a real inproc pipeline, and the errors that must stop a node before frames flow."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from nodes import decoders
from nodes.crop import (
    DeviceFrames,
    TopDownCrop,
    box_to_center_scale,
    center_scale_to_affine,
    warp_crops,
)
from nodes.pose import BottomUpPose, Normalise, OneStagePose, TopDownPose
from posegraph import Graph, codecs, skeletons
from posegraph.codecs.common import PoseInstances, gaussian_heatmaps
from posegraph.models import build, cpu_has_bfloat16, save_checkpoint
from posegraph.models.export import export_onnx
from posegraph.node import Context, Node, NodeError
from posegraph.packet import Detections, Frame
from posegraph.scheduler import DeviceScheduler, bucket_sizes
from tests.conftest import SHARED_DATA

# HRNet takes sizes whose quarter is a multiple of 8 (its four branches halve three times).
SIZE = (64, 96)  # (w, h)
ZOO = {"model": "hrnet_w32", "overrides": {"input_size": list(SIZE)}}
BOXES = np.array([[20, 10, 60, 100], [90, 20, 140, 110]], np.float32)
BOX_SCORES = np.array([0.9, 0.8], np.float32)
FLIP = skeletons.get("coco17").flip_indices


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hrnet(tmp_path_factory):
    """A random HRNet-W32 at 64x96: the model, its safetensors and its ONNX export."""
    folder = tmp_path_factory.mktemp("hrnet")
    torch.manual_seed(0)
    model, spec = build("hrnet_w32", input_size=SIZE)
    model.eval()
    weights = folder / "hrnet.safetensors"
    save_checkpoint(model, weights)
    onnx = export_onnx(model, spec, folder / "hrnet.onnx")
    return {"model": model, "spec": spec, "weights": str(weights), "onnx": str(onnx)}


def started(node: Node, name: str = "node") -> Node:
    node.setup(Context(name))
    return node


def cropped_frame(boxes: np.ndarray = BOXES, images: bool = True, seed: int = 0) -> Frame:
    """A 160x120 frame with known boxes, cropped by a real crop.topdown at SIZE."""
    image = np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    frame = Frame("cam", 0, image=image)
    frame.detections = Detections(boxes, BOX_SCORES[: len(boxes)], np.zeros(len(boxes)))
    crop = started(TopDownCrop(width=SIZE[0], height=SIZE[1], images=images))
    return crop.process(frame)


def image_point(inverse: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """One crop pixel (x, y) through a (2, 3) matrix, written out by hand."""
    return inverse[:, :2] @ xy + inverse[:, 2]


class KnownBoxes(Node):
    """Puts BOXES on every frame, as a detector would."""

    def process(self, frame: Frame) -> Frame:
        return frame.replace(detections=Detections(BOXES, BOX_SCORES, np.zeros(2)))


# --------------------------------------------------------------- a real pipeline


def test_topdown_pipeline_publishes_17_keypoints_inside_each_crop(hrnet, tmp_path):
    out = tmp_path / "poses.jsonl"
    g = Graph("pose")
    cam = g.add("cam", "source.synthetic", width=160, height=120, frames=3)
    people = g.add("people", f"{__name__}:KnownBoxes", cam)
    crop = g.add("crop", "crop.topdown", people, width=SIZE[0], height=SIZE[1])
    pose = g.add("pose", "pose.topdown", crop, weights=hrnet["weights"], **ZOO)
    track = g.add("track", "track.bytetrack", pose)
    g.add("out", "sink.jsonl", track, path=str(out))
    g.run(executor="inproc")

    messages = [json.loads(line) for line in out.read_text().splitlines()]
    frames = [m for m in messages if "event" not in m]
    assert [m["index"] for m in frames] == [0, 1, 2]
    center, scale = box_to_center_scale(BOXES, SIZE[0] / SIZE[1])
    half = scale * 200 / 2
    for m in frames:
        assert m["skeleton"] == "coco17"
        assert len(m["people"]) == 2
        for person in m["people"]:
            kpts = np.array(person["keypoints"])
            assert kpts.shape == (17, 3)
            box_center = (np.array(person["box"][:2]) + person["box"][2:]) / 2
            n = int(np.argmin(np.abs(center - box_center).sum(1)))
            # every keypoint lies in the crop its box was cut into
            assert np.all(np.abs(kpts[:, :2] - center[n]) <= half[n] + 0.01), (n, kpts)
            assert 0 < person["score"] <= 1


# ---------------------------------------------------------------- backends


def test_torch_and_onnxruntime_agree_on_the_same_weights(hrnet):
    frame = cropped_frame()
    torch_node = started(TopDownPose(weights=hrnet["weights"], decode=False, **ZOO))
    ort_node = started(
        TopDownPose(onnx=hrnet["onnx"], model="hrnet_w32", overrides=ZOO["overrides"], decode=False)
    )
    assert ort_node.backend == "onnxruntime"
    a = torch_node.process(frame).meta["pose_outputs"]["outputs"]["heatmaps"]
    b = ort_node.process(frame).meta["pose_outputs"]["outputs"]["heatmaps"]
    assert a.shape == b.shape == (2, 17, SIZE[1] // 4, SIZE[0] // 4)
    assert np.abs(a - b).max() < 1e-3

    # decoding here or in decode.heatmap is one code path
    in_place = started(TopDownPose(weights=hrnet["weights"], **ZOO)).process(frame).poses
    raw = torch_node.process(frame)
    apart = started(decoders.HeatmapDecoder()).process(raw).poses
    np.testing.assert_array_equal(apart.keypoints, in_place.keypoints)
    np.testing.assert_array_equal(apart.instance_scores, in_place.instance_scores)


@pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU has no bfloat16 in hardware")
@pytest.mark.parametrize("cls", [TopDownPose, OneStagePose, BottomUpPose])
def test_bf16_on_the_cpu_runs_its_own_model_near_float32s(hrnet, cls):
    """bf16: the model runs in bfloat16 (a model of its own on the scheduler, not the float32
    one of the same weights), and its outputs, float32 again, stay near float32's. HPRNet
    (the shipped whole-body file) once read garbage in its deformable convolutions."""
    frame = cropped_frame()
    if cls is TopDownPose:
        args: dict = {"weights": hrnet["weights"], **ZOO}
    elif cls is BottomUpPose:
        args = {"model": "hprnet_dla34_half_256", "weights": "builtin"}
    else:
        torch.manual_seed(0)
        model, _ = build("erpose_n")
        args = {"model": "erpose_n", "input_size": [128, 128], "weights": None}
        folder = Path(hrnet["weights"]).parent
        save_checkpoint(model, folder / "erpose.safetensors")
        args["weights"] = str(folder / "erpose.safetensors")
    fp32 = started(cls(decode=False, **args)).process(frame).meta["pose_outputs"]["outputs"]
    bf16 = started(cls(decode=False, bf16=True, **args)).process(frame).meta["pose_outputs"]
    key = next(iter(fp32))
    a, b = fp32[key], bf16["outputs"][key]
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    scale = np.abs(a).max()
    assert 0 < np.abs(a - b).max() < 0.05 * scale, (np.abs(a - b).max(), scale)


def test_simcc_onnx_decodes_known_peaks_to_image_pixels(tmp_path):
    w, h = SIZE
    ratio = 2
    k = np.arange(17)
    peaks = np.stack([5 + 7 * k, 9 + 11 * k], axis=1)  # bins, inside (w*2, h*2)

    class PeakSimCC(nn.Module):
        """Outputs a one-hot at a known bin per keypoint, whatever the crop."""

        def __init__(self):
            super().__init__()
            x = torch.zeros(17, w * ratio)
            y = torch.zeros(17, h * ratio)
            x[k, peaks[:, 0]] = 1
            y[k, peaks[:, 1]] = 1
            self.register_buffer("x", x)
            self.register_buffer("y", y)

        def forward(self, images):
            zero = images[:, :1, 0, :1] * 0  # (B, 1, 1): keeps the batch axis dynamic
            return self.x + zero, self.y + zero

    path = tmp_path / "simcc.onnx"
    torch.onnx.export(
        PeakSimCC(),
        (torch.zeros(1, 3, h, w),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["simcc_x", "simcc_y"],
        dynamic_axes={"input": {0: "b"}, "simcc_x": {0: "b"}, "simcc_y": {0: "b"}},
    )
    node = started(
        TopDownPose(onnx=str(path), codec="simcc", codec_kwargs={"split_ratio": ratio}, batch=4)
    )
    assert node.input_size == SIZE  # read from the model's static input
    frame = cropped_frame(images=False)  # matrices only: the node crops
    poses = node.process(frame).poses
    inverse = frame.meta["crops"]["inverse"]
    for n in range(2):
        want = np.array([image_point(inverse[n], p / ratio) for p in peaks])
        np.testing.assert_allclose(poses.keypoints[n], want, atol=1e-4)
    np.testing.assert_allclose(poses.scores, 1.0)
    np.testing.assert_allclose(poses.instance_scores, BOX_SCORES)
    np.testing.assert_array_equal(poses.boxes, BOXES)


# ------------------------------------------------------------------ decoding


def heatmaps_with_peaks(points: np.ndarray, heatmap_size=(16, 24), sigma=2.0) -> np.ndarray:
    """(N, K, H, W) Gaussians centred on ``points`` (N, K, 2) in heatmap pixels, drawn over the
    whole map (DARK's refinement is exact only on untruncated Gaussians)."""
    maps, _ = gaussian_heatmaps(
        points, np.ones(points.shape[:2]), heatmap_size, sigma, truncate=False
    )
    return maps


def test_heatmap_decoder_maps_a_known_peak_back_through_the_inverse_affine():
    frame = cropped_frame()
    rng = np.random.default_rng(1)
    # a heatmap as large as the crop, so that the peaks lie far from the borders that bias
    # DARK's blur
    peaks = rng.integers(16, 48, (2, 17, 2)).astype(np.float32)
    scores = np.linspace(0.1, 0.9, 17, dtype=np.float32)
    heatmaps = heatmaps_with_peaks(peaks, heatmap_size=SIZE) * scores[None, :, None, None]
    kwargs = {"input_size": SIZE, "heatmap_size": SIZE, "sigma": 2.0}
    frame.meta["pose_outputs"] = {
        "codec": "msra_heatmap",
        "codec_kwargs": kwargs,
        "skeleton": "coco17",
        "outputs": {"heatmaps": heatmaps},
        "keypoint_threshold": 0.2,
    }
    inverse = frame.meta["crops"]["inverse"]
    want = np.array([[image_point(inverse[n], p) for p in peaks[n]] for n in range(2)])
    for refine in ("quarter", "dark"):
        node = started(decoders.HeatmapDecoder(codec_kwargs={"refine": refine}))
        out = node.process(frame)
        assert "pose_outputs" not in out.meta
        np.testing.assert_allclose(out.poses.keypoints, want, atol=0.05)
    np.testing.assert_allclose(out.poses.scores, np.tile(scores, (2, 1)), atol=1e-5)
    counted = scores[scores > 0.2].mean()
    np.testing.assert_allclose(out.poses.instance_scores, BOX_SCORES * counted, rtol=1e-5)
    assert out.poses.skeleton == "coco17" and list(out.poses.track_ids) == [-1, -1]
    with pytest.raises(NodeError, match="decode.heatmap"):
        started(decoders.SimCCDecoder()).process(frame)


def test_flip_merge_of_heatmaps_and_simcc():
    codec = codecs.build("udp_heatmap", input_size=SIZE, heatmap_size=(16, 24))
    rng = np.random.default_rng(2)
    heatmaps = heatmaps_with_peaks(rng.uniform(3, 12, (1, 17, 2)).astype(np.float32))
    mirrored = heatmaps[:, FLIP, :, ::-1]  # what the model gives on the mirrored crop
    plain, _ = codec.decode(heatmaps)
    merged, _ = decoders.decode_crops(
        codec, {"heatmaps": heatmaps, "heatmaps_flipped": mirrored}, FLIP
    )
    np.testing.assert_allclose(merged, plain, atol=1e-3)
    # a flipped output that disagrees pulls the merge halfway
    other = heatmaps_with_peaks(rng.uniform(3, 12, (1, 17, 2)).astype(np.float32))
    merged, _ = decoders.decode_crops(
        codec, {"heatmaps": heatmaps, "heatmaps_flipped": other}, FLIP
    )
    want, _ = codec.decode((heatmaps + codec.flip_back(other, FLIP)) / 2)
    np.testing.assert_array_equal(merged, want)
    assert np.abs(merged - plain).max() > 1

    simcc = codecs.build("simcc", input_size=SIZE)
    wr, hr = simcc.bins
    x, y = np.zeros((1, 17, wr), np.float32), np.zeros((1, 17, hr), np.float32)
    x[0, np.arange(17), 10 + np.arange(17)] = 1
    y[0, np.arange(17), 30 + np.arange(17)] = 1
    flipped = {"simcc_x_flipped": x[:, FLIP, ::-1], "simcc_y_flipped": y[:, FLIP]}
    merged, scores = decoders.decode_crops(simcc, {"simcc_x": x, "simcc_y": y, **flipped}, FLIP)
    np.testing.assert_allclose(merged, simcc.decode(x, y)[0])
    np.testing.assert_allclose(scores, 1.0)


def test_flip_test_node_averages_the_crops_and_their_mirrors(hrnet):
    frame = cropped_frame()
    node = started(TopDownPose(weights=hrnet["weights"], flip_test=True, **ZOO))
    poses = node.process(frame).poses

    crops = frame.meta["crops"]
    spec = hrnet["spec"]
    blob = Normalise(spec.mean, spec.std, spec.color).numpy(crops["images"])
    with torch.no_grad():
        plain = hrnet["model"](torch.from_numpy(blob)).numpy()
        mirrored = hrnet["model"](torch.from_numpy(blob[..., ::-1].copy())).numpy()
    codec = codecs.build(spec.codec, **spec.codec_kwargs)
    keypoints, _ = codec.decode_flip_test(plain, mirrored, FLIP)
    want = decoders.crops_to_image(keypoints, crops["inverse"])
    np.testing.assert_allclose(poses.keypoints, want, atol=1e-2)
    without, _ = codec.decode(plain)
    assert not np.allclose(decoders.crops_to_image(without, crops["inverse"]), want)


def test_flip_test_on_an_onnx_graph_of_batch_one(hrnet, tmp_path):
    """A graph exported for batch 1 cannot take a crop and its mirror in one call: it runs
    them one by one, with the same result as the dynamic-batch export."""
    path = tmp_path / "hrnet-b1.onnx"
    torch.onnx.export(
        hrnet["model"],
        (torch.zeros(1, 3, SIZE[1], SIZE[0]),),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["heatmaps"],
    )
    # quarter-pixel decoding: on an untrained model's flat maps DARK's step turns the two
    # graphs' float rounding into fractions of a pixel
    quarter = {"refine": "quarter"}
    fixed = started(TopDownPose(onnx=str(path), flip_test=True, codec_kwargs=quarter, **ZOO))
    dynamic = started(TopDownPose(onnx=hrnet["onnx"], flip_test=True, codec_kwargs=quarter, **ZOO))
    try:
        assert fixed.client.handle.buckets == (1,)
        frame = cropped_frame()
        want = dynamic.process(frame).poses.keypoints
        np.testing.assert_allclose(fixed.process(frame).poses.keypoints, want, atol=1e-3)
    finally:
        fixed.close()
        dynamic.close()


# ------------------------------------------------------------ crops on the device


def test_crops_sampled_on_the_device_match_opencvs():
    """grid_sample on an uploaded frame gives cv2.warpAffine's crops: boxes inside, across
    the border and mostly outside a real photo, plain and mirrored."""
    image = cv2.imread(str(SHARED_DATA / "coco-mini" / "000000196141.jpg"))
    height, width = image.shape[:2]
    rng = np.random.default_rng(0)
    corner = rng.uniform([-60, -60], [width, height], (24, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 400, (24, 2))], 1)
    center, scale = box_to_center_scale(boxes, SIZE[0] / SIZE[1])
    affine, inverse = center_scale_to_affine(center, scale, SIZE)
    want = warp_crops(image, affine, SIZE).astype(np.float32)
    assert (want == 0).all(axis=(1, 2, 3)).sum() < 4  # the boxes mostly see the photo

    table = DeviceFrames.on("cpu")
    fid = table.add(image)
    try:
        got = table.crops(DeviceFrames.rows(fid, inverse), SIZE).permute(0, 2, 3, 1).numpy()
        mirrored = table.crops(DeviceFrames.rows(fid, inverse, flip=True), SIZE)
        # OpenCV rounds to uint8 (and samples at 1/32 pixel): half a grey level apart at most
        assert np.abs(got - want).max() < 0.6
        assert np.abs(got - want).mean() < 0.2
        mirrored = mirrored.permute(0, 2, 3, 1).numpy()
        assert np.abs(mirrored - want[:, :, ::-1]).max() < 0.6
    finally:
        table.remove(fid)
    # a row whose frame is gone (padding, a request given up at its deadline) is black
    gone = table.crops(DeviceFrames.rows(fid, inverse[:2]), SIZE)
    padding = table.crops(np.zeros((1, 8), np.float32), SIZE)
    assert float(gone.abs().max()) == float(padding.abs().max()) == 0.0


def test_topdown_pose_cuts_its_crops_on_the_model_device(hrnet):
    """crop_on: device (here torch on the CPU) feeds the model what the OpenCV crops give,
    and leaves no frame behind on the device."""
    frame = cropped_frame(images=False)
    common = {"weights": hrnet["weights"], "decode": False, "flip_test": True, **ZOO}
    on_cpu = started(TopDownPose(crop_on="cpu", **common))
    on_device = started(TopDownPose(crop_on="device", **common))
    assert on_device.device_frames is DeviceFrames.on("cpu")
    assert started(TopDownPose(**common)).crop_on == "cpu"  # auto: OpenCV on a CPU model
    table = DeviceFrames.on("cpu")
    before = len(table)
    want = on_cpu.process(frame).meta["pose_outputs"]["outputs"]
    got = on_device.process(frame).meta["pose_outputs"]["outputs"]
    assert len(table) == before
    for name in ("heatmaps", "heatmaps_flipped"):
        assert got[name].shape == want[name].shape == (2, 17, SIZE[1] // 4, SIZE[0] // 4)
        # the inputs differ by OpenCV's rounding to uint8 only
        assert np.abs(got[name] - want[name]).max() < 0.01 * np.abs(want[name]).max()
    # the mirrored crops are mirrored: their heatmaps are another map
    assert (
        np.abs(got["heatmaps"] - got["heatmaps_flipped"]).max()
        > 0.1 * np.abs(want["heatmaps"]).max()
    )
    # crops that crop.topdown did cut are not used on the device: the same outputs
    again = on_device.process(cropped_frame(images=True)).meta["pose_outputs"]["outputs"]
    np.testing.assert_allclose(again["heatmaps"], got["heatmaps"], atol=1e-6)


def test_bench_crops_times_both_ways_and_checks_they_agree(capsys):
    from posegraph.cli import main

    assert main(["bench", "crops", "--people", "1,3", "--frame", "320x240", "--repeat", "2",
                 "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["frame"] == [320, 240]
    assert result["crop"] == [96, 128]  # the default model's input
    # what it ran on, and how busy the machine was just before
    assert result["machine"].startswith("CPU ") and result["machine"].endswith(" cores")
    assert result["load_before"] >= 0
    cells = {(c["people"], c["mode"]): c for c in result["cells"]}
    assert set(cells) == {(n, m) for n in (1, 3) for m in ("opencv", "device")}
    for cell in cells.values():
        assert cell["ms_p50"] > 0 and cell["speedup"] > 0
        if cell["mode"] == "opencv":
            assert cell["speedup"] == 1.0  # the baseline
        # half a grey level over ImageNet's std (57 to 58), in normalised units
        assert cell["max_diff"] < 0.5 / 57 + 1e-3


# --------------------------------------------------------------------- batching


def test_bucket_padding_gives_the_unpadded_result(hrnet):
    """Crops padded up to a bucket give the outputs they give alone."""
    assert bucket_sizes(8) == (1, 2, 4, 8) and bucket_sizes(6) == (1, 2, 4, 6)
    assert bucket_sizes(1) == (1,)
    spec = hrnet["spec"]
    normalise = Normalise(spec.mean, spec.std, spec.color)
    seen: list[int] = []

    def model(images: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(len(images))
        with torch.no_grad():
            return {"heatmaps": hrnet["model"](torch.from_numpy(normalise.numpy(images))).numpy()}

    crops = np.random.default_rng(3).integers(0, 256, (5, SIZE[1], SIZE[0], 3), np.uint8)
    scheduler = DeviceScheduler("cpu")
    try:
        padded = scheduler.register("padded", model, (2, 4)).run(crops)
        assert seen == [4, 2]  # 5 crops: a full bucket of 4, then 1 padded up to 2
        seen.clear()
        alone = scheduler.register("alone", model, (1,)).run(crops)
        assert seen == [1] * 5
    finally:
        scheduler.close()
    assert padded.done.all() and alone.done.all()
    assert padded.outputs["heatmaps"].shape == alone.outputs["heatmaps"].shape == (5, 17, 24, 16)
    np.testing.assert_allclose(padded.outputs["heatmaps"], alone.outputs["heatmaps"], atol=1e-5)


# --------------------------------------------------------------- whole image


def test_whole_image_poses_map_back_through_the_letterbox():
    from nodes.detectors import Letterbox

    instances = PoseInstances(
        boxes=np.array([[8, 8, 72, 56]], np.float32),
        scores=np.array([0.7], np.float32),
        keypoints=np.array([[[64, 48], [16, 24]]], np.float32),
        keypoint_scores=np.array([[0.5, 0.6]], np.float32),
    )
    poses, found = decoders.whole_image_poses(
        instances, Letterbox((0.8, 0.8), (0.0, 4.0), (160, 120)), "coco17"
    )
    np.testing.assert_allclose(poses.keypoints[0], [[80, 55], [20, 25]])
    np.testing.assert_allclose(found.xyxy[0], [10, 5, 90, 65])
    np.testing.assert_allclose(poses.boxes, found.xyxy)


@pytest.mark.parametrize(
    ("cls", "decoder", "codec_kwargs", "skeleton", "people"),
    [
        (
            BottomUpPose,
            decoders.HPRNetDecoder,
            {"center_threshold": 0.0, "top_k": 4},
            "wholebody133",
            4,
        ),
        (
            OneStagePose,
            decoders.ERPoseDecoder,
            {"score_threshold": 0.0, "max_people": 3},
            "coco17",
            3,
        ),
    ],
)
def test_whole_image_models_write_well_formed_poses(cls, decoder, codec_kwargs, skeleton, people):
    torch.manual_seed(0)
    frame = cropped_frame()
    args = {"allow_random": True, "input_size": [128, 128], "codec_kwargs": codec_kwargs}
    out = started(cls(**args)).process(frame)
    poses = out.poses
    k = skeletons.get(skeleton).num_keypoints
    assert poses.skeleton == skeleton
    assert poses.keypoints.shape == (people, k, 2) and poses.scores.shape == (people, k)
    assert np.isfinite(poses.keypoints).all() and np.isfinite(poses.scores).all()
    assert len(out.detections) == people
    np.testing.assert_array_equal(out.detections.xyxy, poses.boxes)
    assert (poses.boxes[:, 2:] <= (160, 120)).all() and (poses.boxes >= 0).all()

    # the same through the separate decoder node
    torch.manual_seed(0)
    raw = started(cls(decode=False, **args)).process(frame)
    assert raw.meta["pose_outputs"]["letterbox"]["scale"] == [0.8, 0.8]
    again = started(decoder()).process(raw)
    np.testing.assert_allclose(again.poses.keypoints, poses.keypoints, atol=1e-3)


# ---------------------------------------------------------------------- errors


def test_weights_of_another_model_stop_setup(tmp_path):
    other, _ = build("erpose_n")
    path = tmp_path / "erpose.safetensors"
    save_checkpoint(other, path)
    with pytest.raises(NodeError, match=r"do not fit hrnet_w32.*ER-Pose"):
        started(TopDownPose(weights=str(path), **ZOO))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weights": "/nowhere/hrnet.safetensors", **ZOO}, "weights file not found"),
        (ZOO, "allow_random: true"),
        ({"onnx": "/nowhere/model.onnx", "codec": "simcc"}, "onnx model not found"),
        ({"model": "erpose_n", "allow_random": True}, "onestage model: use pose.onestage"),
        ({"model": "hrnet_w3", "allow_random": True}, "did you mean"),
    ],
)
def test_bad_setup_is_a_clear_error(params, message):
    with pytest.raises(NodeError, match=message):
        started(TopDownPose(**params))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"backend": "onnxruntime"}, "needs an onnx model file"),
        ({"onnx": "m.onnx", "weights": "w.pth"}, "carries its weights"),
        ({"fp16": True}, "fp16 runs with backend torch on a cuda device"),
        ({"fp16": True, "bf16": True, "device": "cuda"}, "fp16 and bf16: choose one"),
        ({"onnx": "m.onnx", "codec": "simcc", "bf16": True}, "bf16 runs with backend torch"),
        ({"codec": "hprnet", "onnx": "m.onnx"}, "pose.topdown decodes"),
        ({"device": "gpu"}, "use cpu, cuda or cuda:N"),
        ({"crop_on": "gpu"}, "crop_on 'gpu': use auto, cpu or device"),
        ({"onnx": "m.onnx", "codec": "simcc", "crop_on": "device"}, "needs backend torch"),
    ],
)
def test_bad_parameters_are_a_clear_error(params, message):
    with pytest.raises(NodeError, match=message):
        TopDownPose(**params)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(NodeError, match="torch sees 0 CUDA devices"):
        started(TopDownPose(device="cuda", allow_random=True, **ZOO))


def test_onnx_model_of_another_keypoint_set_is_a_clear_error(hrnet):
    with pytest.raises(NodeError, match="has 17 keypoints, skeleton wholebody133 has 133"):
        started(TopDownPose(onnx=hrnet["onnx"], codec="msra_heatmap", skeleton="wholebody133"))
    with pytest.raises(NodeError, match="unknown skeleton 'coco18'"):
        started(TopDownPose(onnx=hrnet["onnx"], codec="msra_heatmap", skeleton="coco18"))


def test_crops_of_another_size_are_a_clear_error():
    node = started(TopDownPose(allow_random=True, **ZOO))
    frame = started(TopDownCrop(width=48, height=64)).process(cropped_frame())
    with pytest.raises(NodeError, match="crops are \\[48, 64\\], the model takes \\[64, 96\\]"):
        node.process(frame)
