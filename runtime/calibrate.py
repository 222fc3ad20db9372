"""``calibrate(cfg)``: choose a decision threshold and write it into a copy of the model card.

Two ways, usable together (the stricter, i.e. higher, threshold wins):

- **Background footage** (``background``): video, images or a stream that
  contains no target. Every frame is tiled and scored exactly as
  ``patchdet detect`` would; a frame "raises an alarm" when any of its tiles
  is positive. The threshold is the highest per-frame score left after
  allowing ``false_alarms`` alarms per frame or per hour of footage. With
  ``false_alarms = 0`` it is the highest background patch score of all, so
  every background patch is silenced, as the DisCNN paper does.
- **A labelled folder** (``labelled``): an ImageFolder of patches with the
  positive class in one sub-folder and negatives in the others. The
  threshold is the lowest one reaching ``target_precision`` (most recall), or
  the highest one keeping ``target_recall`` (fewest false alarms). For a
  ``cosine`` (POD) head it is the **norm gate** that is chosen this way, on
  the latent norm of the patches whose nearest centroid is the positive class
  (the POD paper's Table I: low-norm patches are the unreliable ones); the
  class decision stays the card's.

Decisions are ``score > threshold``, as everywhere in patchdet.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.runtime import metrics
from patchdet.runtime.atomic import check_replaceable
from patchdet.runtime.decisions import is_positive
from patchdet.runtime.settings import DetectorSettings, check_positive_ints, load_detector
from patchdet.runtime.streams import StreamOptions, open_source

log = logging.getLogger(__name__)

RATE_UNITS = ("frame", "hour")
_CANDIDATE_THRESHOLD = -1e30  # makes every non-background tile a candidate while scores are collected


@dataclass(frozen=True)
class CalibrateConfig(DetectorSettings):
    """Settings of one ``patchdet calibrate`` run (defaults -> YAML -> command line).

    Attributes:
        model: Artifact to calibrate (``None``: the built-in DisCNN-8 car model).
        card: Start from this card instead of the artifact's own.
        output: Where the calibrated card copy goes (``None``: ``<model stem>.calibrated.card.json``
            in the current folder).
        report: Also write the calibration report JSON here.
        background: Target-free footage: video, image folder, glob or stream URL.
        false_alarms: Alarms allowed per ``per`` on the background footage (0 = silence every patch).
        per: ``frame`` (a rate, e.g. 0.01 = one frame in 100) or ``hour`` (alarms per hour of footage).
        fps: Frame rate of the footage for ``per: hour`` when the source does not tell (images).
        max_frames: Use at most this many background frames.
        vid_stride: Use every n-th background frame.
        labelled: ImageFolder root with labelled patches.
        positive_class: Sub-folder of the positives (``None``: the card's positive class).
        negative_classes: Sub-folders of the negatives (``None``: all other sub-folders).
        target_precision: Reach at least this precision on the labelled folder.
        target_recall: Keep at least this recall on the labelled folder.
        video: Ordinary footage of one fixed camera (traffic included, no labels): its background plate
            sets the threshold (no plate tile may fire, with ``plate_margin`` to spare) and its moving
            objects fit a perspective tiling (``runtime.camera_fit``); both go into the card.
        plate_margin: The plate threshold sits this fraction above the plate's highest tile score.
        min_seconds: Calibration video shorter than this is refused.
        model, card, backend, threads, tile, stride, scales, dense, merge: ``DetectorSettings``, as for
            ``patchdet detect``.
    """

    output: str | None = None
    report: str | None = None
    video: str | None = None
    plate_margin: float = 0.1
    min_seconds: float = 3.0
    background: str | None = None
    false_alarms: float = 0.0
    per: str = "frame"
    fps: float | None = None
    max_frames: int | None = None
    vid_stride: int = 1
    labelled: str | None = None
    positive_class: str | None = None
    negative_classes: tuple[str, ...] | None = None
    target_precision: float | None = None
    target_recall: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.background is None and self.labelled is None and self.video is None:
            raise ValueError("nothing to calibrate on: give camera footage (--video), background footage "
                             "(--background) and/or a labelled folder (--labelled)")
        if not (math.isfinite(self.plate_margin) and self.plate_margin >= 0):
            raise ValueError(f"plate_margin {self.plate_margin!r} is invalid: expected a number >= 0")
        if self.per not in RATE_UNITS:
            raise ValueError(f"false-alarm unit {self.per!r} is unknown: expected one of {', '.join(RATE_UNITS)}")
        if not (math.isfinite(self.false_alarms) and self.false_alarms >= 0):
            raise ValueError(f"false_alarms {self.false_alarms!r} is invalid: expected a number >= 0")
        if self.per == "frame" and self.false_alarms > 1:
            raise ValueError(f"false_alarms {self.false_alarms!r} per frame is invalid: expected a rate in [0, 1]")
        for name in ("target_precision", "target_recall"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} {value!r} is invalid: expected a number in (0, 1]")
        if self.labelled is not None and (self.target_precision is None) == (self.target_recall is None):
            raise ValueError("a labelled folder needs exactly one of --target-precision or --target-recall")
        if self.labelled is None and (self.target_precision is not None or self.target_recall is not None):
            raise ValueError("--target-precision/--target-recall need a labelled folder (--labelled)")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps {self.fps!r} is invalid: expected a positive number")
        check_positive_ints(self, ("max_frames",))
        if self.vid_stride < 1:
            raise ValueError(f"vid-stride {self.vid_stride!r} is invalid: expected an integer >= 1")


def load_calibrate_config(yaml_path: str | Path | None = None, **overrides: Any) -> CalibrateConfig:
    from patchdet.runtime.config import build_config

    return build_config(CalibrateConfig, yaml_path, **overrides)


# -- pure threshold choices ------------------------------------------------------
def threshold_for_false_alarms(frame_max: np.ndarray, allowed: int) -> float:
    """The threshold letting at most ``allowed`` frames alarm (``score > threshold``).

    Args:
        frame_max: float [F] highest candidate score of each background frame.
        allowed: Number of frames allowed to alarm (>= 0).

    Returns:
        The ``allowed``-th highest frame score (0-based), so at most ``allowed``
        frames lie strictly above it; the lowest frame score when every frame may alarm.
    """
    ordered = np.sort(np.asarray(frame_max, dtype=np.float64).reshape(-1))[::-1]
    if ordered.size == 0:
        raise ValueError("no background frame was scored: expected at least one frame")
    return float(ordered[min(int(allowed), ordered.size - 1)])


def threshold_for_precision(scores: np.ndarray, is_positive: np.ndarray, target: float) -> float:
    """Lowest threshold whose precision on these patches is at least ``target`` (the most recall).

    Raises:
        ValueError: No threshold reaches the target.
    """
    thresholds, precision, recall = _pr_curve(scores, is_positive)
    ok = np.flatnonzero((precision >= target) & (recall > 0))
    if ok.size == 0:
        best = int(np.argmax(np.where(recall > 0, precision, -1)))
        raise ValueError(f"no threshold reaches precision {target} on these patches: best is {precision[best]:.3f} "
                         f"at threshold {thresholds[best]:.4g}")
    return float(thresholds[ok[0]])


def threshold_for_recall(scores: np.ndarray, is_positive: np.ndarray, target: float) -> float:
    """Highest threshold whose recall on these patches is still at least ``target`` (the fewest false alarms)."""
    thresholds, _, recall = _pr_curve(scores, is_positive)
    ok = np.flatnonzero(recall >= target)
    if ok.size == 0:
        raise ValueError(f"no threshold keeps recall {target}: the labelled folder has no scorable positive")
    return float(thresholds[ok[-1]])


def _pr_curve(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (ascending) and the precision and recall of ``score > t`` at each."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(is_positive, dtype=bool).reshape(-1)
    if scores.shape != truth.shape or scores.size == 0:
        raise ValueError(f"{scores.size} scores for {truth.size} labels: expected the same non-zero count")
    if not truth.any():
        raise ValueError("the labelled patches hold no positive: expected images in the positive class folder")
    finite = scores[np.isfinite(scores)]
    lowest = finite.min() if finite.size else 0.0
    thresholds = np.unique(np.concatenate([[lowest - max(1e-6, abs(lowest) * 1e-6)], finite]))
    pos = np.sort(scores[truth])
    neg = np.sort(scores[~truth])
    tp = pos.size - np.searchsorted(pos, thresholds, side="right")
    fp = neg.size - np.searchsorted(neg, thresholds, side="right")
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = tp / pos.size
    return thresholds, precision, recall


# -- scoring ---------------------------------------------------------------------
def _candidate_scores(detector, outputs: dict) -> np.ndarray:
    """float64 [N] per-tile score where the tile could ever be positive, -inf elsewhere."""
    score, _, candidate = detector.tile_decisions(outputs, dense=detector.dense)
    return np.where(candidate, score.astype(np.float64), -np.inf)


def score_background(detector, cfg: CalibrateConfig) -> dict[str, Any]:
    """Score every background frame; per-frame maxima and a description of the tile scores."""
    options = StreamOptions(vid_stride=cfg.vid_stride)
    frame_max: list[float] = []
    tile_scores: list[np.ndarray] = []
    with open_source(cfg.background, options) as source:
        fps = source.fps
        for frame in source:
            prepared = detector.preprocess(frame.image)
            scores = _candidate_scores(detector, detector.infer(prepared.batch))
            frame_max.append(float(scores.max()) if scores.size else -np.inf)
            tile_scores.append(scores[np.isfinite(scores)].astype(np.float32))
            if cfg.max_frames is not None and len(frame_max) >= cfg.max_frames:
                break
        counters = source.counters
    if not frame_max:
        raise ValueError(f"background source {cfg.background} gave no frame")
    tiles = np.concatenate(tile_scores) if tile_scores else np.zeros(0, np.float32)
    return {
        "frame_max": np.asarray(frame_max),
        "tiles": tiles,
        "source_fps": fps,
        "corrupt_frames": counters.corrupt_frames,
    }


def background_threshold(detector, cfg: CalibrateConfig) -> dict[str, Any]:
    """Threshold from target-free footage at ``cfg.false_alarms`` per ``cfg.per`` (see module doc)."""
    scored = score_background(detector, cfg)
    frame_max = scored["frame_max"]
    frames = int(frame_max.size)
    if cfg.per == "frame":
        allowed = int(math.floor(cfg.false_alarms * frames + 1e-9))
        hours = None
    else:
        fps = cfg.fps or scored["source_fps"]
        if not fps:
            raise ValueError(f"the frame rate of {cfg.background} is unknown: give --fps for false alarms per hour")
        hours = frames * cfg.vid_stride / fps / 3600.0
        allowed = int(math.floor(cfg.false_alarms * hours + 1e-9))
    if allowed >= frames:
        log.warning("the false-alarm budget (%d frames) covers all %d frames: threshold = lowest frame maximum",
                    allowed, frames)
    threshold = threshold_for_false_alarms(frame_max, allowed)
    tiles = scored["tiles"].astype(np.float64)
    return {
        "threshold": threshold,
        "frames": frames,
        "hours": hours,
        "allowed_alarm_frames": allowed,
        "alarm_frames": int(np.sum(is_positive(frame_max, threshold))),
        "tiles": int(tiles.size),
        "positive_tiles": int(np.sum(is_positive(tiles, threshold))),
        "tile_score_quantiles": {q: float(np.quantile(tiles, float(q))) if tiles.size else None
                                 for q in ("0.5", "0.9", "0.99", "1.0")},
        "fraction_at_origin": metrics.fraction_at_origin(tiles) if tiles.size else None,
        "corrupt_frames": scored["corrupt_frames"],
    }


def labelled_outputs(detector, cfg: CalibrateConfig, batch_size: int = 256):
    """Model outputs of the labelled patches, batch by batch: yields (outputs, labels [B]; 0 = positive class)."""
    from patchdet.runtime.imagefolder import list_class_folders, load_images, normalize_batch, scan_image_folder

    card = detector.card
    if detector.dense:
        raise ValueError("labelled calibration scores single patches: use the patch (non-dense) artifact")
    positive = cfg.positive_class or card.positive_class
    if positive is None:
        raise ValueError("the model card names no positive class: give --positive-class")
    negatives = list(cfg.negative_classes) if cfg.negative_classes else [
        name for name in list_class_folders(cfg.labelled) if name != positive
    ]
    if not negatives:
        raise ValueError(f"labelled folder {cfg.labelled} has no negative class folder besides {positive!r}")
    index = scan_image_folder(cfg.labelled, [positive, *negatives])
    loaded = load_images(index.paths, index.labels, tuple(card.input_wh))
    if loaded.images.shape[0] == 0:
        raise ValueError(f"no readable image in {cfg.labelled}")
    images = loaded.images if card.color_order.upper() == "RGB" else loaded.images[..., ::-1]
    for start in range(0, len(images), batch_size):
        batch = normalize_batch(images[start:start + batch_size], card.mean, card.std)
        yield detector.infer(batch), loaded.labels[start:start + batch_size]


def score_labelled(detector, cfg: CalibrateConfig, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Scores and truth (positive class?) of every labelled patch."""
    card = detector.card
    positive = cfg.positive_class or card.positive_class
    positive_id = card.class_names.index(positive) if positive in card.class_names else None
    scores, truth = [], []
    for outputs, labels in labelled_outputs(detector, cfg, batch_size):
        score, class_id, candidate = detector.tile_decisions(outputs)
        keep = candidate if positive_id is None else candidate & (class_id == positive_id)
        scores.append(np.where(keep, score.astype(np.float64), -np.inf))
        truth.append(labels == 0)
    return np.concatenate(scores), np.concatenate(truth)


def threshold_for_target(scores: np.ndarray, is_positive: np.ndarray, cfg: CalibrateConfig
                         ) -> tuple[float, dict[str, float]]:
    """(threshold, {"precision"|"recall": target}) for the config's target precision or recall."""
    if cfg.target_precision is not None:
        return threshold_for_precision(scores, is_positive, cfg.target_precision), {"precision": cfg.target_precision}
    return threshold_for_recall(scores, is_positive, cfg.target_recall), {"recall": cfg.target_recall}


def labelled_threshold(detector, cfg: CalibrateConfig) -> dict[str, Any]:
    """Threshold from a labelled ImageFolder at the target precision or recall."""
    scores, truth = score_labelled(detector, cfg)
    threshold, target = threshold_for_target(scores, truth, cfg)
    finite = np.where(np.isfinite(scores), scores, np.finfo(np.float64).min)
    return {"threshold": threshold, "target": target, "patches": int(scores.size), "positives": int(truth.sum()),
            "report": metrics.binary_report(finite, truth, threshold)}


def labelled_norm_gate(detector, cfg: CalibrateConfig) -> dict[str, Any]:
    """Norm gate of a ``cosine`` head from a labelled folder at the target precision or recall (see module doc)."""
    from patchdet.runtime.decisions import decide_tiles, decision_rule, latent_norms

    card = detector.card
    # Candidates at the card's own class thresholds and no gate: the gate is what is being chosen.
    rule = decision_rule(card, None, 0.0)
    positive = cfg.positive_class or card.positive_class
    if positive not in card.class_names:
        raise ValueError(f"class {positive!r} is not one of the model's classes {', '.join(card.class_names)}")
    positive_id = card.class_names.index(positive)
    norms, truth = [], []
    for outputs, labels in labelled_outputs(detector, cfg):
        _, class_id, candidate = decide_tiles(rule, outputs)
        keep = candidate & (class_id == positive_id)
        norms.append(np.where(keep, latent_norms(rule, outputs).astype(np.float64), -np.inf))
        truth.append(labels == 0)
    scores, is_pos = np.concatenate(norms), np.concatenate(truth)
    gate, target = threshold_for_target(scores, is_pos, cfg)
    # The gate keeps norm >= gate where the curve is norm > t: the next float32 above t (norms are float32).
    gate = max(0.0, float(np.nextafter(np.float32(gate), np.float32(np.inf))))
    finite = np.where(np.isfinite(scores), scores, np.finfo(np.float64).min)
    return {"norm_gate": gate, "previous_norm_gate": card.norm_gate, "target": target, "patches": int(scores.size),
            "positives": int(is_pos.sum()), "report": metrics.binary_report(finite, is_pos, np.nextafter(gate, -np.inf))}


# -- the command -----------------------------------------------------------------
def calibrate(cfg: CalibrateConfig) -> dict[str, Any]:
    """Choose the threshold and write the calibrated card copy.

    Returns:
        The report: ``threshold`` (chosen), ``previous_threshold``, ``card`` (path written),
        and ``background`` / ``labelled`` details.
    """
    from patchdet.runtime.card import write_card

    for output in (cfg.output, cfg.report):  # replaced by rename at the end: refuse a device before the work
        if output:
            check_replaceable(output)
    detector = load_detector(cfg)
    previous = detector.threshold
    detector.with_threshold(_CANDIDATE_THRESHOLD)
    report: dict[str, Any] = {"model": str(detector.artifact), "previous_threshold": previous,
                              "tiling": detector.describe()["tiling"]}
    chosen: list[float] = []
    names: dict[str, float] = {}
    tiling = detector.tiling.to_dict()
    if cfg.video is not None:
        from patchdet.runtime.camera_fit import calibrate_on_video

        fitted = calibrate_on_video(detector, cfg.video, margin=cfg.plate_margin, min_seconds=cfg.min_seconds)
        fitted.pop("plate")
        tiling = fitted["tiling"]
        report["video"] = fitted
        chosen.append(fitted["threshold"])
        names["plate"] = fitted["threshold"]
        log.info("camera %s: plate threshold %.4g, perspective tiling %s", cfg.video, fitted["threshold"],
                 tiling.get("perspective") or "not fitted")
    if cfg.background is not None:
        report["background"] = background_threshold(detector, cfg)
        chosen.append(report["background"]["threshold"])
        names[f"background_{cfg.false_alarms:g}_per_{cfg.per}"] = report["background"]["threshold"]
        log.info("background: threshold %.4g lets %d of %d frames alarm", report["background"]["threshold"],
                 report["background"]["alarm_frames"], report["background"]["frames"])
    card = detector.card
    norm_gate = card.norm_gate
    if cfg.labelled is not None and card.head == "cosine":
        report["labelled"] = labelled_norm_gate(detector, cfg)
        norm_gate = report["labelled"]["norm_gate"]
        log.info("labelled: norm gate %.4g (was %.4g) for %s %s", norm_gate, card.norm_gate,
                 *next(iter(report["labelled"]["target"].items())))
    elif cfg.labelled is not None:
        report["labelled"] = labelled_threshold(detector, cfg)
        key = next(iter(report["labelled"]["target"].items()))
        chosen.append(report["labelled"]["threshold"])
        names[f"{key[0]}_{key[1]:g}"] = report["labelled"]["threshold"]
        log.info("labelled: threshold %.4g for %s %s", report["labelled"]["threshold"], *key)
    threshold = float(max(chosen)) if chosen else previous
    thresholds = {**card.thresholds, **names, **({"calibrated": threshold} if chosen else {})}
    main_key = f"class:{card.positive_class}" if card.positive_class else None
    if main_key and main_key in thresholds:
        thresholds[main_key] = threshold
    # The card keeps the tiling it was calibrated with: the threshold only holds for it.
    calibrated = card.replace(threshold=threshold, thresholds=thresholds, tiling=tiling, norm_gate=norm_gate)
    output = Path(cfg.output) if cfg.output else Path.cwd() / f"{detector.artifact.stem}.calibrated.card.json"
    write_card(calibrated, output)
    report.update(threshold=threshold, norm_gate=norm_gate, card=str(output))
    if cfg.report:
        from patchdet.runtime.atomic import atomic_write_json

        atomic_write_json(cfg.report, report)
    log.info("threshold %.4g (was %.4g) written to %s", threshold, previous, output)
    return report
