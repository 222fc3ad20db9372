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
import signal
import sys
from collections.abc import Sequence

# name -> (module, one-line help). The module defines configure_<name> and run_<name> ('-' in a name is '_').
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("patchdet.training.cli", "train a patch classifier (DisCNN with N2O loss, POD, softmax)"),
    "evaluate": ("patchdet.training.cli", "evaluate a checkpoint or artifact on an image folder, or a detector on "
                 "labelled frames (--labels, no torch needed)"),
    "graft": ("patchdet.training.cli", "Algorithm 1: graft a DisCNN's frozen conv layers onto a 2-way softmax head"),
    "adapt": ("patchdet.training.cli", "fine-tune a DisCNN's head on a fixed camera's background plates (hard "
              "negatives)"),
    "fold-origin": ("patchdet.training.cli", "land a DisCNN's near-origin negatives exactly on the origin (last-layer "
                    "fold fitted on the run's validation split)"),
    "export": ("patchdet.export.cli", "export checkpoints to ONNX / ONNX INT8 / OpenVINO / TensorRT with model cards"),
    "detect": ("patchdet.runtime.cli", "detect objects in images, video files and camera streams (no torch needed)"),
    "calibrate": ("patchdet.runtime.cli", "choose a detection threshold from background footage or a labelled folder"),
    "bench": ("patchdet.runtime.cli", "time every backend x precision on an artifact, beside the engine's own floor"),
    "serve": ("patchdet.runtime.cli", "run many cameras in one process: shared batched detector, events over MQTT, "
              "metrics"),
}


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` with the effective default: argparse's, or the stage config's.

    Config-backed options keep ``None`` as their argparse default (``None`` means "not given", so a YAML
    ``--config`` is not overridden); their real default is attached as ``action.effective_default``.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        value = getattr(action, "effective_default", action.default)
        if not action.option_strings or "default" in text.lower() or value is argparse.SUPPRESS:
            return text
        if value is None or isinstance(value, bool) or value in ((), {}, ""):
            return text
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        return f"{text} (default: {value})".strip()


def _attach_defaults(parser: argparse.ArgumentParser, defaults: dict[str, object]) -> None:
    for action in parser._actions:
        if action.dest in defaults and action.default is None:
            action.effective_default = defaults[action.dest]


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _command_module(name: str):
    module_name = COMMANDS[name][0]
    return importlib.import_module(module_name)


def _add_global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging, including the messages of OpenVINO, NNCF and torch")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchdet",
        description="patchdet: train tiny patch detectors, export them, run them on camera streams.",
    )
    _add_global_flags(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        # -v/-q also after the subcommand; SUPPRESS keeps a flag given before it from being reset.
        _add_global_flags(sub_parser, argparse.SUPPRESS)
        if name == command:  # only the chosen command's module is imported
            module = _command_module(name)
            getattr(module, f"configure_{name.replace('-', '_')}")(sub_parser)
            help_defaults = getattr(module, f"help_defaults_{name.replace('-', '_')}", None)
            if help_defaults is not None:
                _attach_defaults(sub_parser, help_defaults())
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
        print(f"patchdet {command}: {_extra_hint(command, exc)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _setup_logging(args.verbose, args.quiet)
    stop_on_termination_signals()
    try:
        return int(getattr(_command_module(args.command), f"run_{args.command.replace('-', '_')}")(args) or 0)
    except KeyboardInterrupt:
        print(f"patchdet {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        print(f"patchdet {args.command}: {_extra_hint(args.command, exc)}", file=sys.stderr)
        return 2
    except (ValueError, OSError, CliError) as exc:
        if args.verbose:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"patchdet {args.command}: error: {message}", file=sys.stderr)
        return 2


def stop_on_termination_signals() -> None:
    """SIGTERM (``docker stop``, systemd) and SIGHUP end a run the way Ctrl-C does: outputs closed, summary written.

    A signal the parent set to be ignored (``nohup``) stays ignored.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, interrupt)


# Top-level module -> the install command that brings it (the extras of pyproject.toml).
_INSTALL_FOR_MODULE: dict[str, str] = {
    "torch": "pip install 'patchdet[train]'",
    "torchvision": "pip install 'patchdet[train]'",
    "matplotlib": "pip install 'patchdet[train]'",
    "tqdm": "pip install 'patchdet[train]'",
    "onnx": "pip install 'patchdet[export]'",
    "onnxslim": "pip install 'patchdet[export]'",
    "onnxruntime": "pip install onnxruntime",
    "openvino": "pip install 'patchdet[openvino]'",
    "nncf": "pip install 'patchdet[openvino]'",
    "tensorrt": "pip install 'patchdet[tensorrt]'",
    "cuda": "pip install 'patchdet[tensorrt]'",
    "pycuda": "pip install 'patchdet[tensorrt]'",
    "cv2": "pip install opencv-python-headless",
    "yaml": "pip install pyyaml",
    "paho": "pip install 'patchdet[serve]'",
    "prometheus_client": "pip install 'patchdet[serve]'",
}
# Without a module name: what each command needs beyond the light install.
_INSTALL_FOR_COMMAND: dict[str, str] = {
    "train": "pip install 'patchdet[train]'",
    "evaluate": "pip install 'patchdet[train]'",
    "graft": "pip install 'patchdet[train]'",
    "adapt": "pip install 'patchdet[train]'",
    "export": "pip install 'patchdet[export]'",
    "serve": "pip install 'patchdet[serve]'",
}


def _extra_hint(command: str | None, exc: ModuleNotFoundError) -> str:
    """``missing dependency 'openvino'; install it with: pip install 'patchdet[openvino]'`` for any command.

    The missing module decides the extra (an OpenVINO artifact needs ``[openvino]`` whichever command loads
    it); backend errors carry their own install command.
    """
    package = exc.name or ""
    top = package.split(".")[0]
    install = getattr(exc, "install", None) or _INSTALL_FOR_MODULE.get(top) or _INSTALL_FOR_COMMAND.get(command or "")
    if not install and top:
        install = f"pip install {top}"
    what = f"missing dependency {top!r}" if top else f"missing dependency ({str(exc).strip() or 'unknown'})"
    return f"{what}; install it with: {install}" if install else what
