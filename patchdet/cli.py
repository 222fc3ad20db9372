"""The ``patchdet`` command: a thin dispatcher with lazily imported subcommands.

Each subcommand lives in its stage as ``<stage>/cli.py`` with two functions:
``configure_<name>(parser)`` adds arguments (argparse only, no heavy imports)
and ``run_<name>(args) -> int`` builds the stage's config and calls its one
library function. Only the chosen subcommand's module is imported, so
``patchdet detect`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> (module, one-line help). The module defines configure_<name> and run_<name>.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("patchdet.training.cli", "train a patch classifier (DisCNN with N2O loss, POD, softmax)"),
    "evaluate": ("patchdet.training.cli", "evaluate a checkpoint or an exported artifact on an image folder"),
    "graft": ("patchdet.training.cli", "Algorithm 1: graft a DisCNN's frozen conv layers onto a 2-way softmax head"),
    "export": ("patchdet.export.cli", "export checkpoints to ONNX / ONNX INT8 / OpenVINO / TensorRT with model cards"),
    "detect": ("patchdet.runtime.cli", "detect objects in images, video files and camera streams (no torch needed)"),
    "calibrate": ("patchdet.runtime.cli", "choose a detection threshold from background footage or a labelled folder"),
    "serve": ("patchdet.runtime.cli", "run many cameras in one process: shared batched detector, events over MQTT, "
              "metrics"),
}


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _command_module(name: str):
    module_name = COMMANDS[name][0]
    return importlib.import_module(module_name)


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchdet",
        description="patchdet: train tiny patch detectors, export them, run them on camera streams.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            getattr(_command_module(name), f"configure_{name}")(sub_parser)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    try:
        parser = build_parser(command)
    except ModuleNotFoundError as exc:
        print(f"patchdet {command}: missing dependency {exc.name!r}; {_extra_hint(command)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(getattr(_command_module(args.command), f"run_{args.command}")(args) or 0)
    except KeyboardInterrupt:
        print(f"patchdet {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        print(f"patchdet {args.command}: missing dependency {exc.name!r}; {_extra_hint(args.command)}", file=sys.stderr)
        return 2
    except (ValueError, OSError, CliError) as exc:
        if args.verbose:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"patchdet {args.command}: error: {message}", file=sys.stderr)
        return 2


def _extra_hint(command: str | None) -> str:
    extra = {"train": "train", "evaluate": "train", "graft": "train", "export": "export", "serve": "serve"}.get(command or "", "")
    return f"install it with: pip install 'patchdet[{extra}]'" if extra else "install the missing package"
