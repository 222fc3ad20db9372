"""A few-class POD detector (car / background) against the N2O DisCNN default on the detection dev set.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.pod_detector --vehicles ../shared/data/vehicles \
        --work runs/pod_detector --epochs 12

Steps, each skipped when its output exists (so an interrupted run is re-run until it completes):

1. ImageFolder trees of symlinks: ``car`` = the vehicle crops, ``background`` = the road-background crops
   (a class folder named ``background`` becomes the card's ``background_class``), and a validation tree of
   the held-out blocks (``training.data.block_split``, the last 15 % of every source folder, as ``--split
   blocks`` holds out during training).
2. ``patchdet train --loss pod --classes car,background`` with the same tile synthesis as the N2O default
   (``benchmarks/configs/car_v4.yaml``), DisCNN-8 at 64x64.
3. ``patchdet export`` (per-tile ONNX: POD has no dense export) and a card with the N2O default's tiling.
4. ``patchdet calibrate --labelled <validation tree> --positive-class car --target-precision P``: the norm gate
   (the POD paper's Table I: low-norm patches are unreliable).
5. ``patchdet evaluate --labels`` on the dev set with and without the gate, and the N2O default's per-tile
   export on the same tiling; a Markdown table and the JSON reports into ``--results``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from patchdet.runtime.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
PATCHDET = str(Path(sys.executable).with_name("patchdet"))
LABELS = "benchmarks/data/scenes_dev/scenes_dev.json"
N2O_PATCH = ROOT / "runtime" / "assets" / "discnn8_car64.onnx"
CLASSES = {"car": "vehicles", "background": "non-vehicles"}
TERMS = ("Research and non-commercial use only: trained on the Udacity vehicles set (GTI vehicle image database, "
         "Universidad Politecnica de Madrid, research use; KITTI, CC BY-NC-SA 3.0; Udacity highway-video crops)")


def build_trees(vehicles: Path, work: Path, val_fraction: float) -> tuple[Path, Path]:
    """(train tree: every crop, split in training; validation tree: the held-out blocks only)."""
    from patchdet.runtime.imagefolder import scan_image_folder
    from patchdet.training.data import block_split

    train, val = work / "data" / "car_background", work / "data" / "car_background_val"
    for name, folder in CLASSES.items():
        link = train / name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((vehicles / folder).resolve(), target_is_directory=True)
    if not val.exists():
        index = scan_image_folder(str(train), list(CLASSES))
        _, held_out, _ = block_split(index.paths, index.labels, val_fraction)
        for i in held_out:
            path = Path(index.paths[i])
            target = val / list(CLASSES)[int(index.labels[i])] / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
    return train, val


def run(argv: list[str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def evaluate(artifact: Path, card: Path | None, out: Path) -> dict:
    if not out.exists():
        run([PATCHDET, "evaluate", "-q", "--labels", LABELS, "--backend", "onnxruntime", "--json", str(out),
             *(["--card", str(card)] if card else []), str(artifact)])
    return json.loads(out.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", default="../shared/data/vehicles")
    parser.add_argument("--work", default="runs/pod_detector")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument("--results", default="benchmarks/results/pod_detector")
    args = parser.parse_args(argv)
    work, results = Path(args.work), Path(args.results)
    train_tree, val_tree = build_trees(Path(args.vehicles), work, 0.15)
    run_dir = work / "pod64"
    if not (run_dir / "last.pt").exists() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < args.epochs:
        run([PATCHDET, "train", "--config", "benchmarks/configs/car_v4.yaml", "--data", str(train_tree),
             "--classes", "car,background", "--split", "blocks", "--val-fraction", "0.15", "--data-terms", TERMS,
             "--arch", "discnn8", "--input-size", "64", "--loss", "pod", "--epochs", str(args.epochs), "--amp", "off",
             "--threads", str(args.threads), "--seed", "0", "--out", str(run_dir),
             *(["--resume"] if (run_dir / "last.pt").exists() else [])])
    exports = work / "exports"
    artifact = exports / "pod64_car.onnx"
    if not artifact.exists():
        run([PATCHDET, "export", str(run_dir / "last.pt"), "--formats", "onnx", "--out", str(exports),
             "--name", "pod64_car", "--eval", str(val_tree), "--eval-images", "2000", "-q"])
    # The N2O default's tiling (its per-tile grid), so both detectors look at the same windows.
    from patchdet.runtime.card import read_artifact_card, write_card

    tiled = exports / "pod64_car.tiled.card.json"
    if not tiled.exists():
        write_card(read_artifact_card(artifact).replace(tiling=read_artifact_card(N2O_PATCH).tiling), tiled)
    gated = exports / "pod64_car.gated.card.json"
    if not gated.exists():
        run([PATCHDET, "calibrate", "--model", str(artifact), "--card", str(tiled), "--labelled", str(val_tree),
             "--positive-class", "car", "--target-precision", str(args.target_precision), "--backend", "onnxruntime",
             "--out", str(gated), "--report", str(exports / "calibration.json")])
    results.mkdir(parents=True, exist_ok=True)
    rows = {
        "pod64_car, no norm gate": evaluate(artifact, tiled, results / "pod_ungated.json"),
        f"pod64_car, norm gate for precision {args.target_precision:g}": evaluate(artifact, gated,
                                                                                  results / "pod_gated.json"),
        "discnn8_car64 N2O, per-tile export, same tiling": evaluate(N2O_PATCH, None, results / "n2o_patch.json"),
    }
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    gate = json.loads((exports / "calibration.json").read_text())
    summary = {"rows": {k: {m: v.get(m) for m in ("ap50", "recall", "precision", "false_alarms_per_frame",
                                                   "empty_frame_detections", "fps")} for k, v in rows.items()},
               "norm_gate": gate["norm_gate"], "calibration": gate["labelled"],
               "val_accuracy_last_epoch": history[-1]["val"].get("val_metric"), "epochs": len(history),
               "epoch_seconds_median": float(np.median([h["epoch_seconds"] for h in history]))}
    atomic_write_json(results / "summary.json", summary)
    lines = ["| detector | AP50 | recall | precision | false alarms / frame | detections on car-free frames |",
             "|---|---|---|---|---|---|"]
    for name, r in summary["rows"].items():
        lines.append(f"| {name} | {r['ap50']:.3f} | {r['recall']:.3f} | {r['precision']:.3f} | "
                     f"{r['false_alarms_per_frame']:.2f} | {r['empty_frame_detections']} |")
    print("\n".join(lines))
    print(f"norm gate {gate['norm_gate']:.4g}; validation accuracy (last epoch) {summary['val_accuracy_last_epoch']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
