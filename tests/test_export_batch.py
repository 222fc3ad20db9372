"""Batch export through the CLI: manifest, skipping unchanged work, parallel workers, and bad input."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from patchdet.cli import main
from patchdet.export.batch import export
from patchdet.export.config import ExportConfig
from patchdet.export.formats import FORMATS
from tests.export_helpers import make_checkpoint, make_image_folder


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    return {
        "ckpt": make_checkpoint(tmp_path / "car.pt"),
        "calib": make_image_folder(tmp_path / "calib", per_class=12, seed=1),
        "eval": make_image_folder(tmp_path / "eval", per_class=8, seed=2),
        "out": tmp_path / "out",
    }


def _manifest(out: Path) -> list[dict]:
    return json.loads((out / "manifest.json").read_text())


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".staging-*"))


def test_cli_exports_writes_manifest_and_skips_unchanged(workspace, capsys):
    argv = ["export", str(workspace["ckpt"]), "--formats", "onnx,onnx-int8", "--out", str(workspace["out"]),
            "--calib", str(workspace["calib"]), "--eval", str(workspace["eval"])]
    assert main(argv) == 0
    first = _manifest(workspace["out"])
    assert [(e["format"], e["status"]) for e in first] == [("onnx", "ok"), ("onnx-int8", "ok")]
    assert all(e["size_bytes"] > 0 and e["seconds"] > 0 and e["parity"]["passed"] for e in first)
    assert (workspace["out"] / "manifest.md").read_text().count("| car |") == 2
    assert (workspace["out"] / "export_config.json").is_file()
    mtime = Path(first[0]["path"]).stat().st_mtime_ns
    assert main(argv) == 0  # same inputs and settings: nothing is rebuilt
    second = _manifest(workspace["out"])
    assert [e["status"] for e in second] == ["skipped", "skipped"]
    assert "unchanged" in second[0]["reason"] and second[0]["parity"] == first[0]["parity"]
    assert Path(second[0]["path"]).stat().st_mtime_ns == mtime
    assert main([*argv, "--force"]) == 0
    assert [e["status"] for e in _manifest(workspace["out"])] == ["ok", "ok"]
    assert _leftovers(workspace["out"]) == []


def test_changed_checkpoint_is_re_exported(workspace):
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("onnx",), out_dir=str(workspace["out"]),
                       eval_dir=str(workspace["eval"]))
    assert export(cfg)[0]["status"] == "ok"
    make_checkpoint(workspace["ckpt"], seed=7)  # new weights, same file name
    assert export(cfg)[0]["status"] == "ok"


@pytest.mark.slow  # spawns two worker processes that each import torch
def test_parallel_workers_export_several_models(workspace, tmp_path):
    models = [str(make_checkpoint(tmp_path / f"m{i}.pt", seed=i)) for i in range(2)]
    cfg = ExportConfig(models=tuple(models), formats=("onnx", "onnx-int8"), out_dir=str(workspace["out"]),
                       calib_dir=str(workspace["calib"]), workers=2)
    entries = export(cfg)
    assert [(Path(e["model"]).name, e["format"], e["status"]) for e in entries] == [
        ("m0.pt", "onnx", "ok"), ("m0.pt", "onnx-int8", "ok"), ("m1.pt", "onnx", "ok"), ("m1.pt", "onnx-int8", "ok")
    ]
    # Without --eval, an ImageFolder --calib tree is the parity set.
    assert entries[0]["parity"]["eval"]["source"] == str(workspace["calib"])


def test_tensorrt_is_skipped_with_reason_and_trtexec_command(workspace):
    from patchdet.export.tensorrt import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present: the engine is really built (see test_tensorrt_engine)")
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("tensorrt-int8",), out_dir=str(workspace["out"]),
                       calib_dir=str(workspace["calib"]))
    entries = export(cfg)
    # The QDQ ONNX it is built from is added and exported first.
    assert [(e["format"], e["status"]) for e in entries] == [("onnx-int8", "ok"), ("tensorrt-int8", "skipped")]
    assert "pip install 'patchdet[tensorrt]'" in entries[1]["reason"] or "CUDA" in entries[1]["reason"]
    script = (workspace["out"] / "car_trt_int8.trtexec.sh").read_text()
    assert "trtexec --onnx=car_int8.onnx --saveEngine=car_trt_int8.engine" in script
    assert "--minShapes=input:1x3x32x32" in script and "--stronglyTyped" in script


@pytest.mark.tensorrt
@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is None, reason="needs TensorRT and a GPU")
def test_tensorrt_engine(workspace):
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("onnx", "tensorrt-fp16"),
                       out_dir=str(workspace["out"]), eval_dir=str(workspace["eval"]))
    entries = export(cfg)
    assert entries[1]["status"] == "ok", entries[1]["reason"]
    assert Path(entries[1]["path"]).suffix == ".engine"


# -- bad input ---------------------------------------------------------------------------------------------


def test_missing_checkpoint_fails_its_entries_but_not_the_others(workspace, tmp_path, caplog):
    argv = ["export", str(tmp_path / "nope.pt"), str(workspace["ckpt"]), "--formats", "onnx",
            "--out", str(workspace["out"]), "--eval", str(workspace["eval"])]
    assert main(argv) == 2  # the user's input (issue 12): the other model is still exported, the manifest written
    entries = _manifest(workspace["out"])
    assert [e["status"] for e in entries] == ["failed", "ok"]
    assert "nope.pt does not exist" in entries[0]["reason"]


def test_truncated_checkpoint_is_reported(workspace, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(workspace["ckpt"].read_bytes()[:2000])
    cfg = ExportConfig(models=(str(broken),), formats=("onnx",), out_dir=str(workspace["out"]))
    entry = export(cfg)[0]
    assert entry["status"] == "failed" and "cannot be read" in entry["reason"]
    assert not (workspace["out"] / "broken.onnx").exists() and _leftovers(workspace["out"]) == []


def test_unknown_architecture_is_reported(workspace, tmp_path):
    import torch

    payload = torch.load(workspace["ckpt"], weights_only=True)
    payload["arch"] = "resnet9000"
    torch.save(payload, tmp_path / "alien.pt")
    entry = export(ExportConfig(models=(str(tmp_path / "alien.pt"),), out_dir=str(workspace["out"])))[0]
    assert entry["status"] == "failed"
    assert "unknown architecture 'resnet9000'" in entry["reason"] and "discnn8" in entry["reason"]


def test_unknown_format_lists_the_known_ones(workspace, capsys):
    assert main(["export", str(workspace["ckpt"]), "--formats", "onnx,coreml", "--out", str(workspace["out"])]) == 2
    err = capsys.readouterr().err
    assert "unknown format 'coreml'" in err
    for name in FORMATS:
        assert name in err


def test_int8_without_calibration_is_refused(workspace, capsys):
    assert main(["export", str(workspace["ckpt"]), "--formats", "onnx-int8", "--out", str(workspace["out"])]) == 2
    err = capsys.readouterr().err
    assert "needs calibration images" in err and "at least 32 images" in err
    assert not workspace["out"].exists()


def test_too_few_calibration_images_are_refused(workspace, tmp_path):
    few = make_image_folder(tmp_path / "few", per_class=3)
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("onnx-int8",), out_dir=str(workspace["out"]),
                       calib_dir=str(few))
    entry = export(cfg)[0]
    assert entry["status"] == "failed"
    assert "has 9 image file(s): INT8 needs at least 32" in entry["reason"]


def test_calibration_images_of_another_size_are_resized_and_recorded(workspace, tmp_path):
    big = make_image_folder(tmp_path / "big", per_class=12, size=48)
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("onnx-int8",), out_dir=str(workspace["out"]),
                       calib_dir=str(big), eval_dir=str(workspace["eval"]))
    entry = export(cfg)[0]
    assert entry["status"] == "ok", entry["reason"]
    card = json.loads(Path(entry["path"]).with_name("car_int8.card.json").read_text())
    assert card["export"]["calibration"]["resized"] == "resized 48x48 (36) to 32x32"


def test_full_disk_leaves_no_artifact_under_the_final_name(workspace, monkeypatch):
    import onnx

    real_save = onnx.save

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full_disk)
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("onnx",), out_dir=str(workspace["out"]),
                       eval_dir=str(workspace["eval"]))
    entry = export(cfg)[0]
    monkeypatch.setattr(onnx, "save", real_save)
    assert entry["status"] == "failed" and "No space left on device" in entry["reason"]
    assert not (workspace["out"] / "car.onnx").exists()
    assert not (workspace["out"] / "car.card.json").exists()
    assert _leftovers(workspace["out"]) == []


def test_interrupted_run_leaves_nothing_half_written(workspace, monkeypatch):
    import patchdet.export.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "check_parity", interrupted)  # Ctrl-C after the file was built
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("onnx",), out_dir=str(workspace["out"]),
                       eval_dir=str(workspace["eval"]))
    with pytest.raises(KeyboardInterrupt):
        export(cfg)
    assert not (workspace["out"] / "car.onnx").exists()
    assert _leftovers(workspace["out"]) == []


def test_stale_staging_folders_are_cleaned(workspace):
    stale = workspace["out"] / ".staging-car-onnx-killed"
    stale.mkdir(parents=True)
    (stale / "car.onnx").write_bytes(b"half")
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("onnx",), out_dir=str(workspace["out"]),
                       eval_dir=str(workspace["eval"]))
    assert export(cfg)[0]["status"] == "ok"
    assert not stale.exists()


def test_parity_failure_is_not_shipped_under_the_final_name(workspace):
    from patchdet.export.config import ParityConfig

    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("onnx",), out_dir=str(workspace["out"]),
                       eval_dir=str(workspace["eval"]), parity=ParityConfig(fp32_rel_tol=0.0))
    entry = export(cfg)[0]
    if entry["parity"]["score_rel"] == 0.0:
        pytest.skip("ONNX Runtime reproduced torch bit for bit: nothing to fail")
    assert entry["status"] == "failed" and entry["reason"].startswith("parity: score relative error")
    assert not (workspace["out"] / "car.onnx").exists()
    assert Path(entry["path"]) == workspace["out"] / "failed" / "car.onnx"


def test_missing_openvino_names_the_extra(workspace, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("openvino", "nncf") else real_find_spec(name, *a))
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("openvino",), out_dir=str(workspace["out"]))
    with pytest.raises(ValueError, match=r"format openvino needs openvino, which is not installed: "
                                         r"pip install 'patchdet\[openvino\]'"):
        export(cfg)


def test_config_rejects_bad_values(workspace):
    with pytest.raises(ValueError, match="workers 0"):
        ExportConfig(models=("a.pt",), workers=0)
    with pytest.raises(ValueError, match="no model given"):
        ExportConfig(models=())
    with pytest.raises(ValueError, match="calibration folder .* does not exist"):
        ExportConfig(models=("a.pt",), formats=("onnx-int8",), calib_dir="/no/such/dir")
    with pytest.raises(ValueError, match="names a format twice"):
        ExportConfig(models=("a.pt",), formats=("onnx", "onnx"))


def test_two_models_with_the_same_name_are_refused(workspace, tmp_path):
    other = make_checkpoint(tmp_path / "elsewhere" / "car.pt", seed=3)
    cfg = ExportConfig(models=(str(workspace["ckpt"]), str(other)), out_dir=str(workspace["out"]))
    with pytest.raises(ValueError, match="would both export as 'car'"):
        export(cfg)


def test_yaml_config_with_cli_overrides(workspace, tmp_path):
    import argparse

    from patchdet.export.cli import build_config, configure_export

    config = tmp_path / "export.yaml"
    config.write_text("formats: [onnx, onnx-int8]\nworkers: 2\ncalibration:\n  num_images: 64\nparity:\n"
                      "  fp32_rel_tol: 1.0e-5\n")
    parser = argparse.ArgumentParser()
    configure_export(parser)
    args = parser.parse_args([str(workspace["ckpt"]), "--config", str(config), "--workers", "1",
                              "--calib", str(workspace["calib"]), "--out", str(workspace["out"])])
    cfg = build_config(args)
    assert cfg.formats == ("onnx", "onnx-int8") and cfg.workers == 1  # the flag wins over the file
    assert cfg.calibration.num_images == 64 and cfg.parity.fp32_rel_tol == 1e-5
    config.write_text("formats: [onnx]\nthreshold: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) threshold in .*export.yaml"):
        build_config(parser.parse_args([str(workspace["ckpt"]), "--config", str(config)]))
