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


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="ARTIFACT", help="exported model (.onnx/.xml/.engine) with its card "
                       "(default: the built-in DisCNN-8 car model)")
    group.add_argument("--card", metavar="JSON", help="use this model card instead of the artifact's own "
                       "(e.g. one written by patchdet calibrate)")
    group.add_argument("--backend", choices=_BACKENDS, help="inference engine (default: auto, which says what it picked)")
    group.add_argument("--threads", type=_positive_int, metavar="N", help="inference threads")
    group.add_argument("--tile", type=int, metavar="N", help="tile side in frame pixels, resized to the model input")
    group.add_argument("--stride", type=int, metavar="N", help="step between tiles in pixels (default: --tile)")
    group.add_argument("--scales", metavar="S[,S...]", help="scales to tile the frame at, e.g. 1,0.5 (0.5 = tiles "
                       "twice as large)")
    group.add_argument("--dense", action="store_true", default=None,
                       help="score every window of a dense (fully-convolutional) export in one pass")
    group.add_argument("--config", metavar="YAML", help="settings file; command-line options override it")


def configure_detect(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``patchdet detect``."""
    parser.epilog = "With no --model and no --source it runs the built-in car model on the built-in street clip."
    _add_model_args(parser)
    parser.add_argument("--source", metavar="SRC", help="camera index (0), video file, rtsp:// or http:// URL, "
                        "image, folder or glob of images (default: the built-in sample clip)")
    parser.add_argument("--threshold", type=_number, metavar="T", help="decision threshold (default: the model card's)")
    parser.add_argument("--merge", choices=("connected", "nms", "none"), help="how positive tiles become boxes")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    parser.add_argument("--vid-stride", type=int, metavar="N", help="process every N-th frame")
    parser.add_argument("--max-fps", type=_number, metavar="F", help="process at most F frames per second")
    parser.add_argument("--live", dest="drop_frames", action="store_true", default=None,
                        help="keep only the newest frame also for files (play them in real time)")
    parser.add_argument("--reconnect-timeout", dest="reconnect_timeout_s", type=_number, metavar="S",
                        help="give up a lost live stream after S seconds (default: keep retrying)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--jsonl", metavar="FILE", help="detections per frame as JSON Lines")
    out.add_argument("--save-video", metavar="FILE", help="annotated video (.mp4 mp4v, .avi MJPG)")
    out.add_argument("--summary", metavar="FILE", help="run summary JSON (also printed)")
    out.add_argument("--crops", metavar="DIR", help="save a crop of every detection in DIR")
    out.add_argument("--show", action="store_true", default=None, help="show a window (needs GUI OpenCV); q stops")
    out.add_argument("--heatmap", action="store_true", default=None, help="blend the patch score heatmap in")
    out.add_argument("--log-every", dest="log_every_s", type=_number, metavar="S",
                     help="progress line every S seconds (0: never; default 5)")
    parser.add_argument("--io-nice", dest="io_nice", type=int, metavar="N",
                        help="nice value 0-19 of the reader and writer threads, so inference keeps the CPU first "
                             "(Linux; default 19, 0: same priority as inference)")


def run_detect(args: argparse.Namespace) -> int:
    """Build the ``DetectConfig`` and run ``detect``; prints the summary JSON."""
    from patchdet.runtime.run import detect, load_detect_config

    keys = ("model", "card", "source", "backend", "threads", "threshold", "tile", "stride", "scales", "dense",
            "merge", "max_frames", "vid_stride", "max_fps", "drop_frames", "reconnect_timeout_s", "jsonl",
            "save_video", "summary", "crops", "show", "heatmap", "log_every_s", "io_nice")
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
    bg = parser.add_argument_group("background footage (no target in it)")
    bg.add_argument("--background", metavar="SRC", help="video, image folder, glob or stream without any target")
    bg.add_argument("--false-alarms", type=_number, metavar="R", help="alarms allowed per --per (default 0: "
                    "silence every background patch)")
    bg.add_argument("--per", choices=("frame", "hour"), help="unit of --false-alarms (default: frame)")
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
    out.add_argument("--output", metavar="JSON", help="calibrated card copy (default: ./<model>.calibrated.card.json)")
    out.add_argument("--report", metavar="JSON", help="calibration report")


def run_calibrate(args: argparse.Namespace) -> int:
    """Build the ``CalibrateConfig`` and run ``calibrate``; prints the report JSON."""
    from patchdet.runtime.calibrate import calibrate, load_calibrate_config

    keys = ("model", "card", "backend", "threads", "tile", "stride", "scales", "dense", "background", "false_alarms",
            "per", "fps", "max_frames", "vid_stride", "labelled", "positive_class", "negative_classes",
            "target_precision", "target_recall", "output", "report")
    cfg = load_calibrate_config(args.config, **{k: getattr(args, k, None) for k in keys})
    report = calibrate(cfg)
    json.dump(report, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
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
