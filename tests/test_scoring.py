"""posegraph score: the clip's own ground truth, published as poses, scores perfectly; moved,
dropped and invented people lower it by what they should."""

from __future__ import annotations

import json

import numpy as np
import pytest

from posegraph import scoring
from tests.conftest import ROOT

TRUTH = ROOT / "pipelines" / "media" / "street.json"


def truth_messages(truth: scoring.Truth, shift: float = 0.0, drop_every: int = 0):
    """Frame messages as sink.jsonl writes them, holding the ground-truth people."""
    messages = []
    n = 0
    for image in truth.doc["images"]:
        kpts, _ = truth.frame(image["frame_index"])
        people = []
        for k in kpts:
            n += 1
            if drop_every and n % drop_every == 0:
                continue
            moved = k.copy()
            moved[:, :2] += shift
            people.append({"keypoints": moved.tolist(), "score": 0.9, "track_id": 1})
        messages.append({"stream": "cam", "index": image["frame_index"], "people": people})
    messages.append({"stream": "cam", "event": "eos"})
    return messages


@pytest.fixture(scope="module")
def truth():
    return scoring.Truth(TRUTH)


def test_ground_truth_scores_one(truth):
    result = scoring.score(truth_messages(truth), truth)
    assert result["frames"] == len(truth.doc["images"])
    assert result["people"] > 300
    assert result["mean_oks"] == pytest.approx(1.0)
    assert result["recall_50"] == 1.0 and result["extra"] == 0
    assert result["AP"] == pytest.approx(1.0)


def test_misses_shifts_and_extras_lower_the_score(truth):
    dropped = scoring.score(truth_messages(truth, drop_every=4), truth)
    assert dropped["mean_oks"] == pytest.approx(0.75, abs=0.01)
    assert dropped["recall_50"] == pytest.approx(0.75, abs=0.01)

    shifted = scoring.score(truth_messages(truth, shift=6.0), truth)
    assert 0.05 < shifted["mean_oks"] < 0.95

    messages = truth_messages(truth)
    for m in messages[:-1]:
        m["people"].append({"keypoints": np.full((17, 3), 5.0).tolist(), "score": 0.1})
    extra = scoring.score(messages, truth)
    assert extra["extra"] == len(messages) - 1
    assert extra["mean_oks"] == pytest.approx(1.0)


def test_cli_scores_a_file_and_rejects_a_truth_without_frames(tmp_path, posegraph, truth):
    poses = tmp_path / "poses.jsonl"
    poses.write_text("".join(json.dumps(m) + "\n" for m in truth_messages(truth)))
    code, stdout, stderr = posegraph("score", str(poses), "--truth", str(TRUTH), "--json").wait()
    assert code == 0, stderr
    assert json.loads(stdout)["mean_oks"] == pytest.approx(1.0)

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    code, _, stderr = posegraph("score", str(poses), "--truth", str(plain)).wait()
    assert code == 2 and "frame_index" in stderr and stderr.count("\n") == 1


def test_cli_scores_the_last_run_of_a_file_that_holds_two(tmp_path, posegraph, truth):
    """sink.jsonl appends: a file with a poor run, then a perfect one, scores as the second
    alone, and says so; a file of one run says nothing."""
    poses = tmp_path / "poses.jsonl"
    runs = truth_messages(truth, shift=6.0) + truth_messages(truth)
    poses.write_text("".join(json.dumps(m) + "\n" for m in runs))
    code, stdout, stderr = posegraph("score", str(poses), "--truth", str(TRUTH), "--json").wait()
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["mean_oks"] == pytest.approx(1.0)
    assert result["frames"] == len(truth.doc["images"])
    assert "holds 2 runs (sink.jsonl appends); scoring the last" in stderr
    # a second run cut short, after a whole first one
    cut = truth_messages(truth) + truth_messages(truth, shift=6.0)[:10]
    assert [len(r) for r in scoring.split_runs(cut)] == [len(cut) - 10, 10]
    assert len(scoring.split_runs(truth_messages(truth))) == 1


def boxed(messages, box_shift: float = 0.0):
    """The messages with each person's box: the extent of their labelled keypoints, 4 px
    wider and taller (a person with one labelled keypoint still has a box)."""
    out = []
    for m in messages:
        m = json.loads(json.dumps(m))
        for p in m.get("people", []):
            k = np.asarray(p["keypoints"])
            k = k[k[:, 2] > 0] if (k[:, 2] > 0).any() else k
            x1, y1 = k[:, :2].min(0) - 2
            x2, y2 = k[:, :2].max(0) + 2
            w = x2 - x1
            p["box"] = [x1 + box_shift * w, y1, x2 + box_shift * w, y2]
        out.append(m)
    return out


def test_compare_with_a_reference_pipeline_matches_people_by_box(truth):
    reference = boxed(truth_messages(truth))
    same = scoring.compare(boxed(truth_messages(truth)), reference)
    assert same["frames"] == len(truth.doc["images"])
    assert same["reference_people"] == same["people"] > 300
    assert same["box_recall"] == same["box_precision"] == same["mean_iou"] == 1.0
    assert same["keypoint_oks"] == pytest.approx(1.0)

    fewer = scoring.compare(boxed(truth_messages(truth, drop_every=4)), reference)
    assert fewer["box_recall"] == pytest.approx(0.75, abs=0.01)
    assert fewer["box_precision"] == 1.0

    moved = scoring.compare(boxed(truth_messages(truth, shift=6.0)), reference)
    assert moved["box_recall"] > 0.5 and 0.05 < moved["keypoint_oks"] < 0.95

    # boxes beside the people: only the odd box that lands on a neighbour matches
    aside = scoring.compare(boxed(truth_messages(truth), box_shift=1.5), reference)
    assert aside["box_recall"] < 0.05

    boxes_only = [
        {**m, "people": [{"box": p["box"]} for p in m["people"]]} if "people" in m else m
        for m in reference
    ]
    assert scoring.compare(boxes_only, reference)["box_recall"] == 1.0
    assert scoring.compare(reference, boxes_only)["keypoint_oks"] is None
    with pytest.raises(ValueError, match="same video"):
        scoring.compare(reference, reference, stream="another")


def test_cli_compares_with_a_reference(tmp_path, posegraph, truth):
    reference = tmp_path / "reference.jsonl"
    reference.write_text("".join(json.dumps(m) + "\n" for m in boxed(truth_messages(truth))))
    poses = tmp_path / "poses.jsonl"
    poses.write_text(
        "".join(json.dumps(m) + "\n" for m in boxed(truth_messages(truth, drop_every=2)))
    )
    code, stdout, stderr = posegraph("score", str(poses), "--reference", str(reference)).wait()
    assert code == 0, stderr
    assert "box recall 0.5" in stdout and "keypoint OKS 1.000" in stdout
    code, _, stderr = posegraph(
        "score", str(poses), "--reference", str(reference), "--truth", str(TRUTH)
    ).wait()
    assert code == 2 and "not allowed with" in stderr
    code, _, stderr = posegraph(
        "score", str(poses), "--reference", str(reference), "--iou", "50"
    ).wait()
    assert code == 2 and "--iou 50" in stderr and stderr.count("\n") == 1
