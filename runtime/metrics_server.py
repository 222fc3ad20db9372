"""Prometheus metrics of ``patchdet serve`` (prometheus-client) and the HTTP server of ``/metrics`` and ``/healthz``.

The server binds 127.0.0.1 unless the site file names another host: metrics say what the cameras see.
``/healthz`` answers 200 while every camera delivered a frame within ``camera_down_s`` (or ended, for files)
and 503 with the names of the cameras that are down otherwise; its JSON body is the service status.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """The service's metrics in their own registry (several services in one test process do not clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("patchdet_frames", "Frames processed", ["camera"], registry=r)
        self.fps = Gauge("patchdet_fps", "Frames per second over the last seconds", ["camera"], registry=r)
        self.latency = Histogram("patchdet_stage_latency_seconds", "Per-frame latency of each stage",
                                 ["camera", "stage"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.dropped = Counter("patchdet_dropped_frames", "Frames the grabber replaced before they were processed",
                               ["camera"], registry=r)
        self.reconnects = Counter("patchdet_reconnects", "Successful reopenings of a lost source", ["camera"],
                                  registry=r)
        self.detections = Counter("patchdet_detections", "Detections after zones and masks", ["camera"], registry=r)
        self.events = Counter("patchdet_events", "Events started", ["camera", "class_name"], registry=r)
        self.up = Gauge("patchdet_camera_up", "1 while the camera delivers frames", ["camera"], registry=r)
        self.sink_queued = Gauge("patchdet_sink_queued_messages", "Messages waiting for a sink", ["sink"], registry=r)
        self.sink_connected = Gauge("patchdet_sink_connected", "1 while the sink reaches its server", ["sink"],
                                    registry=r)
        self.batch_tiles = Histogram("patchdet_batch_tiles", "Tiles per shared backend call", ["model"],
                                     buckets=(16, 64, 128, 256, 512, 1024, 2048, 4096), registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a background thread.

    Args:
        metrics: What ``/metrics`` serves.
        health: Returns ``(healthy, status dict)`` for ``/healthz``.
        host: Address to bind (127.0.0.1 by default: do not expose camera details by accident).
        port: TCP port (0: a free one, see ``self.port``).
    """

    def __init__(self, metrics: ServiceMetrics, health: Callable[[], tuple[bool, dict[str, Any]]],
                 host: str = "127.0.0.1", port: int = 9108) -> None:
        server_metrics, server_health = metrics, health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, server_metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    healthy, status = server_health()
                    self._reply(200 if healthy else 503, json.dumps(status).encode(), "application/json")
                else:
                    self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not news
                logger.debug("http %s", format % args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(f"metrics port {host}:{port} cannot be opened: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        logger.info("metrics at http://%s:%d/metrics, health at /healthz", self.host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)
