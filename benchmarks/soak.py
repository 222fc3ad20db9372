"""Soak run: ``detect`` on >= 10,000 frames while resident memory (RSS) is sampled.

The built-in DisCNN-8 model on a 640x352 video (the built-in street clip's
size, looped; ``--size`` changes it) cut into 96x96 tiles at stride 96 (28
tiles per frame: 7 x 4, the last column and row moved inside the frame), with
the full pipeline running: reader thread, inference,
writer thread, annotated mp4v video, JSON Lines, statistics. RSS is read from
``/proc/self/statm`` every ``--every`` seconds by a sampling thread.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.soak --frames 10000

Writes ``benchmarks/results/soak.{json,md}``. The check: RSS after warm-up
(at 10 % of the run) versus the end and the maximum, and the slope of a
straight line through the second half of the samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.sample_clip import read_sample_clip

RESULTS = Path(__file__).resolve().parent / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


def make_video(path: Path, frames: int, frame_wh: tuple[int, int]) -> Path:
    import cv2

    clip = read_sample_clip(frame_wh)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, frame_wh)
    for i in range(frames):
        writer.write(clip[i % len(clip)])
    writer.release()
    return path


class Sampler(threading.Thread):
    def __init__(self, every_s: float) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - self.start_time, rss_mb()))
            self.stop.wait(self.every_s)


def analyse(samples: list[tuple[float, float]], frames: int, seconds: float) -> dict:
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    warm = rss[np.searchsorted(t, 0.1 * t[-1])]
    half = t >= 0.5 * t[-1]
    slope_mb_per_s = float(np.polyfit(t[half], rss[half], 1)[0]) if half.sum() >= 3 else 0.0
    fps = frames / seconds if seconds else 0.0
    return {
        "samples": len(samples),
        "rss_start_mb": round(float(rss[0]), 1),
        "rss_after_warmup_mb": round(float(warm), 1),
        "rss_end_mb": round(float(rss[-1]), 1),
        "rss_max_mb": round(float(rss.max()), 1),
        "growth_after_warmup_mb": round(float(rss[-1] - warm), 2),
        "max_above_warmup_mb": round(float(rss.max() - warm), 2),
        "slope_second_half_mb_per_1000_frames": round(slope_mb_per_s / fps * 1000, 3) if fps else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="artifact (default: the built-in model)")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--size", default="640x352", help="frame WxH")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every", type=float, default=0.5, help="RSS sampling period (s)")
    parser.add_argument("--bound-mb", type=float, default=16.0, help="allowed growth after warm-up")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="a sentence for the report (e.g. where the model came from)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from patchdet.runtime.run import DetectConfig, detect

    frame_wh = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="patchdet_soak_") as tmp:
        tmp = Path(tmp)
        video = make_video(tmp / "soak.mp4", args.frames, frame_wh)
        cfg = DetectConfig(model=args.model, source=str(video), threads=args.threads, tile=96, stride=96,
                           backend="auto", save_video=str(tmp / "out.mp4"), jsonl=str(tmp / "out.jsonl"),
                           log_every_s=30.0)
        sampler = Sampler(args.every)
        sampler.start()
        summary = detect(cfg)
        sampler.stop.set()
        sampler.join()
        jsonl_lines = sum(1 for _ in open(tmp / "out.jsonl", encoding="utf-8"))
    result = analyse(sampler.samples, summary["frames"], summary["seconds"])
    ok = summary["frames"] >= args.frames and result["growth_after_warmup_mb"] <= args.bound_mb \
        and result["max_above_warmup_mb"] <= args.bound_mb
    meta = {
        "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "") + " .venv/bin/python -m benchmarks.soak "
                   + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "loadavg": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    from patchdet.runtime.tiling import tile_grid

    meta["note"] = args.note
    report = {"meta": meta, "tiles_per_frame": len(tile_grid(frame_wh, 96, 96)), "model": summary["model"], "backend": summary["backend"], "frame_wh": list(frame_wh),
              "frames": summary["frames"], "seconds": summary["seconds"], "fps": summary["fps"],
              "jsonl_lines": jsonl_lines, "detections": summary["detections"], "bound_mb": args.bound_mb,
              "passed": bool(ok), "sample_every_s": args.every, **result, "rss_samples": [[round(t, 2), round(r, 2)] for t, r in sampler.samples]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "soak.md").write_text(_markdown(report))
    print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=2))
    return 0 if ok else 1


def _markdown(r: dict) -> str:
    return "\n".join([
        "# Soak: resident memory over a long detect run",
        "",
        f"Command: `{r['meta']['command']}`  ",
        f"Machine: {r['meta']['machine']}; load average at end {r['meta']['loadavg']}; {r['meta']['date']}",
        "",
        f"Setup: `{Path(r['model']).name}` on backend {r['backend']}, a {r['frame_wh'][0]}x{r['frame_wh'][1]} mp4v "
        f"video (the street clip downscaled and looped), 96x96 tiles at stride 96 ({r['tiles_per_frame']} tiles per frame), annotated "
        "video and JSON Lines written, reader and writer threads running. RSS from `/proc/self/statm`, sampled every "
        f"{r['sample_every_s']} s.",
        "",
        "| frames | seconds | fps | JSON Lines | RSS start MB | after warm-up (10 %) | end | max | growth after warm-up "
        "| slope, second half (MB / 1000 frames) | bound | passed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['frames']} | {r['seconds']:.0f} | {r['fps']:.0f} | {r['jsonl_lines']} | {r['rss_start_mb']} "
        f"| {r['rss_after_warmup_mb']} | {r['rss_end_mb']} | {r['rss_max_mb']} | {r['growth_after_warmup_mb']:+.2f} "
        f"| {r['slope_second_half_mb_per_1000_frames']} | {r['bound_mb']} MB | {'yes' if r['passed'] else 'NO'} |",
        "",
        r["meta"].get("note", ""),
        "",
        "All RSS samples (seconds, MB) are in `soak.json`.",
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
