"""A local RTSP server for tests: H.264 test pattern at rtsp://127.0.0.1:PORT/test.

Runs under the system Python (/usr/bin/python3), where GStreamer's gi bindings live:

    /usr/bin/python3 tests/helpers/rtsp_server.py PORT [WIDTHxHEIGHT] [FPS]
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port = sys.argv[1]
    w, h = (sys.argv[2] if len(sys.argv) > 2 else "320x240").split("x")
    fps = sys.argv[3] if len(sys.argv) > 3 else "15"
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},"
        f"framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    signal.signal(signal.SIGINT, lambda *_: loop.quit())
    GLib.timeout_add(200, lambda: True)  # let Python signal handlers run
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
