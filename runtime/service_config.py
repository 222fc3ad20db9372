"""The site file of ``patchdet serve``: cameras, shared models, events, sinks, metrics (frozen dataclasses).

One YAML file describes a site::

    metrics: {host: 127.0.0.1, port: 9108}
    mqtt: {host: 127.0.0.1, port: 1883}
    events: {min_hits: 3, window: 5, end_after_s: 2.0}
    cameras:
      - name: gate
        source: rtsp://10.0.0.5/stream
        detector: {threshold: 0.6}
        zones: [[[0, 300], [1280, 300], [1280, 720], [0, 720]]]

Every error names the key and the file in one line (``load_site_config``); checks that need a
frame (a zone outside it) are made on the camera's first frame (``check_polygons``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from patchdet.runtime.config import build_config, load_yaml_mapping
from patchdet.runtime.motion import MOTION_REFRESH, MOTION_THRESHOLD, MotionGate
from patchdet.runtime.settings import DetectorSettings

Polygon = tuple[tuple[float, float], ...]
SINK_NAMES = ("mqtt", "webhook", "jsonl")
_CAMERA_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # it becomes an MQTT topic level and a folder name


@dataclass(frozen=True)
class CameraConfig:
    """One camera.

    Attributes:
        name: Unique name (letters, digits, ``_``, ``-``): the MQTT topic level and the metrics label.
        source: Anything ``patchdet detect --source`` takes (camera index, file, rtsp:// or http:// URL).
        detector: Model, card, threshold, tiling; unset keys come from the site's ``detector`` block.
        zones: Polygons in frame pixels; when given, only detections whose box centre is inside one are kept.
        masks: Polygons in frame pixels; detections whose box centre is inside one are dropped.
        sinks: Where this camera's events go (``mqtt``, ``webhook``, ``jsonl``); ``None``: every configured one.
        live: Keep only the newest frame (``None``: live sources yes, files no; ``true`` plays a file in real time).
        loop: Start a video file again when it ends (demos and benchmarks).
        max_fps: Process at most this many frames per second.
        vid_stride: Use every ``vid_stride``-th frame of the source.
        motion_gate: Re-score only the tiles (a dense model: windows) whose pixels changed since they were
            last scored, as ``patchdet detect --motion-gate`` (fixed cameras; ``runtime.motion``).
        motion_threshold: Mean grey-level change that re-scores a tile.
        motion_refresh: Re-score everything every this many frames.
    """

    name: str
    source: str
    detector: dict = field(default_factory=dict)
    zones: tuple[Polygon, ...] = ()
    masks: tuple[Polygon, ...] = ()
    sinks: tuple[str, ...] | None = None
    live: bool | None = None
    loop: bool = False
    max_fps: float | None = None
    vid_stride: int = 1
    motion_gate: bool = False
    motion_threshold: float = MOTION_THRESHOLD
    motion_refresh: int = MOTION_REFRESH


@dataclass(frozen=True)
class EventConfig:
    """Hysteresis that turns per-frame detections into events.

    Attributes:
        min_hits: An object becomes an event when seen in ``min_hits`` of the last ``window`` frames.
        window: Frames looked back for ``min_hits``.
        end_after_s: The event ends when its object has not been seen for this long.
        match_distance: A detection continues a track when its centre is within this many box diagonals
            (the larger of the track's last box and the detection's) of where the track's velocity puts it.
        same_object_overlap: A detection that no track takes starts no track of its own when at least this
            share of the smaller box lies inside another box of its class in the same frame that belongs to a
            tracked object (one object, several boxes: a car, its lower half, its bumper); 1.0 only when fully
            inside.
        snapshots: Write a JPEG of the frame where each event starts, its box drawn in.
    """

    min_hits: int = 3
    window: int = 5
    end_after_s: float = 2.0
    match_distance: float = 1.0
    same_object_overlap: float = 0.5
    snapshots: bool = True


@dataclass(frozen=True)
class MqttConfig:
    """MQTT broker: events go to ``<topic_prefix>/<camera>/events``, status to ``.../status`` (retained).

    Attributes:
        queue_size: Messages kept while the broker is unreachable; beyond it the newest are refused and counted.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "patchdet"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    qos: int = 1
    queue_size: int = 1000
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class WebhookConfig:
    """HTTP POST of every event as JSON; failed posts are retried from a bounded queue."""

    url: str
    timeout_s: float = 5.0
    queue_size: int = 1000
    retry_s: float = 2.0


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus ``/metrics`` and ``/healthz`` (port 0: pick a free one; ``enabled: false``: none)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108
    camera_down_s: float = 30.0


@dataclass(frozen=True)
class BatchConfig:
    """How the shared detector batches tiles of several cameras.

    Attributes:
        max_tiles: Most tiles in one backend call. ONNX Runtime needs about 3 MB of activations per 96x96
            DisCNN tile and is no faster per tile above 256 (``benchmarks/results/runtime_backends.md``).
        linger_ms: After the first request, wait this long for other cameras' frames to join the batch.
    """

    max_tiles: int = 256
    linger_ms: float = 2.0


@dataclass(frozen=True)
class SiteConfig:
    """A whole ``patchdet serve`` site (see the module docstring)."""

    cameras: tuple[CameraConfig, ...]
    detector: dict = field(default_factory=dict)
    events: EventConfig = field(default_factory=EventConfig)
    mqtt: MqttConfig | None = None
    webhook: WebhookConfig | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    output_dir: str = "out/serve"
    startup_timeout_s: float = 15.0
    duration_s: float | None = None


def load_site_config(path: str | Path, **overrides) -> SiteConfig:
    """Read and validate a site file; any error is one ``ValueError`` line naming the key and the file."""
    path = Path(path)
    raw = load_yaml_mapping(path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cameras = raw.pop("cameras", None)
        if not isinstance(cameras, list) or not cameras:
            raise ValueError("key 'cameras' must be a non-empty list of cameras")
        built = []
        for i, item in enumerate(cameras):
            where = f"cameras[{i}]" + (f" ({item.get('name')})" if isinstance(item, dict) and "name" in item else "")
            if not isinstance(item, dict):
                raise ValueError(f"{where} must be a mapping with at least name and source")
            try:
                built.append(build_config(CameraConfig, **item))
            except TypeError as exc:  # a required key is missing
                raise ValueError(f"{where}: {_missing(exc)}") from None
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        site = build_config(SiteConfig, cameras=tuple(built), **raw)
        check_site(site)
    except TypeError as exc:
        raise ValueError(f"{path}: {_missing(exc)}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return site


def _missing(exc: TypeError) -> str:
    found = re.search(r"argument[s]?: (.*)$", str(exc))
    return f"missing required key(s) {found.group(1)}" if found else str(exc)


def camera_settings(site: SiteConfig, camera: CameraConfig) -> DetectorSettings:
    """The camera's detector settings: the site's ``detector`` block with the camera's keys on top."""
    values = {**site.detector, **camera.detector}
    try:
        return build_config(DetectorSettings, **values)
    except ValueError as exc:
        raise ValueError(f"camera {camera.name!r} detector: {exc}") from None


def check_site(site: SiteConfig) -> None:
    """Checks across keys (names, sinks, numbers); raises ``ValueError`` naming the key."""
    seen: set[str] = set()
    for camera in site.cameras:
        if not _CAMERA_NAME.match(camera.name):
            raise ValueError(f"camera name {camera.name!r} is invalid: expected letters, digits, '_' or '-'")
        if camera.name in seen:
            raise ValueError(f"camera name {camera.name!r} is used twice: camera names must be unique")
        seen.add(camera.name)
        for sink in camera.sinks or ():
            if sink not in SINK_NAMES:
                raise ValueError(f"camera {camera.name!r} sink {sink!r} is unknown: expected some of "
                                 f"{', '.join(SINK_NAMES)}")
            if (sink == "mqtt" and site.mqtt is None) or (sink == "webhook" and site.webhook is None):
                raise ValueError(f"camera {camera.name!r} sink {sink!r} has no {sink!r} block in the site file")
        for kind, polygons in (("zones", camera.zones), ("masks", camera.masks)):
            for j, polygon in enumerate(polygons):
                if len(polygon) < 3 or not all(math.isfinite(v) for point in polygon for v in point):
                    raise ValueError(f"camera {camera.name!r} {kind}[{j}] is invalid: expected at least 3 [x, y] "
                                     "points in frame pixels")
        if camera.vid_stride < 1:
            raise ValueError(f"camera {camera.name!r} vid_stride {camera.vid_stride} is invalid: expected >= 1")
        if camera.max_fps is not None and not camera.max_fps > 0:
            raise ValueError(f"camera {camera.name!r} max_fps {camera.max_fps!r} is invalid: expected > 0")
        if camera.motion_gate:
            try:
                MotionGate(camera.motion_threshold, camera.motion_refresh)
            except ValueError as exc:
                raise ValueError(f"camera {camera.name!r}: {exc}") from None
        settings = camera_settings(site, camera)
        if settings.dense and settings.needs_patch_model:
            raise ValueError(f"camera {camera.name!r} detector: dense and tile/stride exclude each other (a dense "
                             "model scores every window; tile/stride ask for a per-tile model)")
    ev = site.events
    if ev.min_hits < 1 or ev.window < ev.min_hits:
        raise ValueError(f"events min_hits {ev.min_hits} / window {ev.window} are invalid: expected "
                         "1 <= min_hits <= window")
    if not ev.end_after_s > 0 or not ev.match_distance > 0:
        raise ValueError("events end_after_s and match_distance must be positive")
    if not 0 < ev.same_object_overlap <= 1:
        raise ValueError(f"events same_object_overlap {ev.same_object_overlap} is invalid: expected 0 < x <= 1")
    if site.mqtt is not None and (site.mqtt.qos not in (0, 1, 2) or site.mqtt.queue_size < 1):
        raise ValueError(f"mqtt qos {site.mqtt.qos} / queue_size {site.mqtt.queue_size} are invalid: expected "
                         "qos 0, 1 or 2 and a positive queue_size")
    if not 0 <= site.metrics.port <= 65535:
        raise ValueError(f"metrics port {site.metrics.port} is invalid: expected 0-65535")
    if site.batch.max_tiles < 1 or site.batch.linger_ms < 0:
        raise ValueError("batch max_tiles must be positive and linger_ms not negative")
    if site.duration_s is not None and not site.duration_s > 0:
        raise ValueError(f"duration_s {site.duration_s!r} is invalid: expected a positive number of seconds")


def check_polygons(camera: CameraConfig, frame_wh: tuple[int, int]) -> None:
    """Raise ``ValueError`` when a zone or mask point lies outside the camera's frame."""
    w, h = frame_wh
    for kind, polygons in (("zones", camera.zones), ("masks", camera.masks)):
        for j, polygon in enumerate(polygons):
            for x, y in polygon:
                if not (0 <= x <= w and 0 <= y <= h):
                    raise ValueError(f"camera {camera.name!r} {kind}[{j}] point ({x:g}, {y:g}) is outside the "
                                     f"{w}x{h} frame")
