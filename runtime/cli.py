"""``patchdet detect`` and ``patchdet calibrate``: argparse only; the work is in ``runtime.run`` / ``runtime.calibrate``.

Nothing heavy is imported at module level (and never torch).
"""

from __future__ import annotations

import argparse
import json
import sys

_BACKENDS = ("auto", "onnxruntime", "openvino", "opencv", "tensorrt")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid: expected a positive integer")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _add_detector_args(group) -> None:
    """The detector settings every command that runs a model shares (``DetectorSettings``)."""
    group.add_argument("--card", metavar="JSON", help="use this model card instead of the artifact's own "
                       "(e.g. one written by patchdet calibrate)")
    group.add_argument("--threads", type=_positive_int, metavar="N", help="inference threads (unset: the engine's default)")
    group.add_argument("--tile", type=int, metavar="N", help="tile side in pixels of the frame scaled to the "
                       "card's reference height (360 for the built-in model: --tile 32 is 96 px of a 1080p frame; "
                       "frame pixels for cards without one), resized to the model input (unset: the card's tiling)")
    group.add_argument("--stride", type=int, metavar="N", help="step between tiles in pixels (default: --tile)")
    group.add_argument("--scales", metavar="S[,S...]", help="scales to tile the frame at, e.g. 1,0.5 (0.5 = tiles "
                       "twice as large; unset: the card's)")
    group.add_argument("--dense", action="store_true", default=None,
                       help="score every window of a dense (fully-convolutional) export in one pass")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="ARTIFACT", help="exported model (.onnx/.xml/.engine) with its card "
                       "(default: the built-in DisCNN-8 car model)")
    group.add_argument("--backend", choices=_BACKENDS, help="inference engine (auto says what it picked)")
    _add_detector_args(group)
    group.add_argument("--config", metavar="YAML", help="settings file; command-line options override it")


def configure_detect(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``patchdet detect``."""
    parser.epilog = "With no --model and no --source it runs the built-in car model on the built-in street clip."
    _add_model_args(parser)
    parser.add_argument("--source", metavar="SRC", help="camera index (0), video file, rtsp:// or http:// URL, "
                        "image, folder or glob of images (default: the built-in sample clip)")
    parser.add_argument("--threshold", type=_number, metavar="T", help="decision threshold (default: the model card's)")
    parser.add_argument("--merge", choices=("connected", "nms", "fuse", "none"),
                        help="how positive tiles become boxes (default: the model card's)")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    parser.add_argument("--vid-stride", type=int, metavar="N", help="process every N-th frame")
    parser.add_argument("--max-fps", type=_number, metavar="F", help="process at most F frames per second (unset: no cap)")
    parser.add_argument("--live", dest="drop_frames", action="store_true", default=None,
                        help="keep only the newest frame also for files (play them in real time)")
    parser.add_argument("--reconnect-timeout", dest="reconnect_timeout_s", type=_number, metavar="S",
                        help="give up a lost live stream after S seconds (default: keep retrying)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--jsonl", metavar="FILE", help="detections per frame as JSON Lines")
    out.add_argument("--save-video", metavar="FILE", help="annotated video (.mp4 mp4v, .avi MJPG) of a video or "
                     "stream; plays at the source's real speed")
    out.add_argument("--save-images", metavar="DIR", help="one annotated image per frame in DIR; photos keep their "
                     "file name, size and format")
    out.add_argument("--summary", metavar="FILE", help="run summary JSON (also printed)")
    out.add_argument("--crops", metavar="DIR", help="save a crop of every detection in DIR")
    out.add_argument("--show", action="store_true", default=None, help="show a window (needs GUI OpenCV); q stops")
    out.add_argument("--heatmap", action="store_true", default=None, help="blend the patch score heatmap in")
    out.add_argument("--log-every", dest="log_every_s", type=_number, metavar="S",
                     help="progress line every S seconds (0: never)")
    gate = parser.add_argument_group("fixed cameras")
    gate.add_argument("--motion-gate", action="store_true", default=None,
                      help="re-score only tiles (a dense model: windows) whose pixels changed since they were last "
                           "scored")
    gate.add_argument("--motion-threshold", type=_number, metavar="G",
                      help="mean grey-level change that re-scores a tile")
    gate.add_argument("--motion-refresh", type=_positive_int, metavar="N",
                      help="re-score every tile every N frames")
    parser.add_argument("--io-nice", dest="io_nice", type=int, metavar="N",
                        help="nice value 0-19 of the reader and writer threads, so inference keeps the CPU first "
                             "(Linux; 0: same priority as inference)")


def help_defaults_detect() -> dict:
    """The effective defaults shown by ``patchdet detect --help`` (``DetectConfig``'s)."""
    from patchdet.runtime.config import field_defaults
    from patchdet.runtime.run import DetectConfig

    return field_defaults(DetectConfig)


def run_detect(args: argparse.Namespace) -> int:
    """Build the ``DetectConfig`` and run ``detect``; prints the summary JSON."""
    from patchdet.runtime.run import detect, load_detect_config

    keys = ("model", "card", "source", "backend", "threads", "threshold", "tile", "stride", "scales", "dense",
            "merge", "max_frames", "vid_stride", "max_fps", "drop_frames", "reconnect_timeout_s", "jsonl",
            "save_video", "save_images", "summary", "crops", "show", "heatmap", "log_every_s", "io_nice", "motion_gate",
            "motion_threshold", "motion_refresh")
    cfg = load_detect_config(args.config, **{k: getattr(args, k, None) for k in keys})
    summary = detect(cfg)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 130 if summary.get("interrupted") else 0


def configure_calibrate(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``patchdet calibrate``."""
    parser.epilog = ("Examples: patchdet calibrate --background empty_street.mp4 --false-alarms 1 --per hour; "
                     "patchdet calibrate --labelled patches/ --target-precision 0.95")
    _add_model_args(parser)
    cam = parser.add_argument_group("footage of your fixed camera (traffic included, no labels)")
    cam.add_argument("--video", metavar="SRC", help="video or stream of the camera: its background plate sets the "
                     "threshold and its moving objects fit a perspective tiling; both go into the card")
    cam.add_argument("--plate-margin", dest="plate_margin", type=_number, metavar="M",
                     help="threshold this fraction above the plate's highest tile score (default 0.1)")
    bg = parser.add_argument_group("background footage (no target in it)")
    bg.add_argument("--background", metavar="SRC", help="video, image folder, glob or stream without any target")
    bg.add_argument("--false-alarms", type=_number, metavar="R", help="alarms allowed per --per (0: "
                    "silence every background patch)")
    bg.add_argument("--per", choices=("frame", "hour"), help="unit of --false-alarms")
    bg.add_argument("--fps", type=_number, help="frame rate of the footage, for --per hour when the source has none")
    bg.add_argument("--max-frames", type=int, metavar="N", help="use at most N frames")
    bg.add_argument("--vid-stride", type=int, metavar="N", help="use every N-th frame")
    lab = parser.add_argument_group("labelled patches")
    lab.add_argument("--labelled", metavar="DIR", help="ImageFolder: one sub-folder per class")
    lab.add_argument("--positive-class", metavar="NAME", help="sub-folder of the positives (default: the card's)")
    lab.add_argument("--negative-classes", metavar="A,B", help="sub-folders of the negatives (default: all others)")
    lab.add_argument("--target-precision", type=_number, metavar="P", help="reach at least this precision")
    lab.add_argument("--target-recall", type=_number, metavar="R", help="keep at least this recall")
    out = parser.add_argument_group("outputs")
    out.add_argument("--out", "--output", dest="output", metavar="JSON",
                     help="calibrated card copy (default: ./<model>.calibrated.card.json); use it with "
                          "patchdet detect --card JSON")
    out.add_argument("--report", metavar="JSON", help="calibration report")


def help_defaults_calibrate() -> dict:
    """The effective defaults shown by ``patchdet calibrate --help`` (``CalibrateConfig``'s)."""
    from patchdet.runtime.calibrate import CalibrateConfig
    from patchdet.runtime.config import field_defaults

    return field_defaults(CalibrateConfig)


def run_calibrate(args: argparse.Namespace) -> int:
    """Build the ``CalibrateConfig`` and run ``calibrate``; prints the report JSON."""
    from patchdet.runtime.calibrate import calibrate, load_calibrate_config

    keys = ("model", "card", "backend", "threads", "tile", "stride", "scales", "dense", "video", "plate_margin",
            "background", "false_alarms",
            "per", "fps", "max_frames", "vid_stride", "labelled", "positive_class", "negative_classes",
            "target_precision", "target_recall", "output", "report")
    cfg = load_calibrate_config(args.config, **{k: getattr(args, k, None) for k in keys})
    report = calibrate(cfg)
    json.dump(report, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def add_evaluate_detections_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``patchdet evaluate MODEL --labels SET.json`` (detection metrics; added to ``evaluate``)."""
    group = parser.add_argument_group("detection evaluation on labelled frames (--labels; runs without torch)")
    group.add_argument("--labels", metavar="JSON", help="COCO detection file with a 'car' category: report AP50, "
                       "recall, precision, false alarms per frame, detections on car-free frames")
    group.add_argument("--images", metavar="DIR", help="folder the image file names are relative to "
                       "(default: the JSON's folder)")
    _add_detector_args(group)
    group.add_argument("--threshold", type=_number, metavar="T", help="decision threshold (default: the card's)")
    group.add_argument("--merge", choices=("connected", "nms", "fuse", "none"),
                       help="how positive tiles become boxes (default: the card's)")


def run_evaluate_detections(args: argparse.Namespace) -> int:
    """Build the ``DetectionEvalConfig``, evaluate, print a short summary and write ``--json`` atomically."""
    from patchdet.runtime.atomic import atomic_write_json
    from patchdet.runtime.config import build_config
    from patchdet.runtime.evaluation import DetectionEvalConfig, evaluate_detections
    from patchdet.runtime.settings import DetectorSettings

    keys = ("card", "threads", "tile", "stride", "scales", "threshold", "merge", "dense")
    detector = build_config(DetectorSettings, None, model=args.model, backend=args.backend,
                            **{k: getattr(args, k, None) for k in keys})
    report = evaluate_detections(DetectionEvalConfig(labels=args.labels, images_dir=args.images, detector=detector))
    if args.json:
        atomic_write_json(args.json, report)

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    print(f"{report['frames']} frames ({report['car_free_frames']} car-free), {report['boxes']} cars: "
          f"AP50 {fmt(report['ap50'])}, recall {fmt(report['recall'])}, precision {fmt(report['precision'])}, "
          f"false alarms/frame {fmt(report['false_alarms_per_frame'])}, "
          f"detections on car-free frames {report['empty_frame_detections']}, {fmt(report['fps'])} fps")


def _fraction(text: str) -> float:
    """``10%`` or ``0.1`` -> 0.1."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction: expected e.g. 10% or 0.1") from None


def configure_bench(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``patchdet bench``."""
    parser.epilog = ("Examples: patchdet bench ; patchdet bench --out bench/ ; patchdet bench exports/ --frames 720p,1080p,4k "
                     "--labelled data/test --out bench/ ; patchdet bench model.onnx --out now/ --compare "
                     "before/bench.json --tolerance 10%%  (exit 1 on a regression)")
    parser.add_argument("models", nargs="*", metavar="MODEL", help="artifacts (.onnx/.xml/.engine with cards) or "
                        "export folders (default: the built-in model)")
    parser.add_argument("--out", metavar="DIR", help="folder for bench.json/csv/md/png (default: a new "
                        "patchdet-bench-DATE-TIME folder here)")
    parser.add_argument("--frames", metavar="F[,F...]", default="1080p", help="frame sizes: 720p, 1080p, 4k or WxH "
                        "(default 1080p)")
    parser.add_argument("--tilings", metavar="T[,T...]", default="tiled,card",
                        help="tiled (--tile every --stride), card (the card's own), dense (default tiled,card)")
    parser.add_argument("--tile", type=_positive_int, metavar="N", help="tile side for 'tiled', in pixels at the "
                        "card's reference height like detect --tile (default: model input)")
    parser.add_argument("--stride", type=_positive_int, metavar="N", help="stride for 'tiled' (default: --tile)")
    parser.add_argument("--scales", metavar="S[,S...]", help="scales for 'tiled', e.g. 1 (every tile once at frame "
                        "scale; default: the card's)")
    parser.add_argument("--backends", metavar="B[,B...]", help="only these backends (default: all that read the model)")
    parser.add_argument("--threads", type=_positive_int, metavar="N", help="inference threads (default: engine's)")
    parser.add_argument("--repeats", type=int, default=30, metavar="N", help="timed calls per row (default 30)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed calls first (default 3)")
    parser.add_argument("--max-seconds", type=_number, default=10.0, metavar="S",
                        help="time budget of one row's timed calls (default 10)")
    parser.add_argument("--clip", metavar="VIDEO", help="frames to detect on (default: the built-in clip)")
    parser.add_argument("--clip-frames", type=int, default=30, metavar="N", help="clip frames read (default 30)")
    parser.add_argument("--labelled", metavar="DIR", help="ImageFolder of patches: F1 at the card threshold")
    parser.add_argument("--labels", metavar="JSON", help="COCO JSON of labelled frames (as patchdet evaluate "
                        "--labels): AP50 per backend, precision and tiling")
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the engine-alone floor")
    parser.add_argument("--motion-gate", action="store_true", help="also measure the motion-gated tile cache")
    parser.add_argument("--compare", metavar="JSON", help="a previous bench.json: exit 1 on a regression")
    parser.add_argument("--tolerance", type=_fraction, default=0.10, metavar="PCT",
                        help="allowed slowdown for --compare (default 10%%)")


def run_bench(args: argparse.Namespace) -> int:
    """Build the ``BenchConfig`` and run ``run_bench``; prints the table; 1 on a --compare regression."""
    from patchdet.runtime.bench import BenchConfig
    from patchdet.runtime.bench import run_bench as bench
    from patchdet.runtime.bench_report import markdown_table

    def split(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())

    try:
        scales = None if args.scales is None else tuple(float(v) for v in split(args.scales))
    except ValueError:
        raise ValueError(f"scales {args.scales!r} are invalid: expected numbers, e.g. 1 or 1,0.5") from None
    cfg = BenchConfig(out=args.out, models=tuple(args.models), frames=split(args.frames) or (),
                      tilings=split(args.tilings) or (), tile=args.tile, stride=args.stride, scales=scales,
                      backends=split(args.backends), threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                      max_seconds=args.max_seconds, clip=args.clip, clip_frames=args.clip_frames,
                      labelled=args.labelled, labels=args.labels, floor=args.floor, motion_gate=args.motion_gate,
                      compare=args.compare,
                      tolerance=args.tolerance)
    report = bench(cfg)
    sys.stdout.write(markdown_table(report["rows"]) + "\n")
    comparison = report.get("comparison")
    if comparison:
        for line in comparison["notes"]:
            sys.stdout.write(f"compare: {line}\n")
        if comparison["regressions"] or not comparison["matched"]:
            return 1
    return 0


def configure_serve(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``patchdet serve``."""
    parser.epilog = ("The site file lists the cameras, models, events, MQTT/webhook sinks and the metrics port; "
                     "see runtime/service_config.py and docker/site.yaml.")
    parser.add_argument("--config", required=True, metavar="YAML", help="site file")
    parser.add_argument("--duration", dest="duration_s", type=_number, metavar="S",
                        help="stop after S seconds (default: run until stopped)")
    parser.add_argument("--output-dir", metavar="DIR", help="events.jsonl and snapshots (default: the site file's)")
    parser.add_argument("--summary", metavar="FILE", help="also write the run summary JSON here")


def run_serve(args: argparse.Namespace) -> int:
    """Load the site file and run the service; prints the summary JSON when it stops."""
    from patchdet.runtime.atomic import atomic_write_text
    from patchdet.runtime.service import serve
    from patchdet.runtime.service_config import load_site_config

    site = load_site_config(args.config, duration_s=args.duration_s, output_dir=args.output_dir)
    summary = serve(site)
    text = json.dumps(summary, indent=2)
    if args.summary:
        atomic_write_text(args.summary, text + "\n")
    sys.stdout.write(text + "\n")
    return 0
