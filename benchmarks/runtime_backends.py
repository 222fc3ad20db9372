"""Backend speed on whole frames: one batched call per frame of 96x96 tiles, fp32, random-weight DisCNN-8.

Measures, per frame size (1280x720, 1920x1080) and tile stride (96, 48), the
median and minimum time of ``Detector.preprocess`` (crop + resize + normalise
into one batch) and of one backend call on that batch, for every installed CPU
backend, plus the dense (fully-convolutional) export on the whole frame.
Backends are timed interleaved (one call each per round) so a busy shared
machine slows them alike. Needs torch only to export the throwaway model.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.runtime_backends --rounds 7

Writes ``benchmarks/results/runtime_backends.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import markdown_header

RESULTS = Path(__file__).resolve().parent / "results"
FRAMES = {"720p": (1280, 720), "1080p": (1920, 1080)}
STRIDES = (96, 48)


def export_random_discnn8(out_dir: Path) -> dict[str, Path]:
    """Random-weight DisCNN-8 as ONNX (patch and dense), with model cards. Uses torch."""
    import torch

    from patchdet.runtime.card import ModelCard, card_path_for, write_card
    from patchdet.training.models import get_model

    torch.manual_seed(0)
    model = get_model("discnn8").eval()
    paths = {}
    for dense in (False, True):
        path = out_dir / ("discnn8_dense.onnx" if dense else "discnn8.onnx")
        try:
            from patchdet.export.onnx import export_graph_onnx
            from patchdet.export.wrappers import build_graph

            export_graph_onnx(build_graph(model, "modulus", dense=dense), path, 96, dense, 17)
        except ImportError:
            if dense:
                continue
            graph = _ScoreGraph(model)
            torch.onnx.export(graph, torch.zeros(1, 3, 96, 96), str(path), input_names=["input"],
                              output_names=["embedding", "score"], opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}, "score": {0: "batch"}})
        card = ModelCard(name="discnn8-random", arch="discnn8", head="modulus", input_wh=(96, 96),
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), class_names=("automobile",),
                         positive_class="automobile", threshold=1.0, dense=dense, dense_stride=16)
        write_card(card, card_path_for(path))
        paths["dense" if dense else "tiled"] = path
    return paths


class _ScoreGraph:  # fallback wrapper when export/ is unavailable; built lazily to keep torch out of imports
    def __new__(cls, model):
        import torch

        class Graph(torch.nn.Module):
            def __init__(self, body):
                super().__init__()
                self.body = body

            def forward(self, x):
                e = self.body(x)
                return e, torch.sqrt(torch.sum(e * e, dim=1))

        return Graph(model)


def _backends(threads: int) -> dict[str, dict]:
    from patchdet.runtime.backends import available_backends

    table = {}
    if "onnxruntime" in available_backends():
        table["onnxruntime"] = {"name": "onnxruntime"}
    if "openvino" in available_backends():
        table["openvino-f32"] = {"name": "openvino", "backend_options": {"precision": "f32"}}
        table["openvino-bf16"] = {"name": "openvino", "backend_options": {"precision": "bf16"}}
        # THROUGHPUT hint: the frame's batch split in two, both in flight at once
        table["openvino-f32-throughput"] = {"name": "openvino", "split": 2,
                                            "backend_options": {"precision": "f32", "hint": "THROUGHPUT"}}
    if "opencv" in available_backends():
        table["opencv"] = {"name": "opencv"}
    if "onnxruntime" in available_backends():  # all tiles in one call, no max_batch split (big frames only)
        table["onnxruntime-one-call"] = {"name": "onnxruntime", "max_batch": None, "min_tiles": 257}
    return table


def measure(paths: dict[str, Path], threads: int, rounds: int, skip_slow_ms: float) -> list[dict]:
    from patchdet.runtime.detector import Detector, TilingConfig
    from patchdet.runtime.tiling import tile_grid

    rng = np.random.default_rng(0)
    rows = []
    for frame_name, frame_wh in FRAMES.items():
        frame = rng.integers(0, 256, size=(frame_wh[1], frame_wh[0], 3), dtype=np.uint8)
        cases = [("tiled", s) for s in STRIDES] + ([("dense", 16)] if "dense" in paths else [])
        for mode, stride in cases:
            tiling = TilingConfig((96, 96), (stride, stride), dense=mode == "dense")
            detectors = {}
            for label, spec in _backends(threads).items():
                if mode == "dense" and spec.get("split", 1) > 1:
                    continue  # one frame is one batch of 1: nothing to split
                if "min_tiles" in spec and (mode == "dense" or len(tile_grid(frame_wh, 96, stride)) < spec["min_tiles"]):
                    continue
                det = Detector(paths[mode], backend=spec["name"], tiling=tiling, threads=threads,
                               backend_options=spec.get("backend_options"), max_batch=spec.get("max_batch", 256))
                prepared = det.preprocess(frame)
                if spec.get("split", 1) > 1:  # warm-up of the async queue too
                    det.backend.infer_many(np.array_split(prepared.batch, spec["split"]))
                det.infer(prepared.batch)  # warm-up (graph compilation, allocations)
                detectors[label] = (det, prepared, spec.get("split", 1))
            reference = None
            times: dict[str, dict[str, list[float]]] = {k: {"pre": [], "infer": [], "cpu": []} for k in detectors}
            skipped = set()
            for _ in range(rounds):
                for label, (det, _prepared, split) in detectors.items():
                    if label in skipped:
                        continue
                    t0 = time.perf_counter()
                    prep = det.preprocess(frame)
                    t1 = time.perf_counter()
                    c1 = time.process_time()
                    if split > 1:
                        parts = det.backend.infer_many(np.array_split(prep.batch, split))
                        out = {"score": np.concatenate([p["score"].reshape(-1) for p in parts])}
                        det.pool.give(prep.batch)
                    else:
                        out = det.infer(prep.batch)
                    t2 = time.perf_counter()
                    times[label]["cpu"].append((time.process_time() - c1) * 1e3)
                    times[label]["pre"].append((t1 - t0) * 1e3)
                    times[label]["infer"].append((t2 - t1) * 1e3)
                    if (t2 - t1) * 1e3 > skip_slow_ms and len(times[label]["infer"]) >= 2:
                        skipped.add(label)  # very slow engine: two samples are enough
                    if label == "onnxruntime" and reference is None:
                        reference = out["score"]
                    times[label].setdefault("max_abs_diff", [])
                    if reference is not None:
                        diff = np.abs(out["score"].reshape(-1) - reference.reshape(-1)).max()
                        times[label]["max_abs_diff"].append(float(diff))
            for label, (det, prepared, split) in detectors.items():
                t = times[label]
                rows.append({
                    "frame": frame_name, "frame_wh": list(frame_wh), "mode": mode, "stride": stride,
                    "tiles": int(prepared.batch.shape[0]) if mode == "tiled" else None,
                    "input_shape": list(prepared.batch.shape), "backend": label, "threads": threads,
                    "backend_calls": 1 if det.max_batch is None or mode == "dense"
                    else split if split > 1 else -(-prepared.batch.shape[0] // det.max_batch),
                    "samples": len(t["infer"]),
                    "preprocess_ms_median": round(statistics.median(t["pre"]), 2),
                    "infer_ms_median": round(statistics.median(t["infer"]), 2),
                    "infer_ms_min": round(min(t["infer"]), 2),
                    "infer_cpu_ms_median": round(statistics.median(t["cpu"]), 1),
                    "score_max_abs_diff_vs_onnxruntime": max(t["max_abs_diff"]) if t["max_abs_diff"] else None,
                })
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        *markdown_header("Runtime backends: one frame of 96x96 tiles, fp32 (random-weight DisCNN-8)", meta["command"]),
        f"Machine: {meta['machine']}; load average at start {meta['loadavg']} (shared VM: other jobs were running, "
        "so wall times are pessimistic and noisy; backends were timed interleaved and CPU times are given, so the comparison holds).  ",
        f"Versions: {meta['versions']}",
        "",
        "`preprocess` = crop + resize + BGR->RGB + normalise all tiles into one batch (`Detector.preprocess`, "
        "`cv2.dnn.blobFromImagesWithParams`, recycled buffers). `infer` = `Detector.infer` on that batch, wall "
        "time: one backend call, or `calls` calls of at most 256 tiles (the detector's default `max_batch`); "
        "`onnxruntime-one-call` sends all tiles at once (`max_batch=None`); `openvino-f32-throughput` splits the "
        "batch in two requests in flight at once (THROUGHPUT hint). `infer CPU` = CPU time the process spent in that call (all threads): the work, which the other "
        "jobs on the machine do not inflate; on an idle 2-core machine wall time lies between CPU / 2 and CPU (engines spin-wait). "
        "`diff` = max |score - onnxruntime score|.",
        "",
        "| frame | mode | stride | tiles | backend | calls | preprocess ms | infer ms (median) | infer ms (min) "
        "| infer CPU ms (median) | diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = r["score_max_abs_diff_vs_onnxruntime"]
        lines.append(
            f"| {r['frame']} | {r['mode']} | {r['stride']} | {r['tiles'] or 'x'.join(map(str, r['input_shape'][2:]))} "
            f"| {r['backend']} | {r['backend_calls']} | {r['preprocess_ms_median']} | {r['infer_ms_median']} | {r['infer_ms_min']} "
            f"| {r['infer_cpu_ms_median']} | {'' if diff is None else f'{diff:.1e}'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-slow-ms", type=float, default=1e9, help="stop timing an engine after 2 calls slower than this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import cv2
    import onnxruntime
    import openvino

    with tempfile.TemporaryDirectory() as tmp:
        paths = export_random_discnn8(Path(tmp))
        meta = {
            "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python -m "
                       f"benchmarks.runtime_backends --threads {args.threads} --rounds {args.rounds}"
                       + (f" --skip-slow-ms {args.skip_slow_ms:g}" if args.skip_slow_ms < 1e9 else ""),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "loadavg": " ".join(f"{v:.1f}" for v in os.getloadavg()),
            "versions": f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}, "
                        f"opencv {cv2.__version__}, numpy {np.__version__}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        rows = measure(paths, args.threads, args.rounds, args.skip_slow_ms)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime_backends.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "runtime_backends.md").write_text(_markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
