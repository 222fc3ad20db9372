"""Side by side with what users would run instead: YOLO11n on a 640x640 frame and SAHI-style 640x640 slices of
1080p, against patchdet's detector on the same 1080p frames, in the same run (rounds interleaved).

YOLO11n is built from ultralytics' own ``yolo11n.yaml`` with random weights (latency does not depend on them),
exported with ``torch.onnx.export`` and timed in ONNX Runtime (fp32) and OpenVINO (the CPU's default precision,
bf16 where the CPU has it, and f32). ultralytics is AGPL-3.0: a benchmark-only optional dependency that the
package never imports; without it the YOLO rows are skipped with a message. Install it for this script only:

    pip install --no-deps ultralytics   # needs torch, torchvision, numpy, opencv, pyyaml, pillow, psutil, matplotlib

    nice -n 5 .venv/bin/python -m benchmarks.yolo_compare --out /tmp/yolo --models runtime/assets/discnn8_automobile.onnx
    python -m benchmarks.yolo_compare --out /tmp/yolo --models runtime/assets/discnn8_car64.onnx --tile 32 --scales 1
        # the built-in per-tile export on 240 tiles of 96x96 frame px (its card's tile sizes are at 360 px height)

SAHI-style coverage: 640x640 slices every 512 px (SAHI's default 0.2 overlap) over 1920x1080 = 8 slices, run as
one batch of 8 (kinder to YOLO than SAHI's one call per slice). Inference only, preprocessing excluded on both sides.
Writes ``OUT/yolo_compare.{json,md}``; never a default inside the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.yolo_compare")


def export_yolo11n(folder: Path) -> tuple[Path, Path] | None:
    """YOLO11n (random weights) as ONNX with batch 1 and batch 8 at 640x640; None when ultralytics is absent."""
    try:
        from ultralytics import YOLO  # AGPL-3.0: benchmark only, never imported by patchdet
    except ImportError:
        log.warning("ultralytics is not installed: YOLO11n rows skipped (pip install --no-deps ultralytics)")
        return None
    import torch

    model = YOLO("yolo11n.yaml").model.eval()
    for module in model.modules():  # the detection head's export mode returns one tensor
        if hasattr(module, "export"):
            module.export = True
    paths = []
    for batch in (1, 8):
        path = folder / f"yolo11n_b{batch}.onnx"
        with torch.no_grad():
            torch.onnx.export(model, torch.zeros(batch, 3, 640, 640), str(path), opset_version=17,
                              input_names=["images"], output_names=["output0"], dynamo=False)
        paths.append(path)
    return paths[0], paths[1]


def engines(path: Path, threads: int | None) -> dict[str, object]:
    """name -> callable(batch) for ONNX Runtime fp32 and OpenVINO default / f32 on one ONNX file."""
    import onnxruntime as ort

    found: dict[str, object] = {}
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    found["onnxruntime fp32"] = lambda b: session.run(None, {name: b})
    try:
        import openvino as ov
    except ImportError:
        return found
    core = ov.Core()
    for label, precision in (("openvino default (bf16 where the CPU has it)", None), ("openvino f32", "f32")):
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        request = core.compile_model(str(path), "CPU", config).create_infer_request()
        found[label] = lambda b, r=request: r.infer({0: b})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--models", nargs="+", default=None, help="patchdet artifacts (default: the built-in)")
    parser.add_argument("--backend", default="onnxruntime", help="patchdet backend for .onnx models")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tile", type=int, default=96,
                        help="patchdet tile and stride (pixels at the card's reference height, as detect --tile)")
    parser.add_argument("--scales", default=None, help="patchdet tiling scales, e.g. 1; default: the card's")
    args = parser.parse_args()
    scales = None if args.scales is None else tuple(float(v) for v in args.scales.split(","))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import cv2

    from patchdet.runtime.builtin import builtin_clip, builtin_model
    from patchdet.runtime.settings import DetectorSettings, load_detector

    capture = cv2.VideoCapture(str(builtin_clip()))
    ok, image = capture.read()
    capture.release()
    frame = cv2.resize(image, (1920, 1080)) if ok else np.zeros((1080, 1920, 3), np.uint8)
    runs: dict[str, object] = {}
    for model in args.models or [str(builtin_model())]:
        backend = "openvino" if model.endswith(".xml") else args.backend
        detector = load_detector(DetectorSettings(model=model, backend=backend, threads=args.threads, tile=args.tile,
                                                  stride=args.tile, scales=scales), reuse_buffers=False)
        batch = detector.preprocess(frame).batch
        runs[f"patchdet {Path(model).name} {backend} 1080p {args.tile}/{args.tile} ({len(batch)} tiles)"] = \
            lambda d=detector, b=batch: d.infer(b)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_yolo11n(Path(tmp))
        if exported is not None:
            one, eight = (np.random.default_rng(0).random((n, 3, 640, 640), np.float32) for n in (1, 8))
            for label, run in engines(exported[0], args.threads).items():
                runs[f"YOLO11n 640x640 one frame, {label}"] = lambda r=run: r(one)
            for label, run in engines(exported[1], args.threads).items():
                runs[f"YOLO11n SAHI 8 slices of 1080p (batch 8), {label}"] = lambda r=run: r(eight)
        for run in runs.values():  # warm-up
            run()
            run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved: a busy shared machine slows every row alike
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1e3)
    rows = [{"name": name, "median_ms": round(statistics.median(t), 2), "min_ms": round(min(t), 2),
             "frames_per_s_1080p": round(1e3 / statistics.median(t), 2)} for name, t in times.items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "yolo_compare.json").write_text(json.dumps({"rounds": args.rounds, "threads": args.threads,
                                                       "yolo": exported is not None, "rows": rows}, indent=2) + "\n")
    lines = ["| run | median ms | min ms | per s |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['median_ms']} | {r['min_ms']} | {r['frames_per_s_1080p']} |" for r in rows]
    (out / "yolo_compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
