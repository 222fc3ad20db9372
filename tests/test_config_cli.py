"""Config resolution (defaults -> YAML -> CLI) and the thin command line."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from patchdet.cli import COMMANDS, main
from patchdet.runtime.config import build_config, parse_key_values
from patchdet.training.config import AugmentConfig, TrainConfig


@dataclass(frozen=True)
class _Example:
    name: str = "a"
    size: int = 96
    ratio: float = 0.5
    flag: bool = False
    pair: tuple[int, int] = (1, 2)
    names: tuple[str, ...] = ()
    maybe: int | None = None


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("size: 64\nratio: 0.25\npair: [3, 4]\nnames: [x, y]\n")
    cfg = build_config(_Example, path, ratio=0.75, flag="true", maybe=None)
    assert cfg == _Example(size=64, ratio=0.75, flag=True, pair=(3, 4), names=("x", "y"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"bogus": 1}, "unknown config key"),
        ({"size": "big"}, "expects a number"),
        ({"size": 1.5}, "expects an integer"),
        ({"pair": [1]}, "expects 2 values"),
        ({"flag": "maybe"}, "expects true/false"),
    ],
)
def test_bad_config_values_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config(_Example, **overrides)


def test_nested_dataclass_from_yaml(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("data: d\naugment: {hflip: false, crop_scale: [0.9, 1.0]}\n")
    cfg = build_config(TrainConfig, path)
    assert cfg.augment == AugmentConfig(hflip=False, crop_scale=(0.9, 1.0))


def test_parse_key_values():
    assert parse_key_values(["scale=2", "name=x", "on=true"]) == {"scale": 2, "name": "x", "on": True}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_key_values(["scale"])


def test_missing_config_file_is_one_line_error(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command):
    completed = subprocess.run([sys.executable, "-m", "patchdet", command, "--help"], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "usage: patchdet" in completed.stdout


def test_train_and_evaluate_help_do_not_import_torch():
    code = ("import sys\nfrom patchdet.cli import build_parser\nbuild_parser('train'); build_parser('evaluate')\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
