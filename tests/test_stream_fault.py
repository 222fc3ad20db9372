"""Fault test: an HTTP MJPEG stream on 127.0.0.1 drops mid-run and comes back; detection carries on.

The test serves ``multipart/x-mixed-replace`` JPEG frames itself (loopback
only, bounded in frames and time), kills the server after the first frames
(connection closed, port refusing), restarts it on the same port a moment
later, and checks that ``detect`` reconnected, kept counting frames, reported
the gap, and raised nothing.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import pytest

from patchdet.runtime.run import DetectConfig, detect
from tests.fixtures_onnx import write_model
from tests.runtime_media import moving_square_frames

FRAMES_BEFORE_DROP = 15
DOWN_SECONDS = 1.0
MAX_FRAMES_PER_CONNECTION = 600  # bounds the test even if nothing else stops it


class MjpegServer:
    """A restartable MJPEG-over-HTTP server on a fixed loopback port."""

    def __init__(self, port: int = 0, frame_interval_s: float = 0.02) -> None:
        self.frame_interval_s = frame_interval_s
        jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in moving_square_frames(16, (96, 64))]
        self.jpegs = jpegs
        self.sent = 0
        self.stop_event = threading.Event()
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for i in range(MAX_FRAMES_PER_CONNECTION):
                    if owner.stop_event.is_set():
                        return  # closing the connection mid-stream
                    jpeg = owner.jpegs[i % len(owner.jpegs)]
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
                        self.wfile.write(jpeg + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    owner.sent += 1
                    time.sleep(owner.frame_interval_s)

            def log_message(self, *args):
                pass

        self.stop_event = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()  # open connections end
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()  # new connections are refused
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


def _loopback_available() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
        return True
    except OSError:
        return False


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _loopback_available(), reason="needs a loopback interface to serve the stream")
def test_mjpeg_stream_drops_and_comes_back(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    server = MjpegServer()
    server.start()
    gap_done = threading.Event()

    def drop_and_restore() -> None:
        deadline = time.monotonic() + 30
        while server.sent < FRAMES_BEFORE_DROP and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop()
        time.sleep(DOWN_SECONDS)
        server.start()  # same port
        gap_done.set()

    chaos = threading.Thread(target=drop_and_restore, daemon=True)
    chaos.start()
    cfg = DetectConfig(model=str(model), source=server.url, backend="onnxruntime", threads=1, tile=32, stride=32,
                       max_frames=40, reconnect_timeout_s=30.0, log_every_s=0, jsonl=str(tmp_path / "d.jsonl"))
    try:
        summary = detect(cfg)  # no exception may escape
    finally:
        chaos.join(timeout=40)
        server.stop()
    assert gap_done.is_set()
    assert summary["frames"] == 40 and summary["stopped_by"] == "max_frames"
    assert summary["reconnects"] >= 1
    assert len(summary["gaps"]) >= 1 and all(g["seconds"] > 0 for g in summary["gaps"])
    assert (tmp_path / "d.jsonl").read_text().count("\n") == 40
