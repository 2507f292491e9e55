"""The ready pipelines in pipelines/ run end to end, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA, free_port, read_jsonl

PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_pipeline_validates(path, posegraph):
    env = {"VIDEO": "clip.mp4", "DETECTOR_ONNX": "detector.onnx"}
    code, stdout, stderr = posegraph("validate", str(path), env=env).wait()
    assert code == 0 and "OK" in stdout, stderr


def test_passthrough_runs_out_of_the_box(tmp_path, posegraph):
    code, stdout, stderr = posegraph(
        "run",
        str(ROOT / "pipelines" / "passthrough.yaml"),
        "--max-frames",
        "200",
        env={"ZMQ_PORT": str(free_port())},
    ).wait()
    assert code == 0, stderr
    messages = read_jsonl(tmp_path / "out" / "passthrough.jsonl")
    assert len(messages) == 201 and messages[-1]["event"] == "eos"
    assert "600 frames delivered" in stdout


def test_detect_track_on_a_real_video(tmp_path, posegraph):
    detector = SHARED_DATA / "models" / "rtmdet_nano_person.onnx"
    video = SHARED_DATA / "video" / "vtest.avi"
    if not detector.exists() or not video.exists():
        pytest.skip("../shared/data (the RTMDet-nano detector and vtest.avi) is not here")
    env = {"DETECTOR_ONNX": str(detector), "VIDEO": str(video), "OUT_DIR": str(tmp_path)}
    code, _, stderr = posegraph(
        "run", str(ROOT / "pipelines" / "detect-track.yaml"), "--max-frames", "30", env=env
    ).wait(120)
    assert code == 0, stderr
    frames = [m for m in read_jsonl(tmp_path / "detect-track.jsonl") if "event" not in m]
    assert len(frames) == 30
    people = [p for m in frames[10:] for p in m["people"]]
    assert len(people) >= 3 * 20, "pedestrians are found in most frames"
    assert len({p["track_id"] for p in people if p["track_id"] >= 0}) >= 3
    assert Path(tmp_path / "detect-track.mp4").stat().st_size > 10_000
