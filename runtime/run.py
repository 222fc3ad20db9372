"""``detect(cfg)``: one detection run: read a source, score its patches, decide, write what was found.

``DetectorSettings`` are the settings that pick and tune a ``Detector`` (shared
by ``DetectConfig`` here and ``CalibrateConfig``); ``DetectConfig`` adds the
source, pacing and outputs. ``detect`` loads the model, opens the source and
the sinks, runs the three-thread loop of ``runtime.loop`` (decode and
drawing/writing overlap inference), closes every sink (the video is renamed to
its final, playable name) and returns the summary. Ctrl-C ends the run
cleanly with ``summary["interrupted"] = True``. Defaults that suit a model
(tiling, scales, threshold) come from its card, never from this module.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchdet.runtime.atomic import atomic_write_json, check_replaceable
from patchdet.runtime.builtin import builtin_clip
from patchdet.runtime.loop import IO_NICE, Pipeline, opencv_threads
from patchdet.runtime.motion import MOTION_REFRESH, MOTION_THRESHOLD
from patchdet.runtime.settings import DetectorSettings, check_positive_ints, load_detector
from patchdet.runtime.sinks import (
    CropSink,
    DisplaySink,
    ImageSink,
    JsonlSink,
    SinkSet,
    VideoSink,
    check_video_path,
)
from patchdet.runtime.stats import RunStats
from patchdet.runtime.streams import StreamOptions, open_source, parse_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectConfig(DetectorSettings):
    """Settings of one ``patchdet detect`` run (defaults -> YAML ``--config`` -> command line).

    Attributes (besides ``DetectorSettings``):
        source: Camera index, URL, video, image, folder or glob; ``None``: the built-in street clip.
        max_frames: Stop after this many processed frames (``None``: end of stream).
        vid_stride: Process every n-th frame.
        max_fps: Process at most this many frames per second.
        drop_frames: Keep only the newest frame (``None``: live sources yes, files no).
        reconnect_timeout_s: End a live stream after a gap this long (``None``: keep retrying).
        jsonl: Write detections as JSON Lines here.
        save_video: Write the annotated video here (``.mp4``/``.mkv``/``.mov``: mp4v, ``.avi``: MJPG);
            video and stream sources only (photos: ``save_images``).
        save_images: Write one annotated image per frame into this folder (photos keep their
            name and size; ``runtime.sinks.ImageSink``).
        summary: Write the run summary JSON here.
        crops: Save each detection's crop in this folder.
        show: Show a window (needs a GUI build of OpenCV); ``q`` stops.
        heatmap: Blend the patch score heatmap into the video / window.
        log_every_s: Period of the progress log line (0: never).
        queue_size: Frames in flight between the reader, inference and writer threads.
        io_nice: Nice value (0-19) of the reader and writer threads on Linux, so that
            decoding, tiling, drawing and encoding fill the CPU time inference leaves
            instead of preempting its threads (``runtime.loop``; 0: no change).
        motion_gate: Re-score only tiles that changed since last scored (fixed cameras; ``runtime.motion``).
        motion_threshold: Mean grey-level change of a tile that re-scores it.
        motion_refresh: Re-score every tile every this many frames.
    """

    source: str | None = None
    max_frames: int | None = None
    vid_stride: int = 1
    max_fps: float | None = None
    drop_frames: bool | None = None
    reconnect_timeout_s: float | None = None
    jsonl: str | None = None
    save_video: str | None = None
    save_images: str | None = None
    summary: str | None = None
    crops: str | None = None
    show: bool = False
    heatmap: bool = False
    log_every_s: float = 5.0
    queue_size: int = 4
    io_nice: int = IO_NICE
    motion_gate: bool = False
    motion_threshold: float = MOTION_THRESHOLD
    motion_refresh: int = MOTION_REFRESH

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_ints(self, ("max_frames",))
        if isinstance(self.vid_stride, bool) or not isinstance(self.vid_stride, int) or self.vid_stride < 1:
            raise ValueError(f"vid-stride {self.vid_stride!r} is invalid: expected an integer >= 1")
        if isinstance(self.io_nice, bool) or not isinstance(self.io_nice, int) or not 0 <= self.io_nice <= 19:
            raise ValueError(f"io-nice {self.io_nice!r} is invalid: expected an integer from 0 to 19")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ValueError(f"queue_size {self.queue_size!r} is invalid: expected an integer >= 1")
        if self.max_fps is not None and not (isinstance(self.max_fps, (int, float)) and self.max_fps > 0):
            raise ValueError(f"max-fps {self.max_fps!r} is invalid: expected a positive number")
        if self.save_video is not None:
            check_video_path(self.save_video)
        if isinstance(self.log_every_s, bool) or not isinstance(self.log_every_s, (int, float)) or \
                not math.isfinite(self.log_every_s) or self.log_every_s < 0:
            raise ValueError(f"log_every_s {self.log_every_s!r} is invalid: expected a number >= 0 (0: never)")


def load_detect_config(yaml_path: str | Path | None = None, **overrides: Any) -> DetectConfig:
    """Defaults <- YAML file <- overrides (``None`` values mean "not given")."""
    from patchdet.runtime.config import build_config

    return build_config(DetectConfig, yaml_path, **overrides)


def config_path_for(cfg: DetectConfig) -> Path | None:
    """Where the resolved config goes: beside the first output (summary, JSON Lines, video, crops)."""
    for value in (cfg.summary, cfg.jsonl, cfg.save_video):
        if value and not _is_special_file(Path(value)):  # never a side file beside /dev/stdout or a device
            path = Path(value)
            return path.with_name(path.stem + ".config.yaml")
    for folder in (cfg.save_images, cfg.crops):
        if folder:
            return Path(folder) / "detect.config.yaml"
    return None


def _is_special_file(path: Path) -> bool:
    try:
        return not stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def video_timing(source: Any, vid_stride: int = 1) -> tuple[float | None, bool]:
    """(container fps, timed) of the annotated video, so that it plays at the source's real speed.

    A file's frames are handed out one in ``vid_stride``: the container gets the file's rate divided by it.
    A live source delivers what it can and the loop processes what it can: the frames are placed by their
    timestamps in a container at the stream's nominal rate (``VideoSink(timed=True)``).
    """
    if source.live:
        return source.fps, True
    return (source.fps / vid_stride if source.fps else None), False


def build_sinks(cfg: DetectConfig, class_names: tuple[str, ...], fps: float | None, threshold: float = 0.0,
                timed: bool = False) -> SinkSet:
    """All the sinks a config asks for (none is fine: the summary still counts)."""
    sinks: list[Any] = []
    try:
        if cfg.jsonl:
            sinks.append(JsonlSink(cfg.jsonl, class_names))
        if cfg.save_video:
            sinks.append(VideoSink(cfg.save_video, fps, timed=timed))
        if cfg.save_images:
            sinks.append(ImageSink(cfg.save_images))
        if cfg.crops:
            sinks.append(CropSink(cfg.crops, class_names))
        if cfg.show:
            sinks.append(DisplaySink())
    except BaseException:
        SinkSet(sinks).close()
        raise
    return SinkSet(sinks, class_names, heatmap=cfg.heatmap, threshold=threshold)


def detect(cfg: DetectConfig | None = None, **settings: Any) -> dict:
    """Run detection on a source and write the requested outputs.

    Args:
        cfg: The run's settings; or leave it out and give them as keywords
            (``detect(source="clip.mp4", save_video="out.mp4")``), checked as the YAML file's keys are.

    Returns:
        The summary: ``frames``, ``seconds``, ``fps``, ``backend``, ``latency_ms``
        (per stage ``median``/``p90``/``mean``/``count``), ``dropped_frames``,
        ``reconnects``, ``corrupt_frames``, ``detections``, ``gaps``, ``interrupted``, ...

    Raises:
        FileNotFoundError / OSError: model or source cannot be opened (message says which and why).
        ValueError: invalid settings, a model without a card, a frame smaller than a tile.
    """
    if cfg is None:
        cfg = load_detect_config(**settings)
    elif settings:
        cfg = dataclasses.replace(cfg, **settings)
    source_text = str(builtin_clip()) if cfg.source is None else cfg.source
    for output in (cfg.summary, cfg.save_video):  # replaced by rename at the end: refuse before the run
        if output:
            check_replaceable(output)
    if cfg.save_video and parse_source(source_text).kind in ("image", "images"):
        raise ValueError(f"--save-video {cfg.save_video} needs a video or a stream, but source {source_text} is "
                         "photos: use --save-images DIR for one annotated image per photo (same name and size)")
    detector = load_detector(cfg)
    if cfg.motion_gate:
        from patchdet.runtime.motion import MotionGate, gate_detector

        detector = gate_detector(detector, MotionGate(cfg.motion_threshold, cfg.motion_refresh))
    options = StreamOptions(vid_stride=cfg.vid_stride, max_fps=cfg.max_fps, drop_frames=cfg.drop_frames,
                            reconnect_timeout_s=cfg.reconnect_timeout_s)
    log.info("model %s (%s), backend %s, threshold %.4g, tiles %s stride %s scales %s%s", detector.artifact.name,
             detector.card.name, detector.backend_name, detector.threshold, detector.tiling.tile_wh,
             detector.tiling.stride_wh, detector.tiling.scales, " dense" if detector.dense else "")
    # OpenCV single-threaded unless it is the inference engine (see runtime.loop.opencv_threads).
    cv_threads = None if detector.backend_name == "opencv" else 1
    with opencv_threads(cv_threads), open_source(source_text, options) as source:
        kind = "photos" if source.stills else "live" if source.live else "file"
        log.info("source %s (%s%s)", source_text, kind,
                 f", nominal {source.fps:.2f} fps" if source.fps and not source.stills else "")
        resolved = dataclasses.replace(
            cfg, model=str(detector.artifact), source=source_text, threshold=detector.threshold,
            tile=detector.tiling.tile_wh[0], stride=detector.tiling.stride_wh[0], scales=detector.tiling.scales,
            merge=detector.tiling.merge,
        )
        config_path = config_path_for(cfg)
        if config_path is not None:
            from patchdet.runtime.config import write_config

            write_config(resolved, config_path)
        stats = RunStats()
        video_fps, timed = video_timing(source, cfg.vid_stride)
        sinks = build_sinks(cfg, detector.card.class_names, video_fps, detector.threshold, timed)
        pipeline = Pipeline(detector, source, sinks, stats, max_frames=cfg.max_frames, queue_size=cfg.queue_size,
                            log_every_s=cfg.log_every_s, io_nice=cfg.io_nice)
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
        source_fps=round(source.measured_fps, 3) if source.measured_fps else source.fps,
        source_fps_nominal=source.fps,
        motion_gate=None if not cfg.motion_gate else {
            "threshold": cfg.motion_threshold, "refresh_every": cfg.motion_refresh,
            "rescored_fraction": round(detector.tiles_scored / max(detector.tiles_seen, 1), 4)},
        outputs={k: v for k, v in (("jsonl", cfg.jsonl), ("video", cfg.save_video), ("images", cfg.save_images),
                                   ("crops", cfg.crops),
                                   ("config", str(config_path) if config_path else None)) if v},
    )
    log.info("%s", stats.log_line(counters.dropped_frames, counters.reconnects))
    if cfg.summary:
        write_summary(summary, cfg.summary)
    return summary


def write_summary(summary: dict, path: str | Path) -> Path:
    """Write the summary JSON atomically."""
    return atomic_write_json(path, summary)
