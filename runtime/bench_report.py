"""``patchdet bench`` reports: the machine, bench.json/csv/md, a PNG bar chart (OpenCV) and ``--compare``."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from patchdet.runtime.atomic import atomic_output, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

# CPU flags that decide which kernels engines use (INT8 VNNI, bf16, AMX; NEON/dotprod on ARM).
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "asimddp")
_LIBRARIES = ("patchdet", "numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "onnxruntime-gpu",
              "openvino", "tensorrt")
CSV_COLUMNS = ("artifact", "model", "backend", "precision", "frame", "tiling", "status", "tiles", "p50_ms", "p90_ms",
               "p99_ms", "floor_ms", "overhead", "tiles_per_s", "fps", "f1", "ap50", "agreement", "size_bytes",
               "threads", "device")


def writable_folder(path: str) -> Path:
    """Create ``path`` and check a file can be written there (before anything is measured)."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_output(folder / ".bench-write-test") as tmp:
            tmp.write_text("", encoding="utf-8")
        (folder / ".bench-write-test").unlink()
    except OSError as exc:
        raise OSError(f"output folder {path} is not writable: {exc.strerror or exc}") from None
    return folder


def machine_info() -> dict[str, Any]:
    """CPU model and flags, cores, GPU, OS and library versions (what absolute times depend on)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name" and cpu in ("", platform.machine(), platform.processor()):
                cpu = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cpu_flags": [f for f in _FLAGS if f in flags], "cores": os.cpu_count(),
            "usable_cores": usable, "gpu": _gpu(), "os": platform.platform(), "python": platform.python_version(),
            "versions": versions}


def _gpu() -> str | None:
    tegra = Path("/etc/nv_tegra_release")
    if tegra.is_file():  # a Jetson has no nvidia-smi -L
        return "Jetson " + tegra.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip("# ")
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    latency = row.get("latency_ms") or {}
    flat = {k: row.get(k) for k in CSV_COLUMNS}
    flat.update({"p50_ms": latency.get("p50"), "p90_ms": latency.get("p90"), "p99_ms": latency.get("p99")})
    return flat


def row_line(row: dict[str, Any]) -> str:
    """One row as a short log line."""
    if row.get("status") != "ok":
        return row.get("status", "")
    flat = _flat(row)
    floor = f", floor {flat['floor_ms']:.1f} ms" if flat.get("floor_ms") is not None else ""
    return f"p50 {flat['p50_ms']:.1f} ms{floor}, {flat['fps']} frames/s"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (the printed table uses the same columns)."""
    columns = ("artifact", "backend", "precision", "frame", "tiling", "tiles", "p50_ms", "p90_ms", "floor_ms",
               "overhead", "fps", "f1", "ap50", "agreement", "status")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        flat = _flat(row)
        status = flat["status"] if len(str(flat["status"])) < 90 else str(flat["status"])[:87] + "..."
        flat["status"] = status.replace("|", "/")
        lines.append("| " + " | ".join(_cell(flat.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def markdown_report(report: dict[str, Any]) -> str:
    machine = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    text = [f"# patchdet bench\n\nMachine: {machine['cpu']} ({machine['usable_cores']} usable of {machine['cores']} "
            f"cores; flags {', '.join(machine['cpu_flags']) or 'none of note'}); GPU: {machine['gpu'] or 'none'}; "
            f"{versions}.\n", "Latency: one frame's batches through our detector's inference; floor: the engine "
            "alone on the same artifact and batches; fps: preprocess + inference + decisions + merge on clip "
            "frames held in memory.\n", markdown_table(report["rows"]), ""]
    comparison = report.get("comparison")
    if comparison:
        text += ["## Comparison", "", *[f"- {line}" for line in comparison["notes"]], ""]
    return "\n".join(text)


def write_reports(report: dict[str, Any], out: Path) -> None:
    """bench.json, bench.csv, bench.md and bench.png in ``out`` (each written atomically)."""
    atomic_write_json(out / "bench.json", report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS)
    writer.writeheader()
    for row in report["rows"]:
        writer.writerow(_flat(row))
    atomic_write_text(out / "bench.csv", buffer.getvalue())
    atomic_write_text(out / "bench.md", markdown_report(report))
    chart = bar_chart(report["rows"])
    if chart is None:
        logger.info("no measured row: bench.png not drawn")
        return
    ok, png = cv2.imencode(".png", chart)
    if not ok:
        raise OSError(f"cannot encode {out / 'bench.png'}")
    with atomic_output(out / "bench.png") as tmp:
        tmp.write_bytes(png.tobytes())
    logger.info("wrote %s/bench.{json,csv,md,png}", out)


def bar_chart(rows: list[dict[str, Any]], width: int = 1100) -> np.ndarray | None:
    """BGR image: one horizontal bar per measured row (frames/s), the floor-equivalent frames/s as a tick."""
    measured = [r for r in rows if r.get("status") == "ok" and r.get("fps")]
    if not measured:
        return None
    bar_h, label_w, top = 26, 470, 40
    image = np.full((top + bar_h * len(measured) + 20, width, 3), 255, np.uint8)
    cv2.putText(image, "frames/s (bar: whole detector; tick: 1000 / engine floor ms)", (10, 25),
                cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    floors = [1e3 / r["floor_ms"] for r in measured if r.get("floor_ms")]
    top_value = max([r["fps"] for r in measured] + floors)
    scale = (width - label_w - 90) / top_value
    for k, row in enumerate(measured):
        y = top + k * bar_h
        label = f"{row['artifact'][:28]} {row['backend']} {row['precision']} {row['frame']} {row['tiling']}"
        cv2.putText(image, label, (8, y + 17), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        end = label_w + int(row["fps"] * scale)
        cv2.rectangle(image, (label_w, y + 4), (max(end, label_w + 1), y + bar_h - 4), (180, 120, 40), -1)
        cv2.putText(image, f"{row['fps']:.1f}", (end + 6, y + 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
        if row.get("floor_ms"):
            x = label_w + int(1e3 / row["floor_ms"] * scale)
            cv2.line(image, (x, y + 1), (x, y + bar_h - 1), (0, 0, 200), 2)
    return image


def read_report(path: str) -> dict[str, Any]:
    """A previous bench.json (ValueError when it is not one)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"compare file {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or "machine" not in data:
        raise ValueError(f"compare file {path} is not a patchdet bench.json: expected 'machine' and 'rows'")
    return data


def _key(row: dict[str, Any]) -> tuple:
    return (row.get("sha256") or row.get("artifact"), row.get("backend"), row.get("precision"), row.get("frame"),
            row.get("tiling"))


def compare(current: dict[str, Any], previous: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Rows matched by (artifact content, backend, precision, frame, tiling); a regression is p50 latency above, or
    frames/s below, the previous run's by more than ``tolerance``. Other models or machines are said, not compared."""
    notes = []
    now, before = current["machine"], previous["machine"]
    if (now.get("cpu"), now.get("usable_cores"), now.get("gpu")) != (before.get("cpu"), before.get("usable_cores"),
                                                                      before.get("gpu")):
        notes.append(f"other machine: {before.get('cpu')} ({before.get('usable_cores')} cores, GPU "
                     f"{before.get('gpu')}) then, {now.get('cpu')} ({now.get('usable_cores')} cores, GPU "
                     f"{now.get('gpu')}) now; times are not comparable across machines")
    old = {_key(r): r for r in previous["rows"] if r.get("status") == "ok"}
    regressions, matched = [], 0
    for row in current["rows"]:
        match = old.get(_key(row))
        if match is None or row.get("status") != "ok":
            continue
        matched += 1
        label = f"{row['artifact']} {row['backend']} {row['precision']} {row['frame']} {row['tiling']}"
        p50, p50_old = row["latency_ms"]["p50"], match["latency_ms"]["p50"]
        if p50 > p50_old * (1 + tolerance):
            regressions.append(f"{label}: p50 {p50:.1f} ms vs {p50_old:.1f} ms before (+{p50 / p50_old - 1:.0%})")
        if row.get("fps") and match.get("fps") and row["fps"] < match["fps"] * (1 - tolerance):
            regressions.append(f"{label}: {row['fps']:.1f} frames/s vs {match['fps']:.1f} before")
    models_then = {r.get("model") for r in previous["rows"]}
    models_now = {r.get("model") for r in current["rows"]}
    if not models_now & models_then:
        notes.append(f"other model(s): {', '.join(sorted(map(str, models_then)))} then, "
                     f"{', '.join(sorted(map(str, models_now)))} now")
    notes.append(f"{matched} row(s) matched of {len(current['rows'])}; tolerance {tolerance:.0%}; "
                 f"{len(regressions)} regression(s)")
    notes += regressions
    return {"matched": matched, "regressions": regressions, "notes": notes, "tolerance": tolerance}
