"""Synthetic people: keypoints on the drawn bodies, valid COCO files, tracks, determinism."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from xtcocotools.coco import COCO as XtCOCO

from tests.helpers.people import person_at_heading
from training.synth import (
    SceneConfig,
    SyntheticPeople,
    VideoConfig,
    write_video,
)
from training.synth.cli import main
from training.synth.scene import sample_heading

SMALL = SceneConfig(width=256, height=192, people=(2, 6), crowd_p=0.0, max_height_px=260)


def _near(mask: np.ndarray, x: float, y: float) -> bool:
    """Is the pixel under (x, y), or one of its 8 neighbours, set? (1 px rounding slack)"""
    h, w = mask.shape
    cx, cy = int(round(x)), int(round(y))
    return bool(mask[max(cy - 1, 0) : min(cy + 2, h), max(cx - 1, 0) : min(cx + 2, w)].any())


def test_keypoints_land_on_drawn_bodies():
    # A visible point lies on its person's visible pixels. A hidden point (v=1) lies under
    # some person: another one in front of it, or the person's own nearer body part.
    data = SyntheticPeople(12, seed=11, config=SMALL)
    checked = hidden = 0
    for i in range(len(data)):
        s = data[i]
        for n in range(len(s)):
            own = s.instance_map == n + 1
            body = s.instance_map > 0
            for x, y, v in s.keypoints[n]:
                if v == 2:
                    assert _near(own, x, y), (i, n, x, y)
                    checked += 1
                elif v == 1:
                    assert _near(body, x, y), (i, n, x, y)
                    hidden += 1
                else:
                    assert x == 0 and y == 0
    assert checked > 500 and hidden > 50


def test_crowd_and_border_cases():
    data = SyntheticPeople(4, seed=2, config=SceneConfig(width=320, height=240, crowd_p=1.0))
    s = data[0]
    assert len(s) >= 15
    assert s.instance_map.max() == len(s)
    cut = [n for n in range(len(s)) if (s.keypoints[n, :, 2] == 0).any()]
    assert cut, "some people should be cut off or have unlabelled points"


def test_view_from_behind_hides_face_and_keeps_sides():
    front, back = person_at_heading(0.0), person_at_heading(np.pi)
    kf, kb = front.keypoints[0], back.keypoints[0]
    # COCO sides are the person's own: facing the camera, their left is on the image right.
    assert kf[5, 0] > kf[6, 0] and kf[11, 0] > kf[12, 0] and kf[91, 0] > kf[112, 0]
    assert kb[5, 0] < kb[6, 0] and kb[11, 0] < kb[12, 0] and kb[91, 0] < kb[112, 0]
    assert front.face_valid[0] and (kf[23:91, 2] == 2).sum() > 50
    assert not back.face_valid[0] and (kb[23:91, 2] == 0).all()
    assert kb[0, 2] == 1  # the nose is labelled but hidden by the head


def test_still_images_lean_toward_people_facing_the_camera():
    # As in photographs; with uniform headings a model cannot tell a person's left from right
    # early in training (half the people face away) and learns one map for both sides.
    rng = np.random.default_rng(0)
    headings = np.array([sample_heading(rng) for _ in range(4000)])
    assert np.all(np.abs(headings) <= np.pi)
    facing = float(np.mean(np.abs(headings) < np.pi / 2))
    assert 0.75 < facing < 0.9, facing  # uniform headings give 0.5
    assert np.mean(np.abs(headings) > 3 * np.pi / 4) > 0.05  # some still face away


def test_same_seed_same_bytes(tmp_path):
    a, b = SyntheticPeople(3, seed=9, config=SMALL), SyntheticPeople(3, seed=9, config=SMALL)
    for i in range(3):
        assert a[i].image.tobytes() == b[i].image.tobytes()
        assert a[i].keypoints.tobytes() == b[i].keypoints.tobytes()
    assert a[0].image.tobytes() != SyntheticPeople(3, seed=10, config=SMALL)[0].image.tobytes()
    # the written set is the same however many processes render it
    for d, workers in (("one", "1"), ("two", "2")):
        args = ["images", "--n", "3", "--out", str(tmp_path / d), "--size", "256x192"]
        assert main([*args, "--seed", "4", "--workers", workers]) == 0
    for rel in ("images/000002.jpg", "annotations/coco_wholebody.json"):
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def test_coco_files_load_and_ground_truth_scores_ap_1(tmp_path):
    out = tmp_path / "set"
    assert (
        main(["images", "--n", "6", "--out", str(out), "--size", "320x240", "--people", "2-6"]) == 0
    )
    gt = COCO(str(out / "annotations" / "person_keypoints.json"))
    assert gt.loadCats(1)[0]["keypoints"][5] == "left_shoulder"
    anns = gt.loadAnns(gt.getAnnIds())
    assert anns and all(len(a["keypoints"]) == 51 for a in anns)
    dets = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in anns
        if a["num_keypoints"] > 0  # people with no labelled point are ignored by COCOeval
    ]
    ev = COCOeval(gt, gt.loadRes(dets), "keypoints")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)

    whole = XtCOCO(str(out / "annotations" / "coco_wholebody.json"))
    ann = whole.loadAnns(whole.getAnnIds())[0]
    assert len(ann["face_kpts"]) == 68 * 3 and len(ann["lefthand_kpts"]) == 21 * 3
    assert len(ann["foot_kpts"]) == 18 and len(ann["face_box"]) == 4
    assert isinstance(ann["face_valid"], bool)


def test_video_tracks_are_consistent_and_survive_leaving(tmp_path):
    config = VideoConfig(people=4, seconds=16, fps=5, width=256, height=192, seed=3)
    summary = write_video(config, tmp_path / "clip.mp4")
    rows = np.loadtxt(summary["csv"], delimiter=",", ndmin=2)
    assert (rows[:, 6:] == [1, -1, -1, -1]).all()
    frames = rows[:, 0].astype(int)
    ids = rows[:, 1].astype(int)
    assert frames.min() >= 1 and frames.max() <= config.frames
    for f in np.unique(frames):
        assert len(set(ids[frames == f])) == (frames == f).sum(), "an id twice in one frame"
    present = np.unique(frames[ids == 1])
    assert (np.diff(present) > 1).any(), "track 1 leaves and comes back under the same id"
    # Boxes of one id move smoothly between consecutive frames.
    for tid in np.unique(ids):
        r = rows[ids == tid]
        step = np.diff(r[:, 0]) == 1
        centre = r[:, 2:4] + r[:, 4:6] / 2
        assert np.all(np.abs(np.diff(centre, axis=0))[step] < 80)

    doc = json.loads(summary["json"].read_text())
    assert [im["frame_index"] for im in doc["images"]] == list(range(config.frames))
    assert all("track_id" in a for a in doc["annotations"])
    with av.open(str(summary["mp4"])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == config.frames


def test_cli_bad_arguments_get_one_line(capsys):
    assert main(["images", "--n", "3", "--out", "x", "--people", "5-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--people" in err and "MIN-MAX" in err and len(err.splitlines()) == 1
    assert main(["video", "--out", "x", "--size", "641x480"]) == 2
