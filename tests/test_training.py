"""The top-down training slice: loaders on real files, crops, losses, a tiny training run,
resume, COCO evaluation and export.

Real data comes from ../shared/data (tests skip without it). The training tests use a narrow
HRNet (width 8) at a small input on a few synthetic images written to a temporary folder.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from posegraph import codecs, skeletons
from posegraph.cli import main as posegraph_main
from posegraph.models import build, checkpoint_metadata, cpu_has_bfloat16, save_checkpoint
from training.cli import main as train_main
from training.config import ConfigError, load_config
from training.datasets.coco import CocoPersons, PersonInstance, TopDownDataset
from training.datasets.draws import Draw
from training.datasets.mpii import load_mpii
from training.datasets.synthetic import SyntheticTopDown, write_synthetic_coco
from training.evaluate import (
    PosePrediction,
    coco_keypoint_ap,
    error_analysis,
    keypoint_ap,
    keypoint_groups,
    sides_swapped,
)
from training.evaluate import main as eval_main
from training.export import export
from training.export import main as export_main
from training.losses.topdown import CoordinateMSELoss, JointsMSELoss
from training.synth import SceneConfig
from training.trainer import EpochBatches, Trainer
from training.transforms.topdown import (
    Augmentation,
    TopDownAffine,
    box_to_center_scale,
    flip_keypoints,
    upper_body_mask,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CONFIGS = REPO / "training" / "configs"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real test data not found at {DATA} (../shared/data)"
)
SCENE = SceneConfig(256, 192, people=(1, 3), crowd_p=0.0)


@needs_data
def test_coco_loader_skips_crowd_and_unlabelled_people():
    doc = json.loads((DATA / "coco-mini" / "test_coco.json").read_text())
    usable = [a for a in doc["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    persons = CocoPersons(DATA / "coco-mini" / "test_coco.json")
    assert persons.skeleton == "coco17"
    assert len(persons.instances) == len(usable) < len(doc["annotations"])
    first = persons.instances[0]
    assert first.keypoints.shape == (17, 3) and set(np.unique(first.keypoints[:, 2])) <= {0, 1}
    # 1.25 padding and the 192/256 aspect ratio around the box.
    x, y, w, h = usable[0]["bbox"]
    assert np.allclose(first.center, [x + (w - 1) / 2, y + (h - 1) / 2], atol=0.01)
    assert first.scale[0] / first.scale[1] == pytest.approx(0.75)
    assert first.scale[1] * 200 == pytest.approx(max(h - 1, (w - 1) / 0.75) * 1.25, rel=1e-4)

    dets = json.loads((DATA / "coco-mini" / "test_coco_det_AP_H_56.json").read_text())
    boxes = CocoPersons(
        DATA / "coco-mini" / "test_coco.json",
        detections=DATA / "coco-mini" / "test_coco_det_AP_H_56.json",
        score_threshold=0.5,
    )
    assert len(boxes.instances) == sum(d["score"] >= 0.5 for d in dets)
    assert all(p.score >= 0.5 and not p.keypoints.any() for p in boxes.instances)


@needs_data
def test_wholebody_crowdpose_and_mpii_loaders():
    whole = CocoPersons(DATA / "coco-mini" / "test_coco_wholebody.json")
    assert whole.skeleton == "wholebody133"
    assert whole.instances[0].keypoints.shape == (133, 3)
    assert whole.instances[0].keypoints[91:, 2].any(), "hand keypoints were not read"

    crowd = CocoPersons(DATA / "crowdpose-mini" / "test_crowdpose.json")
    assert crowd.skeleton == "crowdpose14" and crowd.instances[0].keypoints.shape == (14, 3)

    mpii = load_mpii(DATA / "mpii-mini" / "test_mpii.json")
    entry = json.loads((DATA / "mpii-mini" / "test_mpii.json").read_text())[0]
    assert len(mpii) == 5 and mpii[0].keypoints.shape == (16, 3)
    assert np.allclose(mpii[0].keypoints[0, :2], np.array(entry["joints"][0]) - 1)
    assert mpii[0].center[1] == pytest.approx(entry["center"][1] + 15 * entry["scale"] - 1)
    assert mpii[0].scale[0] == pytest.approx(entry["scale"] * 1.25)
    assert all(p.head_size > 0 for p in mpii)

    codec = codecs.build("msra_heatmap", input_size=(192, 256), heatmap_size=(48, 64))
    transform = TopDownAffine((192, 256), skeletons.get("mpii16").flip_indices)
    item = TopDownDataset(mpii, transform, codec.encode)[0]
    assert item["image"].shape == (256, 192, 3)
    assert item["heatmaps"].shape == (16, 64, 48) and item["keypoint_weights"].sum() > 10


@needs_data
def test_ground_truth_as_predictions_scores_ap_one():
    path = DATA / "coco-mini" / "test_coco.json"
    doc = json.loads(path.read_text())
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in doc["annotations"]
        if not a["iscrowd"] and a["num_keypoints"] > 0
    ]
    metrics = coco_keypoint_ap(path, results, "coco17")
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)
    # Moving every keypoint by 10 pixels must cost AP: the metric can fail.
    for r in results:
        r["keypoints"] = [v + 10 if i % 3 != 2 else v for i, v in enumerate(r["keypoints"])]
    assert coco_keypoint_ap(path, results, "coco17")["AP"] < 0.9


def test_swapped_counts_people_whose_left_and_right_are_exchanged():
    skeleton = skeletons.get("coco17")
    rng = np.random.default_rng(0)
    people = []
    for i in range(4):
        points = rng.uniform([0, 0], [80, 200], (17, 2)).astype(np.float32) + 100 * i
        truth = np.concatenate([points, np.ones((17, 1), np.float32)], axis=1)
        box = np.array([100 * i, 100 * i, 80, 200], np.float32)
        people.append(PersonInstance(Path("x.jpg"), 0, truth, box[:2], box[2:] / 200, box=box))

    def predictions(*poses):
        return [PosePrediction(0, p, np.ones(17, np.float32), 1.0, 1.0, i) for i, p in poses]

    flip = skeleton.flip_indices
    exact = predictions(*((i, p.keypoints[:, :2]) for i, p in enumerate(people)))
    assert sides_swapped(exact, people, flip, skeleton.sigmas) == 0.0
    mirrored = [(0, people[0].keypoints[flip, :2]), (1, people[1].keypoints[flip, :2])]
    lost = (2, people[2].keypoints[:, :2] + 60)  # found on neither side: not counted
    half = predictions(*mirrored, lost, (3, people[3].keypoints[:, :2]))
    assert sides_swapped(half, people, flip, skeleton.sigmas) == pytest.approx(2 / 3)


@needs_data
def test_error_analysis_finds_what_costs_ap_and_collapsed_pairs():
    # On coco-mini's truth: ankles exchanged (a mirrored pair) and wrists 15 pixels off;
    # making either exact recovers AP, making any other group exact does not.
    path = DATA / "coco-mini" / "test_coco.json"
    skeleton = skeletons.get("coco17")
    groups = keypoint_groups(skeleton)
    assert list(groups)[:3] == ["nose", "eye", "ear"] and groups["ankle"] == [15, 16]
    people = CocoPersons(path, DATA / "coco-mini", "coco17", (192, 256)).instances
    predictions = []
    for i, person in enumerate(people):
        points = person.keypoints[:, :2].copy()
        points[[15, 16]] = points[[16, 15]]
        points[[9, 10]] += 15
        predictions.append(PosePrediction(person.image_id, points, np.ones(17), 1.0, 1.0, i))
    analysis = error_analysis(predictions, people, path, "coco17")
    base = keypoint_ap(predictions, path, "coco17")["AP"]
    assert base < 0.9
    assert analysis["ankle"]["mirrored"] == 1.0 and analysis["knee"]["mirrored"] == 0.0
    assert (
        analysis["ankle"]["exact_AP"] > base + 0.05 and analysis["wrist"]["exact_AP"] > base + 0.05
    )
    assert analysis["knee"]["exact_AP"] == pytest.approx(base)
    assert (
        analysis["nose"]["exact_AP"] == pytest.approx(base) and "mirrored" not in analysis["nose"]
    )
    # every person has a prediction (ground-truth boxes): all exact is AP 1
    assert analysis["all"] == {"exact_AP": 1.0, "found": 1.0}
    assert analysis["visible"]["exact_AP"] > base + 0.05


@needs_data
def test_error_analysis_tells_hidden_keypoints_from_visible_ones():
    # coco-mini labels 17 keypoints hidden (flag 1) and 164 visible (flag 2); with only the
    # hidden ones 20 pixels off, making them exact recovers all the AP and making the visible
    # ones exact recovers none of it.
    path = DATA / "coco-mini" / "test_coco.json"
    people = CocoPersons(path, DATA / "coco-mini", "coco17", (192, 256)).instances
    assert sum(int((p.flags == 1).sum()) for p in people) == 17
    predictions = []
    for i, person in enumerate(people):
        points = person.keypoints[:, :2].copy()
        points[person.flags == 1] += 20
        predictions.append(PosePrediction(person.image_id, points, np.ones(17), 1.0, 1.0, i))
    analysis = error_analysis(predictions, people, path, "coco17")
    base = keypoint_ap(predictions, path, "coco17")["AP"]
    assert base < 0.95
    assert analysis["occluded"]["exact_AP"] == 1.0
    assert analysis["visible"]["exact_AP"] == pytest.approx(base)


@needs_data
def test_error_analysis_on_crowdpose_groups_its_14_keypoints():
    # CrowdPose's own groups (its mid-line points are top_head and neck) and its AP
    # (xtcocotools' crowdpose protocol): ankles exchanged on its truth cost AP, and only
    # the ankles made exact give it back.
    path = DATA / "crowdpose-mini" / "test_crowdpose.json"
    groups = keypoint_groups(skeletons.get("crowdpose14"))
    names = ["shoulder", "elbow", "wrist", "hip", "knee", "ankle", "top_head", "neck"]
    assert list(groups) == names
    people = CocoPersons(path, DATA / "crowdpose-mini", "crowdpose14", (192, 256)).instances
    predictions = []
    for i, person in enumerate(people):
        points = person.keypoints[:, :2].copy()
        points[[10, 11]] = points[[11, 10]]
        predictions.append(PosePrediction(person.image_id, points, np.ones(14), 1.0, 1.0, i))
    base = keypoint_ap(predictions, path, "crowdpose14")["AP"]
    analysis = error_analysis(predictions, people, path, "crowdpose14")
    assert base < 0.95 and analysis["ankle"] == {"exact_AP": 1.0, "mirrored": 1.0}
    for group in ("shoulder", "knee", "top_head", "neck"):
        assert analysis[group]["exact_AP"] == pytest.approx(base)


@pytest.mark.parametrize("udp", [False, True])
def test_affine_crop_and_inverse_round_trip(udp):
    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(100, 300, (17, 2)), np.ones((17, 1))], 1)
    center, scale = box_to_center_scale(np.array([90, 80, 230, 260.0]), 192 / 256)
    transform = TopDownAffine((192, 256), skeletons.get("coco17").flip_indices, udp=udp)
    image = np.zeros((400, 400, 3), np.uint8)
    for rotation in (0.0, 30.0, -45.0):
        matrix = transform.matrix(center, scale, rotation)
        crop_points = keypoints[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        back = transform.to_image(crop_points, center, scale, rotation)
        assert np.abs(back - keypoints[:, :2]).max() < 1e-3
    crop = transform(image, keypoints, center, scale)
    assert crop.image.shape == (256, 192, 3)
    # The box centre lands in the crop's centre (UDP measures in pixel intervals).
    middle = transform.matrix(center, scale, 0.0) @ np.array([*center, 1.0])
    assert np.allclose(middle, [95.5, 127.5] if udp else [96, 128], atol=1e-3)


def test_flip_twice_is_identity_and_swaps_sides():
    skeleton = skeletons.get("coco17")
    rng = np.random.default_rng(1)
    keypoints = np.concatenate([rng.uniform(0, 639, (17, 2)), rng.integers(0, 2, (17, 1))], 1)
    keypoints[keypoints[:, 2] == 0, :2] = 0
    once = flip_keypoints(keypoints, 640, skeleton.flip_indices)
    left_eye, right_eye = 1, 2
    if keypoints[left_eye, 2]:
        assert once[right_eye, 0] == pytest.approx(639 - keypoints[left_eye, 0])
    assert np.allclose(flip_keypoints(once, 640, skeleton.flip_indices), keypoints)


def test_augmented_crop_is_repeatable_and_keeps_keypoints_on_the_body():
    people = SyntheticTopDown(
        4,
        TopDownAffine(
            (192, 256),
            skeletons.get("coco17").flip_indices,
            upper_body_mask("coco17", 17),
            augmentation=Augmentation(),
        ),
        codecs.build("msra_heatmap", input_size=(192, 256), heatmap_size=(48, 64)).encode,
        config=SCENE,
        min_keypoints=5,
    )
    a, b = people[1], people[1]
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["heatmaps"], b["heatmaps"])
    people.set_epoch(1)
    assert not np.array_equal(people[1]["image"], a["image"])
    assert a["heatmaps"].shape == (17, 64, 48) and a["keypoint_weights"].sum() >= 1


def test_losses_match_the_reference_form():
    pred, target = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    weights = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    reference = (
        sum(
            0.5
            * torch.nn.functional.mse_loss(
                pred[:, k].reshape(2, -1) * weights[:, k : k + 1],
                target[:, k].reshape(2, -1) * weights[:, k : k + 1],
            )
            for k in range(3)
        )
        / 3
    )
    assert JointsMSELoss()(pred, target, weights) == pytest.approx(float(reference))
    assert JointsMSELoss()(target, target, weights) == 0
    coords = torch.rand(2, 3, 2)
    assert CoordinateMSELoss()(coords, coords, weights) == 0
    assert CoordinateMSELoss()(coords, coords + 0.1, torch.ones(2, 3)) == pytest.approx(0.01)


def test_config_errors_name_the_key(tmp_path):
    config = load_config(CONFIGS / "hrnet_w32_coco.yaml")
    assert config.optimizer.lr == 1e-3 and config.schedule.milestones == [170, 200]
    assert config.schedule.epochs == 210 and config.batch_size == 32
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config(path)
        assert config.skeleton in skeletons.SKELETONS, path
    with pytest.raises(ConfigError, match="did you mean 'milestones'"):
        load_config(CONFIGS / "hrnet_w32_coco.yaml", ["schedule.milestone=[1]"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(CONFIGS / "hrnet_w32_coco.yaml", ["batch_size=many"])


# --- training, resume, evaluation and export on a small synthetic set ----------------------

#: A narrow HRNet at 64x64 (HRNet needs sides that are multiples of 32), heatmaps 16x16.
TINY = ["model_overrides.width=8", "model_overrides.input_size=[64,64]", "workers=0"]
#: People fill most of the 256x192 images, so that 16x16 heatmaps can place keypoints.
BIG_PEOPLE = SceneConfig(256, 192, people=(1, 2), crowd_p=0.0, min_height_px=120, max_height_px=190)


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> dict[str, Path]:
    """12 synthetic images on disk, and a file with the people of the first four only."""
    root = tmp_path_factory.mktemp("synthetic")
    annotations, _ = write_synthetic_coco(root, 12, seed=2, config=BIG_PEOPLE)
    doc = json.loads(annotations.read_text())
    first = {image["id"] for image in doc["images"][:4]}
    doc["images"] = [image for image in doc["images"] if image["id"] in first]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in first]
    few = root / "annotations" / "first_four.json"
    few.write_text(json.dumps(doc))
    return {"all": annotations, "few": few, "images": root}


def _data_overrides(sets: dict[str, Path], train: str, val: str | None) -> list[str]:
    data = ["data.train.kind=coco", f"data.train.annotations={sets[train]}"]
    data += [f"data.train.images={sets['images']}"]
    if val is None:
        return [*data, "data.val=null"]
    data += ["data.val.kind=coco", f"data.val.annotations={sets[val]}"]
    return [*data, f"data.val.images={sets['images']}"]


def test_resume_continues_from_the_same_step(synthetic_set, tmp_path):
    settings = [
        *TINY,
        *_data_overrides(synthetic_set, "all", None),
        "batch_size=2",
        "schedule.steps_per_epoch=2",
        "schedule.milestones=[1]",
    ]
    config_path = CONFIGS / "hrnet_w32_synth_tiny.yaml"
    straight = Trainer(load_config(config_path, [*settings, "schedule.epochs=2"]), tmp_path / "a")
    straight.fit()
    first = Trainer(load_config(config_path, [*settings, "schedule.epochs=1"]), tmp_path / "b")
    first.fit()
    resumed = Trainer(
        load_config(config_path, [*settings, "schedule.epochs=2"]), tmp_path / "b", resume=True
    )
    assert (resumed.epoch, resumed.step) == (1, 2)
    resumed.fit()
    assert resumed.step == straight.step == 4
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert [r["step"] for r in state["history"]] == [2, 4]
    a = load_file(str(tmp_path / "a" / "last.safetensors"))
    b = load_file(str(tmp_path / "b" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run differs from a straight one"
    with pytest.raises(FileNotFoundError, match="--resume"):
        Trainer(load_config(config_path, settings), tmp_path / "empty", resume=True)


def test_minutes_replans_the_epochs_to_end_at_the_deadline(synthetic_set, tmp_path):
    settings = [
        *TINY,
        *_data_overrides(synthetic_set, "all", None),
        "batch_size=2",
        "schedule.steps_per_epoch=2",
        "schedule.kind=cosine",
        "schedule.epochs=50",
        "schedule.warmup_steps=0",
    ]
    config_path = CONFIGS / "hrnet_w32_synth_tiny.yaml"
    # a deadline shorter than one epoch: that epoch is the last (lr annealed by its end)
    short = Trainer(load_config(config_path, [*settings, "schedule.minutes=0.0001"]), tmp_path)
    history = short.fit()
    assert len(history) == 1 and short.config.schedule.epochs == 1
    assert short.learning_rate(1, short.step) == pytest.approx(3e-3 * 0.01)
    # a long one keeps re-planning from the mean epoch time: far more than 50 epochs fit
    long = Trainer(load_config(config_path, [*settings, "schedule.minutes=600"]), tmp_path / "b")
    long.train_epoch()
    long._fit_epochs_to_time(seconds=1.0)
    assert long.config.schedule.epochs == 36000
    # the decay follows the time spent, so a re-plan to more epochs does not raise the rate
    long.history = [{"epoch": 0, "seconds": 9000.0}]  # a quarter of the 600 minutes
    quarter = 3e-3 * (0.01 + 0.99 * (1 + math.cos(math.pi / 4)) / 2)
    for epochs in (4, 36000):
        long.config.schedule.epochs = epochs
        assert long.learning_rate(1, long.step) == pytest.approx(quarter)
    with pytest.raises(ConfigError, match="step schedule"):
        load_config(config_path, ["schedule.minutes=5"])  # this config's schedule is step
    with pytest.raises(ConfigError, match="positive"):
        load_config(config_path, ["schedule.kind=cosine", "schedule.minutes=0"])


def test_an_epochs_later_passes_are_drawn_afresh_by_workers_that_stop_with_the_run(
    synthetic_set, tmp_path
):
    # 5 items in batches of 2: a pass makes 2 batches (its fifth item dropped); 5 steps take 3
    batches = EpochBatches(5, 2, 5, seed=0, world_size=1, rank=0)
    batches.epoch = 3
    drawn = list(batches)
    assert len(drawn) == len(batches) == 5
    assert [{d.repeat for d in b} for b in drawn] == [{0}, {0}, {1}, {1}, {2}]
    assert all(d.epoch == 3 for b in drawn for d in b)
    for repeat in range(2):
        indices = [d.index for b in drawn[2 * repeat : 2 * repeat + 2] for d in b]
        assert len(set(indices)) == 4, "a pass holds each item once"
    assert list(batches) == drawn, "an epoch's batches follow from the seed and the epoch"
    # the first pass draws an item as a plain index does; a later pass draws it anew
    flip = skeletons.get("coco17").flip_indices
    crops = TopDownAffine((96, 128), flip, augmentation=Augmentation())
    people = SyntheticTopDown(4, crops, None, config=SCENE)
    people.set_epoch(3)
    first = people[Draw(1, epoch=3)]["image"]
    assert np.array_equal(first, people[1]["image"])
    assert not np.array_equal(first, people[Draw(1, epoch=3, repeat=1)]["image"])
    # the loader's worker serves every epoch of the run and stops when it ends
    settings = [*TINY, *_data_overrides(synthetic_set, "all", None), "workers=1"]
    settings += ["batch_size=2", "schedule.steps_per_epoch=4", "schedule.epochs=2"]
    trainer = Trainer(load_config(CONFIGS / "hrnet_w32_synth_tiny.yaml", settings), tmp_path)
    trainer.train_epoch()
    workers = multiprocessing.active_children()
    assert len(workers) == 1
    trainer.epoch += 1
    trainer.train_epoch()
    assert multiprocessing.active_children() == workers, "the same workers serve each epoch"
    trainer.close()
    assert multiprocessing.active_children() == []
    assert trainer.fit()[-1]["step"] == 12 and multiprocessing.active_children() == []
    # losses are read from the device in groups; a non-finite one names its own step
    steps = [torch.tensor(0.5), torch.tensor(float("nan")), torch.tensor(float("inf"))]
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 2, step 10;"):
        trainer._read_losses(steps, epoch=2)
    assert trainer._read_losses(steps[:1] * 3, epoch=2) == 1.5


def test_bench_training_times_variants_against_the_config(synthetic_set, capsys):
    config = str(CONFIGS / "hrnet_w32_synth_tiny.yaml")
    settings = [*TINY, *_data_overrides(synthetic_set, "all", None), "batch_size=2"]
    argv = ["bench", "training", config, *[a for s in settings for a in ("--set", s)]]
    argv += ["--steps", "2", "--warmup", "1", "--profile", "3"]
    assert posegraph_main([*argv, "--variant", "nchw=channels_last=false", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    variants = report["variants"]
    assert list(variants) == ["config", "nchw"]
    assert variants["config"]["ratio"] == 1.0 and variants["config"]["batch"] == 2
    for result in variants.values():
        assert result["images_per_s"] > 0 and result["warmup_s"] > 0
        assert result["ms_per_step"] == pytest.approx(2000 / result["images_per_s"])
    operators = report["profile"]["operators"]
    assert len(operators) == 3 and all(row["calls_per_step"] > 0 for row in operators)
    assert report["profile"]["kernel_launches_per_step"] is None  # no CUDA here
    assert report["loader_images_per_s"] > 0
    with pytest.raises(SystemExit):
        posegraph_main([*argv, "--variant", "nchw"])
    assert "write NAME=KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        posegraph_main([*argv, "--variant", "x=no_such_key=1"])
    assert "variant 'x'" in capsys.readouterr().err


@pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU has no bfloat16 in hardware")
def test_cpu_amp_runs_the_forward_pass_in_bfloat16_and_keeps_float32_weights(
    synthetic_set, tmp_path
):
    """cpu_amp: the convolutions compute in bfloat16, the loss and the weights stay float32,
    and the first steps' losses stay near float32's (same seed, same crops)."""
    settings = [*TINY, *_data_overrides(synthetic_set, "all", None), "batch_size=2"]
    settings += ["schedule.steps_per_epoch=3", "schedule.epochs=1", "ema.enabled=false"]
    config_path = CONFIGS / "hrnet_w32_synth_tiny.yaml"
    losses = {}
    for amp in (False, True):
        trainer = Trainer(
            load_config(config_path, [*settings, f"cpu_amp={amp}"]), tmp_path / f"{amp}"
        )
        seen: list[torch.dtype] = []
        conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        loss = trainer.train_epoch()
        hook.remove()
        trainer.close()
        assert seen == [torch.bfloat16 if amp else torch.float32] * 3
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        losses[amp] = loss
    assert math.isfinite(losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=0.05)
    assert losses[True] != losses[False]


def test_load_from_starts_a_run_from_another_runs_weights(tmp_path, caplog):
    settings = [*TINY, "data.val=null", "schedule.epochs=1"]
    config_path = CONFIGS / "hrnet_w32_synth_tiny.yaml"
    source = Trainer(load_config(config_path, [*settings, "seed=5"]), tmp_path / "a")
    weights = tmp_path / "a.safetensors"
    save_checkpoint(source.model, weights)
    fresh = Trainer(load_config(config_path, settings), tmp_path / "b")
    started = Trainer(load_config(config_path, [*settings, f"load_from={weights}"]), tmp_path / "c")
    expected = source.model.state_dict()
    assert (started.epoch, started.step) == (0, 0)
    assert all(torch.equal(v, expected[k]) for k, v in started.model.state_dict().items())
    assert not all(torch.equal(v, expected[k]) for k, v in fresh.model.state_dict().items())
    # another width's weights: one error naming the file, not a half-loaded model
    wider = Trainer(
        load_config(config_path, [*settings, "model_overrides.width=16"]), tmp_path / "d"
    )
    save_checkpoint(wider.model, tmp_path / "wide.safetensors")
    wide = [*settings, f"load_from={tmp_path / 'wide.safetensors'}"]
    with pytest.raises(ValueError, match=r"load_from .*wide\.safetensors: .*other shapes"):
        Trainer(load_config(config_path, wide), tmp_path / "e")
    # a head the weights lack (HRNet's context head): an error unless load_strict is false,
    # and then the rest loads and the new head starts at zero
    grown = [*settings, f"load_from={weights}", "model_overrides.context_head=true"]
    with pytest.raises(ValueError, match=r"load_from .*a\.safetensors: .*3 keys missing"):
        Trainer(load_config(config_path, grown), tmp_path / "f")
    wider_head = Trainer(load_config(config_path, [*grown, "load_strict=false"]), tmp_path / "g")
    state = wider_head.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert all(not conv.weight.any() for conv in wider_head.model.final_context)
    # a run's checkpoints record its seed; a run started from them with the same seed is
    # told that it would replay their crops, one with another seed is not
    source.save({})
    last = tmp_path / "a" / "last.safetensors"
    assert checkpoint_metadata(last)["seed"] == "5"
    assert checkpoint_metadata(tmp_path / "a" / "last_ema.safetensors")["seed"] == "5"
    with caplog.at_level("WARNING", logger="training.trainer"):
        Trainer(load_config(config_path, [*settings, f"load_from={last}"]), tmp_path / "h")
        assert "replays" not in caplog.text
        Trainer(
            load_config(config_path, [*settings, f"load_from={last}", "seed=5"]), tmp_path / "i"
        )
    assert "trained with seed 5 too" in caplog.text and "--set seed=N" in caplog.text


def test_unbiased_targets_sit_on_the_keypoints_sub_pixel_position(tmp_path):
    settings = [*TINY, "data.val=null", "schedule.epochs=1"]
    config_path = CONFIGS / "hrnet_w32_synth_tiny.yaml"
    plain = Trainer(load_config(config_path, settings), tmp_path / "a")
    unbiased = Trainer(
        load_config(config_path, [*settings, "model_overrides.unbiased=true"]), tmp_path / "b"
    )
    # a keypoint 0.3 heatmap pixels right of pixel (5, 6) of the 16x16 maps
    point = np.array([[[5.3, 6.0]]], np.float32) * plain.codec.stride
    rounded = plain.codec.encode(point)["heatmaps"][0, 0, 6]
    exact = unbiased.codec.encode(point)["heatmaps"][0, 0, 6]
    assert rounded[4] == pytest.approx(rounded[6]) and rounded.argmax() == 5
    assert exact[6] > exact[4] and exact.argmax() == 5
    decoded, _ = unbiased.codec.decode(unbiased.codec.encode(point)["heatmaps"])
    assert decoded[0, 0] / unbiased.codec.stride == pytest.approx([5.3, 6.0], abs=0.02)
    # the model's codec: what validation and the pose nodes decode with
    assert unbiased.spec.codec_kwargs["unbiased"] and not plain.spec.codec_kwargs["unbiased"]


#: One rank of a torchrun job: the trainer, then this rank's weights in a file of its own
#: (only rank 0 writes the run's checkpoints).
DDP_RANK = """
import os
import sys
from pathlib import Path

from posegraph.cli import main as posegraph_main
from posegraph.models import save_checkpoint
from training.config import load_config
from training.trainer import EpochBatches, Trainer

config, out, *settings = sys.argv[1:]
trainer = Trainer(load_config(Path(config), settings), Path(out) / "run")
trainer.fit()
save_checkpoint(trainer.model, Path(out) / f"rank{os.environ['RANK']}.safetensors")
"""


def test_torchrun_ranks_split_the_data_and_keep_one_set_of_weights(tmp_path):
    """Two CPU processes under torchrun (gloo): each reads half of the epoch, the gradients
    are averaged, so both ranks end with the same weights, and only rank 0 writes."""
    script = tmp_path / "rank.py"
    script.write_text(DDP_RANK)
    settings = [*TINY, "data.val=null", "schedule.epochs=1", "data.train.length=64"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script)]
    command += [str(CONFIGS / "hrnet_w32_synth_tiny.yaml"), str(tmp_path), *settings]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    # 64 crops in batches of 16 on each of 2 ranks: 2 steps, not the 4 of one process
    assert state["step"] == 2
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    fresh = Trainer(load_config(CONFIGS / "hrnet_w32_synth_tiny.yaml", settings), tmp_path / "x")
    parameters = dict(fresh.model.named_parameters())
    drifted = [k for k in parameters if not torch.equal(rank0[k], rank1[k])]
    assert not drifted, f"the ranks' weights drifted: {drifted}"
    # BatchNorm running statistics may differ (each rank's own last batch): the checkpoint
    # holds rank 0's
    written = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert all(torch.equal(rank0[k], written[k]) for k in rank0)
    trained = [k for k, v in parameters.items() if not torch.equal(v.detach(), rank0[k])]
    assert trained, "nothing was trained"


def test_export_writes_onnx_and_safetensors_with_parity(tmp_path):
    overrides = {"width": 8, "input_size": [64, 64]}
    result = export("hrnet_w32", None, tmp_path, overrides)
    assert result.max_abs_diff <= 1e-3
    assert result.onnx.stat().st_size > 0
    assert load_file(str(result.fp16))["final_layer.weight"].dtype == torch.float16
    assert load_file(str(result.fp32))["final_layer.weight"].dtype == torch.float32
    # the seed a training run recorded in its weights stays with the exported files
    seeded = tmp_path / "seeded.safetensors"
    save_checkpoint(build("hrnet_w32", **overrides)[0], seeded, {"seed": "3"})
    again = export("hrnet_w32", seeded, tmp_path / "seeded", overrides)
    assert checkpoint_metadata(again.fp16)["seed"] == checkpoint_metadata(again.fp32)["seed"] == "3"
    # A tolerance of 0 cannot hold for float arithmetic in two runtimes: the check can fail.
    argv = ["hrnet_w32", "--out", str(tmp_path / "cli"), "--weights", str(result.fp32)]
    argv += ["--set", "width=8", "--set", "input_size=[64,64]", "--tolerance", "0"]
    assert export_main(argv) == 1


#: Measured on this test's run (CPU, 2 epochs of 60 steps of 4 crops, 5 people): the epoch's
#: mean loss falls from 0.0073 to 0.0030 (ratio 0.41); the people it learnt from come back
#: with COCO AP 0.041 (AP50 0.36) and bbox PCK@0.05 0.26. The floors sit below with margin.
LOSS_RATIO_CEILING = 0.6
AP_FLOOR = 0.01
PCK_FLOOR = 0.15


def test_tiny_training_run_lowers_loss_and_reaches_ap(synthetic_set, tmp_path, capsys):
    out = tmp_path / "run"
    # Memorise the five people of four images: a loop that learns shows it in 120 steps on
    # a CPU, where generalising to new people would take thousands.
    settings = [*TINY, *_data_overrides(synthetic_set, "few", "few"), "batch_size=4"]
    settings += ["schedule.epochs=2", "schedule.steps_per_epoch=60", "schedule.milestones=[2]"]
    settings += ["schedule.warmup_steps=0", "model_overrides.sigma=2.0"]
    settings += ["augmentation.enabled=false", "ema.enabled=false", "optimizer.lr=0.002"]
    # the quarter-pixel shift: DARK's Gaussian model fits a 120-step model's ragged maps
    # worse (bbox PCK 0.125 against 0.26 here)
    settings += ["model_overrides.refine=quarter"]
    argv = [str(CONFIGS / "hrnet_w32_synth_tiny.yaml"), "--out", str(out)]
    assert train_main([*argv, *[a for s in settings for a in ("--set", s)]]) == 0
    history = json.loads((out / "state.json").read_text())["history"]
    assert [r["step"] for r in history] == [60, 120]
    assert history[-1]["loss"] < LOSS_RATIO_CEILING * history[0]["loss"], history
    assert history[-1]["AP"] >= AP_FLOOR and history[-1]["PCK"] >= PCK_FLOOR, history[-1]
    assert (out / "best.safetensors").is_file()
    # The evaluation CLI on the best weights gives the same metrics keys, as one JSON object.
    eval_argv = [
        "hrnet_w32",
        "--weights",
        str(out / "best.safetensors"),
        "--data",
        str(synthetic_set["few"]),
        "--images",
        str(synthetic_set["images"]),
        "--set",
        "width=8",
        "--set",
        "input_size=[64,64]",
        "--set",
        "refine=quarter",
        "--json",
    ]
    assert eval_main(eval_argv) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"AP", "AP50", "AP75", "AR"} <= metrics.keys()
    assert metrics["AP"] == pytest.approx(max(r.get("AP", 0) for r in history), abs=1e-6)
    # The half-precision check: the same weights in float16 against float32, in one object.
    assert eval_main([*eval_argv, "--precision", "both"]) == 0
    both = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert both["fp32"] == metrics
    assert both["fp16"].keys() == metrics.keys()
    assert both["AP_change"] == pytest.approx(both["fp16"]["AP"] - metrics["AP"])
    assert abs(both["AP_change"]) < 0.05, both
    # bfloat16 (what a pose node runs with bf16: true), against float32 in the same object
    assert eval_main([*eval_argv, "--precision", "fp32,bf16"]) == 0
    bf16 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bf16["fp32"] == metrics and bf16["bf16"].keys() == metrics.keys()
    assert bf16["AP_change"] == pytest.approx(bf16["bf16"]["AP"] - metrics["AP"])
    assert abs(bf16["AP_change"]) < 0.05, bf16
    assert eval_main([*eval_argv, "--precision", "fp8"]) == 2
    assert "--precision fp8: fp8 unknown" in capsys.readouterr().err
    # --analyze: the AP with each keypoint group exact, in the JSON object and as a table
    assert eval_main([*eval_argv, "--analyze"]) == 0
    analysed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    groups = keypoint_groups(skeletons.get("coco17"))
    assert list(analysed.pop("analysis")) == [*groups, "visible", "occluded", "all"]
    assert analysed == metrics
    assert eval_main([*eval_argv[:-1], "--analyze"]) == 0
    assert "ankle" in capsys.readouterr().out
    assert eval_main([*eval_argv, "--analyze", "--boxes", "detections.json"]) == 2
    assert "--analyze needs a COCO-format file and, for a top-down model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, said",
    [
        (None, "--data {path}: no such file or directory; give a COCO-format json"),
        ("nonsense{", "--data {path}: not JSON (Expecting value: line 1 column 1"),
        ("3", "--data {path}: neither a COCO-format json nor an MPII list"),
    ],
    ids=["missing", "not-json", "not-a-file-of-people"],
)
def test_eval_says_what_is_wrong_with_its_data_file(tmp_path, capsys, content, said):
    path = tmp_path / "val.json"
    if content is not None:
        path.write_text(content)
    weights = REPO / "posegraph" / "weights" / "hrnet_w16_128x96.safetensors"
    argv = ["hrnet_w16_128x96", "--weights", str(weights), "--data", str(path)]
    assert eval_main(argv) == 2
    err = "".join(capsys.readouterr().err.split())  # rich wraps long lines anywhere
    assert "".join(said.format(path=path).split()) in err, err


@pytest.mark.parametrize("config", ["hrnet_w16_128x96_synth", "erpose_n_320_synth"])
def test_train_names_an_annotation_file_that_is_not_json(tmp_path, capsys, config):
    # top-down and whole-image loaders alike: one line with the file, before any training
    path = tmp_path / "person_keypoints.json"
    path.write_text('{"images": [')
    argv = [str(CONFIGS / f"{config}.yaml"), "--out", str(tmp_path / "run")]
    argv += ["--set", f"data.train.annotations={path}", "--set", "data.val=null"]
    assert train_main(argv) == 2
    err = "".join(capsys.readouterr().err.split())  # rich wraps long lines anywhere
    assert f"error:annotationfile{path}isnotJSON:Expectingvalue" in err, err
    assert not (tmp_path / "run" / "last.safetensors").exists()
