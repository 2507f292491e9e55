"""Codecs: encode then decode gives the keypoints back; flips, bottom-up grouping, NMS."""

import subprocess
import sys

import numpy as np
import pytest

from posegraph import codecs, skeletons
from posegraph.codecs import (
    HPRNET_HEADS,
    ERPoseCodec,
    HPRNetCodec,
    MSRAHeatmap,
    RegressionLabel,
    SimCCLabel,
    UDPHeatmap,
    keypoints_to_raw,
    oks,
    raw_to_keypoints,
)

COCO = skeletons.coco17


def random_keypoints(input_size, n=6, k=17, margin=40, seed=0):
    """Keypoints away from the borders, where blur and windows see the whole peak."""
    rng = np.random.default_rng(seed)
    w, h = input_size
    return rng.uniform([margin, margin], [w - margin, h - margin], size=(n, k, 2)).astype(
        np.float32
    )


def mirror(keypoints, width):
    """Keypoints of the horizontally flipped image (pixel i -> width - 1 - i), sides swapped."""
    flipped = keypoints.copy()
    flipped[..., 0] = width - 1 - flipped[..., 0]
    return flipped[:, COCO.flip_indices]


HEATMAP_SETUPS = [((192, 256), (48, 64), 2.0), ((288, 384), (72, 96), 3.0)]


@pytest.mark.parametrize(("input_size", "heatmap_size", "sigma"), HEATMAP_SETUPS)
def test_heatmap_round_trips(input_size, heatmap_size, sigma) -> None:
    keypoints = random_keypoints(input_size)
    stride = input_size[0] / heatmap_size[0]

    dark = MSRAHeatmap(input_size, heatmap_size, sigma, unbiased=True, refine="dark")
    udp = UDPHeatmap(input_size, heatmap_size, sigma)
    for codec in (dark, udp):
        targets = codec.encode(keypoints)
        assert targets["heatmaps"].shape == (6, 17, heatmap_size[1], heatmap_size[0])
        decoded, scores = codec.decode(targets["heatmaps"])
        assert np.abs(decoded - keypoints).max() < 0.05, type(codec).__name__
        assert scores.min() > 0.9

    # Argmax + quarter offset on sub-pixel targets: within a quarter heatmap pixel, and the
    # quarter step must help: without it the error reaches half a pixel.
    quarter = MSRAHeatmap(input_size, heatmap_size, sigma, unbiased=True, refine="quarter")
    decoded, _ = quarter.decode(quarter.encode(keypoints)["heatmaps"])
    error = np.abs(decoded - keypoints) / stride
    assert error.max() <= 0.25 + 1e-4
    integer_only = np.floor(keypoints / stride + 0.5) * stride
    assert np.abs(integer_only - keypoints).max() / stride > 0.4


def test_dark_steps_on_ragged_maps_stay_near_the_maximum_and_on_the_map() -> None:
    """An untrained model's maps are noise: the Taylor step may not fly off the peak."""
    codec = MSRAHeatmap((96, 128), (24, 32), 1.5, refine="dark")
    rng = np.random.default_rng(3)
    heatmaps = rng.normal(0, 1e-3, (64, 17, 32, 24)).astype(np.float32)
    # noise on a plateau at the border, and one shallow bump at a corner
    heatmaps[:, :, 0, :] += 0.01
    heatmaps[0, 0, 31, 23] += 0.02
    maxima = heatmaps.reshape(64, 17, -1).argmax(-1)
    argmax = np.stack([maxima % 24, maxima // 24], -1) * codec.stride
    decoded, _ = codec.decode(heatmaps)
    assert np.abs(decoded - argmax).max() <= codec.stride.max() + 1e-4
    assert decoded.min() >= 0
    assert (decoded <= (np.array([24, 32]) - 1) * codec.stride).all()


def test_msra_reference_targets_peak_on_pixels() -> None:
    codec = codecs.build("msra_heatmap")
    keypoints = np.array([[[101.0, 37.0]]], np.float32)  # heatmap (25.25, 9.25)
    heatmaps = codec.encode(keypoints)["heatmaps"][0, 0]
    assert heatmaps[9, 25] == 1.0
    assert np.count_nonzero(heatmaps) == 13 * 13  # 3-sigma window, sigma 2
    assert heatmaps[9, 24] == pytest.approx(heatmaps[9, 26])  # symmetric about the pixel


def test_weights_mark_missing_and_off_map_keypoints() -> None:
    codec = MSRAHeatmap()
    keypoints = np.array([[[50.0, 50.0], [60.0, 60.0], [-100.0, 50.0]]], np.float32)
    targets = codec.encode(keypoints, np.array([[2, 0, 2]]))
    np.testing.assert_array_equal(targets["keypoint_weights"], [[1, 0, 0]])
    assert not targets["heatmaps"][0, 1:].any()


@pytest.mark.parametrize(("input_size", "heatmap_size", "sigma"), HEATMAP_SETUPS)
def test_flip_back(input_size, heatmap_size, sigma) -> None:
    keypoints = random_keypoints(input_size, seed=1)
    width = input_size[0]

    # UDP: the flip maps its grid onto itself, so the flipped prediction decodes to the same
    # keypoints.
    udp = UDPHeatmap(input_size, heatmap_size, sigma)
    flipped = udp.encode(mirror(keypoints, width))["heatmaps"]
    decoded, _ = udp.decode(udp.flip_back(flipped, COCO.flip_indices))
    assert np.abs(decoded - keypoints).max() < 0.05

    # MSRA: the maps come back aligned up to the documented one-input-pixel shift in x.
    dark = MSRAHeatmap(input_size, heatmap_size, sigma, unbiased=True, refine="dark")
    flipped = dark.encode(mirror(keypoints, width))["heatmaps"]
    decoded, _ = dark.decode(dark.flip_back(flipped, COCO.flip_indices))
    np.testing.assert_allclose(
        decoded - keypoints, np.broadcast_to([1.0, 0.0], decoded.shape), atol=0.05
    )

    # The flip test (maps and mirrored maps together) gives the keypoints back on both grids:
    # MSRA's half pixel of shift in the average is taken off.
    for codec in (udp, dark):
        heatmaps = codec.encode(keypoints)["heatmaps"]
        mirrored = codec.encode(mirror(keypoints, width))["heatmaps"]
        decoded, _ = codec.decode_flip_test(heatmaps, mirrored, COCO.flip_indices)
        assert np.abs(decoded - keypoints).max() < 0.05, type(codec).__name__


def test_flip_back_swaps_sides() -> None:
    codec = UDPHeatmap()
    heatmaps = np.zeros((1, 17, 64, 48), np.float32)
    heatmaps[0, COCO.index("left_wrist"), 10, 5] = 1
    back = codec.flip_back(heatmaps, COCO.flip_indices)
    assert back[0, COCO.index("right_wrist"), 10, 48 - 1 - 5] == 1
    with pytest.raises(ValueError, match="flip indices"):
        codec.flip_back(heatmaps[:, :16], COCO.flip_indices)


def test_simcc_round_trip_and_rtmpose_shapes() -> None:
    codec = codecs.build("simcc", input_size=(192, 256), sigma=(4.9, 5.66), split_ratio=2.0)
    keypoints = random_keypoints((192, 256), margin=5)
    targets = codec.encode(keypoints)
    # The two outputs of an RTMPose-m 256x192 ONNX export.
    assert targets["simcc_x"].shape == (6, 17, 384)
    assert targets["simcc_y"].shape == (6, 17, 512)
    decoded, scores = codec.decode(targets["simcc_x"], targets["simcc_y"])
    assert np.abs(decoded - keypoints).max() <= 0.25 + 1e-4  # half a bin
    np.testing.assert_allclose(scores, 1.0)

    # Logits, as the export gives them: only the argmax matters for position.
    decoded_logits, _ = codec.decode(np.log(targets["simcc_x"] + 1e-6), targets["simcc_y"] * 7)
    np.testing.assert_array_equal(decoded_logits, decoded)
    with pytest.raises(ValueError, match="split_ratio"):
        codec.decode(targets["simcc_x"][..., :192], targets["simcc_y"])


def test_simcc_weights_and_normalisation() -> None:
    codec = SimCCLabel(normalize=True)
    keypoints = np.array([[[100.0, 100.0], [5000.0, 100.0]]], np.float32)
    targets = codec.encode(keypoints, np.array([[1, 1]]))
    np.testing.assert_array_equal(targets["keypoint_weights"], [[1, 0]])
    assert targets["simcc_x"][0, 0].sum() == pytest.approx(1.0, abs=1e-3)
    assert not targets["simcc_x"][0, 1].any()


def test_unknown_codec_names_the_nearest() -> None:
    with pytest.raises(ValueError, match="udp_heatmap"):
        codecs.build("udp_heatmaps")
    assert isinstance(codecs.build("hprnet"), HPRNetCodec)


def test_codecs_do_not_import_torch() -> None:
    code = "import sys, posegraph.codecs; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- OKS -------------------------------------------------------------------------------------


def test_oks_matches_the_coco_definition() -> None:
    gt = random_keypoints((200, 200), n=1, seed=3)
    shifted = gt + np.array([3.0, -4.0], np.float32)  # 5 px from every keypoint
    area = 900.0
    expected = np.exp(-25 / (2 * area * (2 * COCO.sigmas) ** 2)).mean()
    value = oks(shifted, gt, np.array([area]), COCO.sigmas)
    assert value.shape == (1, 1)
    assert value[0, 0] == pytest.approx(expected, rel=1e-5)
    assert oks(gt, gt, np.array([area]), COCO.sigmas)[0, 0] == pytest.approx(1.0)
    visible = np.zeros((1, 17))
    visible[0, 0] = 1
    only_nose = np.exp(-25 / (2 * area * (2 * 0.026) ** 2))
    assert oks(shifted, gt, [area], COCO.sigmas, visible)[0, 0] == pytest.approx(
        only_nose, rel=1e-5
    )
    assert oks(shifted, gt, [area], COCO.sigmas, np.zeros((1, 17)))[0, 0] == 0


# --- ER-Pose ---------------------------------------------------------------------------------


def erpose_predictions(codec, people, anchor_ids, logits):
    """A dense output in which anchor ``anchor_ids[i]`` predicts ``people[i]`` exactly.

    In the codec's ``outputs`` form: logits and raw offsets, or probabilities and pixels.
    """
    anchors, strides = codec.anchors
    k = codec.num_keypoints
    raw = codec.outputs == "raw"
    background, visible = (-8.0, 4.0) if raw else (1 / (1 + np.exp(8.0)), 1 / (1 + np.exp(-4.0)))
    predictions = np.full((anchors.shape[0], 1 + 3 * k), background, np.float32)
    for person, anchor, logit in zip(people, anchor_ids, logits, strict=True):
        xy = person
        if raw:
            xy = keypoints_to_raw(person[None], anchors[anchor][None], strides[anchor][None])[0]
        predictions[anchor, 0] = logit if raw else 1 / (1 + np.exp(-logit))
        predictions[anchor, 1:] = np.concatenate([xy, np.full((k, 1), visible)], -1).ravel()
    return predictions


def test_anchor_grid_order_and_size() -> None:
    anchors, strides = codecs.anchor_grid((640, 480))
    assert anchors.shape == (80 * 60 + 40 * 30 + 20 * 15, 2)
    np.testing.assert_array_equal(anchors[:2], [[0.5, 0.5], [1.5, 0.5]])
    assert anchors[80] == pytest.approx([0.5, 1.5])  # row-major within a level
    assert strides[0] == 8 and strides[-1] == 32


@pytest.mark.parametrize("outputs", ["pixels", "raw"])
def test_erpose_decode_is_nms_free(outputs) -> None:
    codec = ERPoseCodec(input_size=(320, 320), outputs=outputs)
    people = random_keypoints((320, 320), n=3, seed=4)
    predictions = erpose_predictions(codec, people, [100, 1700, 2050], [3.0, 2.0, 1.0])
    poses = codec.decode(predictions)
    assert len(poses) == 3
    np.testing.assert_allclose(poses.keypoints, people, atol=1e-3)
    assert (np.diff(poses.scores) < 0).all()
    assert poses.keypoint_scores.min() > 0.98
    np.testing.assert_allclose(poses.boxes[:, :2], people.min(axis=1), atol=1e-3)
    fewer = ERPoseCodec(input_size=(320, 320), outputs=outputs, max_people=2)
    assert len(fewer.decode(predictions[None])) == 2  # a batch axis of 1 is fine
    # The same outputs from a codec set up for another input size: raw outputs need the
    # image's anchors, pixel outputs need nothing.
    other = ERPoseCodec(input_size=(640, 640), outputs=outputs)
    poses = other.decode(predictions, input_size=(320, 320))
    np.testing.assert_allclose(poses.keypoints, people, atol=1e-3)


def test_erpose_raw_parametrisation() -> None:
    anchors, strides = codecs.anchor_grid((64, 64))
    raw = np.zeros((anchors.shape[0], 1, 3), np.float32)
    # raw 0 is the top-left corner of the anchor's cell; one raw unit is two cells.
    np.testing.assert_allclose(raw_to_keypoints(raw, anchors, strides)[9, 0], [8.0, 8.0])
    raw[9, 0, :2] = 0.5
    np.testing.assert_allclose(raw_to_keypoints(raw, anchors, strides)[9, 0], [16.0, 16.0])


def test_erpose_oks_nms_removes_duplicates_only() -> None:
    codec = ERPoseCodec(input_size=(320, 320))
    people = random_keypoints((320, 320), n=2, seed=5)
    # A model trained one-to-many: each person predicted by three neighbouring anchors.
    jitter = np.array([0.0, 1.0, -1.0], np.float32)[:, None, None]
    copies = np.concatenate([people[0] + jitter, people[1] + jitter])
    predictions = erpose_predictions(
        codec, copies, [300, 301, 340, 900, 901, 940], [3.0, 2.5, 2.0, 2.8, 2.2, 1.5]
    )
    assert len(codec.decode(predictions)) == 6
    with_nms = ERPoseCodec(input_size=(320, 320), use_oks_nms=True).decode(predictions)
    assert len(with_nms) == 2
    np.testing.assert_allclose(with_nms.keypoints, people, atol=1e-3)
    np.testing.assert_allclose(with_nms.scores, 1 / (1 + np.exp(-np.array([3.0, 2.8]))), rtol=1e-5)


def test_erpose_encode_and_shape_errors() -> None:
    codec = ERPoseCodec(input_size=(320, 320))
    people = random_keypoints((320, 320), n=2, seed=6)
    visible = np.ones((2, 17))
    visible[0, 0] = 0
    targets = codec.encode(people, visible)
    box = targets["boxes"][0]
    expected = people[0, 1:].min(0).tolist() + people[0, 1:].max(0).tolist()
    np.testing.assert_allclose(box, expected)
    assert targets["areas"][0] == pytest.approx((box[2] - box[0]) * (box[3] - box[1]))
    with pytest.raises(ValueError, match="channels last"):
        codec.decode(np.zeros((52, 2100), np.float32))


def test_regression_label_round_trip() -> None:
    codec = codecs.build("regression_label", input_size=(192, 256), normalized=True)
    keypoints = random_keypoints((192, 256), n=2, margin=0)
    targets = codec.encode(keypoints)
    assert 0 <= targets["keypoint_labels"].min() and targets["keypoint_labels"].max() <= 1
    decoded, scores = codec.decode(targets["keypoint_labels"])
    np.testing.assert_allclose(decoded, keypoints, rtol=1e-6)
    assert isinstance(codec, RegressionLabel) and (scores == 1).all()


# --- HPRNet ----------------------------------------------------------------------------------


def whole_body_person(x0, y0, seed):
    """A 133-keypoint person standing in the box (x0, y0, x0 + 120, y0 + 280)."""
    rng = np.random.default_rng(seed)
    kp = np.zeros((133, 2), np.float32)
    kp[:17] = rng.uniform([x0 + 15, y0 + 15], [x0 + 105, y0 + 265], size=(17, 2))
    kp[17:23] = rng.uniform([x0 + 15, y0 + 250], [x0 + 105, y0 + 275], size=(6, 2))
    kp[23:91] = rng.uniform([x0 + 40, y0 + 10], [x0 + 80, y0 + 50], size=(68, 2))  # face
    kp[91:112] = rng.uniform([x0 + 2, y0 + 120], [x0 + 30, y0 + 150], size=(21, 2))
    kp[112:133] = rng.uniform([x0 + 90, y0 + 120], [x0 + 118, y0 + 150], size=(21, 2))
    return kp, np.array([x0, y0, x0 + 120, y0 + 280], np.float32)


def perfect_outputs(codec, targets, center_peaks, part_peaks):
    """The maps a perfect model would output for ``targets``, with chosen peak heights.

    ``center_peaks[i]`` scales person i's centre Gaussian, ``part_peaks[i]`` their face and
    hand Gaussians, so that people and parts can rank in different orders.
    """
    w, h = codec.heatmap_size
    out = {name: np.zeros((c, h, w), np.float32) for name, c in HPRNET_HEADS.items()}
    for i, (kp, box) in enumerate(targets["people"]):
        single = codec.encode(kp[None], np.ones((1, 133)), box[None])
        out["hm"] = np.maximum(out["hm"], single["hm"] * center_peaks[i])
        hm_hp = single["hm_hp"].copy()
        hm_hp[23:] *= part_peaks[i]
        out["hm_hp"] = np.maximum(out["hm_hp"], hm_hp)

    def scatter(head, index, values, mask, channels=slice(None)):
        sel = mask > 0
        out[head][channels, index[sel] // w, index[sel] % w] = values[sel].T

    t = targets["encoded"]
    m = codec.max_people
    for head in ("wh", "reg", "hps"):
        scatter(head, t["ind"], t[head], t["reg_mask"])
    scatter("hp_offset", t["hp_ind"], t["hp_offset"], t["hp_mask"])
    scatter("face_lms", t["face_ind"], t["face_lms"], t["face_mask"])
    hands, lms, mask = t["hand_ind"], t["hand_lms"], t["hand_mask"]
    scatter("hand_lms", hands[:m], lms[:, :42], mask[:m], slice(0, 42))
    scatter("hand_lms", hands[m:], lms[:, 42:], mask[m:], slice(42, 84))
    return out


def encode_people(codec, people):
    keypoints = np.stack([kp for kp, _ in people])
    boxes = np.stack([box for _, box in people])
    encoded = codec.encode(keypoints, np.ones(keypoints.shape[:2]), boxes)
    return {"people": people, "encoded": encoded}


def test_hprnet_targets_layout() -> None:
    codec = HPRNetCodec(max_people=4)
    kp, box = whole_body_person(100, 100, seed=0)
    t = codec.encode(kp[None], np.ones((1, 133)), box[None])
    assert t["hm"].shape == (1, 128, 128) and t["hm_hp"].shape == (26, 128, 128)
    assert t["hps"].shape == (4, 52) and t["hp_offset"].shape == (4 * 26, 2)
    assert t["face_lms"].shape == (4, 136) and t["hand_lms"].shape == (4, 84)
    assert t["hand_ind"].shape == (8,)
    cx, cy = t["ind"][0] % 128, t["ind"][0] // 128
    assert (cx + t["reg"][0, 0], cy + t["reg"][0, 1]) == pytest.approx((40.0, 60.0))  # /4
    assert t["hm"][0, cy, cx] == 1.0
    np.testing.assert_allclose(t["wh"][0], [30, 70])
    # Left hand rows at 0..M-1, right hand rows at M..2M-1; landmark offsets from their cell.
    assert t["hand_mask"][0] == 1 and t["hand_mask"][4] == 1 and t["hand_mask"][1] == 0
    left_cell = np.array([t["hand_ind"][0] % 128, t["hand_ind"][0] // 128])
    np.testing.assert_allclose(t["hand_lms"][0, :2], kp[91] / 4 - left_cell, atol=1e-5)
    assert t["hps_mask"][0].all() and t["face_lms_mask"][0].all()


def test_hprnet_round_trip_keeps_landmarks_with_their_person() -> None:
    codec = HPRNetCodec(logits=False)
    people = [
        whole_body_person(40, 60, seed=1),
        whole_body_person(200, 90, seed=2),
        whole_body_person(360, 140, seed=3),
    ]
    targets = encode_people(codec, people)
    # People rank 0 > 1 > 2 by centre score, but their faces and hands rank the other way:
    # reading landmarks in part-peak order would give person 0 the face of person 2.
    outputs = perfect_outputs(codec, targets, [0.95, 0.85, 0.75], [0.4, 0.6, 0.9])
    # Regressed joints a few pixels off: the joint heatmaps must pull them back.
    outputs["hps"] += (
        np.random.default_rng(7).normal(0, 0.5, outputs["hps"].shape).astype(np.float32)
    )

    poses = codec.decode(outputs)
    assert len(poses) == 3
    np.testing.assert_allclose(poses.scores, [0.95, 0.85, 0.75], atol=1e-6)
    for i, (kp, box) in enumerate(people):
        np.testing.assert_allclose(poses.keypoints[i], kp, atol=1e-3, err_msg=f"person {i}")
        np.testing.assert_allclose(poses.boxes[i], box, atol=1e-3)
        face_score = poses.keypoint_scores[i, 23:91]
        np.testing.assert_allclose(face_score, [0.4, 0.6, 0.9][i], atol=1e-6)


def test_hprnet_missing_part_keeps_regressed_centre() -> None:
    codec = HPRNetCodec(logits=False)
    people = [whole_body_person(60, 60, seed=4), whole_body_person(300, 80, seed=5)]
    targets = encode_people(codec, people)
    outputs = perfect_outputs(codec, targets, [0.9, 0.8], [1.0, 1.0])
    # Person 1's right hand is not seen by the joint heatmap: nothing to snap to, so its
    # landmarks come from the regressed centre, with a low score, and nobody else's hand.
    outputs["hm_hp"][25, :, 300 // 4 :] = 0  # the columns of person 1's box
    poses = codec.decode(outputs)
    right = slice(112, 133)
    np.testing.assert_allclose(poses.keypoints[1, right], people[1][0][right], atol=1e-3)
    assert poses.keypoint_scores[1, right].max() < 0.1
    np.testing.assert_allclose(poses.keypoints[0, right], people[0][0][right], atol=1e-3)


def test_hprnet_logits_and_shape_errors() -> None:
    codec = HPRNetCodec()
    people = [whole_body_person(100, 100, seed=6)]
    targets = encode_people(codec, people)
    outputs = perfect_outputs(codec, targets, [0.9], [0.9])
    for name in ("hm", "hm_hp"):
        p = np.clip(outputs[name], 1e-6, 1 - 1e-6)
        outputs[name] = np.log(p / (1 - p))
    poses = codec.decode({k: v[None] for k, v in outputs.items()})  # batch axis of 1
    np.testing.assert_allclose(poses.keypoints[0], people[0][0], atol=1e-3)
    with pytest.raises(ValueError, match="'hand_lms' is missing"):
        codec.decode({k: v for k, v in outputs.items() if k != "hand_lms"})
    with pytest.raises(ValueError, match="'reg' has shape"):
        codec.decode({**outputs, "reg": outputs["reg"][:, :64]})
    with pytest.raises(ValueError, match="differ from the layout"):
        HPRNetCodec(heads={**HPRNET_HEADS, "hand_lms": 42})


def test_hprnet_decodes_any_image_size() -> None:
    # Trained at 512x512, run on a 640x384 image: maps of 160x96.
    codec = HPRNetCodec(input_size=(640, 384), logits=False)
    people = [whole_body_person(420, 60, seed=8)]
    outputs = perfect_outputs(codec, encode_people(codec, people), [0.9], [0.9])
    poses = HPRNetCodec(logits=False).decode(outputs)
    np.testing.assert_allclose(poses.keypoints[0], people[0][0], atol=1e-3)


def test_images_without_people_decode_to_nothing() -> None:
    hprnet = HPRNetCodec(logits=False)
    empty = {name: np.zeros((c, 128, 128), np.float32) for name, c in HPRNET_HEADS.items()}
    poses = hprnet.decode(empty)
    assert len(poses) == 0 and poses.keypoints.shape == (0, 133, 2)
    for use_oks_nms in (False, True):
        erpose = ERPoseCodec(input_size=(320, 320), use_oks_nms=use_oks_nms)
        poses = erpose.decode(np.zeros((2100, 52), np.float32))
        assert len(poses) == 0 and poses.keypoints.shape == (0, 17, 2)
