"""The export manifest flags artifacts worth a look; --formats shortcuts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from patchdet.cli import main
from patchdet.export.batch import export, manifest_markdown
from patchdet.export.config import ExportConfig, ParityConfig
from patchdet.export.formats import CPU_FORMATS, FORMATS, expand_formats
from patchdet.export.parity import quality_warnings

# The shipped POD model through OpenVINO INT8: passed parity (drop within 0.01) yet worth flagging.
POD_INT8 = {"score_rel": 0.03, "decision_agreement": 0.958, "threshold": 0.0, "f1_torch": None, "f1_artifact": None,
            "accuracy_torch": 0.737, "accuracy_artifact": 0.728, "passed": True}


def _entry(fmt: str, parity: dict, warnings: list[str]) -> dict:
    return {"name": "pod", "format": fmt, "size_bytes": 4096, "seconds": 1.0, "status": "ok", "reason": "",
            "parity": parity, "warnings": warnings}


def test_an_accuracy_drop_within_tolerance_and_low_agreement_are_flagged():
    warnings = quality_warnings(POD_INT8, ParityConfig())
    assert any("acc drops 0.7370 -> 0.7280" in w for w in warnings)
    assert any("95.8 %" in w for w in warnings)


def test_a_model_that_cannot_detect_is_flagged():
    parity = {"score_rel": 0.0, "decision_agreement": 1.0, "threshold": 1.0, "f1_torch": 0.0, "f1_artifact": 0.0}
    assert quality_warnings(parity, ParityConfig()) == ["poor model: F1 0.000 < 0.5 at threshold 1"]


def test_a_good_fp32_artifact_has_no_warning():
    parity = {"score_rel": 1e-7, "decision_agreement": 1.0, "threshold": 1.0, "f1_torch": 0.969, "f1_artifact": 0.969}
    assert quality_warnings(parity, ParityConfig()) == []


def test_manifest_shows_accuracy_and_agreement_for_every_head_and_marks_flagged_rows():
    good = {"score_rel": 1e-7, "decision_agreement": 1.0, "threshold": 1.0, "f1_torch": 0.969, "f1_artifact": 0.969}
    text = manifest_markdown([_entry("openvino-int8", POD_INT8, quality_warnings(POD_INT8, ParityConfig())),
                              _entry("onnx", good, [])], 2.0, 1)
    pod_row, good_row = (line for line in text.splitlines() if line.startswith("| pod |"))
    assert "acc 0.7370->0.7280" in pod_row and "agree 95.80 %" in pod_row and "(check)" in pod_row
    assert "F1 0.9690->0.9690" in good_row and "agree 100.00 %" in good_row and "(check)" not in good_row


def test_export_of_a_model_that_detects_nothing_is_flagged(tmp_path):
    from tests.export_helpers import make_checkpoint, make_image_folder

    checkpoint = make_checkpoint(tmp_path / "blind.pt", threshold=1e9)  # nothing is ever above it
    evaluation = make_image_folder(tmp_path / "eval", per_class=8, seed=2)
    out = tmp_path / "out"
    entries = export(ExportConfig(models=(str(checkpoint),), formats=("onnx",), out_dir=str(out), eval_dir=str(evaluation)))
    assert entries[0]["status"] == "ok"
    assert any(w.startswith("poor model: F1 0.000") for w in entries[0]["warnings"])
    assert json.loads((out / "manifest.json").read_text())[0]["warnings"] == entries[0]["warnings"]
    assert "poor model" in (Path(out) / "manifest.md").read_text()


@pytest.mark.parametrize(("names", "expected"), [
    (("cpu",), CPU_FORMATS),
    (("all",), tuple(FORMATS)),
    (("onnx", "cpu"), CPU_FORMATS),  # duplicates dropped, order kept
    (("openvino",), ("openvino",)),
])
def test_format_shortcuts(names, expected):
    assert expand_formats(names) == expected


def test_config_expands_format_shortcuts(tmp_path):
    assert ExportConfig(models=("m.pt",), formats=("cpu",), calib_dir=str(tmp_path)).formats == CPU_FORMATS


@pytest.mark.slow
@pytest.mark.openvino
@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="needs the [openvino] extra (nncf)")
def test_nncf_chatter_is_silenced_without_verbose(tmp_path, capfd):
    from tests.export_helpers import make_checkpoint, make_image_folder

    argv = ["export", str(make_checkpoint(tmp_path / "car.pt")), "--formats", "openvino-int8", "--out",
            str(tmp_path / "out"), "--calib", str(make_image_folder(tmp_path / "calib", per_class=12, seed=1))]
    assert main(argv) == 0
    out, err = capfd.readouterr()
    for noise in ("INFO:nncf", "Statistics collection", "No CUDA runtime"):
        assert noise not in out and noise not in err


def test_a_format_named_twice_without_shortcuts_is_still_refused():
    assert expand_formats(("onnx", "onnx")) == ("onnx", "onnx")
