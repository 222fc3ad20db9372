"""``detect(cfg)``: read frames, score their patches, decide, and write what was found.

``DetectConfig`` holds a run's settings (defaults -> YAML -> command line);
``detect`` loads the model, opens the source and the sinks, runs the
three-thread loop of ``runtime.pipeline`` (decode and drawing/writing overlap
inference), closes every sink (the video is renamed to its final, playable
name) and returns the summary. Ctrl-C ends the run cleanly with
``summary["interrupted"] = True``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchdet.runtime.files import atomic_write_json
from patchdet.runtime.pipeline import IO_NICE, Pipeline, opencv_threads
from patchdet.runtime.sinks import CropSink, DisplaySink, JsonlSink, SinkSet, VideoSink, check_video_path
from patchdet.runtime.stats import RunStats
from patchdet.runtime.streams import StreamOptions, open_source

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "discnn8_automobile.onnx"
DEFAULT_DENSE_MODEL = ASSETS / "discnn8_automobile_dense.onnx"
DEFAULT_SOURCE = ASSETS / "street_cam_sample.mp4"
# The built-in model's threshold for the built-in clip, calibrated on street background without cars
# (benchmarks/default_calibration.py, benchmarks/results/default_calibration.md).
DEFAULT_CLIP_CARD = ASSETS / "discnn8_automobile.street.card.json"
# Tiling of the built-in sample clip (640x352 street camera): see DetectConfig.
DEFAULT_CLIP_TILE = 96
DEFAULT_CLIP_STRIDE = 48
DEFAULT_CLIP_SCALES = (1.0,)
MERGE_CHOICES = ("connected", "nms", "none")


@dataclass(frozen=True)
class DetectConfig:
    """Settings of one ``patchdet detect`` run (defaults -> YAML ``--config`` -> command line).

    Attributes:
        model: Exported artifact (``.onnx``, ``.xml``, ``.engine``) with its model card;
            ``None``: the built-in DisCNN-8 car model in ``runtime/assets``.
        card: A model card JSON to use instead of the artifact's own (e.g. from ``patchdet calibrate``).
        source: Camera index, URL, video, image, folder or glob; ``None``: the built-in street clip.
        backend: ``auto`` or ``onnxruntime``, ``openvino``, ``opencv``, ``tensorrt``.
        threads: Inference threads (``None``: the backend's default).
        threshold: Decision threshold on the score (``None``: the model card's).
        tile: Tile side in frame pixels at scale 1, resized to the model input
            (``None``: the model's input size, or the clip default below for the built-in clip).
        stride: Step between tiles in frame pixels (``None``: equal to ``tile``; clip default below).
        scales: Look at the frame at these scales (0.5 = tiles twice as large).
        dense: Score every window of a dense (fully-convolutional) export in one pass.
        merge: How positive tiles become boxes: ``connected``, ``nms`` or ``none``.
        max_frames: Stop after this many processed frames (``None``: end of stream).
        vid_stride: Process every n-th frame.
        max_fps: Process at most this many frames per second.
        drop_frames: Keep only the newest frame (``None``: live sources yes, files no).
        reconnect_timeout_s: End a live stream after a gap this long (``None``: keep retrying).
        jsonl: Write detections as JSON Lines here.
        save_video: Write the annotated video here (``.mp4``/``.mkv``/``.mov``: mp4v, ``.avi``: MJPG).
        summary: Write the run summary JSON here.
        crops: Save each detection's crop in this folder.
        show: Show a window (needs a GUI build of OpenCV); ``q`` stops.
        heatmap: Blend the patch score heatmap into the video / window.
        log_every_s: Period of the progress log line (0: never).
        queue_size: Frames in flight between the reader, inference and writer threads.
        io_nice: Nice value (0-19) of the reader and writer threads on Linux, so that
            decoding, tiling, drawing and encoding fill the CPU time inference leaves
            instead of preempting its threads (``runtime.pipeline``; 0: no change).

    The built-in clip's tiling: cars in the 640x352 street camera are about
    40-60 px wide when parked or far up the road and 100-200 px when they pass
    the camera. The DisCNN-8 car model was trained on CIFAR-10 cars that fill
    most of a 96x96 patch, so 96 px tiles match passing cars; a stride of 48
    (half a tile) keeps every passing car mostly inside at least one tile,
    where stride 96 cuts many of them in two. 13x7 = 91 tiles per frame.
    Smaller tiles (64 px, stride 32) also light up the parked cars but cost
    2.5x the tiles and cut passing cars apart. The built-in clip's threshold
    comes from ``DEFAULT_CLIP_CARD``: street background scores far above the
    training threshold (asphalt and fences were never negatives), so the
    threshold was calibrated on car-free street footage (see
    ``benchmarks/default_calibration.py``).
    """

    model: str | None = None
    card: str | None = None
    source: str | None = None
    backend: str = "auto"
    threads: int | None = None
    threshold: float | None = None
    tile: int | None = None
    stride: int | None = None
    scales: tuple[float, ...] = (1.0,)
    dense: bool = False
    merge: str = "connected"
    max_frames: int | None = None
    vid_stride: int = 1
    max_fps: float | None = None
    drop_frames: bool | None = None
    reconnect_timeout_s: float | None = None
    jsonl: str | None = None
    save_video: str | None = None
    summary: str | None = None
    crops: str | None = None
    show: bool = False
    heatmap: bool = False
    log_every_s: float = 5.0
    queue_size: int = 4
    io_nice: int = IO_NICE

    def __post_init__(self) -> None:
        for name in ("tile", "stride", "max_frames", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name.replace('_', '-')} {value!r} is invalid: expected a positive integer")
        if isinstance(self.vid_stride, bool) or not isinstance(self.vid_stride, int) or self.vid_stride < 1:
            raise ValueError(f"vid-stride {self.vid_stride!r} is invalid: expected an integer >= 1")
        if isinstance(self.io_nice, bool) or not isinstance(self.io_nice, int) or not 0 <= self.io_nice <= 19:
            raise ValueError(f"io-nice {self.io_nice!r} is invalid: expected an integer from 0 to 19")
        if self.queue_size < 1:
            raise ValueError(f"queue_size {self.queue_size!r} is invalid: expected an integer >= 1")
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or \
                    not math.isfinite(self.threshold):
                raise ValueError(f"threshold {self.threshold!r} is invalid: expected a finite number")
        if self.max_fps is not None and not (isinstance(self.max_fps, (int, float)) and self.max_fps > 0):
            raise ValueError(f"max-fps {self.max_fps!r} is invalid: expected a positive number")
        if not self.scales or any(not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0) for s in self.scales):
            raise ValueError(f"scales {self.scales!r} are invalid: expected positive numbers, e.g. 1.0,0.5")
        if self.merge not in MERGE_CHOICES:
            raise ValueError(f"merge {self.merge!r} is unknown: expected one of {', '.join(MERGE_CHOICES)}")
        if self.save_video is not None:
            check_video_path(self.save_video)
        if self.log_every_s < 0:
            raise ValueError(f"log_every_s {self.log_every_s!r} is invalid: expected >= 0")


def load_detect_config(yaml_path: str | Path | None = None, **overrides: Any) -> DetectConfig:
    """Defaults <- YAML file <- overrides (``None`` values mean "not given")."""
    from patchdet.runtime.config import build_config

    return build_config(DetectConfig, yaml_path, **overrides)


def resolve_model(cfg: DetectConfig) -> Path:
    """The artifact to load: ``cfg.model`` or the built-in default (dense variant with ``--dense``)."""
    if cfg.model is not None:
        path = Path(cfg.model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model file {cfg.model} does not exist")
        return path
    path = DEFAULT_DENSE_MODEL if cfg.dense else DEFAULT_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"built-in model {path} is missing from this installation: pass --model ARTIFACT")
    return path


def resolve_tiling(cfg: DetectConfig, input_wh: tuple[int, int], builtin_clip: bool):
    """The ``TilingConfig`` for a run (tile/stride defaults filled in)."""
    from patchdet.runtime.detector import TilingConfig

    if builtin_clip:
        tile = cfg.tile or DEFAULT_CLIP_TILE
        stride = cfg.stride or (DEFAULT_CLIP_STRIDE if cfg.tile is None else tile)
        scales = cfg.scales
    else:
        tile = cfg.tile or int(input_wh[0])
        stride = cfg.stride or tile
        scales = cfg.scales
    return TilingConfig(tile_wh=(tile, tile), stride_wh=(stride, stride), scales=scales, dense=cfg.dense,
                        merge=cfg.merge)


def load_detector(cfg: DetectConfig, builtin_clip: bool = False):
    """Build the ``Detector`` a config asks for; backend failures become one-line ``OSError``."""
    from patchdet.runtime.backends import BackendError, MissingBackendError
    from patchdet.runtime.detector import Detector, read_artifact_card

    model = resolve_model(cfg)
    card = cfg.card
    if card is None:
        card = read_artifact_card(model)
    else:
        from patchdet.runtime.card import read_card

        card = read_card(card)
    tiling = resolve_tiling(cfg, card.input_wh, builtin_clip)
    threshold = cfg.threshold
    if threshold is None and builtin_clip and cfg.model is None and cfg.card is None and DEFAULT_CLIP_CARD.is_file():
        from patchdet.runtime.card import read_card

        threshold = read_card(DEFAULT_CLIP_CARD).threshold
        log.info("built-in clip: threshold %.4g calibrated on street background (%s)", threshold,
                 DEFAULT_CLIP_CARD.name)
    from patchdet.runtime.backends import resolve_backend_name

    # Spin-waiting ONNX Runtime threads starve the pipeline's reader and writer threads on a small CPU.
    options = {"spinning": False} if resolve_backend_name(model, cfg.backend) == "onnxruntime" else None
    try:
        return Detector(model, backend=cfg.backend, threshold=threshold, tiling=tiling, threads=cfg.threads,
                        card=card, backend_options=options)
    except MissingBackendError:
        raise
    except BackendError as exc:
        raise OSError(f"cannot load model {model}: {exc}") from None


def config_path_for(cfg: DetectConfig) -> Path | None:
    """Where the resolved config goes: beside the first output (summary, JSON Lines, video, crops)."""
    for value in (cfg.summary, cfg.jsonl, cfg.save_video):
        if value:
            path = Path(value)
            return path.with_name(path.stem + ".config.yaml")
    if cfg.crops:
        return Path(cfg.crops) / "detect.config.yaml"
    return None


def build_sinks(cfg: DetectConfig, class_names: tuple[str, ...], fps: float | None) -> SinkSet:
    """All the sinks a config asks for (none is fine: the summary still counts)."""
    sinks: list[Any] = []
    try:
        if cfg.jsonl:
            sinks.append(JsonlSink(cfg.jsonl, class_names))
        if cfg.save_video:
            sinks.append(VideoSink(cfg.save_video, fps))
        if cfg.crops:
            sinks.append(CropSink(cfg.crops, class_names))
        if cfg.show:
            sinks.append(DisplaySink())
    except BaseException:
        SinkSet(sinks).close()
        raise
    return SinkSet(sinks, class_names, heatmap=cfg.heatmap)


def detect(cfg: DetectConfig) -> dict:
    """Run detection on a source and write the requested outputs.

    Args:
        cfg: The run's settings.

    Returns:
        The summary: ``frames``, ``seconds``, ``fps``, ``backend``, ``latency_ms``
        (per stage ``median``/``p90``/``mean``/``count``), ``dropped_frames``,
        ``reconnects``, ``corrupt_frames``, ``detections``, ``gaps``, ``interrupted``, ...

    Raises:
        FileNotFoundError / OSError: model or source cannot be opened (message says which and why).
        ValueError: invalid settings, a model without a card, a frame smaller than a tile.
    """
    builtin_clip = cfg.source is None
    source_text = str(DEFAULT_SOURCE) if builtin_clip else cfg.source
    if builtin_clip and not DEFAULT_SOURCE.is_file():
        raise FileNotFoundError(f"built-in sample clip {DEFAULT_SOURCE} is missing: pass --source")
    detector = load_detector(cfg, builtin_clip)
    options = StreamOptions(vid_stride=cfg.vid_stride, max_fps=cfg.max_fps, drop_frames=cfg.drop_frames,
                            reconnect_timeout_s=cfg.reconnect_timeout_s)
    log.info("model %s (%s), backend %s, threshold %.4g, tiles %s stride %s scales %s%s", detector.artifact.name,
             detector.card.name, detector.backend_name, detector.threshold, detector.tiling.tile_wh,
             detector.tiling.stride_wh, detector.tiling.scales, " dense" if detector.dense else "")
    # OpenCV single-threaded unless it is the inference engine (see runtime.pipeline.opencv_threads).
    cv_threads = None if detector.backend_name == "opencv" else 1
    with opencv_threads(cv_threads), open_source(source_text, options) as source:
        log.info("source %s (%s%s)", source_text, "live" if source.live else "file",
                 f", {source.fps:.2f} fps" if source.fps else "")
        resolved = dataclasses.replace(
            cfg, model=str(detector.artifact), source=source_text, threshold=detector.threshold,
            tile=detector.tiling.tile_wh[0], stride=detector.tiling.stride_wh[0], scales=detector.tiling.scales,
        )
        config_path = config_path_for(cfg)
        if config_path is not None:
            from patchdet.runtime.config import write_config

            write_config(resolved, config_path)
        stats = RunStats()
        sinks = build_sinks(cfg, detector.card.class_names, source.fps)
        pipeline = Pipeline(detector, source, sinks, stats, max_frames=cfg.max_frames, queue_size=cfg.queue_size,
                            log_every_s=cfg.log_every_s, heatmap=cfg.heatmap, io_nice=cfg.io_nice)
        try:
            interrupted = pipeline.run()
        finally:
            sinks.close()
    counters = source.counters
    summary = stats.summary(
        backend=detector.backend_name,
        dropped_frames=counters.dropped_frames,
        reconnects=counters.reconnects,
        corrupt_frames=counters.corrupt_frames,
        gaps=counters.gaps,
        interrupted=interrupted,
        stopped_by=pipeline.stopped_by,
        warmup_ms=round(pipeline.warmup_ms, 1),
        model=str(detector.artifact),
        source=source_text,
        threshold=detector.threshold,
        tiling=detector.describe()["tiling"],
        frame_wh=list(pipeline.frame_wh) if pipeline.frame_wh else None,
        outputs={k: v for k, v in (("jsonl", cfg.jsonl), ("video", cfg.save_video), ("crops", cfg.crops),
                                   ("config", str(config_path) if config_path else None)) if v},
    )
    log.info("%s", stats.log_line(counters.dropped_frames, counters.reconnects))
    if cfg.summary:
        write_summary(summary, cfg.summary)
    return summary


def write_summary(summary: dict, path: str | Path) -> Path:
    """Write the summary JSON atomically."""
    return atomic_write_json(path, summary)
