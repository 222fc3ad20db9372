"""Fitting the detector to one fixed camera from its ordinary footage (traffic included, no labels).

Three measurements, each a small pure function over frames:

- **Background plate**: the per-pixel median of frames spread over the video. Cars pass, the road stays,
  so the median is the road without its cars: the car-free view this camera will show all day.
- **Stability**: the share of each frame's edges that lie on the plate's edges. A fixed camera with
  traffic keeps most of its edges where the plate has them (kerbs, lane lines, walls); a moving
  (dashcam, PTZ) camera's median is a blur with almost no edges, so little of a frame matches it, and
  such footage is refused: it has no plate to calibrate on.
- **Perspective**: OpenCV's MOG2 background subtractor finds the moving blobs; their widths against
  their image rows give how large a car is at each row (a robust straight-line fit), which becomes a
  tiling whose tile side grows with the row (``runtime.tiling.perspective_grid``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

# Median share of a frame's edges on the plate's edges (edges dilated by one pixel). Measured on the shared
# footage: the fixed street camera with traffic 0.78 (10th percentile 0.73); the two dashcam clips 0.13
# and 0.15, although their grey levels match their blurred plates on 76-93 % of pixels (sky and asphalt),
# which is why grey levels are not the test. Below this the camera is treated as moving.
MIN_STABLE_SHARE = 0.5
# Scales around a fitted perspective tiling (tiles 0.7x, 1x and 1.4x the fitted side).
PERSPECTIVE_SCALES = (1.41, 1.0, 0.71)


@dataclass(frozen=True)
class PerspectiveFit:
    """Car width against image row: ``width_px = a + b * y`` (frame pixels), from ``blobs`` moving blobs."""

    a: float
    b: float
    blobs: int
    rows: tuple[int, int]


def sample_indices(frame_count: int, samples: int) -> np.ndarray:
    """``samples`` frame indices spread evenly over ``frame_count`` frames (all of them when fewer)."""
    if frame_count <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, frame_count - 1, min(samples, frame_count)).round().astype(np.int64))


def background_plate(frames: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 [H, W, 3]: the per-pixel median of the frames (all of one size)."""
    if not frames:
        raise ValueError("no frame to build a background plate from")
    return np.median(np.stack(frames), axis=0).astype(np.uint8)


def _edges(image: np.ndarray) -> np.ndarray:
    grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (5, 5), 0)
    return cv2.Canny(grey, 50, 150) > 0


def plate_match_shares(frames: Sequence[np.ndarray], plate: np.ndarray) -> np.ndarray:
    """float [F]: per frame, the share of its edge pixels that lie on (one pixel around) the plate's edges."""
    plate_edges = cv2.dilate(_edges(plate).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    shares = []
    for frame in frames:
        edges = _edges(frame)
        shares.append(float((edges & plate_edges).sum() / max(1, edges.sum())))
    return np.asarray(shares, np.float64)


def moving_blobs(frames: Sequence[np.ndarray], min_area_fraction: float = 0.002) -> np.ndarray:
    """float [B, 4] ``xyxy`` boxes of moving blobs (MOG2 foreground, shadows dropped, opened and closed)."""
    subtractor = cv2.createBackgroundSubtractorMOG2(history=max(10, len(frames)), detectShadows=True)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    boxes: list[list[float]] = []
    for i, frame in enumerate(frames):
        mask = subtractor.apply(frame)
        if i >= 5:  # the background model is still forming before
            boxes.extend(_blobs(mask, kernel, min_area_fraction * frame.shape[0] * frame.shape[1]))
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def fit_perspective(blobs_xyxy: np.ndarray, frame_wh: Sequence[int], min_blobs: int = 8) -> PerspectiveFit | None:
    """Robust line ``width = a + b * y_centre`` through the blobs; ``None`` when too few or the fit is nonsense.

    Blobs are binned by row (10 bins over the frame height); each bin with at least 3 blobs contributes its
    75th-percentile width (moving blobs are often fragments of a car, and a median of fragments is too
    small), weighted by its count, so one bus or a merged pair of cars does not tilt the line.
    """
    boxes = np.asarray(blobs_xyxy, np.float64).reshape(-1, 4)
    if len(boxes) < min_blobs:
        return None
    width = boxes[:, 2] - boxes[:, 0]
    y_centre = (boxes[:, 1] + boxes[:, 3]) / 2
    edges = np.linspace(0, float(frame_wh[1]), 11)
    bins = np.clip(np.digitize(y_centre, edges) - 1, 0, 9)
    rows = [(float(np.median(y_centre[bins == k])), float(np.quantile(width[bins == k], 0.75)), int(np.sum(bins == k)))
            for k in range(10) if np.sum(bins == k) >= 3]
    if len(rows) < 2:
        return None
    ys, ws, counts = np.asarray(rows).T
    b, a = np.polyfit(ys, ws, 1, w=np.sqrt(counts))
    top, bottom = a, a + b * frame_wh[1]
    if not (np.isfinite(a) and np.isfinite(b)) or max(top, bottom) <= 0:
        return None
    return PerspectiveFit(float(a), float(b), int(len(boxes)), (int(ys.min()), int(ys.max())))


def perspective_tiling(fit: PerspectiveFit, frame_wh: Sequence[int], car_fraction: float, min_tile: int = 24
                       ) -> tuple[float, float]:
    """``(a, b)`` of a tile side that frames a car of the fitted width at each row.

    ``car_fraction`` is how much of a tile's width a car fills in the model's training patches; the side is
    ``width / car_fraction``, kept at least ``min_tile`` at the top row.
    """
    a, b = fit.a / car_fraction, fit.b / car_fraction
    if a < min_tile:  # far rows: no tile smaller than the model can see
        a = float(min_tile)
    return a, b


def scales_for_fit(tiling, fit: PerspectiveFit, frame_wh: Sequence[int], spread: float = 1.4) -> tuple[float, ...]:
    """Dense mode: the tiling's scales whose tile width frames the cars this camera shows.

    The fitted car width between the rows where cars moved gives the widths to expect; scales whose tile
    (at this frame size) is more than ``spread`` times narrower than the narrowest or wider than the widest
    are dropped: they can only find things that are not cars here. All scales stay when none would.
    """
    widths = [fit.a + fit.b * y for y in fit.rows]
    low, high = min(widths) / spread, max(widths) * spread
    kept = tuple(scale for scale, effective in zip(tiling.scales, tiling.scales_for(frame_wh), strict=True)
                 if low <= tiling.tile_wh[0] / effective <= high)
    return kept or tiling.scales


@dataclass
class VideoScan:
    """One pass over a camera's footage: frames kept for the plate, moving blobs, and how long it was."""

    sampled: list[np.ndarray]
    blobs_xyxy: np.ndarray
    frames: int
    seconds: float | None
    frame_wh: tuple[int, int]


def scan_video(source, frame_count: int | None, samples: int = 60, blob_every: int = 2) -> VideoScan:
    """Read a ``runtime.streams.FrameSource`` once: keep ``samples`` frames spread over it, feed MOG2 every
    ``blob_every``-th frame (memory stays at ``samples`` frames whatever the video's length)."""
    keep = set(sample_indices(frame_count, samples).tolist()) if frame_count else None
    sampled: list[np.ndarray] = []
    subtractor = cv2.createBackgroundSubtractorMOG2(history=200, detectShadows=True)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    boxes: list[list[float]] = []
    count, last_ts, frame_wh = 0, None, (0, 0)
    for frame in source:
        image = frame.image
        frame_wh = (image.shape[1], image.shape[0])
        if keep is None or count in keep:
            sampled.append(image)
            if keep is None and len(sampled) > 4 * samples:  # unknown length: thin out as we go
                sampled = sampled[::2]
        if count % blob_every == 0:
            mask = subtractor.apply(image)
            if count >= 5 * blob_every:  # the background model is still forming before
                boxes.extend(_blobs(mask, kernel, 0.002 * image.shape[0] * image.shape[1]))
        last_ts = frame.timestamp
        count += 1
    if keep is None and len(sampled) > samples:
        sampled = [sampled[i] for i in sample_indices(len(sampled), samples)]
    return VideoScan(sampled, np.asarray(boxes, np.float32).reshape(-1, 4), count, last_ts, frame_wh)


def _blobs(mask: np.ndarray, kernel: np.ndarray, min_area: float) -> list[list[float]]:
    mask = np.where(mask == 255, 255, 0).astype(np.uint8)  # 127 = shadow
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    return [[x, y, x + w, y + h] for x, y, w, h, area in stats[1:count] if area >= min_area]


@dataclass
class FixedCamera:
    """A fixed camera's footage read once: the scan, its background plate, length and plate stability."""

    scan: VideoScan
    plate: np.ndarray
    seconds: float
    plate_edge_share: float


def read_fixed_camera(video: str, *, samples: int = 60, min_seconds: float = 3.0) -> FixedCamera:
    """Read a fixed camera's footage and build its background plate; refuse what cannot give one.

    Raises:
        ValueError: Footage shorter than ``min_seconds`` or not from a fixed camera (no stable plate).
    """
    from patchdet.runtime.streams import open_source

    with open_source(video) as source:
        scan = scan_video(source, getattr(source, "frame_count", None), samples)
        fps = source.fps
    seconds = scan.frames / fps if fps else scan.seconds
    if not scan.frames or seconds is None or seconds < min_seconds:
        length = f"{seconds:.1f} s" if seconds is not None else f"{scan.frames} frame(s)"
        raise ValueError(f"calibration video {video} is {length} long: expected at least {min_seconds:g} s of "
                         "footage of the fixed camera")
    plate = background_plate(scan.sampled)
    stable = float(np.median(plate_match_shares(scan.sampled, plate)))
    if stable < MIN_STABLE_SHARE:
        raise ValueError(f"calibration video {video} does not look like a fixed camera: only {stable:.0%} of its "
                         f"edges stay put (expected >= {MIN_STABLE_SHARE:.0%}); no stable background plate")
    return FixedCamera(scan, plate, float(seconds), stable)


def calibrate_on_video(detector, video: str, *, samples: int = 60, margin: float = 0.1, min_seconds: float = 3.0,
                       car_fraction: float | None = None) -> dict:
    """The ``--video`` step of ``patchdet calibrate``: plate, stability check, perspective tiling, plate threshold.

    Args:
        detector: A ``runtime.detector.Detector`` (its card, tiling and backend are used; not changed).
        video: Footage of one fixed camera, traffic included (a file or a stream URL).
        samples: Frames spread over the video for the plate.
        margin: The threshold sits this fraction above the highest plate tile score (not below the card's
            ``training`` operating point, else its threshold).
        min_seconds: Shorter footage is refused (too little traffic to see the road's perspective).
        car_fraction: Share of a tile's width a car fills in the model's training patches (``None``: the
            card's ``training["car_fraction"]``, else 0.8).

    Returns:
        ``threshold``, ``tiling`` (a ``TilingConfig`` dict, with ``perspective`` when it could be fitted), and
        the measurements behind them. The caller writes the card.

    Raises:
        ValueError: Footage too short, no stable plate (a moving camera), or a plate smaller than a tile.
    """
    import dataclasses

    camera = read_fixed_camera(video, samples=samples, min_seconds=min_seconds)
    scan, plate, seconds, stable = camera.scan, camera.plate, camera.seconds, camera.plate_edge_share
    tiling = detector.tiling
    fit = fit_perspective(scan.blobs_xyxy, scan.frame_wh)
    if fit is not None and not tiling.dense:
        fraction = car_fraction or float(detector.card.training.get("car_fraction", 0.8))
        # The fitted size already follows the row; the scales only cover cars 0.7-1.4x the row's typical width.
        tiling = dataclasses.replace(tiling, perspective=perspective_tiling(fit, scan.frame_wh, fraction),
                                     scales=PERSPECTIVE_SCALES)
    elif fit is not None:  # dense: one canvas for all scales, so keep the scales that match this camera's cars
        tiling = dataclasses.replace(tiling, scales=scales_for_fit(tiling, fit, scan.frame_wh))
    else:
        log.warning("too few moving objects in %s to fit a perspective tiling: the card's tiling stays", video)
    # Score the plate as the detector will see this camera, with the fitted tiling.
    from patchdet.runtime.preprocess import Tiler

    tiler = Tiler(detector.card, tiling, None)
    prepared = tiler(plate)
    outputs = detector.infer(prepared.batch)
    score, _, candidate = detector.tile_decisions(outputs, dense=tiling.dense)
    if tiling.dense:  # windows across two scales of the canvas are no tiles
        map_hw = np.asarray(next(iter(outputs.values()))).shape[-2:]
        boxes = tiler.dense_boxes_for((int(map_hw[0]), int(map_hw[1])), prepared.frame_wh)
        candidate &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    plate_max = float(score[candidate].max()) if candidate.any() else 0.0
    # The card's threshold is a default for cameras nobody has seen; this camera's own plate is evidence of what
    # its background scores, so the plate sets it, never below the model's training operating point.
    floor = float(detector.card.thresholds.get("training", detector.card.threshold))
    threshold = max(floor, plate_max * (1.0 + margin))
    return {
        "threshold": threshold,
        "tiling": tiling.to_dict(),
        "frames": scan.frames,
        "seconds": round(float(seconds), 2),
        "plate_edge_share": round(stable, 3),
        "plate_max_score": plate_max,
        "plate_tiles": int(len(prepared.tiles_xyxy)),
        "moving_blobs": int(len(scan.blobs_xyxy)),
        "perspective_fit": None if fit is None else dataclasses.asdict(fit),
        "plate": plate,
    }
