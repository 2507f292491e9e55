"""``posegraph doctor``: what this host gives posegraph, and what it lacks.

Reads, in a second or two and without starting a pipeline: the Python and the packages
posegraph runs on (torch and its CUDA devices, onnxruntime's execution providers, PyAV's
FFmpeg and its H.264 encoder and RTSP, OpenCV's camera backends), the room in /dev/shm
for the frame plane, the cameras, and the shipped weights. Each finding is ``ok``,
``warn`` (works, but not as well as it could) or ``fail`` (something posegraph needs);
the exit status is 1 when any fails. ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

MB = 1 << 20
#: a pool of the frame plane: 32 slots of a 1080p BGR image
POOL_1080P = 32 * 1920 * 1080 * 3


@dataclass
class Finding:
    area: str
    status: str  # ok, warn, fail
    what: str


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> list[Finding]:
    import posegraph

    cpus = os.cpu_count() or 1
    text = (
        f"posegraph {posegraph.__version__}, Python {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}, {cpus} CPU cores"
    )
    return [Finding("python", "ok", text)]


def check_torch() -> list[Finding]:
    try:
        import torch
    except ImportError as exc:
        return [Finding("torch", "fail", f"cannot import torch ({exc}): pip install torch")]
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    out = [Finding("torch", "ok", f"torch {torch.__version__} ({build})")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(
                Finding("torch", "ok", f"cuda:{i} {p.name}, {p.total_memory / MB / 1024:.0f} GiB")
            )
    elif torch.version.cuda is None:
        out[0].what += ": model nodes run on the CPU (for a GPU, a CUDA build: see the README)"
    else:
        out.append(
            Finding(
                "torch",
                "warn",
                "a CUDA build, but no CUDA device is usable (driver, CUDA_VISIBLE_DEVICES?)",
            )
        )
    if torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported():
        isa = "AMX" if torch.cpu._is_amx_tile_supported() else "AVX512-BF16"
        out.append(
            Finding(
                "torch",
                "ok",
                f"the CPU computes in bfloat16 ({isa}): model nodes run faster with bf16: true, "
                "training with cpu_amp: true",
            )
        )
    return out


def check_onnxruntime() -> list[Finding]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return [Finding("onnxruntime", "fail", f"cannot import onnxruntime ({exc})")]
    providers = ort.get_available_providers()
    out = [Finding("onnxruntime", "ok", f"onnxruntime {ort.__version__}: {', '.join(providers)}")]
    if _version("onnxruntime-gpu") and "CUDAExecutionProvider" not in providers:
        out.append(
            Finding(
                "onnxruntime",
                "warn",
                "onnxruntime-gpu is installed but offers no CUDAExecutionProvider: both "
                "onnxruntime and onnxruntime-gpu installed? keep only onnxruntime-gpu",
            )
        )
    return out


def check_video() -> list[Finding]:
    try:
        import av
    except ImportError as exc:
        return [Finding("video", "fail", f"cannot import PyAV ({exc}): pip install av")]
    ffmpeg = ".".join(str(v) for v in av.library_versions.get("libavformat", ())) or "?"
    out = [Finding("video", "ok", f"PyAV {av.__version__} (libavformat {ffmpeg})")]
    if "libx264" not in av.codecs_available:
        out.append(
            Finding(
                "video",
                "warn",
                "no libx264 encoder in this PyAV: sink.video needs codec: mpeg4 (or a PyAV "
                "build with x264)",
            )
        )
    if "rtsp" not in av.formats_available:
        out.append(
            Finding("video", "warn", "this PyAV's FFmpeg has no RTSP: source.rtsp cannot work")
        )
    import cv2

    backends = []
    try:
        backends = [
            cv2.videoio_registry.getBackendName(b) for b in cv2.videoio_registry.getCameraBackends()
        ]
    except AttributeError:
        pass
    cameras = sorted(glob.glob("/dev/video*"))
    what = f"OpenCV {cv2.__version__}, camera backends: {', '.join(backends) or 'none'}; "
    what += f"cameras: {', '.join(cameras) or 'none'}"
    out.append(Finding("video", "ok", what))
    return out


def check_shm(path: str = "/dev/shm") -> list[Finding]:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return [
            Finding(
                "shm",
                "warn",
                f"{path}: {exc.strerror}; frames travel inline between processes (slower)",
            )
        ]
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    pools = free // POOL_1080P
    what = (
        f"{path}: {size / MB:.0f} MB, {free / MB:.0f} MB free: room for {pools} frame-plane "
        f"pools of 1080p frames ({POOL_1080P / MB:.0f} MB each: a source, an overlay)"
    )
    if pools >= 2:
        return [Finding("shm", "ok", what)]
    return [
        Finding(
            "shm",
            "warn",
            what + "; pools are made smaller or frames go inline: give more shared memory "
            "(docker run --shm-size=1g) or lower the runtime option shm_slots",
        )
    ]


def check_weights() -> list[Finding]:
    from posegraph import weights

    folder = Path(weights.__file__).parent
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return [Finding("weights", "fail", f"no shipped weights in {folder}: reinstall posegraph")]
    out = []
    for f in files:
        try:
            with f.open("rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            tensors = sum(1 for k in header if k != "__metadata__")
            out.append(
                Finding(
                    "weights", "ok", f"{f.name}: {f.stat().st_size / MB:.1f} MB, {tensors} tensors"
                )
            )
        except (OSError, ValueError) as exc:
            out.append(
                Finding(
                    "weights",
                    "fail",
                    f"{f.name} cannot be read ({exc}): a Git LFS pointer or a broken copy? "
                    "reinstall posegraph",
                )
            )
    return out


def check_extras() -> list[Finding]:
    present = {p: _version(p) for p in ("ray", "paho-mqtt", "redis", "xtcocotools", "motmetrics")}
    have = ", ".join(f"{p} {v}" for p, v in present.items() if v)
    lacking = ", ".join(p for p, v in present.items() if not v)
    what = f"installed: {have or 'none'}"
    if lacking:
        what += f"; not installed: {lacking} (ray: nodes on other hosts, the extra 'cluster')"
    return [Finding("extras", "ok", what)]


CHECKS = (
    check_python,
    check_torch,
    check_onnxruntime,
    check_video,
    check_shm,
    check_weights,
    check_extras,
)


def run_checks() -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        try:
            findings += check()
        except Exception as exc:  # noqa: BLE001 - one check's surprise must not hide the rest
            findings.append(Finding(check.__name__[6:], "fail", f"{type(exc).__name__}: {exc}"))
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posegraph doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    findings = run_checks()
    failed = any(f.status == "fail" for f in findings)
    if args.json:
        print(json.dumps({"ok": not failed, "findings": [asdict(f) for f in findings]}))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=False, box=None, pad_edge=False)
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        for f in findings:
            table.add_row(f.area, f"[{colour[f.status]}]{f.status}[/]", f.what)
        Console().print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
