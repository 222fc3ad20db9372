"""Measure the export stage on a real checkpoint and write ``benchmarks/results/export.{md,json}``.

What it runs (every step is a real ``patchdet export`` command, recorded verbatim):

1. the model to every format (patch artifacts), parity on ``--eval``;
2. the dense variant to the CPU formats;
3. INT8 with the head quantized too (``--quantize-head``), against step 1's float head;
4. three clients (ONNX Runtime, OpenVINO, OpenCV DNN) on step 1's ONNX file and the eval patches;
5. batch export of 4 checkpoints x all CPU formats with ``--workers 2`` and ``--workers 1``.

Usage::

    python -m benchmarks.export_measure --model models/discnn8_automobile.pt \
        --calib ../shared/data/cifar10/train --eval ../shared/data/cifar10/test --work /tmp/export_bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ALL_FORMATS = "onnx,onnx-int8,openvino,openvino-fp16,openvino-int8,tensorrt-fp16,tensorrt-int8"
CPU_FORMATS = "onnx,onnx-int8,openvino,openvino-fp16,openvino-int8"
DENSE_FORMATS = "onnx,onnx-int8,openvino,openvino-int8"


def run_cli(args: list[str], log: list[dict[str, Any]], env_threads: str | None = None) -> dict[str, Any]:
    """Run ``patchdet ARGS``; returns wall time, exit code and the manifest."""
    command = [sys.executable, "-m", "patchdet", "-q", *args]
    env = dict(os.environ)
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    out = Path(args[args.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else []
    shown = "patchdet " + shlex.join(args)
    log.append({"command": shown, "exit_code": proc.returncode, "wall_s": round(seconds, 1)})
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{shown} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return {"wall_s": seconds, "exit_code": proc.returncode, "manifest": manifest, "command": shown}


def seed_reference_cache(source_out: Path, dest_out: Path) -> None:
    """Copy the torch reference outputs of one run to another run's cache (same model, same eval set)."""
    import shutil

    from patchdet.export.pipeline import REFERENCE_CACHE_DIR

    source = source_out / REFERENCE_CACHE_DIR
    if source.is_dir():
        shutil.copytree(source, dest_out / REFERENCE_CACHE_DIR, dirs_exist_ok=True)


def derived_checkpoints(model: Path, work: Path, count: int) -> list[Path]:
    """``count - 1`` copies of ``model`` with 1 % weight noise (distinct content, same cost)."""
    import torch

    from patchdet.training.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(model)
    payload.pop("path", None)
    payload.pop("format", None)
    payload.pop("version", None)
    paths = [model]
    for i in range(1, count):
        generator = torch.Generator().manual_seed(i)
        state = {k: (v + 0.01 * v.std() * torch.randn(v.shape, generator=generator)
                     if v.is_floating_point() and v.numel() > 1 else v)
                 for k, v in payload["state_dict"].items()}
        paths.append(save_checkpoint({**payload, "state_dict": state}, work / "batch_models" / f"variant{i}.pt"))
    return paths


def three_clients(onnx_path: Path, eval_dir: Path, max_images: int) -> dict[str, Any]:
    """Scores of ONNX Runtime, OpenVINO (f32) and OpenCV DNN on the same eval patches."""
    import cv2
    import onnxruntime as ort
    import openvino as ov

    from patchdet.export.datasets import load_eval_set
    from patchdet.runtime.card import card_path_for, read_card
    from patchdet.training.checkpoint import CheckpointInfo

    card = read_card(card_path_for(onnx_path))
    info = CheckpointInfo(path=str(onnx_path), arch=card.arch, head=card.head, class_names=card.class_names,
                          input_size=card.input_wh[0], mean=card.mean, std=card.std, positive_class=card.positive_class,
                          negative_classes=tuple(card.training.get("negative_classes", ())))
    inputs = load_eval_set(eval_dir, info, "model", max_images, 0).inputs
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    net = cv2.dnn.readNetFromONNX(str(onnx_path))
    scores = {"onnxruntime": [], "openvino": [], "opencv": []}
    for start in range(0, len(inputs), 64):
        batch = np.ascontiguousarray(inputs[start:start + 64])
        scores["onnxruntime"].append(session.run(["score"], {"input": batch})[0])
        scores["openvino"].append(np.asarray(compiled(batch)[compiled.output("score")]))
        net.setInput(batch)
        names = list(net.getUnconnectedOutLayersNames())
        scores["opencv"].append(net.forward(names)[names.index("score")].reshape(-1))
    merged = {k: np.concatenate(v).astype(np.float64) for k, v in scores.items()}
    ref = merged["onnxruntime"]
    scale = float(np.abs(ref).max())
    return {
        "images": int(len(ref)),
        "max_rel_vs_onnxruntime": {k: float(np.abs(v - ref).max() / scale) for k, v in merged.items()},
        "decision_agreement_vs_onnxruntime": {
            k: float(np.mean((v > card.threshold) == (ref > card.threshold))) for k, v in merged.items()
        },
    }


def _row(entry: dict[str, Any]) -> str:
    p = entry.get("parity") or {}

    def f(key: str, fmt: str = ".4f") -> str:
        value = p.get(key)
        return "-" if value is None else format(value, fmt)

    size = f"{entry['size_bytes'] / 1024:.1f}" if entry["size_bytes"] else "-"
    return (f"| {entry['format']} | {entry['status']} | {size} | {entry['seconds']:.1f} | {f('score_rel', '.2e')} | "
            f"{f('embedding_max_abs', '.2e')} | {f('decision_agreement')} | {f('f1_torch')} | {f('f1_artifact')} | "
            f"{f('threshold_shift', '+.4f')} |")


TABLE_HEAD = ("| format | status | size (KiB) | export (s) | score rel. err. | embedding max abs | "
              "decision agreement | F1 torch | F1 artifact | INT8 threshold shift |\n|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--calib", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--work", default="/tmp/export_bench")
    parser.add_argument("--batch-eval-images", type=int, default=600)
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip: patch,dense,head,clients,batch")
    args = parser.parse_args(argv)
    work = Path(args.work)
    skip = set(filter(None, args.skip.split(",")))
    results_dir = Path(args.results)
    json_path = results_dir / "export.json"
    results: dict[str, Any] = json.loads(json_path.read_text()) if json_path.is_file() else {}
    commands: list[dict[str, Any]] = results.get("commands", []) if skip else []
    common = ["--calib", args.calib, "--eval", args.eval]
    if "patch" not in skip:
        results["patch"] = run_cli(["export", args.model, "--formats", ALL_FORMATS, "--out", str(work / "patch"),
                                    *common, "--force"], commands)
    if "dense" not in skip:
        seed_reference_cache(work / "patch", work / "dense")
        results["dense"] = run_cli(["export", args.model, "--formats", DENSE_FORMATS, "--out", str(work / "dense"),
                                    *common, "--dense", "--force"], commands)
    if "head" not in skip:
        seed_reference_cache(work / "patch", work / "quantized_head")
        results["quantized_head"] = run_cli(["export", args.model, "--formats", "onnx-int8,openvino-int8", "--out",
                                             str(work / "quantized_head"), *common, "--quantize-head", "--force"],
                                            commands)
    if "clients" not in skip:
        onnx_path = next(Path(e["path"]) for e in results["patch"]["manifest"] if e["format"] == "onnx")
        results["three_clients"] = three_clients(onnx_path, Path(args.eval), 0)
    if "batch" not in skip:
        models = [str(p) for p in derived_checkpoints(Path(args.model), work, 4)]
        # No cache seeding here: both runs compute their torch references, as a real batch does.
        batch_common = [*models, "--formats", CPU_FORMATS, *common, "--eval-images", str(args.batch_eval_images),
                        "--force"]
        results["batch_parallel"] = run_cli(["export", *batch_common, "--out", str(work / "batch_w2"),
                                             "--workers", "2"], commands)
        results["batch_serial"] = run_cli(["export", *batch_common, "--out", str(work / "batch_w1"),
                                           "--workers", "1"], commands)
    results["commands"] = commands
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average_at_end": os.getloadavg()}
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    (results_dir / "export.md").write_text(render_markdown(results, args))
    return 0


def render_markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["# Export stage: measured", "",
             f"Model `{args.model}`; calibration `{args.calib}`; parity set `{args.eval}` "
             "(the model's own classes only: automobile positive, bird and cat negative).",
             f"Machine: {results['machine']['cpus']} shared CPU cores, load average at the end "
             f"{', '.join(f'{v:.1f}' for v in results['machine']['load_average_at_end'])} "
             "(other jobs ran at the same time: times are indicative).", ""]
    for key, title in (("patch", "Patch artifacts"), ("dense", "Dense (fully-convolutional) artifacts"),
                       ("quantized_head", "INT8 with the head quantized too (`--quantize-head`)")):
        if key not in results:
            continue
        run = results[key]
        lines += [f"## {title}", "", f"`{run['command']}` (wall {run['wall_s']:.1f} s, exit {run['exit_code']})", "",
                  TABLE_HEAD]
        lines += [_row(e) for e in run["manifest"]]
        skipped = [e for e in run["manifest"] if e["status"] == "skipped"]
        for e in skipped:
            lines.append(f"\n{e['format']}: {e['reason']}")
        if key == "dense":
            for e in run["manifest"]:
                d = (e.get("parity") or {}).get("dense_vs_patch_model")
                if d:
                    lines.append(f"\n{e['format']}: dense aligned windows vs the patch model on the same crops: "
                                 f"max rel. {d['score_rel']:.3f}, correlation {d['score_correlation']:.4f}, "
                                 f"decision agreement {d['decision_agreement']:.4f} over {d['windows']} windows; "
                                 f"whole-map score rel. err. vs torch dense {e['parity'].get('map_score_rel', 0):.2e}")
        lines.append("")
    if "three_clients" in results:
        c = results["three_clients"]
        lines += ["## Three clients on the FP32 ONNX file", "",
                  f"{c['images']} eval patches; max score error relative to ONNX Runtime's largest score, "
                  "and decision agreement at the card threshold:", "",
                  "| client | max rel. vs ORT | decision agreement |", "|---|---|---|"]
        for k in c["max_rel_vs_onnxruntime"]:
            lines.append(f"| {k} | {c['max_rel_vs_onnxruntime'][k]:.2e} | "
                         f"{c['decision_agreement_vs_onnxruntime'][k]:.4f} |")
        lines.append("")
    if "batch_parallel" in results and "batch_serial" in results:
        par, ser = results["batch_parallel"], results["batch_serial"]
        ok = lambda run: sum(e["status"] == "ok" for e in run["manifest"])  # noqa: E731
        lines += ["## Batch export: 4 checkpoints x 5 CPU formats", "",
                  "| run | artifacts ok | wall (s) | sum of job times (s) |", "|---|---|---|---|",
                  f"| `--workers 2` | {ok(par)}/{len(par['manifest'])} | {par['wall_s']:.1f} | "
                  f"{sum(e['seconds'] for e in par['manifest']):.1f} |",
                  f"| `--workers 1` | {ok(ser)}/{len(ser['manifest'])} | {ser['wall_s']:.1f} | "
                  f"{sum(e['seconds'] for e in ser['manifest']):.1f} |",
                  "", f"Speed-up {ser['wall_s'] / par['wall_s']:.2f}x on {results['machine']['cpus']} cores.", ""]
    lines += ["## Commands", ""] + [f"- `{c['command']}` (exit {c['exit_code']}, {c['wall_s']} s)"
                                    for c in results.get("commands", [])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
