"""One export job: checkpoint x format -> checked artifact + card under its final name, or a failure.

``export_job`` never raises for a job's own problems: it returns a manifest
entry with status ``ok``, ``failed`` or ``skipped`` and a one-line reason, so a
batch goes on. Artifacts that miss the parity tolerance are published under
``OUT/failed/`` for inspection, never under their final name.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from patchdet.export.artifact import BuildContext, make_staging_dir, publish, remove_tree, total_size
from patchdet.export.config import ExportConfig
from patchdet.export.formats import FORMATS

if TYPE_CHECKING:
    from patchdet.training.checkpoint import CheckpointInfo

log = logging.getLogger(__name__)

RANDOM_PARITY_SAMPLES = 64
REFERENCE_CACHE_DIR = ".cache/torch-reference"  # under the output folder
_REFERENCE_CACHE: dict[tuple, dict[str, np.ndarray]] = {}


@dataclass(frozen=True)
class ExportJob:
    """One (model, format) pair, picklable for worker processes.

    Attributes:
        model: The model argument as the user gave it.
        checkpoint: Resolved checkpoint file.
        checkpoint_sha256: Its hash.
        base_name: Artifact base name (``_dense`` included).
        format: Format name.
        cfg: The export configuration.
        input_hash: Hash of everything that determines the artifact (for skipping).
        threads: Intra-op threads for this job.
    """

    model: str
    checkpoint: str
    checkpoint_sha256: str
    base_name: str
    format: str
    cfg: ExportConfig
    input_hash: str
    threads: int = 1
    error: str | None = None  # set at planning time (e.g. a missing checkpoint): the job only reports it


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:300]


def set_threads(threads: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(max(1, threads))
    cv2.setNumThreads(max(1, threads))


def _eval_inputs(job: ExportJob, ckpt: CheckpointInfo):
    """Parity inputs: (float32 [N, 3, S, S], labels int64 [N] (-1 = no model class), is_positive bool [N], info).

    ``--eval`` if given; else an ImageFolder ``--calib`` tree (sub-sampled like the
    calibration set); else unlabelled calibration images; else seeded random inputs.
    """
    from patchdet.export.datasets import load_eval_set
    from patchdet.runtime.imagefolder import list_class_folders

    cfg = job.cfg
    source, limit = cfg.eval_dir, cfg.parity.max_images
    if source is None and cfg.calib_dir is not None and list_class_folders(cfg.calib_dir):
        source, limit = cfg.calib_dir, limit or cfg.calibration.num_images
    if source is not None:
        eval_set = load_eval_set(source, ckpt, cfg.calibration.classes, limit, cfg.parity.seed)
        classes = ckpt.output_classes
        labels = np.array([classes.index(eval_set.class_names[i]) if eval_set.class_names[i] in classes else -1
                           for i in eval_set.labels], dtype=np.int64)
        return eval_set.inputs, labels, eval_set.is_positive, eval_set.info
    if cfg.calib_dir is not None:
        from patchdet.export.datasets import load_calibration

        inputs, info = load_calibration(cfg.calib_dir, ckpt, cfg.calibration.num_images, 1, "all", cfg.parity.seed)
        info = {**info, "note": "unlabelled calibration images: numerical parity only, no F1"}
    else:
        size = ckpt.input_size
        inputs = np.random.default_rng(cfg.parity.seed).standard_normal(
            (RANDOM_PARITY_SAMPLES, 3, size, size)).astype(np.float32)
        info = {"source": "random normal inputs", "images": RANDOM_PARITY_SAMPLES,
                "note": "no --eval or --calib: numerical parity only, no F1"}
        log.warning("no --eval or --calib given: parity is checked on random inputs only")
    return inputs, np.full(len(inputs), -1, dtype=np.int64), np.zeros(len(inputs), dtype=bool), info


def _reference(key: tuple, graph: Any, inputs: np.ndarray, batch_size: int, cache_dir: Path) -> dict[str, np.ndarray]:
    """Torch outputs on ``inputs``, cached in memory and on disk (shared by parallel workers and re-runs).

    The disk key hashes the checkpoint, the graph kind and the input bytes, so a
    changed evaluation folder or model never reuses stale outputs.
    """
    import hashlib

    from patchdet.export.parity import run_batched, torch_runner

    if key in _REFERENCE_CACHE:
        return _REFERENCE_CACHE[key]
    digest = hashlib.sha256(repr(key).encode())
    digest.update(np.ascontiguousarray(inputs).view(np.uint8).data)
    path = cache_dir / f"{digest.hexdigest()[:32]}.npz"
    outputs = None
    if path.is_file():
        try:
            with np.load(path) as data:
                outputs = {name: data[name] for name in data.files}
        except (OSError, ValueError):  # a torn cache file: recompute
            outputs = None
    if outputs is None:
        outputs = run_batched(torch_runner(graph), inputs, batch_size)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **outputs)
        os.replace(tmp, path)
    if len(_REFERENCE_CACHE) >= 4:  # bounded memory: a few (model, set) pairs at a time
        _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
    _REFERENCE_CACHE[key] = outputs
    return outputs


def check_parity(job: ExportJob, artifact: Path, card: Any, graph: Any, model: Any, ckpt: CheckpointInfo) -> dict:
    """Run the artifact and torch on the evaluation inputs and compare (see ``export.parity``)."""
    from patchdet.export.datasets import aligned_windows, mosaic
    from patchdet.export.parity import compare_outputs, dense_vs_patch, load_runner, run_batched
    from patchdet.export.wrappers import build_graph

    cfg = job.cfg
    spec = FORMATS[job.format]
    inputs, labels, is_positive, info = _eval_inputs(job, ckpt)
    runner = load_runner(artifact, job.threads)
    key = (job.checkpoint_sha256, cfg.dense, info.get("source"), len(inputs))
    cache_dir = Path(cfg.out_dir) / REFERENCE_CACHE_DIR
    if not cfg.dense:
        ref = _reference(key, graph, inputs, cfg.parity.batch_size, cache_dir)
        art = run_batched(runner, inputs, cfg.parity.batch_size)
        result = compare_outputs(ref, art, card, labels, is_positive, spec.precision, cfg.parity)
        return {**result, "eval": info}
    per_side = cfg.parity.dense_mosaic
    frames = mosaic(inputs, per_side)
    used = len(frames) * per_side * per_side
    cells = ckpt.input_size // 16
    ref_maps = _reference(key, graph, frames, max(1, cfg.parity.batch_size // (per_side * per_side)), cache_dir)
    art_maps = run_batched(runner, frames, max(1, cfg.parity.batch_size // (per_side * per_side)))
    missing = [name for name in card.outputs if name not in art_maps]
    if missing:
        return {"passed": False, "failures": [f"artifact lacks output(s) {', '.join(missing)}"], "eval": info}
    ref = {k: aligned_windows(v, per_side, cells) for k, v in ref_maps.items()}
    art = {k: aligned_windows(v, per_side, cells) for k, v in art_maps.items()}
    result = compare_outputs(ref, art, card, labels[:used], is_positive[:used], spec.precision, cfg.parity)
    map_diff = np.abs(art_maps["score"].astype(np.float64) - ref_maps["score"])
    result["map_score_max_abs"] = float(map_diff.max())
    result["map_score_rel"] = float(map_diff.max() / max(float(np.abs(ref_maps["score"]).max()), 1e-12))
    patch_graph = build_graph(model, ckpt.head, ckpt.centroids, dense=False)
    patch_key = (job.checkpoint_sha256, False, info.get("source"), len(inputs))  # = a patch export's reference
    patch_ref = _reference(patch_key, patch_graph, inputs, cfg.parity.batch_size, cache_dir)
    patch_scores = patch_ref["score"][:used]
    result["dense_vs_patch_model"] = dense_vs_patch(art["score"], patch_scores, card.threshold)
    info = {**info, "mosaic": f"{per_side}x{per_side} patches per frame", "frames": int(len(frames))}
    return {**result, "eval": info}


def export_job(job: ExportJob) -> dict[str, Any]:
    """Build, check and publish one artifact; returns its manifest entry (never raises for job errors)."""
    start = time.perf_counter()
    spec = FORMATS[job.format]
    out_dir = Path(job.cfg.out_dir)
    entry: dict[str, Any] = {
        "model": job.model, "name": job.base_name, "format": job.format, "path": None, "status": "failed",
        "reason": "", "size_bytes": 0, "seconds": 0.0, "parity": {}, "input_hash": job.input_hash,
    }
    staging: list[Path] = []

    def new_staging() -> Path:
        staging.append(make_staging_dir(out_dir, job.base_name, job.format))
        return staging[-1]

    try:
        if job.error is not None:
            raise ValueError(job.error)
        entry.update(_export(job, spec, out_dir, new_staging))
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        log.debug("export of %s to %s failed", job.model, job.format, exc_info=True)
        entry["status"], entry["reason"] = "failed", _one_line(exc)
        # A bad checkpoint or calibration folder is the user's input (exit 2), not a failed export (exit 1).
        if isinstance(exc, ValueError | OSError):
            entry["cause"] = "input"
    finally:
        for path in staging:  # whatever happened, nothing half-built stays behind
            remove_tree(path)
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry


def _export(job: ExportJob, spec, out_dir: Path, new_staging) -> dict[str, Any]:
    from patchdet.export.datasets import load_calibration, mosaic
    from patchdet.export.model_card import build_card
    from patchdet.export.wrappers import build_graph
    from patchdet.training.checkpoint import CheckpointInfo, build_model_from_checkpoint, load_checkpoint

    cfg = job.cfg
    set_threads(job.threads)
    payload = load_checkpoint(job.checkpoint)
    model = build_model_from_checkpoint(payload)
    ckpt = CheckpointInfo.from_payload(payload)
    del payload  # the weights are in the model now; everything else is in ckpt
    graph = build_graph(model, ckpt.head, ckpt.centroids, dense=cfg.dense)
    calibration, calib_info = None, None
    if spec.needs_calibration and spec.source_format is None:
        calibration, calib_info = load_calibration(
            cfg.calib_dir, ckpt, cfg.calibration.num_images, cfg.calibration.min_images,
            cfg.calibration.classes, cfg.calibration.seed,
        )
        if cfg.dense:
            calibration = mosaic(calibration, cfg.parity.dense_mosaic)
            calib_info["mosaic"] = f"{cfg.parity.dense_mosaic}x{cfg.parity.dense_mosaic} patches per frame"
    export_info = {
        "format": spec.name, "precision": spec.precision, "dense": cfg.dense, "opset": cfg.opset,
        "input_hash": job.input_hash, "calibration": calib_info,
        "parity_tolerance": {"fp32_rel": cfg.parity.fp32_rel_tol, "fp16_rel": cfg.parity.fp16_rel_tol,
                             "min_decision_agreement": cfg.parity.min_decision_agreement,
                             "int8_max_f1_drop": cfg.parity.int8_max_f1_drop},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card = build_card(ckpt, job.base_name, job.checkpoint_sha256, cfg.dense, export_info)
    staging = new_staging()
    result: dict[str, Any] = {}
    ctx = BuildContext(
        graph=graph, card=card, spec=spec, staging_dir=staging, out_dir=out_dir, base_name=job.base_name,
        input_size=ckpt.input_size, dense=cfg.dense, opset=cfg.opset, calibration=calibration,
        float_head=cfg.calibration.float_head, threads=job.threads,
    )
    built = spec.load_builder()(ctx)
    card = card.replace(export={**card.export, **built.export_info})
    if built.skipped_reason is not None:
        for extra in built.extra_files:
            (out_dir / extra.name).unlink(missing_ok=True)
            extra.replace(out_dir / extra.name)
        return {**result, "status": "skipped", "reason": built.skipped_reason}
    parity = check_parity(job, built.path, card, graph, model, ckpt)
    card = card.replace(parity=parity)
    if built.embed_card is not None:
        built.embed_card(card)
    passed = bool(parity.get("passed"))
    dest = out_dir if passed else out_dir / "failed"
    final = publish(built.path, spec, card, dest, built.extra_files)
    result.update({
        "path": str(final), "size_bytes": total_size(final, spec), "parity": parity,
        "status": "ok" if passed else "failed",
        "reason": "" if passed else "parity: " + "; ".join(parity.get("failures", [])),
    })
    return result
