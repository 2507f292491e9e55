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
