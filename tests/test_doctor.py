"""posegraph doctor: what this host gives posegraph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from posegraph import weights
from tests.conftest import ROOT, posegraph_with_mounts


def _doctor(prefix: list[str] | None = None) -> dict:
    done = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "posegraph.cli", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_doctor_reports_this_host():
    report = _doctor()
    assert report["ok"], report
    by_area: dict[str, list[dict]] = {}
    for f in report["findings"]:
        by_area.setdefault(f["area"], []).append(f)
    assert {"python", "torch", "onnxruntime", "video", "shm", "weights", "extras"} <= set(by_area)
    import torch

    assert f"torch {torch.__version__}" in by_area["torch"][0]["what"]
    from posegraph.models import cpu_has_bfloat16

    says_bf16 = [f for f in by_area["torch"] if "cpu_amp: true" in f["what"]]
    assert len(says_bf16) == int(cpu_has_bfloat16()), by_area["torch"]
    assert "CPUExecutionProvider" in by_area["onnxruntime"][0]["what"]
    shipped = sorted(p.name for p in Path(weights.__file__).parent.glob("*.safetensors"))
    assert [f["what"].split(":")[0] for f in by_area["weights"]] == shipped
    assert all(f["status"] == "ok" for f in by_area["weights"])


def test_doctor_warns_of_a_small_dev_shm():
    done = posegraph_with_mounts(
        ["-t tmpfs -o size=64m tmpfs /dev/shm"], ["doctor", "--json"], cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    shm = [f for f in json.loads(done.stdout)["findings"] if f["area"] == "shm"]
    assert len(shm) == 1 and shm[0]["status"] == "warn", shm
    assert "/dev/shm: 64 MB, 64 MB free: room for 0 frame-plane pools" in shm[0]["what"]
    assert "docker run --shm-size=1g" in shm[0]["what"]
