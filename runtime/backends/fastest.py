"""``--backend auto`` by measured speed: time each installed engine that reads an artifact, keep the fastest.

Only engines that keep the artifact's numerics compete (OpenVINO runs with its f32 precision hint, never a
silent bf16), so the card's operating point holds whichever wins. The measurement (a warm-up and a few calls
on a batch of ``PROBE_TILES`` noise tiles) takes about a second and is cached per machine, artifact content,
threads and library versions in ``$XDG_CACHE_HOME/patchdet/fastest_backend.json``, so later runs start at once.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.runtime.backends import is_installed, load_backend

logger = logging.getLogger(__name__)

PROBE_TILES = 64
PROBE_CALLS = 3
# Engines that run an ``.onnx`` file with unchanged numerics, in the order ties are broken.
ONNX_CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (("onnxruntime", {}), ("openvino", {"precision": "f32"}))


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "patchdet" / "fastest_backend.json"


def _cache_key(path: Path, threads: int | None) -> str:
    from patchdet.runtime.atomic import file_sha256

    versions = []
    for name in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "|".join([file_sha256(path), platform.processor() or platform.machine(), str(os.cpu_count()),
                     f"threads={threads}", *versions])


def _probe_ms(path: Path, name: str, options: dict[str, Any], threads: int | None, input_wh: tuple[int, int]) -> float:
    backend = load_backend(path, name, threads, **options)
    batch = np.random.default_rng(0).standard_normal((PROBE_TILES, 3, input_wh[1], input_wh[0])).astype(np.float32)
    backend(batch)
    times = []
    for _ in range(PROBE_CALLS):
        start = time.perf_counter()
        backend(batch)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def fastest_backend(path: str | Path, input_wh: tuple[int, int], threads: int | None = None, dense: bool = False
                    ) -> tuple[str, dict[str, Any]]:
    """(backend name, backend options) of the fastest engine for an ``.onnx`` patch artifact on this machine.

    Artifacts of other kinds, dense exports (their input is a whole frame, not tiles), or a machine with one
    candidate installed, get the extension's usual engine without any timing
    (``runtime.backends.resolve_backend_name``).
    """
    from patchdet.runtime.backends import resolve_backend_name

    path = Path(path)
    timed = path.suffix.lower() == ".onnx" and not dense
    candidates = [(n, o) for n, o in ONNX_CANDIDATES if is_installed(n)] if timed else []
    if len(candidates) < 2:
        return resolve_backend_name(path, "auto"), {}
    key = _cache_key(path, threads)
    cache_file = cache_path()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and key in cache and isinstance(cache[key], dict):
        chosen = cache[key]
        logger.info("backend auto: %s (measured before: %s)", chosen["backend"], chosen["times_ms"])
        return chosen["backend"], dict(chosen.get("options") or {})
    times: dict[str, float] = {}
    for name, options in candidates:
        try:
            times[name] = round(_probe_ms(path, name, options, threads, input_wh), 3)
        except Exception as exc:  # noqa: BLE001 - engines raise their own kinds (ORT's InvalidArgument is none of ours)
            logger.info("backend auto: %s cannot run %s: %s", name, path.name, str(exc).splitlines()[0])
    if not times:
        return resolve_backend_name(path, "auto"), {}
    best = min(times, key=times.get)
    options = dict(next(o for n, o in candidates if n == best))
    logger.info("backend auto: %s is fastest on %s (ms per %d tiles: %s)", best, path.name, PROBE_TILES, times)
    if isinstance(cache, dict):
        cache[key] = {"backend": best, "options": options, "times_ms": times, "artifact": str(path)}
        try:
            from patchdet.runtime.atomic import atomic_write_json

            atomic_write_json(cache_file, cache)
        except OSError as exc:  # a read-only home must not stop detection
            logger.debug("cannot write %s: %s", cache_file, exc)
    return best, options


def resolve_auto_backend(artifact: str | Path, card: Any, backend: str, threads: int | None,
                         options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``backend`` as given, or for ``auto`` the fastest engine that keeps the artifact's numerics (measured once
    per machine); the measured options go under the caller's own ``options``."""
    if backend != "auto":
        return backend, options
    name, measured = fastest_backend(artifact, tuple(card.input_wh), threads, card.dense)
    return name, {**measured, **options}
