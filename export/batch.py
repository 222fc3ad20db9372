"""Batch export: many checkpoints x many formats, in parallel worker processes, with a manifest.

``export(cfg)`` is the stage's one library function. It plans one job per
(model, format), skips jobs whose content hash (checkpoint bytes, format,
settings, calibration / evaluation file listing, package versions, exporter
source) matches the card of the artifact already in place, runs the rest in a
``ProcessPoolExecutor`` (spawn) with a progress bar, and writes
``manifest.json`` and ``manifest.md``. TensorRT jobs run after the ONNX jobs
whose files they are built from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

from patchdet.export.artifact import artifact_files, clean_stale_staging
from patchdet.export.config import ExportConfig
from patchdet.export.formats import FORMATS
from patchdet.export.parity import quality_metric, quality_warnings
from patchdet.export.pipeline import ExportJob, export_job
from patchdet.runtime.atomic import atomic_write_json, atomic_write_text, file_sha256

log = logging.getLogger(__name__)

MANIFEST_JSON = "manifest.json"
MANIFEST_MD = "manifest.md"
CONFIG_JSON = "export_config.json"


def resolve_checkpoint(model: str) -> Path:
    """A checkpoint file, or ``best.pt`` / ``last.pt`` inside a run folder."""
    path = Path(model)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise ValueError(f"run folder {path} holds neither best.pt nor last.pt")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    return path


def base_name_for(model: str, checkpoint: Path, dense: bool, override: str | None) -> str:
    if override:
        stem = override
    elif Path(model).is_dir() or checkpoint.stem in ("best", "last"):
        stem = checkpoint.parent.name
    else:
        stem = checkpoint.stem
    return f"{stem}_dense" if dense else stem


def folder_fingerprint(root: str | None) -> str | None:
    """Hash of the file listing (relative path, size, mtime) under ``root``; cheap, no file is read."""
    if root is None:
        return None
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            stat = os.stat(full)
            digest.update(f"{os.path.relpath(full, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def exporter_source_hash() -> str:
    """Hash of this package's source: a changed exporter re-exports."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def job_input_hash(cfg: ExportConfig, fmt: str, checkpoint_sha: str, base_name: str,
                   fingerprints: dict[str, str | None], versions: dict[str, str], source_hash: str) -> str:
    spec = FORMATS[fmt]
    data = {
        "checkpoint": checkpoint_sha, "format": fmt, "name": base_name, "dense": cfg.dense, "opset": cfg.opset,
        "parity": asdict(cfg.parity), "eval": fingerprints["eval"], "versions": versions, "exporter": source_hash,
    }
    if spec.needs_calibration:
        data["calibration"] = asdict(cfg.calibration)
        data["calib"] = fingerprints["calib"]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def check_environment(formats: Iterable[str]) -> None:
    """Refuse CPU formats whose packages are missing, naming the extra to install."""
    for name in formats:
        spec = FORMATS[name]
        missing = spec.missing_modules()
        if missing and spec.device == "cpu":
            raise ValueError(
                f"format {name} needs {', '.join(missing)}, which is not installed: "
                f"pip install 'patchdet[{spec.extra}]'"
            )


def ordered_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """Formats with the ONNX sources TensorRT needs added (logged) ahead of them."""
    result = list(formats)
    for name in formats:
        source = FORMATS[name].source_format
        if source and source not in result:
            log.info("%s is built from %s: adding %s to the formats", name, source, source)
            result.insert(0, source)
    return tuple(result)


def plan_jobs(cfg: ExportConfig) -> list[ExportJob]:
    """One job per (model, format); checkpoints are resolved and hashed, names checked for clashes."""
    from patchdet.export.model_card import package_versions

    formats = ordered_formats(cfg.formats)
    check_environment(formats)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers)
    fingerprints = {"calib": folder_fingerprint(cfg.calib_dir),
                    "eval": folder_fingerprint(cfg.eval_dir or cfg.calib_dir)}
    versions, source_hash = package_versions(), exporter_source_hash()
    jobs, names = [], {}
    for model in cfg.models:
        try:
            checkpoint, error = resolve_checkpoint(model), None
        except ValueError as exc:  # reported as failed entries; the other models go on
            checkpoint, error = Path(model), str(exc)
        name = base_name_for(model, checkpoint, cfg.dense, cfg.name)
        if name in names:
            raise ValueError(f"models {names[name]} and {model} would both export as {name!r}: rename one")
        names[name] = model
        sha = file_sha256(checkpoint) if error is None else ""
        for fmt in formats:
            input_hash = job_input_hash(cfg, fmt, sha, name, fingerprints, versions, source_hash)
            jobs.append(ExportJob(model, str(checkpoint), sha, name, fmt, cfg, input_hash, threads, error))
    return jobs


def unchanged_entry(job: ExportJob) -> dict[str, Any] | None:
    """The manifest entry of an up-to-date artifact already in place, else None."""
    from patchdet.runtime.card import ModelCardError, card_path_for, read_card

    spec = FORMATS[job.format]
    final = Path(job.cfg.out_dir) / spec.artifact_name(job.base_name)
    if job.error is not None or not all(p.is_file() for p in artifact_files(final, spec)):
        return None
    try:
        card = read_card(card_path_for(final))
    except (ModelCardError, OSError):
        return None
    if card.export.get("input_hash") != job.input_hash or not card.parity.get("passed"):
        return None
    return {
        "model": job.model, "name": job.base_name, "format": job.format, "path": str(final), "status": "skipped",
        "reason": f"unchanged since the last export (content hash {job.input_hash[:12]})",
        "size_bytes": sum(p.stat().st_size for p in artifact_files(final, spec)), "seconds": 0.0,
        "parity": card.parity, "input_hash": job.input_hash,
    }


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="export", unit="artifact")
    except ImportError:
        return None


def run_jobs(jobs: list[ExportJob], workers: int, on_done: Callable[[dict], None]) -> list[dict[str, Any]]:
    """Run jobs in ``workers`` spawned processes (in this process when 1); entries in job order."""
    entries: dict[int, dict[str, Any]] = {}
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            entries[i] = export_job(job)
            on_done(entries[i])
        return [entries[i] for i in range(len(jobs))]
    import multiprocessing

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=init_worker, initargs=(os.getpid(),),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(export_job, job): i for i, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                try:
                    entries[i] = future.result()
                except BrokenProcessPool as exc:
                    entries[i] = _crashed_entry(jobs[i], f"worker process died ({exc})")
                except Exception as exc:  # pickling errors and the like
                    entries[i] = _crashed_entry(jobs[i], str(exc).splitlines()[0] if str(exc) else repr(exc))
                on_done(entries[i])
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [entries[i] for i in range(len(jobs))]


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so ``finally`` blocks remove staging folders (as Ctrl-C does)."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def init_worker(parent_pid: int) -> None:
    """A worker ends with its parent: killed with -9, a parent cannot stop its workers itself.

    On Linux the kernel sends SIGTERM when the parent dies (``PR_SET_PDEATHSIG``); elsewhere, and as a
    backstop, a thread sees the worker re-parented. SIGTERM ends the job as Ctrl-C does (staging removed).
    """
    import signal
    import threading

    exit_on_sigterm()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(143)

    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10.0)  # SIGTERM waits for the Python code in flight; then stop regardless
        os._exit(143)

    threading.Thread(target=watch_parent, name="patchdet-parent-watch", daemon=True).start()


class OutputFolderLock:
    """An exclusive lock on an export's output folder (``.export.lock`` holding the holder's pid).

    A second export into the same folder would remove the first's live staging folders as stale and
    replace its manifest; it is refused instead. The kernel drops the lock when its holder dies.
    """

    NAME = ".export.lock"

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / self.NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputFolderLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"output folder {self.path.parent} is in use by another export (pid {holder}): "
                             "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc_info: Any) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing releases the lock; the file stays (removing it would race a waiting run)


def _crashed_entry(job: ExportJob, reason: str) -> dict[str, Any]:
    return {"model": job.model, "name": job.base_name, "format": job.format, "path": None, "status": "failed",
            "reason": reason[:300], "size_bytes": 0, "seconds": 0.0, "parity": {}, "input_hash": job.input_hash}


def export(cfg: ExportConfig) -> list[dict[str, Any]]:
    """Export every (model, format) of ``cfg``; returns the manifest entries (also written to ``out_dir``).

    Raises:
        ValueError: a model cannot be resolved, names clash, or a needed package is missing.
    """
    out_dir = Path(cfg.out_dir)
    jobs = plan_jobs(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    with OutputFolderLock(out_dir):
        return _export_locked(cfg, out_dir, jobs)


def _export_locked(cfg: ExportConfig, out_dir: Path, jobs: list[ExportJob]) -> list[dict[str, Any]]:
    clean_stale_staging(out_dir)
    atomic_write_json(out_dir / CONFIG_JSON, cfg.as_dict())
    start = time.perf_counter()
    entries: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for i, job in enumerate(jobs):
        unchanged = None if cfg.force else unchanged_entry(job)
        if unchanged is not None:
            entries[i] = unchanged
        else:
            todo.append(i)
    bar = _progress(len(jobs))
    if bar is not None:
        bar.update(len(jobs) - len(todo))

    def on_done(entry: dict) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{entry['name']} {entry['format']}: {entry['status']}")
        level = logging.WARNING if entry["status"] == "failed" else logging.DEBUG
        log.log(level, "%s %s: %s %s", entry["name"], entry["format"], entry["status"], entry["reason"])

    try:
        # Phase 1: everything but TensorRT; phase 2: TensorRT, which reads phase 1's ONNX files.
        for phase in (False, True):
            phase_jobs = [i for i in todo if (FORMATS[jobs[i].format].source_format is not None) == phase]
            done = run_jobs([jobs[i] for i in phase_jobs], cfg.workers, on_done)
            entries.update(zip(phase_jobs, done, strict=True))
    finally:
        if bar is not None:
            bar.close()
    manifest = [entries[i] for i in range(len(jobs))]
    for entry in manifest:
        entry["warnings"] = quality_warnings(entry.get("parity") or {}, cfg.parity) if entry["status"] != "failed" else []
    write_manifest(out_dir, manifest, time.perf_counter() - start, cfg)
    return manifest


def parity_summary(entry: dict[str, Any]) -> str:
    """One short cell: score error, decision agreement and F1 / accuracy of torch -> artifact, for every head."""
    parity = entry.get("parity") or {}
    if "score_rel" not in parity:
        return "-"
    text = f"rel {parity['score_rel']:.1e}, agree {parity['decision_agreement'] * 100:.2f} %"
    name, ref, art = quality_metric(parity)
    if art is not None:
        text += f", {name} {'-' if ref is None else f'{ref:.4f}'}->{art:.4f}"
    if "threshold_shift" in parity:
        text += f", thr shift {parity['threshold_shift']:+.3g}"
    return text


def manifest_markdown(entries: list[dict[str, Any]], seconds: float, workers: int) -> str:
    lines = [
        f"# Export manifest ({len(entries)} artifacts, {seconds:.1f} s wall, {workers} worker(s))",
        "",
        "| model | format | size | parity | time (s) | status | warnings | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        size = f"{e['size_bytes'] / 1024:.1f} KiB" if e["size_bytes"] else "-"
        reason = (e.get("reason") or "").replace("|", "/")
        warnings = "; ".join(e.get("warnings") or ()).replace("|", "/")
        status = f"**{e['status']} (check)**" if warnings and e["status"] != "failed" else e["status"]
        lines.append(f"| {e['name']} | {e['format']} | {size} | {parity_summary(e)} | {e['seconds']:.2f} | "
                     f"{status} | {warnings or '-'} | {reason} |")
    return "\n".join(lines) + "\n"


def write_manifest(out_dir: Path, entries: list[dict[str, Any]], seconds: float, cfg: ExportConfig) -> None:
    atomic_write_json(out_dir / MANIFEST_JSON, entries)
    atomic_write_text(out_dir / MANIFEST_MD, manifest_markdown(entries, seconds, cfg.workers))
