"""``patchdet serve``: N cameras in one process, one shared batched detector per model, events, sinks, metrics.

Each camera runs in its own thread: it opens its source (retrying with back-off while it cannot; live
sources keep only the newest frame and reconnect on their own, ``runtime.grabber``), tiles each frame,
has it scored by the model it shares with other cameras (``runtime.shared_model``), keeps the detections
inside its zones and outside its masks, and turns them into events (``runtime.events``) that go to its
sinks (``runtime.event_sinks``). A camera that fails never stops the others.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from patchdet.runtime.detections import Detections
from patchdet.runtime.events import EventTracker
from patchdet.runtime.motion import MotionGate, gate_detector
from patchdet.runtime.service_config import (
    CameraConfig,
    SiteConfig,
    camera_settings,
    check_polygons,
    load_site_config,
)
from patchdet.runtime.shared_model import SharedModel, camera_view, model_key
from patchdet.runtime.streams import StreamOptions, open_source

logger = logging.getLogger(__name__)

OPEN_RETRY_MAX_S = 30.0
WARMUP_FRAME_WH = (640, 360)  # a 16:9 frame: the usual camera aspect
DENSE_STACK = 2  # mosaic canvases of a dense model per backend call (benchmarks/results/serve.md)


def warm_up_shared(detector, max_tiles: int) -> int:
    """Run a shared model on the batches it will see before the cameras start; returns the most items per call.

    Memory planning on the first calls takes seconds. A dense model's mosaics depend on the frame's aspect only
    (reference height); each new batch size costs ONNX Runtime seconds of planning on its first calls while
    stacking canvases gains little (4 % per frame at two): at most ``DENSE_STACK`` canvases per call, each size
    warmed up. A patch model is warmed up at ``max_tiles`` tiles.
    """
    if not detector.dense:
        w, h = detector.card.input_wh
        detector.warmup(batch=np.zeros((max_tiles, 3, h, w), np.float32))
        return max_tiles
    frame = np.zeros((WARMUP_FRAME_WH[1], WARMUP_FRAME_WH[0], 3), np.uint8)
    canvas = detector.preprocess(frame).batch.copy()
    for n in range(1, DENSE_STACK + 1):
        detector.warmup(batch=np.concatenate([canvas] * n))
    return DENSE_STACK


def keep_in_zones(detections: Detections, zones, masks) -> Detections:
    """Detections whose box centre is inside a zone (when there are zones) and inside no mask."""
    if not len(detections) or (not zones and not masks):
        return detections
    centers = (detections.xyxy[:, :2] + detections.xyxy[:, 2:]) / 2.0

    def inside(polygon) -> np.ndarray:
        contour = np.asarray(polygon, np.float32).reshape(-1, 1, 2)
        return np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0 for x, y in centers])

    keep = np.ones(len(detections), bool)
    if zones:
        keep &= np.any([inside(z) for z in zones], axis=0)
    for mask in masks:
        keep &= ~inside(mask)
    return detections[keep]


class CameraWorker:
    """One camera's thread: source -> shared model -> zones -> events -> sinks, with its own state."""

    def __init__(self, config: CameraConfig, model: SharedModel, view, service: Service) -> None:
        self.config, self.model, self.view, self.service = config, model, view, service
        self.sinks = [s for s in service.sinks if config.sinks is None or s.name in config.sinks]
        self.tracker = EventTracker(config.name, view.card.class_names, service.config.events)
        self.state = "starting"
        self.error: str | None = None
        self.config_error: str | None = None
        self.ready = threading.Event()  # first frame checked, or the first opening failed
        self.ended = False
        self.frames = 0
        self.events = 0
        self.detections = 0
        self.started_at = time.monotonic()
        self.last_frame_at: float | None = None
        self._fps_window: deque[float] = deque(maxlen=30)
        self._counted = {"dropped": 0, "reconnects": 0}
        self._thread = threading.Thread(target=self._run, name=f"camera:{config.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    @property
    def down_s(self) -> float:
        """Seconds without a frame (0 when the camera ended normally)."""
        if self.ended and self.config_error is None:
            return 0.0
        return time.monotonic() - (self.last_frame_at or self.started_at)

    @property
    def fps(self) -> float:
        if len(self._fps_window) < 2:
            return 0.0
        return (len(self._fps_window) - 1) / max(self._fps_window[-1] - self._fps_window[0], 1e-9)

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state == self.state and error == self.error:
            return
        self.state, self.error = state, error
        self.service.metrics.up.labels(self.config.name).set(1 if state == "running" else 0)
        self._publish("status", {"state": state, "error": error, "time": round(time.time(), 3)})

    def _publish(self, kind: str, payload: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.publish(self.config.name, kind, payload)
            except Exception:  # noqa: BLE001 - a failing sink must not stop the camera
                logger.exception("camera %s: sink %s failed", self.config.name, sink.name)

    def _options(self) -> StreamOptions:
        return StreamOptions(vid_stride=self.config.vid_stride, max_fps=self.config.max_fps,
                             drop_frames=self.config.live)

    def _run(self) -> None:
        stop = self.service.stop_event
        delay = 0.5

        def back_off(state: str, message: str) -> float:
            """Report the camera down, wait (or stop), and return the next, doubled delay."""
            self._set_state(state, message)
            self.ready.set()
            stop.wait(delay)
            return min(delay * 2.0, OPEN_RETRY_MAX_S)

        while not stop.is_set():
            try:
                source = open_source(self.config.source, self._options())
            except (OSError, ValueError) as exc:
                message = str(exc).splitlines()[0]
                if self.state != "unreachable":
                    logger.error("camera %s: %s; retrying with back-off", self.config.name, message)
                delay = back_off("unreachable", message)
                continue
            try:
                with source:
                    finished = self._consume(source)
            except Exception as exc:  # noqa: BLE001 - one camera's failure must not end the others
                logger.exception("camera %s failed; restarting it in %.1f s", self.config.name, delay)
                delay = back_off("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            delay = 0.5
            if finished or not self.config.loop:
                break
        self._finish()

    def _consume(self, source) -> bool:
        """Process frames until the source ends (False) or the service stops / the camera fails (True)."""
        stop = self.service.stop_event
        name = self.config.name
        pending = None
        for frame in source:
            if stop.is_set():
                return True
            if self.frames == 0 and self.config_error is None:
                try:
                    check_polygons(self.config, (frame.image.shape[1], frame.image.shape[0]))
                except ValueError as exc:
                    self.config_error = str(exc)
                    logger.error("camera %s: %s", name, exc)
                    self._set_state("config error", str(exc))
                    self.ready.set()
                    return True
            self._set_state("running")
            self.ready.set()
            # Tile this frame and queue it while the previous one is being scored: reading and tiling
            # overlap the shared inference, as the three threads of ``patchdet detect`` do.
            t0 = time.perf_counter()
            prepared = self.view.preprocess(frame.image)
            # a motion-gated frame where nothing changed has nothing to score
            request = self.model.submit(prepared.batch) if len(prepared.batch) else None
            queued = (frame, prepared, request, time.perf_counter() - t0)
            if pending is not None:
                self._complete(*pending, source)
            pending = queued
        if pending is not None:
            self._complete(*pending, source)
        self._count_source(source)
        return False

    def _complete(self, frame, prepared, request, preprocess_s: float, source) -> None:
        """Wait for a frame's shared inference, then zones, events, sinks and metrics."""
        name, m = self.config.name, self.service.metrics
        t1 = time.perf_counter()
        outputs = self.model.result(request) if request is not None else {}
        self.view.pool.give(prepared.batch)
        t2 = time.perf_counter()
        result = self.view.decide(outputs, prepared)
        detections = keep_in_zones(result.detections, self.config.zones, self.config.masks)
        transitions = self.tracker.update(detections, frame.timestamp)
        self._emit(transitions, frame.image)
        t3 = time.perf_counter()
        now = time.monotonic()
        self.frames += 1
        self.last_frame_at = now
        self._fps_window.append(now)
        m.frames.labels(name).inc()
        m.fps.labels(name).set(self.fps)
        m.detections.labels(name).inc(len(detections))
        self.detections += len(detections)
        # infer: waiting for the shared call after tiling the next frame (the part inference did not hide)
        for stage, seconds in (("decode", frame.decode_ms / 1e3), ("preprocess", preprocess_s),
                               ("infer", t2 - t1), ("postprocess", t3 - t2)):
            m.latency.labels(name, stage).observe(seconds)
        self._count_source(source)

    def _count_source(self, source) -> None:
        counters = source.counters
        for key, value in (("dropped", counters.dropped_frames), ("reconnects", counters.reconnects)):
            if value > self._counted[key]:
                metric = self.service.metrics.dropped if key == "dropped" else self.service.metrics.reconnects
                metric.labels(self.config.name).inc(value - self._counted[key])
                self._counted[key] = value

    def _emit(self, transitions, image: np.ndarray | None) -> None:
        for state, event, _track in transitions:
            if state == "start":
                self.events += 1
                self.service.metrics.events.labels(self.config.name, event.class_name).inc()
                if image is not None and self.service.config.events.snapshots:
                    event.snapshot = self._snapshot(event, image)
            self._publish("events", event.to_json(state))

    def _snapshot(self, event, image: np.ndarray) -> str | None:
        folder = Path(self.service.config.output_dir) / "snapshots" / self.config.name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{event.event_id}.jpg"
        annotated = image.copy()
        x0, y0, x1, y1 = (int(round(v)) for v in event.best_xyxy)
        cv2.rectangle(annotated, (x0, y0), (x1, y1), (0, 255, 0), 2)
        if not cv2.imwrite(str(path), annotated):
            logger.warning("camera %s: cannot write snapshot %s", self.config.name, path)
            return None
        return str(path)

    def _finish(self) -> None:
        self._emit(self.tracker.close(), None)
        self.ended = True
        self.ready.set()
        if self.config_error is None:
            self._set_state("stopped" if self.service.stop_event.is_set() else "ended")


class Service:
    """Everything ``patchdet serve`` runs; ``run()`` blocks until stopped, the duration passed or all cameras ended."""

    def __init__(self, config: SiteConfig) -> None:
        from patchdet.runtime.metrics_server import ServiceMetrics
        from patchdet.runtime.settings import load_detector

        self.config = config
        self.stop_event = threading.Event()
        self.metrics = ServiceMetrics()
        self.sinks: list[Any] = []
        self.models: dict[tuple, SharedModel] = {}
        self.cameras: list[CameraWorker] = []
        self.server = None
        try:
            views = []
            for camera in config.cameras:
                settings = camera_settings(config, camera)
                key = model_key(settings)
                if key not in self.models:
                    detector = load_detector(settings)
                    max_items = warm_up_shared(detector, config.batch.max_tiles)
                    self.models[key] = SharedModel(detector, max_items, config.batch.linger_ms)
                    logger.info("model %s on %s shared by the cameras that use it%s", detector.artifact.name,
                                detector.backend_name, " (dense: one mosaic per frame)" if detector.dense else "")
                try:
                    view = camera_view(self.models[key].detector, settings, self.models[key].pool)
                except ValueError as exc:
                    raise ValueError(f"camera {camera.name!r}: {exc}") from None
                if camera.motion_gate:  # the gate's cache is the camera's own; the model stays shared
                    view = gate_detector(view, MotionGate(camera.motion_threshold, camera.motion_refresh))
                views.append((camera, self.models[key], view))
            self._open_sinks()
            self.cameras = [CameraWorker(camera, model, view, self) for camera, model, view in views]
        except BaseException:
            self.close()
            raise

    def _open_sinks(self) -> None:
        from patchdet.runtime.event_sinks import JsonlEventSink, MqttSink, WebhookSink

        used = {s for c in self.config.cameras for s in (c.sinks or ("mqtt", "webhook", "jsonl"))}
        if self.config.mqtt is not None and "mqtt" in used:
            self.sinks.append(MqttSink(self.config.mqtt))
        if self.config.webhook is not None and "webhook" in used:
            self.sinks.append(WebhookSink(self.config.webhook))
        if "jsonl" in used:
            self.sinks.append(JsonlEventSink(Path(self.config.output_dir) / "events.jsonl"))

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, status)``: unhealthy while a camera has been without frames longer than ``camera_down_s``."""
        limit = self.config.metrics.camera_down_s
        cameras = {c.config.name: {"state": c.state, "error": c.error, "frames": c.frames, "fps": round(c.fps, 2),
                                   "detections": c.detections, "events": c.events,
                                   "down_s": round(c.down_s, 1)} for c in self.cameras}
        down = [name for name, c in zip(cameras, self.cameras, strict=True) if c.down_s > limit]
        sinks = {s.name: s.status() for s in self.sinks}
        for sink in self.sinks:
            status = sinks[sink.name]
            if "queued" in status:
                self.metrics.sink_queued.labels(sink.name).set(status["queued"])
            if "connected" in status:
                self.metrics.sink_connected.labels(sink.name).set(1 if status["connected"] else 0)
        return not down, {"healthy": not down, "down": down, "cameras": cameras, "sinks": sinks}

    def start(self) -> None:
        """Start the metrics server and the cameras; raise ``ValueError`` if a camera's config fails on its frame."""
        if self.config.metrics.enabled:
            from patchdet.runtime.metrics_server import MetricsServer

            self.server = MetricsServer(self.metrics, self.health, self.config.metrics.host, self.config.metrics.port)
        for camera in self.cameras:
            camera.start()
        deadline = time.monotonic() + self.config.startup_timeout_s
        for camera in self.cameras:
            camera.ready.wait(max(0.0, deadline - time.monotonic()))
        errors = [c.config_error for c in self.cameras if c.config_error]
        if errors:
            raise ValueError(errors[0])

    def run(self) -> dict[str, Any]:
        """Start, serve until SIGINT/SIGTERM, ``duration_s`` or every camera ended; returns a summary."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self.stop_event.set())
        started = time.monotonic()
        try:
            self.start()
            last_log = started
            while not self.stop_event.wait(0.2):
                now = time.monotonic()
                if self.config.duration_s is not None and now - started >= self.config.duration_s:
                    break
                if all(c.ended for c in self.cameras):
                    break
                if now - last_log >= 10.0:
                    last_log = now
                    logger.info("%s", ", ".join(f"{c.config.name}: {c.state} {c.fps:.1f} fps" for c in self.cameras))
            return self.summary(time.monotonic() - started)
        finally:
            self.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def summary(self, seconds: float) -> dict[str, Any]:
        healthy, status = self.health()
        frames = sum(c.frames for c in self.cameras)
        return {"seconds": round(seconds, 2), "frames": frames, "fps": round(frames / max(seconds, 1e-9), 2),
                "models": {m.detector.artifact.name: {"backend_calls": m.calls, "frames": m.frames, "tiles": m.tiles,
                                                           "stacked_in_place": m.stacked_in_place}
                           for m in self.models.values()},
                "events": sum(c.events for c in self.cameras),
                **status}

    def close(self) -> None:
        self.stop_event.set()
        for camera in self.cameras:
            if camera._thread.is_alive():
                camera.join(5.0)
        for model in self.models.values():
            model.close()
        for sink in self.sinks:
            sink.close()
        if self.server is not None:
            self.server.close()
            self.server = None


def serve(config: SiteConfig | str | Path) -> dict[str, Any]:
    """Run the service of a site file (or config) until stopped; returns the run summary."""
    if not isinstance(config, SiteConfig):
        config = load_site_config(config)
    return Service(config).run()
