"""The ready pipelines in pipelines/ run end to end, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA, free_port, read_jsonl

MEDIA = ROOT / "pipelines" / "media"

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


def test_real_detector_with_pose_on_a_real_video(tmp_path, posegraph):
    detector = SHARED_DATA / "models" / "rtmdet_nano_person.onnx"
    video = SHARED_DATA / "video" / "vtest.avi"
    if not detector.exists() or not video.exists():
        pytest.skip("../shared/data (the RTMDet-nano detector and vtest.avi) is not here")
    env = {"DETECTOR_ONNX": str(detector), "VIDEO": str(video), "OUT_DIR": str(tmp_path)}
    code, _, stderr = posegraph(
        "run", str(ROOT / "pipelines" / "real-detector.yaml"), "--max-frames", "20", env=env
    ).wait(180)
    assert code == 0, stderr
    assert "Warning" not in stderr, stderr  # e.g. torch on the read-only frames in shared memory
    frames = [m for m in read_jsonl(tmp_path / "real-detector.jsonl") if "event" not in m]
    assert len(frames) == 20
    people = [p for m in frames[5:] for p in m["people"]]
    assert len(people) >= 3 * 15, "pedestrians are found in most frames"
    assert len({p["track_id"] for p in people if p["track_id"] >= 0}) >= 3
    assert all(len(p["keypoints"]) == 17 for p in people)
    assert Path(tmp_path / "real-detector.mp4").stat().st_size > 10_000


# Floors on the sample clip (pipelines/media/street.mp4, its first FRAMES frames), mean OKS
# over every ground-truth person (a missed person counts 0). Measured with the shipped
# weights: surveillance 0.788 (HPRNet's boxes, HRNet's keypoints; 0.811 over 45 frames;
# 0.638 with the detector and HRNet before, 0.609 with the HRNet before that, 0.502 with
# the HRNet that drew one map for both sides of the body), realtime 0.652 (ER-Pose-n at
# 416 after its tenth stage, 0.731 at 512; 0.675 at 416 after its ninth; 0.565 at 320,
# 0.491 after its GPU stage, 0.457 before it, 0.122 after 905 steps, random weights score
# about 0). Raise them with the weights.
FRAMES = 30
OKS_FLOOR = {"surveillance": 0.7, "realtime": 0.6}


def run_and_score(posegraph, tmp_path, name: str, frames: int, env: dict) -> tuple[list, dict]:
    """Run pipelines/NAME.yaml for ``frames`` frames; its frames and its score against the
    sample clip's ground truth."""
    code, _, stderr = posegraph(
        "run", str(ROOT / "pipelines" / f"{name}.yaml"), "--max-frames", str(frames), env=env
    ).wait(240)
    assert code == 0, stderr
    out = tmp_path / "out" / f"{name}.jsonl"
    assert (tmp_path / "out" / f"{name}.mp4").stat().st_size > 10_000
    code, result, stderr = posegraph(
        "score", str(out), "--truth", str(MEDIA / "street.json"), "--json"
    ).wait()
    assert code == 0, stderr
    return [m for m in read_jsonl(out) if "event" not in m], json.loads(result)


@pytest.mark.parametrize("name", ["surveillance", "realtime"])
def test_pose_pipeline_out_of_the_box_matches_the_clip_truth(name, tmp_path, posegraph):
    env = {"REALTIME": "false", "PUBLISH": f"tcp://127.0.0.1:{free_port()}"}
    frames, scored = run_and_score(posegraph, tmp_path, name, FRAMES, env)
    assert len(frames) == FRAMES
    assert all(m["skeleton"] == "coco17" for m in frames)
    assert scored["frames"] == FRAMES
    assert scored["mean_oks"] >= OKS_FLOOR[name], scored


def test_wholebody_gives_133_keypoints_per_person(tmp_path, posegraph):
    """The shipped HPRNet is little trained (see its model card): mean OKS 0.48 on the first
    10 frames, 23 of 40 people above OKS 0.5 (0.32 and 4 with the weights before, 0.26 and
    none with those before them), so the floor is on that, the body part of its 133
    keypoints."""
    frames, scored = run_and_score(posegraph, tmp_path, "wholebody", 10, {"REALTIME": "false"})
    assert len(frames) == 10 and all(m["skeleton"] == "wholebody133" for m in frames)
    people = [p for m in frames for p in m["people"]]
    assert people and all(len(p["keypoints"]) == 133 for p in people)
    assert scored["mean_oks"] >= 0.35, scored


def test_multicam_keeps_three_streams_apart(tmp_path, posegraph):
    code, _, stderr = posegraph(
        "run",
        str(ROOT / "pipelines" / "multicam.yaml"),
        "--max-frames",
        "6",
        env={"REALTIME": "false"},
    ).wait(240)
    assert code == 0, stderr
    frames = [m for m in read_jsonl(tmp_path / "out" / "multicam.jsonl") if "event" not in m]
    by_stream = {s: [m for m in frames if m["stream"] == s] for s in ("cam1", "cam2", "cam3")}
    assert all(len(v) == 6 for v in by_stream.values()), {k: len(v) for k, v in by_stream.items()}
    assert sum(len(m["people"]) for m in frames) > 0
    for s in by_stream:
        assert (tmp_path / "out" / f"multicam-{s}.mp4").stat().st_size > 5_000


def test_the_pipelines_come_in_the_package_and_run_by_name(tmp_path, posegraph):
    """A pip install has no clone to read pipelines/ from: the wheel carries them (with
    their media), and `posegraph run NAME` reads the one of that name."""
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("posegraph-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in sorted((ROOT / "pipelines").rglob("*")):
        if path.is_file():
            assert f"posegraph/pipelines/{path.relative_to(ROOT / 'pipelines')}" in names, path
    # from a folder with no pipelines/ in it
    env = {"ZMQ_PORT": str(free_port())}
    run = posegraph("run", "passthrough", "--max-frames", "3", "--json", env=env)
    code, stdout, stderr = run.wait()
    assert code == 0, stderr
    assert json.loads(stdout.splitlines()[-1])["pipeline"] == "passthrough"
    code, _, stderr = posegraph("validate", "nothere").wait()
    assert (
        code == 2 and "the name of one that comes with posegraph: multicam, passthrough" in stderr
    )
