"""The ``patchdet`` command itself: help texts, global flags, missing-dependency messages."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from patchdet.cli import COMMANDS, _extra_hint, build_parser, main
from patchdet.runtime import backends
from patchdet.runtime.card import card_path_for


def _option_helps(command: str) -> dict[str, str]:
    """Option string -> its rendered help text, for one subcommand."""
    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    formatter = sub._get_formatter()
    return {
        action.option_strings[-1]: formatter._get_help_string(action) % {"default": action.default}
        for action in sub._actions
        if action.option_strings and action.dest != "help"
    }


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_and_one_real_default(command):
    for option, text in _option_helps(command).items():
        assert text.strip(), f"{command} {option} has no help"
        assert "(default: None)" not in text, f"{command} {option}: {text}"
        assert len(re.findall(r"\bdefault\b", text)) <= 1, f"{command} {option} names its default twice: {text}"


def test_train_help_shows_the_config_defaults():
    from patchdet.training.config import TrainConfig

    helps = _option_helps("train")
    defaults = TrainConfig.__dataclass_fields__
    assert f"(default: {defaults['batch_size'].default})" in helps["--batch-size"]
    assert f"(default: {defaults['lr'].default})" in helps["--lr"]
    assert f"(default: {defaults['epochs'].default})" in helps["--epochs"]
    assert "(default: 96)" in helps["--input-size"]


def test_detect_and_export_help_show_the_config_defaults():
    assert "(default: 5.0)" in _option_helps("detect")["--log-every"]
    export = _option_helps("export")
    assert "(default: exports)" in export["--out"]
    assert "(default: 300)" in export["--calib-images"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_work_before_or_after_the_subcommand(where):
    args = ["-q", "detect", "--max-frames", "1"] if where == "before" else ["detect", "--max-frames", "1", "-q"]
    parsed = build_parser("detect").parse_args(args)
    assert parsed.quiet is True and parsed.verbose is False
    parsed = build_parser("detect").parse_args(["-v", "detect"] if where == "before" else ["detect", "-v"])
    assert parsed.verbose is True and parsed.quiet is False


@pytest.mark.parametrize(
    ("command", "module", "extra"),
    [
        ("evaluate", "openvino", "patchdet[openvino]"),
        ("detect", "openvino", "patchdet[openvino]"),
        ("export", "nncf", "patchdet[openvino]"),
        ("detect", "tensorrt", "patchdet[tensorrt]"),
        ("train", "torch", "patchdet[train]"),
        ("export", "onnxslim", "patchdet[export]"),
    ],
)
def test_missing_dependency_names_the_package_and_its_extra(command, module, extra):
    hint = _extra_hint(command, ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert f"missing dependency {module!r}" in hint
    assert f"pip install '{extra}'" in hint


@pytest.mark.parametrize("card_beside", [True, False], ids=["card-beside", "card-inside"])
@pytest.mark.parametrize("command", ["detect", "evaluate"])
def test_openvino_artifact_without_openvino_names_the_openvino_extra(command, card_beside, tmp_path, monkeypatch,
                                                                     capsys):
    model = tmp_path / "model_openvino.xml"
    model.write_text("<net/>", encoding="utf-8")
    (tmp_path / "model_openvino.bin").write_bytes(b"")
    if card_beside:
        shutil.copy(Path(backends.__file__).parents[1] / "assets" / "discnn8_automobile.card.json",
                    card_path_for(model))
    monkeypatch.setitem(sys.modules, "openvino", None)  # the light install: import openvino fails
    if command == "detect":
        image = tmp_path / "photo.png"
        cv2.imwrite(str(image), np.zeros((96, 96, 3), np.uint8))
        argv = ["detect", "--model", str(model), "--source", str(image)]
    else:
        argv = ["evaluate", str(model), "--data", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "None" not in err
    assert "'openvino'" in err and "pip install 'patchdet[openvino]'" in err


def test_tensorrt_engine_without_tensorrt_names_the_tensorrt_extra(tmp_path, monkeypatch, capsys):
    engine = tmp_path / "model_trt_fp16.engine"
    engine.write_bytes(b"\0" * 16)
    shutil.copy(Path(backends.__file__).parents[1] / "assets" / "discnn8_automobile.card.json", card_path_for(engine))
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.zeros((96, 96, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["detect", "--model", str(engine), "--source", str(image)]) == 2
    err = capsys.readouterr().err
    assert "missing dependency 'tensorrt'" in err and "pip install 'patchdet[tensorrt]'" in err
