"""Serve a video file as an HTTP MJPEG stream (multipart/x-mixed-replace) on 127.0.0.1, looping, at its frame rate.

    python -m benchmarks.mjpeg_server VIDEO --port 8090 [--fps 24]

Used by ``benchmarks/serve_bench.py`` as a live camera that can be killed and restarted.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

BOUNDARY = b"patchdetframe"


def load_jpegs(video: str, max_frames: int = 240) -> tuple[list[bytes], float]:
    cap = cv2.VideoCapture(video)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    jpegs = []
    while len(jpegs) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        jpegs.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    cap.release()
    if not jpegs:
        raise SystemExit(f"no frames in {video}")
    return jpegs, fps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--fps", type=float, help="frame rate (default: the video's)")
    args = parser.parse_args()
    jpegs, fps = load_jpegs(args.video)
    period = 1.0 / (args.fps or fps)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
            self.end_headers()
            i, due = 0, time.monotonic()
            try:
                while True:
                    jpeg = jpegs[i % len(jpegs)]
                    self.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    i += 1
                    due += period
                    time.sleep(max(0.0, due - time.monotonic()))
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
