"""Which layers of a per-tile DisCNN cost F1 under INT8, and what keeping them float costs in speed.

NNCF post-training quantization of an exported model's OpenVINO graph with growing ignored scopes (the float
head that ``patchdet export --formats openvino-int8`` keeps, then all FC layers, then the first conv, ...); for
each: F1 of the positive class at a threshold on held-out crops, decision agreement with fp32, and the median
inference time of one batch (2 threads, LATENCY hint) beside ONNX Runtime fp32 on the same batch. Pause other
jobs while it runs: the timings are only comparable within one run.

    python -m benchmarks.int8_ignored_scopes --model exports/discnn8_car64.onnx --data ../shared/data/vehicles \
        --positive vehicles --threshold 3 --batch 240
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np


def load_crops(root: Path, positive: str, per_side: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """``per_side`` positives and negatives drawn at random (the rest of the files are returned for calibration)."""
    rng = np.random.default_rng(seed)
    files = sorted(p for p in root.rglob("*.png"))
    is_pos = np.array([p.relative_to(root).parts[0] == positive for p in files])
    pos, neg = np.flatnonzero(is_pos), np.flatnonzero(~is_pos)
    chosen = np.concatenate([rng.choice(pos, per_side, replace=False), rng.choice(neg, per_side, replace=False)])
    rest = [files[i] for i in sorted(set(range(len(files))) - set(chosen.tolist()))]
    return np.array([str(files[i]) for i in chosen]), is_pos[chosen], rest


def prepare(paths, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    images = []
    for path in paths:
        rgb = cv2.resize(cv2.imread(str(path)), (size, size))[:, :, ::-1].astype(np.float32) / 255
        images.append(((rgb - mean) / std).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(images))


def median_ms(fn, repeats: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main() -> int:
    import nncf
    import onnxruntime as ort
    import openvino as ov

    from patchdet.export.openvino import head_op_names
    from patchdet.runtime.card import read_artifact_card
    from patchdet.runtime.metrics import binary_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="per-tile ONNX export with its card")
    parser.add_argument("--data", required=True, help="crop folder: <class>/.../*.png")
    parser.add_argument("--positive", required=True)
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--batch", type=int, default=240)
    parser.add_argument("--calib-images", type=int, default=300)
    parser.add_argument("--eval-per-class", type=int, default=1000)
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    nncf.set_log_level(logging.ERROR)

    card = read_artifact_card(args.model)
    mean, std = np.array(card.mean, np.float32), np.array(card.std, np.float32)
    side = card.input_wh[0]
    paths, is_positive, rest = load_crops(Path(args.data), args.positive, args.eval_per_class, seed=0)
    inputs = prepare(paths, side, mean, std)
    calib_paths = np.random.default_rng(1).choice(np.array([str(p) for p in rest]), args.calib_images, replace=False)
    calibration = prepare(calib_paths, side, mean, std)
    batch = np.ascontiguousarray(np.resize(inputs, (args.batch, *inputs.shape[1:])))

    core = ov.Core()
    model = core.read_model(args.model)
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}

    def scores(compiled) -> np.ndarray:
        return np.asarray(compiled(inputs)[compiled.output("score")]).reshape(-1)

    def f1(score: np.ndarray) -> float:
        return float(binary_report(score, is_positive, args.threshold)["positive"]["f1"])

    fp32 = core.compile_model(model, "CPU", config)
    reference = scores(fp32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    request = fp32.create_infer_request()
    rows = [{"variant": "onnxruntime fp32", "f1": f1(reference), "agreement": 1.0,
             "p50_ms": median_ms(lambda: session.run(None, {name: batch}))},
            {"variant": "openvino f32", "f1": f1(reference), "agreement": 1.0,
             "p50_ms": median_ms(lambda: request.infer({0: batch}))}]

    head = head_op_names(model)
    fcs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    scopes = {"int8, float head": head, "int8, FC layers float": head + fcs,
              "int8, FC layers and first conv float": head + fcs + convs[:1],
              "int8 conv layers 1-2 only": head + fcs + convs[2:]}
    samples = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    for variant, ignored in scopes.items():
        quantized = nncf.quantize(model, samples, preset=nncf.QuantizationPreset.PERFORMANCE,
                                  subset_size=len(calibration),
                                  ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
        compiled = core.compile_model(quantized, "CPU", config)
        score = scores(compiled)
        request = compiled.create_infer_request()
        rows.append({"variant": variant, "f1": f1(score),
                     "agreement": float(np.mean((score > args.threshold) == (reference > args.threshold))),
                     "p50_ms": median_ms(lambda request=request: request.infer({0: batch}))})
    for row in rows:
        print(f"{row['variant']:40s} F1 {row['f1']:.3f}  agreement {row['agreement']:.3f}  p50 {row['p50_ms']:.1f} ms")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
