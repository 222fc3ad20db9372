"""``patchdet export``: argparse wiring only (no heavy imports at module level)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def configure_export(parser: argparse.ArgumentParser) -> None:
    from patchdet.export.formats import FORMAT_GROUPS, FORMATS

    parser.add_argument("models", nargs="*", metavar="MODEL", help="checkpoint files or run folders (best.pt/last.pt)")
    parser.add_argument("--formats", default=None,
                        help=f"comma-separated formats; known: {', '.join(FORMATS)}; shortcuts: "
                        f"{', '.join(FORMAT_GROUPS)} (cpu: every format built and checked on a CPU)")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument("--calib", default=None, metavar="DIR",
                        help="calibration images for INT8 (a folder of images or an ImageFolder tree)")
    parser.add_argument("--eval", dest="eval_dir", default=None, metavar="DIR",
                        help="ImageFolder tree for the parity check (default: the calibration images)")
    parser.add_argument("--dense", action="store_true", default=None,
                        help="export the fully-convolutional variant (frame -> score map, stride 16)")
    parser.add_argument("--workers", type=int, default=None, help="parallel worker processes")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (0: cores // workers)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset")
    parser.add_argument("--name", default=None, help="artifact base name (one model only)")
    parser.add_argument("--calib-images", type=int, default=None, help="calibration images used")
    parser.add_argument("--eval-images", type=int, default=None, help="cap on parity images (unset: all)")
    parser.add_argument("--all-classes", action="store_true",
                        help="use every class folder of --calib / --eval, not only the model's own classes")
    parser.add_argument("--quantize-head", action="store_true",
                        help="also quantize the final FC layer and the norm/cosine arithmetic (default: float)")
    parser.add_argument("--force", action="store_true", help="re-export even when nothing changed")
    parser.add_argument("--config", default=None, metavar="YAML", help="export settings file (CLI flags override)")
    parser.add_argument("--list-formats", action="store_true", help="print the format table and exit")


def help_defaults_export() -> dict:
    """The effective defaults shown by ``patchdet export --help`` (``ExportConfig``'s, by flag name)."""
    from patchdet.export.config import CalibrationConfig, ExportConfig
    from patchdet.runtime.config import field_defaults

    defaults = field_defaults(ExportConfig)
    return {"formats": defaults["formats"], "out": defaults["out_dir"], "workers": defaults["workers"],
            "threads": defaults["threads"], "opset": defaults["opset"],
            "calib_images": field_defaults(CalibrationConfig)["num_images"]}


def build_config(args: argparse.Namespace):
    """defaults -> YAML file -> CLI flags, into one ``ExportConfig`` (``runtime.config``, as for every stage)."""
    from patchdet.export.config import ExportConfig
    from patchdet.runtime.config import build_config as resolve

    calibration: dict = {}
    if args.calib_images is not None:
        calibration["num_images"] = args.calib_images
        calibration["min_images"] = min(32, args.calib_images)
    if args.all_classes:
        calibration["classes"] = "all"
    if args.quantize_head:
        calibration["float_head"] = False
    parity = {"max_images": args.eval_images} if args.eval_images is not None else {}
    flags = {"formats": args.formats, "out_dir": args.out, "calib_dir": args.calib, "eval_dir": args.eval_dir,
             "dense": args.dense, "workers": args.workers, "threads": args.threads, "opset": args.opset,
             "name": args.name, "models": tuple(args.models) or None, "force": args.force or None,
             "calibration": calibration or None, "parity": parity or None}
    if args.config is None and flags["models"] is None:
        flags["models"] = ()
    return resolve(ExportConfig, args.config, **flags)


def _log_above_progress_bar():
    """Log lines printed above the one progress bar instead of through it (tqdm's logging redirect)."""
    import contextlib

    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        return contextlib.nullcontext()
    return logging_redirect_tqdm()


def run_export(args: argparse.Namespace) -> int:
    if args.list_formats:
        from patchdet.export.formats import format_table_markdown

        print(format_table_markdown())
        return 0
    from patchdet.export.batch import MANIFEST_JSON, exit_on_sigterm, export

    cfg = build_config(args)
    exit_on_sigterm()  # a killed run cleans its staging folders like Ctrl-C does
    with _log_above_progress_bar():
        entries = export(cfg)
    counts = {s: sum(e["status"] == s for e in entries) for s in ("ok", "skipped", "failed")}
    log.info("%d ok, %d skipped, %d failed; manifest: %s/%s", counts["ok"], counts["skipped"], counts["failed"],
             cfg.out_dir, MANIFEST_JSON)
    failed = [e for e in entries if e["status"] == "failed"]
    for entry in entries:
        if entry["status"] == "failed":
            log.error("%s %s failed: %s", entry["name"], entry["format"], entry["reason"])
        for warning in entry.get("warnings") or ():
            log.warning("%s %s: %s", entry["name"], entry["format"], warning)
    if failed and all(e.get("cause") == "input" for e in failed):  # the user's input, not the exporter
        raise ValueError(f"{failed[0]['name']} {failed[0]['format']}: {failed[0]['reason']}")
    return 1 if failed else 0
