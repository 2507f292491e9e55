"""sink.mjpeg: the live view, read over real HTTP from real runs."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import cv2
import numpy as np

from tests.conftest import ROOT, free_port, read_jsonl, wait_for, write_pipeline, write_video


def _get(url: str, auth: str | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _streams(base: str) -> dict:
    try:
        return json.loads(_get(base + "/streams")[1])["streams"]
    except OSError:
        return {}


def _parts(port: int, path: str):
    """Yields (index, image) for each JPEG of an MJPEG response, until it ends."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
    try:
        while True:
            line = resp.readline()
            if not line:
                return
            if line.strip() != b"--frame":
                continue
            headers = {}
            while (line := resp.readline().strip()) != b"":
                key, value = line.decode().split(":", 1)
                headers[key.lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            body = resp.read(int(headers["content-length"]))
            image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            yield int(headers["x-frame-index"]), image
    finally:
        conn.close()


def _bar_at(image: np.ndarray) -> int:
    """Where tests.conftest.write_video's orange bar is (BGR 0, 200, 255)."""
    orange = np.abs(image.astype(int) - (0, 200, 255)).sum(axis=2) < 60
    return int(np.argmax(orange.mean(axis=0) > 0.9))


def test_every_stream_is_served_live_as_mjpeg(tmp_path, posegraph):
    clip = write_video(tmp_path / "clip.mp4", frames=150, size=(160, 120))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam1", "type": "source.video", "with": {"uri": str(clip), "realtime": True}},
            {
                "name": "cam2",
                "type": "source.synthetic",
                "with": {"width": 96, "height": 64, "fps": 25, "frames": 100, "realtime": True},
            },
            {
                "name": "view",
                "type": "sink.mjpeg",
                "from": ["cam1", "cam2"],
                "with": {"port": port, "quality": 95},
            },
        ],
    )
    run = posegraph("-v", "run", "p.yaml")
    wait_for(lambda: {"cam1", "cam2"} <= set(_streams(base)), 30, "both streams on the view")

    code, page, _ = _get(base + "/")
    assert code == 200 and b'"stream/"' in page
    code, body, headers = _get(base + "/snapshot/cam2.jpg")
    assert code == 200 and headers["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (64, 96, 3)
    code, body, _ = _get(base + "/stream/cam3")
    assert code == 404 and b"no stream named 'cam3' (streams: cam1, cam2)" in body

    # each picture is the frame its index says, in its colours: the bar of frame n is at
    # x = 7n mod 152
    indices = []
    for index, image in _parts(port, "/stream/cam1"):
        assert image.shape == (120, 160, 3)
        assert abs(_bar_at(image) - (index * 7) % 152) <= 1, index
        indices.append(index)
        if len(indices) == 2:
            viewers = _streams(base)["cam1"]["viewers"]
            assert len(viewers) == 1 and viewers[0]["sent"] >= 1, viewers
    # the response ends when the stream does
    assert indices == sorted(set(indices)) and len(indices) > 20 and indices[-1] == 149, indices
    code, _, stderr = run.wait()
    assert code == 0, stderr
    assert f"live view at {base}/" in stderr
    assert stderr.startswith(f"live view: {base}/\n"), stderr[:200]  # said first, by run
    assert f"the viewer at 127.0.0.1 of cam1 left: {len(indices)} frames sent" in stderr


def test_a_viewer_that_stops_reading_holds_up_nothing(tmp_path, posegraph):
    """Large frames as fast as they come, a viewer that never reads: every frame still
    reaches the other sink and the run ends."""
    port = free_port()
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {
                "name": "cam",
                "type": "source.synthetic",
                "with": {"width": 1280, "height": 720, "fps": 25, "frames": 400, "realtime": True},
            },
            {"name": "view", "type": "sink.mjpeg", "from": "cam", "with": {"port": port}},
            {"name": "out", "type": "sink.jsonl", "from": "cam", "with": {"path": str(out)}},
        ],
    )
    run = posegraph("run", "p.yaml", "--json")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: "cam" in _streams(base), 30, "the stream on the view")
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", port))
    stuck.sendall(b"GET /stream/cam HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        # its thread fills the socket and waits there; the sink goes on taking frames
        time.sleep(3)
        viewer = _streams(base)["cam"]["viewers"]
        assert len(viewer) == 1, viewer
        code, stdout, stderr = run.wait(60)
    finally:
        stuck.close()
    assert code == 0, stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["lost"] == 0, summary
    frames = [m for m in read_jsonl(out) if "event" not in m]
    assert len(frames) == 400


def test_a_password_a_taken_port_and_bad_settings(tmp_path, posegraph):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cam = {
        "name": "cam",
        "type": "source.synthetic",
        "with": {"width": 64, "height": 48, "fps": 25, "frames": 150, "realtime": True},
    }
    view = {"port": port, "user": "ops", "password": "s3cret", "width": 32}
    write_pipeline(
        tmp_path / "p.yaml",
        [cam, {"name": "view", "type": "sink.mjpeg", "from": "cam", "with": view}],
    )
    run = posegraph("run", "p.yaml")

    def snapshot():
        try:
            return _get(base + "/snapshot/cam.jpg", auth="ops:s3cret")
        except OSError:
            return None

    code, body, _ = wait_for(lambda: (s := snapshot()) and s[0] == 200 and s, 30, "a snapshot")
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (24, 32, 3)
    code, _, headers = _get(base + "/snapshot/cam.jpg")
    assert code == 401 and headers["WWW-Authenticate"] == 'Basic realm="posegraph"'
    assert _get(base + "/streams", auth="ops:wrong")[0] == 401

    # a second run on the same port: one line saying which port, nothing left behind
    write_pipeline(
        tmp_path / "q.yaml",
        [cam, {"name": "view", "type": "sink.mjpeg", "from": "cam", "with": {"port": port}}],
    )
    code, _, stderr = posegraph("run", "q.yaml").wait()
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, stderr
    assert (
        f"cannot listen on 127.0.0.1:{port}: Address already in use; choose a free port"
        in (lines[0])
    )
    run.signal(2)
    assert run.wait()[0] == 0

    # port 0: no view (a pipeline that offers one with VIEW_PORT set), the run unharmed
    write_pipeline(
        tmp_path / "off.yaml",
        [cam, {"name": "view", "type": "sink.mjpeg", "from": "cam", "with": {"port": 0}}],
    )
    code, stdout, stderr = posegraph("run", "off.yaml", "--json").wait()
    assert code == 0 and json.loads(stdout.splitlines()[-1])["delivered"] == 150, stderr

    bad = {"port": port, "quality": 0, "user": "ops"}
    write_pipeline(
        tmp_path / "r.yaml",
        [cam, {"name": "view", "type": "sink.mjpeg", "from": "cam", "with": bad}],
    )
    code, _, stderr = posegraph("run", "r.yaml").wait()
    assert code == 2 and "quality 0 must be 1-100" in stderr, stderr


def test_draw_puts_the_poses_on_the_pictures_only(tmp_path, posegraph):
    """With draw, the pictures show the skeleton; the frames passed on are not drawn on."""
    clip = write_video(tmp_path / "clip.mp4", frames=100, size=(160, 120))
    port = free_port()
    out = tmp_path / "out.jsonl"
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.video", "with": {"uri": str(clip), "realtime": True}},
            {"name": "pose", "type": "tests.helpers.custom_nodes:OnePose", "from": "cam"},
            {
                "name": "view",
                "type": "sink.mjpeg",
                "from": "pose",
                "with": {"port": port, "quality": 95, "draw": {"radius": 4, "ids": False}},
            },
            {"name": "out", "type": "sink.jsonl", "from": "pose", "with": {"path": str(out)}},
        ],
    )
    run = posegraph("run", "p.yaml", env={"PYTHONPATH": str(ROOT)})
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _streams(base).get("cam", {}).get("index", -1) >= 0, 30, "a frame")
    code, body, _ = _get(base + "/snapshot/cam.jpg")
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    # the right shoulder's disc in the right side's blue (BGR 255, 128, 0) at (40, 60), the
    # background (40, 40, 40) away from it
    assert np.abs(image[60, 40].astype(int) - (255, 128, 0)).sum() < 60, image[60, 40]
    assert np.abs(image[60, 50].astype(int) - 40).sum() < 30, image[60, 50]
    code, _, stderr = run.wait()
    assert code == 0, stderr
    assert len(read_jsonl(out)) == 101  # 100 frames and eos: the sinks beside it untouched

    write_pipeline(
        tmp_path / "q.yaml",
        [
            {"name": "cam", "type": "source.video", "with": {"uri": str(clip)}},
            {"name": "view", "type": "sink.mjpeg", "from": "cam", "with": {"draw": {"dots": 1}}},
        ],
    )
    code, _, stderr = posegraph("run", "q.yaml").wait()
    assert code == 2 and "draw: unknown setting(s) dots; overlay.skeleton's are: skeleton" in (
        stderr
    ), stderr
