"""Calibrate the built-in model's threshold for the built-in street clip (``patchdet calibrate`` on street background).

The DisCNN-8 car model learned cars against birds and cats (CIFAR-10). Street
background (asphalt, kerbs, fences, lawns) is new to it, so many background
tiles score above the training threshold and ``patchdet detect`` on the
street clip would mark most of the frame. This script picks the threshold
the way a user would for a new camera: from footage without any car.

Target-free footage: the lower part (rows 160-351, columns 0-575: road,
sidewalk, fence; no parked car) of frames 740-899 of the full street video,
where no car passes, i.e. disjoint from the frames of the sample clip
(74-232), plus the four public-domain photos without cars of
``../shared/data/scenes/no_cars``. Every background patch is silenced
(``--false-alarms 0``), with the sample clip's tiling (96x96 tiles, stride 48).

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.default_calibration

Writes ``runtime/assets/discnn8_automobile.card.json`` (the CIFAR-10 model's card: its calibrated threshold
and tiling, which ``patchdet detect`` and ``patchdet.Detector`` use by default, the training threshold kept as
the operating point ``paper``) and ``benchmarks/results/default_calibration.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "runtime" / "assets"
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data" / "scenes"
FRAMES = range(740, 900, 8)
CROP_ROWS, CROP_COLS = (160, 352), (0, 576)


def extract_background(video: Path, out_dir: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(video))
    index, written = 0, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index in FRAMES:
            crop = frame[CROP_ROWS[0]:CROP_ROWS[1], CROP_COLS[0]:CROP_COLS[1]]
            cv2.imwrite(str(out_dir / f"street_{index:04d}.png"), crop)
            written += 1
        index += 1
    cap.release()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ASSETS / "discnn8_automobile.onnx")
    parser.add_argument("--video", type=Path, default=SHARED / "videos" / "ahmetozlu_street_cam.mp4")
    parser.add_argument("--photos", type=Path, default=SHARED / "no_cars")
    parser.add_argument("--output", type=Path, default=ASSETS / "discnn8_automobile.card.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="patchdet_bg_") as tmp:
        folder = Path(tmp) / "background"
        folder.mkdir()
        crops = extract_background(args.video, folder)
        photos = sorted(args.photos.glob("*.jpg"))
        for photo in photos:
            shutil.copy(photo, folder / photo.name)
        from patchdet.runtime.calibrate import CalibrateConfig, calibrate

        report = calibrate(CalibrateConfig(model=str(args.model), background=str(folder), tile=96, stride=48,
                                           backend="onnxruntime", output=str(args.output)))
    args.output.chmod(0o644)  # a packaged asset: readable by every user of an installation
    report["footage"] = {"street_crops": crops, "frames": f"{FRAMES.start}-{FRAMES.stop - 1} step {FRAMES.step}",
                         "crop_rows": list(CROP_ROWS), "crop_cols": list(CROP_COLS),
                         "photos": [p.name for p in photos]}
    report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "default_calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    bg = report["background"]
    q = bg["tile_score_quantiles"]
    (RESULTS / "default_calibration.md").write_text("\n".join([
        "# Threshold of the built-in demo (DisCNN-8 cars on the street clip)",
        "",
        "Command: `OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.default_calibration` "
        f"({report['date']})",
        "",
        f"Model `{Path(report['model']).name}`, card threshold {report['previous_threshold']:.4g} (from training "
        f"on CIFAR-10). Target-free footage: {crops} crops (rows {CROP_ROWS[0]}-{CROP_ROWS[1] - 1}, columns "
        f"{CROP_COLS[0]}-{CROP_COLS[1] - 1}: road, sidewalk, fence) of frames {FRAMES.start}-{FRAMES.stop - 1} "
        "(every 8th) of the full street video, where no car passes and which the sample clip (frames 74-232) "
        f"does not contain, plus {len(photos)} photos without cars ({', '.join(p.name for p in photos)}). "
        "96x96 tiles at stride 48, every background patch silenced (0 false alarms per frame).",
        "",
        "| background frames | tiles | at the origin | score median | p90 | p99 | max = new threshold |",
        "|---|---|---|---|---|---|---|",
        f"| {bg['frames']} | {bg['tiles']} | {bg['fraction_at_origin']:.1%} | {q['0.5']:.3g} | {q['0.9']:.3g} "
        f"| {q['0.99']:.3g} | {report['threshold']:.4g} |",
        "",
        f"Written to `runtime/assets/{args.output.name}`; `patchdet detect` uses it when it runs the built-in model "
        "on the built-in clip and no `--card` or `--threshold` is given.",
        "",
    ]))
    print(json.dumps({"threshold": report["threshold"], "previous": report["previous_threshold"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
