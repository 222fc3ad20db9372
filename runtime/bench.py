"""``patchdet bench``: time every backend x precision that can load an artifact, beside the engine's own floor.

For each artifact (a file with its card, every artifact of an export folder, or the built-in model), each
backend variant (``variants_for``), frame size and tiling, one row: inference latency p50/p90/p99 on one frame's
batches, tiles/s, frames/s of the whole detector (preprocess + inference + decisions + merge) on clip frames held
in memory, the floor (``runtime.floor``), F1 at the card threshold on a labelled patch folder, and, with a motion
gate, decision agreement against scoring every tile. A row that cannot load says why and the run goes on.
Reports go through ``runtime.bench_report``. No torch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from patchdet.runtime.settings import check_positive_ints

logger = logging.getLogger(__name__)

FRAME_SIZES: dict[str, tuple[int, int]] = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
TILINGS = ("tiled", "card", "dense")
ARTIFACT_SUFFIXES = (".onnx", ".xml", ".engine", ".plan")


@dataclass(frozen=True)
class BenchConfig:
    """What ``patchdet bench`` measures.

    Attributes:
        models: Artifacts (with cards), export folders or checkpoints (exported first with ``patchdet export`` in
            a child process when the export extra is installed); empty: the built-in model.
        out: Output folder for bench.json/csv/md/png; None: a new ``patchdet-bench-<date>-<time>`` folder in the
            working directory (never an existing folder, never the repository's ``benchmarks/results``).
        frames: Frame sizes: ``720p``, ``1080p``, ``4k`` or ``WxH``.
        tilings: ``tiled`` (``tile`` every ``stride``), ``card`` (the card's own: for a dense export its dense
            mosaic, as ``patchdet detect`` runs it) or ``dense`` (a dense export).
        tile: Tile side for ``tiled`` (None: the model input size). stride: step for ``tiled`` (None: ``tile``).
        scales: Scales of the ``tiled`` grid (None: the card's; ``(1.0,)``: every tile once at frame scale).
        backends: Only these backends (None: every one that reads the artifact).
        threads: Inference threads for ours and the floor (None: each engine's default).
        repeats: Timed inference calls per row (at least 3 are made).
        warmup: Untimed calls first. max_seconds: time budget of the timed calls of one row.
        clip: Video whose frames (resized to each frame size) are detected; None: the built-in clip,
            else a synthetic frame. clip_frames: frames read from it for frames/s.
        labelled: ImageFolder of patches for F1 at the card threshold (positive class: the card's).
        labels: COCO JSON of labelled frames (``patchdet evaluate --labels``): AP50 of the detector as the row
            runs it (backend, precision, tiling); the frame size of the row does not apply.
        floor: Measure the engine's own time (``runtime.floor``).
        motion_gate: Also measure a motion-gated row per measured row (``runtime.motion``).
        compare: A previous bench.json to compare with. tolerance: allowed slowdown (0.1 = 10 %).
    """

    out: str | None = None
    models: tuple[str, ...] = ()
    frames: tuple[str, ...] = ("1080p",)
    tilings: tuple[str, ...] = ("tiled", "card")
    tile: int | None = None
    stride: int | None = None
    scales: tuple[float, ...] | None = None
    backends: tuple[str, ...] | None = None
    threads: int | None = None
    repeats: int = 30
    warmup: int = 3
    max_seconds: float = 10.0
    clip: str | None = None
    clip_frames: int = 30
    labelled: str | None = None
    labels: str | None = None
    floor: bool = True
    motion_gate: bool = False
    compare: str | None = None
    tolerance: float = 0.10

    def __post_init__(self) -> None:
        check_positive_ints(self, ("tile", "stride", "threads", "repeats", "clip_frames"))
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup {self.warmup!r} is invalid: expected an integer >= 0")
        if not (isinstance(self.max_seconds, (int, float)) and math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"max-seconds {self.max_seconds!r} is invalid: expected a positive number")
        if not (isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 1):
            raise ValueError(f"tolerance {self.tolerance!r} is invalid: expected a fraction in [0, 1), e.g. 10%")
        if self.scales is not None and (not self.scales or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
                for v in self.scales)):
            raise ValueError(f"scales {self.scales!r} are invalid: expected positive numbers, e.g. 1 or 1,0.5")
        for name in self.frames:
            frame_wh(name)
        if not self.frames or not self.tilings:
            raise ValueError("frames and tilings must each name at least one entry")
        for tiling in self.tilings:
            if tiling not in TILINGS:
                raise ValueError(f"tiling {tiling!r} is unknown: expected one of {', '.join(TILINGS)}")
        if self.backends is not None:
            from patchdet.runtime.backends import list_backends

            for name in self.backends:
                if name not in list_backends():
                    raise ValueError(f"backend {name!r} is unknown: expected one of {', '.join(list_backends())}")


@dataclass(frozen=True)
class Variant:
    """One way to run an artifact: backend, precision label and backend options."""

    backend: str
    precision: str
    options: tuple[tuple[str, Any], ...] = ()
    ov_precision: str = "f32"


def frame_wh(name: str) -> tuple[int, int]:
    """``1080p`` -> (1920, 1080); ``640x480`` -> (640, 480)."""
    key = str(name).lower()
    if key in FRAME_SIZES:
        return FRAME_SIZES[key]
    parts = key.split("x")
    if len(parts) == 2 and all(p.isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[1])
    raise ValueError(f"frame size {name!r} is invalid: expected 720p, 1080p, 4k or WxH such as 1920x1080")


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def export_checkpoint(checkpoint: Path, out: Path, calib: str | None) -> Path:
    """Export a checkpoint with ``patchdet export`` in a child process (the runtime never imports export/torch).

    Formats: ONNX fp32 and, with OpenVINO installed, its IR; with calibration images (``--labelled``) also the
    INT8 formats. Returns the export folder.

    Raises:
        ModuleNotFoundError: When the export extra (torch) is not installed.
        OSError: When the export fails.
    """
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("torch") is None:
        raise ModuleNotFoundError(f"timing checkpoint {checkpoint} needs it exported first, which needs the export "
                                  "extra: pip install 'patchdet[export]' (or pass exported artifacts)", name="torch")
    formats = ["onnx"] + (["onnx-int8-u8s8"] if calib else [])
    if importlib.util.find_spec("openvino") is not None:
        formats += ["openvino"] + (["openvino-int8"] if calib and importlib.util.find_spec("nncf") else [])
    folder = out / "exports" / checkpoint.stem
    command = [sys.executable, "-m", "patchdet", "-q", "export", str(checkpoint), "--formats", ",".join(formats),
               "--out", str(folder)] + (["--calib", calib] if calib else [])
    logger.info("exporting %s first: %s", checkpoint.name, " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise OSError(f"cannot export checkpoint {checkpoint}: {tail}")
    return folder


def find_artifacts(models: tuple[str, ...], out: Path | None = None, calib: str | None = None) -> list[Path]:
    """Artifact files from the command line: files as given, folders expanded to their artifacts, checkpoints
    exported first into ``out/exports``; [] -> built-in."""
    from patchdet.runtime.builtin import builtin_model

    if not models:
        return [builtin_model()]
    found: list[Path] = []
    for text in models:
        path = Path(text).expanduser()
        if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
            path = export_checkpoint(path, out or Path("."), calib)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in ARTIFACT_SUFFIXES and p.is_file()
                            and not p.name.endswith(".fp32-source.onnx"))
            if not inside:
                raise ValueError(f"folder {text} holds no artifact: expected .onnx, .xml or .engine files")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"model {text} does not exist")
    return found


def artifact_precision(card: Any) -> str:
    """``fp32``, ``fp16`` or ``int8`` from the card's export section (fp32 when it does not say)."""
    export = getattr(card, "export", None) or {}
    text = str(export.get("precision") or "fp32").lower()
    if "int8" in text and str(export.get("activations", "")).startswith("uint8"):
        return "int8-u8s8"  # unsigned activations (ONNX Runtime's fast CPU kernels)
    return "int8" if "int8" in text else text


def variants_for(artifact: Path, precision: str, only: tuple[str, ...] | None) -> list[Variant]:
    """Every backend x precision that may run ``artifact`` (installed or not: missing ones become skipped rows)."""
    suffix = artifact.suffix.lower()
    found: list[Variant] = []
    if suffix in (".onnx", ".ort"):
        found.append(Variant("onnxruntime", precision))
    if suffix in (".onnx", ".xml"):
        found.append(Variant("openvino", precision, (("precision", "f32"),), "f32"))
        if precision == "fp32":  # bf16 is an explicit trade of numerics for speed, reported as its own row
            found.append(Variant("openvino", "bf16", (("precision", "bf16"),), "bf16"))
    if suffix == ".onnx":
        found.append(Variant("opencv", precision))
    if suffix in (".engine", ".plan"):
        found.append(Variant("tensorrt", precision))
    return [v for v in found if only is None or v.backend in only]


def clip_frames(clip: str | None, size_wh: tuple[int, int], count: int) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` frames of ``clip`` resized to ``size_wh`` (the built-in clip when None; noise if none)."""
    from patchdet.runtime.builtin import BUILTIN_CLIP

    path = Path(clip) if clip else BUILTIN_CLIP
    frames: list[np.ndarray] = []
    if path.is_file():
        capture = cv2.VideoCapture(str(path))
        while len(frames) < count:
            ok, image = capture.read()
            if not ok:
                break
            frames.append(cv2.resize(image, size_wh, interpolation=cv2.INTER_LINEAR))
        capture.release()
    elif clip:
        raise FileNotFoundError(f"clip {clip} does not exist")
    if not frames:
        if clip:
            raise ValueError(f"clip {clip} has no readable frame")
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (size_wh[1], size_wh[0], 3), np.uint8)], "synthetic noise"
    return frames, path.name


def _percentiles(times_ms: np.ndarray) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(times_ms, q)), 3) for q in (50, 90, 99)}


def _settings(artifact: Path, variant: Variant, tiling: str, cfg: BenchConfig, card: Any):
    from patchdet.runtime.settings import DetectorSettings

    if tiling == "tiled":
        tile = cfg.tile or int(card.input_wh[0])
        scales = "" if cfg.scales is None else " x" + ",".join(f"{v:g}" for v in cfg.scales)
        # a dense export scores every window of the tile's size at its own dense stride: --stride does not apply
        label = f"dense windows {tile}{scales}" if card.dense else f"tiled {tile}/{cfg.stride or tile}{scales}"
        return DetectorSettings(model=str(artifact), backend=variant.backend, threads=cfg.threads, tile=tile,
                                stride=cfg.stride or tile, scales=cfg.scales), label
    # a dense export's own way of running (its card's tiling, as ``patchdet detect`` runs it) is the dense mosaic
    dense = tiling == "dense" or (tiling == "card" and bool(card.dense))
    label = "card (dense)" if tiling == "card" and dense else tiling
    return DetectorSettings(model=str(artifact), backend=variant.backend, threads=cfg.threads, dense=dense), label


def check_frame_fits(card: Any, frame: str, tiling: str, cfg: BenchConfig) -> None:
    """Raise when a frame is smaller than a tile (bad input: nothing would be scored)."""
    wh = frame_wh(frame)
    tile = cfg.tile if tiling == "tiled" and cfg.tile else int(card.input_wh[0])
    if tiling == "card":
        tile = int((card.tiling or {}).get("tile_wh", card.input_wh)[0])
    if wh[0] < tile or wh[1] < tile:
        raise ValueError(f"frame size {frame} ({wh[0]}x{wh[1]}) is smaller than a {tile}x{tile} tile: "
                         "expected frames at least one tile wide and high")


def measure_row(artifact: Path, card: Any, variant: Variant, frame: str, tiling: str, cfg: BenchConfig,
                frames: list[np.ndarray], f1_cache: dict) -> dict[str, Any]:
    """One row: load, time, floor, accuracy. Load and run failures become the row's status."""
    from patchdet.runtime import floor as floors
    from patchdet.runtime.backends import BackendError, MissingBackendError
    from patchdet.runtime.settings import load_detector

    settings, tiling_label = _settings(artifact, variant, tiling, cfg, card)
    row: dict[str, Any] = {"backend": variant.backend, "precision": variant.precision, "frame": frame,
                           "frame_wh": list(frame_wh(frame)), "tiling": tiling_label, "status": "ok",
                           "latency_ms": None, "fps": None, "threads": cfg.threads or "default"}
    if tiling == "dense" and not card.dense:
        row["status"] = "skipped: dense tiling needs a dense export (patchdet export --dense)"
        return row
    try:
        detector = load_detector(settings, backend_options=dict(variant.options), reuse_buffers=False)
    except (MissingBackendError, BackendError, OSError, ValueError) as exc:
        row["status"] = f"error: {str(exc).splitlines()[0]}"
        return row
    row["device"] = _device(detector.backend)
    prepared = detector.preprocess(frames[0])
    batch = prepared.batch
    step = detector.inference.max_batch or len(batch)
    chunks = [np.ascontiguousarray(batch[i:i + step]) for i in range(0, len(batch), step)]
    row["batch"] = [int(len(c)) for c in chunks]
    try:
        # a dense export's window count follows from its score map
        row["tiles"] = int(len(batch)) if not detector.dense else int(np.size(detector.infer(batch)["score"]))
        times = floors.time_calls(lambda: detector.infer(batch), cfg.repeats, cfg.warmup, cfg.max_seconds)
        row["latency_ms"] = _percentiles(times)
        row["repeats"] = int(len(times))
        if not detector.dense:
            row["tiles_per_s"] = round(len(batch) / (row["latency_ms"]["p50"] / 1e3), 1)
        row["fps"], row["preprocess_ms"] = _frames_per_second(detector, frames, cfg)
        if cfg.floor:
            found = floors.engine_floor(variant.backend, artifact, chunks, cfg.threads, variant.ov_precision,
                                        cfg.repeats, cfg.warmup, cfg.max_seconds)
            if found is not None:
                row["floor_ms"], row["floor_tool"] = round(found[0], 3), found[1]
                row["overhead"] = round(row["latency_ms"]["p50"] / found[0], 3)
        if cfg.labelled and not detector.dense:
            key = (variant.backend, variant.precision)
            if key not in f1_cache:
                f1_cache[key] = labelled_f1(detector, cfg.labelled)
            row["f1"] = f1_cache[key]
        if cfg.labels:
            key = ("ap50", variant.backend, variant.precision, tiling_label)
            if key not in f1_cache:
                f1_cache[key] = labelled_ap50(detector, cfg.labels)
            row["ap50"] = f1_cache[key]
        if cfg.motion_gate:
            from patchdet.runtime.motion import gated_agreement

            row["motion_gate"] = gated_agreement(detector, frames)
    except (RuntimeError, ValueError, OSError) as exc:  # engines raise their own RuntimeError subclasses
        row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return row


def _frames_per_second(detector: Any, frames: list[np.ndarray], cfg: BenchConfig) -> tuple[float, float]:
    """Frames/s of the whole detector over the clip frames (decoded beforehand), and median preprocess ms."""
    detector(frames[0])
    pre = []
    start = time.perf_counter()
    deadline = start + cfg.max_seconds
    count = 0
    for frame in frames:
        t0 = time.perf_counter()
        prepared = detector.preprocess(frame)
        pre.append((time.perf_counter() - t0) * 1e3)
        detector.decide(detector.infer(prepared.batch), prepared)
        count += 1
        if time.perf_counter() > deadline and count >= 3:
            break
    return round(count / (time.perf_counter() - start), 2), round(float(np.median(pre)), 3)


def labelled_f1(detector: Any, folder: str, batch_size: int = 256) -> float:
    """F1 at the detector's threshold on an ImageFolder of patches (positive class: the card's)."""
    from patchdet.runtime import metrics
    from patchdet.runtime.imagefolder import list_class_folders, load_images, normalize_batch, scan_image_folder

    card = detector.card
    positive = card.positive_class
    if positive is None or positive not in list_class_folders(folder):
        raise ValueError(f"labelled folder {folder} has no sub-folder for the positive class {positive!r}")
    available = list_class_folders(folder)
    # the negatives the model was trained against when the folder has them (CIFAR-10 test: bird, cat), else all
    negatives = [n for n in (card.training or {}).get("negative_classes") or [] if n in available] or \
        [n for n in available if n != positive]
    index = scan_image_folder(folder, [positive, *negatives])
    loaded = load_images(index.paths, index.labels, tuple(card.input_wh))
    images = loaded.images if card.color_order.upper() == "RGB" else loaded.images[..., ::-1]
    scores = []
    for start in range(0, len(images), batch_size):
        outputs = detector.infer(normalize_batch(images[start:start + batch_size], card.mean, card.std))
        score, _, candidate = detector.tile_decisions(outputs)
        scores.append(np.where(candidate, score.astype(np.float64), np.finfo(np.float64).min))
    report = metrics.binary_report(np.concatenate(scores), loaded.labels == 0, detector.threshold)
    return round(float(report["positive"]["f1"]), 4)


def labelled_ap50(detector: Any, labels: str) -> float | None:
    """AP50 of the detector on labelled frames (``runtime.evaluation``, pycocotools), as ``patchdet evaluate``."""
    from patchdet.runtime.evaluation import detector_function, load_labelled_frames, score_detector

    ap50 = score_detector(load_labelled_frames(labels), detector_function(detector))["ap50"]
    return None if ap50 is None else round(float(ap50), 4)


def _device(backend: Any) -> str:
    providers = getattr(backend, "providers", None)
    if providers:
        return str(providers[0]).replace("ExecutionProvider", "")
    return {"tensorrt": "GPU"}.get(getattr(backend, "name", ""), "CPU")


def artifact_info(artifact: Path) -> dict[str, Any]:
    """Name, path, size (with an IR's .bin) and content hash of an artifact."""
    from patchdet.runtime.atomic import file_sha256

    size = artifact.stat().st_size
    weights = artifact.with_suffix(".bin")
    if artifact.suffix.lower() == ".xml" and weights.is_file():
        size += weights.stat().st_size
    return {"artifact": artifact.name, "artifact_path": str(artifact), "size_bytes": int(size),
            "sha256": file_sha256(artifact)}


def new_output_folder(now: float | None = None) -> str:
    """``patchdet-bench-YYYYmmdd-HHMMSS`` in the working directory, with a counter if that name exists."""
    stem = time.strftime("patchdet-bench-%Y%m%d-%H%M%S", time.localtime(now))
    name, n = stem, 1
    while Path(name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Measure every row and write the reports into ``cfg.out``; returns the report (``bench.json``'s content)."""
    from patchdet.runtime import bench_report
    from patchdet.runtime.backends import resolve_backend_name  # noqa: F401 -- fail early on a broken install
    from patchdet.runtime.card import read_artifact_card

    out = bench_report.writable_folder(cfg.out or new_output_folder())
    logger.info("writing the reports to %s", out)
    previous = bench_report.read_report(cfg.compare) if cfg.compare else None
    if cfg.labels:  # a bad labels file is one line before any row is timed, not an error in every row
        from patchdet.runtime.evaluation import load_labelled_frames

        load_labelled_frames(cfg.labels)
    artifacts = find_artifacts(cfg.models, out, cfg.labelled)
    plans = []
    for artifact in artifacts:
        card = read_artifact_card(artifact)
        for frame in cfg.frames:
            for tiling in cfg.tilings:
                check_frame_fits(card, frame, tiling, cfg)
        plans.append((artifact, card))
    rows = []
    for artifact, card in plans:
        info = {**artifact_info(artifact), "model": card.name}
        f1_cache: dict = {}
        for frame in cfg.frames:
            frames, source = clip_frames(cfg.clip, frame_wh(frame), cfg.clip_frames)
            for tiling in cfg.tilings:
                for variant in variants_for(artifact, artifact_precision(card), cfg.backends):
                    logger.info("bench %s %s %s %s %s", artifact.name, variant.backend, variant.precision, frame,
                                tiling)
                    row = {**info, **measure_row(artifact, card, variant, frame, tiling, cfg, frames, f1_cache),
                           "clip": source}
                    row.setdefault("f1", None)
                    row.setdefault("ap50", None)
                    row.setdefault("agreement", None)
                    rows.append(row)
                    logger.info("  -> %s", bench_report.row_line(row))
                    gated = row.pop("motion_gate", None)
                    if gated is not None:  # its own row: frames/s with the gate, agreement with scoring every tile
                        rows.append({**row, "tiling": f"{row['tiling']} motion-gate", "fps": gated["fps"],
                                     "agreement": gated["agreement"], "motion_gate": gated, "floor_ms": None,
                                     "overhead": None, "latency_ms": None, "tiles_per_s": None})
                        logger.info("  -> motion gate %s", gated)
    report = {"format": "patchdet-bench", "version": 1, "machine": bench_report.machine_info(),
              "config": dataclasses.asdict(cfg), "rows": rows}
    if previous is not None:
        report["comparison"] = bench_report.compare(report, previous, cfg.tolerance)
    bench_report.write_reports(report, out)
    return report
