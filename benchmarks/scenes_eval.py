"""Every car detector on the labelled dev set ``benchmarks/data/scenes_dev``: one table.

Runs each detector's exact command (``patchdet evaluate --labels`` for
exported models, ``benchmarks.hog_svm`` for the classical baseline), each
writing its full report to ``benchmarks/results/scenes_eval/<name>.json``,
then collects the headline numbers into ``benchmarks/results/scenes_eval.{md,json}``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.scenes_eval [--only NAME] [--collect-only] \
        [--cascade cars.xml --haar-python /path/to/python-with-opencv4]

The Haar cascade row needs a car cascade file (``--cascade``, not shipped) and an OpenCV 4 Python
(``--haar-python``; OpenCV 5 has no ``CascadeClassifier``); without ``--cascade`` it is skipped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from patchdet.runtime.atomic import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REPORTS = RESULTS / "scenes_eval"
LABELS = "benchmarks/data/scenes_dev/scenes_dev.json"

# name -> (what it is, command run from the repository root; {json} is the report path)
DETECTORS: dict[str, tuple[str, str]] = {
    "discnn8_car64": (
        "the built-in default (`runtime/assets/discnn8_car64_dense.onnx`): DisCNN-8 at 64x64 trained on real car and "
        "road crops (vehicles, tile synthesis v4: `benchmarks/configs/car_v4.yaml`) plus CIFAR-10 automobiles as extra "
        "positives (car64 v5, `real_car_models.md`), dense over a mosaic of 9 scales: "
        "windows 1.5 wide per high, 40 to 252 px wide at 360 px frame height, every quarter window; NMS 0.3, a box on part "
        "of a car grown to the window holding the whole car (`runtime.detections.grow_to_enclosing`); "
        "threshold 3 (the card's)",
        f"patchdet evaluate --labels {LABELS} --backend onnxruntime --json {{json}}",
    ),
    "discnn8_car64_street_calibrated": (
        "the same model calibrated on the street camera's own footage (no labels): `patchdet calibrate --video "
        "../shared/data/scenes/videos/ahmetozlu_street_cam.mp4 --out benchmarks/results/scenes_eval/"
        "street_cam.card.json` (threshold 10 % above the background plate's best window: 2.63; the scales that "
        "frame the cars that moved, here all 9); only its street-camera row applies, the other sources are not "
        "that camera",
        f"patchdet evaluate --card benchmarks/results/scenes_eval/street_cam.card.json --labels {LABELS} "
        f"--backend onnxruntime --json {{json}}",
    ),
    "discnn8_cifar10": (
        "DisCNN-8 trained on CIFAR-10 (automobile vs bird/cat; the paper reproduction), its card's defaults: "
        "threshold 4.58 calibrated on street-camera background, 96 px tiles, stride 48",
        f"patchdet evaluate runtime/assets/discnn8_automobile.onnx --labels {LABELS} --backend onnxruntime "
        f"--json {{json}}",
    ),
    "discnn8_car64_patch": (
        "the same model's per-tile export (`runtime/assets/discnn8_car64.onnx`, what `--tile`/`--stride` and the "
        "motion gate run): the same windows and scales, but an explicit grid every half tile (a quarter would be "
        "about 9,000 tiles per frame)",
        f"patchdet evaluate runtime/assets/discnn8_car64.onnx --labels {LABELS} --backend onnxruntime "
        f"--json {{json}}",
    ),
    "hog_svm": (
        "HOG (YCrCb, 9x8x2) + linear SVM on ../shared/data/vehicles, windows 48-192 px, NMS 0.3, decision > 0",
        f"python -m benchmarks.hog_svm --labels {LABELS} --model-cache /tmp/patchdet_hog_svm.pkl --json {{json}}",
    ),
    "hog_svm_margin": (
        "the same HOG + linear SVM keeping only windows outside the SVM margin (decision > 1)",
        f"python -m benchmarks.hog_svm --labels {LABELS} --model-cache /tmp/patchdet_hog_svm.pkl --threshold 1 "
        f"--json {{json}}",
    ),
    "haar_cascade": (
        "OpenCV Haar cascade `cars.xml` (andrewssobral/vehicle_detection_haarcascades, rear views on freeways; not "
        "shipped), detectMultiScale scale 1.1, 3 neighbours, windows from 24 px",
        f"haar-python -m benchmarks.haar_cascade --cascade {{cascade}} --labels {LABELS} --json {{json}}",
    ),
}
# The default's operating threshold is chosen from this sweep (same command with --threshold T).
SWEEP_THRESHOLDS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
COLUMNS = (("ap50", "AP50"), ("recall", "recall"), ("precision", "precision"),
           ("false_alarms_per_frame", "FA/frame"), ("empty_frame_detections", "car-free dets"), ("fps", "fps"))


def run(name: str, cascade: Path | None = None, haar_python: str | None = None) -> None:
    _, command = DETECTORS[name]
    if "{cascade}" in command and cascade is None:
        print(f"{name}: skipped (no --cascade)")
        return
    REPORTS.mkdir(parents=True, exist_ok=True)
    argv = shlex.split(command.format(json=REPORTS / f"{name}.json", cascade=cascade))
    exe = Path(sys.executable).parent
    if argv[0] in ("patchdet", "python"):  # this environment's entry points
        argv[0] = str(exe / argv[0]) if argv[0] == "patchdet" else sys.executable
    elif argv[0] == "haar-python":
        argv[0] = haar_python or sys.executable
    subprocess.run(argv, cwd=ROOT, check=True)


def sweep() -> None:
    _, command = DETECTORS["discnn8_car64"]
    for threshold in SWEEP_THRESHOLDS:
        argv = shlex.split(command.format(json=REPORTS / f"discnn8_car64_t{threshold:g}.json"))
        argv[0] = str(Path(sys.executable).parent / "patchdet")
        subprocess.run([*argv, "--threshold", f"{threshold:g}", "-q"], cwd=ROOT, check=True)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def collect() -> dict:
    rows = {}
    for name, (what, command) in DETECTORS.items():
        path = REPORTS / f"{name}.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text(encoding="utf-8"))
        rows[name] = {"what": what, "command": command.format(json=path.relative_to(ROOT), cascade="cars.xml"),
                      **{key: report.get(key) for key, _ in COLUMNS},
                      "recall_by_width_px": {k: v["recall"] for k, v in report["recall_by_width_px"].items()},
                      "by_source": {k: {m: v.get(m) for m in ("ap50", "recall", "precision", "false_alarms_per_frame",
                                                               "empty_frame_detections")}
                                    for k, v in report.get("by_source", {}).items()},
                      "frames": report["frames"], "boxes": report["boxes"]}
    swept = []
    for threshold in SWEEP_THRESHOLDS:
        path = REPORTS / f"discnn8_car64_t{threshold:g}.json"
        if path.is_file():
            report = json.loads(path.read_text(encoding="utf-8"))
            swept.append({"threshold": threshold, **{key: report.get(key) for key, _ in COLUMNS if key != "fps"}})
    any_row = next(iter(rows.values()), None)
    lines = [
        "# Car detectors on the labelled dev set (scenes_dev)",
        "",
        f"`{LABELS}`: {any_row['frames'] if any_row else '?'} frames (64 with cars, 6 car-free: 2 street-camera "
        f"background plates, 4 photos without cars), {any_row['boxes'] if any_row else '?'} car boxes at least "
        "~32 px wide (smaller or hidden cars are iscrowd and ignored). See `benchmarks/data/NOTICE`.",
        "AP50: COCO AP at IoU 0.5 (pycocotools) on the frames with cars, from the boxes each detector outputs "
        "(above its own threshold). Recall, precision and false alarms per frame at that operating point on the "
        "frames with cars; car-free dets: boxes on the 6 car-free images. fps: frames per second of detector "
        "calls (one thread, a 2-core machine shared with other jobs: indicative only).",
        "",
        "| detector | " + " | ".join(title for _, title in COLUMNS) + " | recall by car width (<48 / 48-96 / 96-160 / "
        ">=160 px) |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, row in rows.items():
        widths = " / ".join(_fmt(v, 2) for v in row["recall_by_width_px"].values())
        lines.append(f"| {name} | " + " | ".join(_fmt(row[key], 1 if key == "fps" else 3) for key, _ in COLUMNS)
                     + f" | {widths} |")
    if swept:
        lines += ["", "## The default at other thresholds (`--threshold T`; the card says 3)", "",
                  "| threshold | " + " | ".join(title for key, title in COLUMNS if key != "fps") + " |",
                  "|---|" + "---|" * (len(COLUMNS) - 1)]
        lines += [f"| {row['threshold']:g} | " + " | ".join(_fmt(row[key]) for key, _ in COLUMNS if key != "fps")
                  + " |" for row in swept]
    lines += ["", "## Per source (AP50 / recall / precision / FA per frame)", ""]
    for name, row in rows.items():
        parts = [f"{src}: {_fmt(m['ap50'])} / {_fmt(m['recall'])} / {_fmt(m['precision'])} / "
                 f"{_fmt(m['false_alarms_per_frame'], 2)}" for src, m in row["by_source"].items() if src != "no_cars/*"]
        lines.append(f"- **{name}**: " + "; ".join(parts))
    lines += ["", "## Detectors and the exact commands", ""]
    for name, row in rows.items():
        lines += [f"- **{name}**: {row['what']}.", f"  `{row['command']}`"]
    lines += [
        "",
        "## Notes",
        "",
        "- The HOG + SVM model is trained by the first hog_svm command (about 3 minutes; deterministic, "
        "`LinearSVC(C=0.01, random_state=0)`) and cached in `/tmp/patchdet_hog_svm.pkl` for the second. Its "
        "held-out crop accuracy (last 20 % of every source folder, contiguous file-index blocks) is in "
        "`scenes_eval/hog_svm.json` under `detector.training`.",
        "- discnn8_cifar10's threshold (4.58) was calibrated on background of the same street camera (frames "
        "740-899) and on the 4 no_cars photos, which are also car-free images here: its 0 car-free detections are "
        "not an independent measurement. discnn8_car64's threshold (3) was chosen on this set too, as the lowest of "
        "1, 1.5, 2, 2.5, 3, 3.5 with at most 0.3 false alarms per frame (`threshold_sweep` in scenes_eval.json), so "
        "the same caveat applies to it; its tiling was set before looking at the set's results.",
        "- The calibrated row's plates come from the same street video as two of the car-free frames here.",
        "- Haar cascade: OpenCV ships no car cascade; the row uses the widely copied `cars.xml` (rear views on "
        "freeways), run by `benchmarks/haar_cascade.py` with OpenCV 4 (OpenCV 5 has no CascadeClassifier). It gives no "
        "score, so its AP50 is that of one operating point.",
        "- Udacity test-video frames (AP50 1.0 for the default) may not be unseen: the vehicles set's `Extras` "
        "crops come from Udacity's highway videos.",
        "",
        "Regenerate: `OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.scenes_eval --sweep --cascade "
        "cars.xml --haar-python PY` (needs `../shared/data/vehicles` for hog_svm and the `[bench]` extra; `cars.xml` "
        "from andrewssobral/vehicle_detection_haarcascades and `PY` a Python with `opencv-python-headless<5` for the "
        "Haar row, skipped without `--cascade`).",
        "",
    ]
    atomic_write_text(RESULTS / "scenes_eval.md", "\n".join(lines))
    atomic_write_json(RESULTS / "scenes_eval.json", {**rows, "threshold_sweep": swept})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(DETECTORS), help="run only this detector")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the table from the reports")
    parser.add_argument("--sweep", action="store_true", help="also sweep the default's threshold")
    parser.add_argument("--cascade", type=Path, help="Haar cascade XML for the haar_cascade row (skipped without)")
    parser.add_argument("--haar-python", help="Python with OpenCV 4 for the haar_cascade row (default: this one)")
    args = parser.parse_args()
    if not args.collect_only:
        for name in args.only or DETECTORS:
            run(name, args.cascade, args.haar_python)
        if args.sweep:
            sweep()
    collect()
    print((RESULTS / "scenes_eval.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
