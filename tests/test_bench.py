"""``patchdet bench``: rows, reports, floor, F1, --compare and bad inputs, on tiny fixture models (no torch)."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from patchdet.cli import main
from patchdet.runtime.bench import BenchConfig, frame_wh, new_output_folder, run_bench, variants_for
from patchdet.runtime.bench_report import compare
from tests.fixtures_onnx import write_model
from tests.runtime_media import moving_square_frames, write_video

FAST = dict(frames=("128x96",), tilings=("tiled",), repeats=3, warmup=0, max_seconds=1.0, clip_frames=4,
            backends=("onnxruntime",))


@pytest.fixture()
def model_and_clip(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    clip = write_video(tmp_path / "clip.avi", moving_square_frames(6))
    return model, clip


def _bench(tmp_path, models, clip, name="out", **changes):
    cfg = BenchConfig(out=str(tmp_path / name), models=tuple(map(str, models)), clip=str(clip), **{**FAST, **changes})
    return run_bench(cfg)


def test_rows_and_reports(tmp_path, model_and_clip):
    model, clip = model_and_clip
    report = _bench(tmp_path, [model], clip)
    assert set(report) >= {"machine", "rows"} and report["machine"]["cores"] >= 1
    (row,) = report["rows"]
    assert row["status"] == "ok", row["status"]
    assert (row["artifact"], row["backend"], row["precision"], row["frame"]) == ("m.onnx", "onnxruntime", "fp32",
                                                                                 "128x96")
    assert row["tiling"] == "tiled 32/32" and row["tiles"] == 4 * 3 and row["batch"] == [12]
    latency = row["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert row["fps"] > 0 and row["floor_ms"] > 0 and row["floor_tool"] == "onnxruntime session"
    assert row["f1"] is None and row["ap50"] is None and row["agreement"] is None
    out = tmp_path / "out"
    assert json.loads((out / "bench.json").read_text())["rows"][0]["sha256"] == row["sha256"]
    with open(out / "bench.csv", newline="") as fh:
        assert [r["backend"] for r in csv.DictReader(fh)] == ["onnxruntime"]
    assert "| m.onnx | onnxruntime | fp32 |" in (out / "bench.md").read_text()
    assert cv2.imread(str(out / "bench.png")) is not None


def test_unloadable_artifact_row_says_why_and_others_run(tmp_path, model_and_clip):
    model, clip = model_and_clip
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    shutil.copy(model.with_suffix(".card.json"), tmp_path / "broken.card.json")
    report = _bench(tmp_path, [broken, model], clip)
    by_name = {r["artifact"]: r for r in report["rows"]}
    assert by_name["broken.onnx"]["status"].startswith("error:") and "broken.onnx" in by_name["broken.onnx"]["status"]
    assert by_name["m.onnx"]["status"] == "ok"


def test_f1_on_labelled_patches(tmp_path, model_and_clip):
    model, clip = model_and_clip
    for name, value in (("bright", 255), ("dark", 0)):
        (tmp_path / "patches" / name).mkdir(parents=True)
        for k in range(3):
            cv2.imwrite(str(tmp_path / "patches" / name / f"{k}.png"), np.full((32, 32, 3), value, np.uint8))
    report = _bench(tmp_path, [model], clip, labelled=str(tmp_path / "patches"))
    assert report["rows"][0]["f1"] == 1.0  # bright patches score high, black ones 0 (fixture design)


def test_ap50_on_labelled_frames(tmp_path, model_and_clip):
    from tests.fixtures_onnx import white_square_frame
    from tests.test_detection_eval import write_set

    model, clip = model_and_clip
    # One white square per frame on the 32-px tile grid: the tile over it is the one positive, its box the square.
    frames = [white_square_frame((128, 96), (32 * k, 32, 32 * k + 32, 64)) for k in (0, 1, 2)]
    labels = write_set(tmp_path / "frames", frames, [{"image_id": i, "bbox": [32 * (i - 1), 32, 32, 32]}
                                                     for i in (1, 2, 3)])
    report = _bench(tmp_path, [model], clip, labels=str(labels))
    assert report["rows"][0]["ap50"] == 1.0
    missed = write_set(tmp_path / "missed", frames, [{"image_id": i, "bbox": [96, 0, 32, 32]} for i in (1, 2, 3)])
    assert _bench(tmp_path, [model], clip, name="out2", labels=str(missed))["rows"][0]["ap50"] == 0.0
    assert "ap50" in (tmp_path / "out" / "bench.md").read_text()
    with pytest.raises(FileNotFoundError, match="none.json"):  # before any row is timed
        _bench(tmp_path, [model], clip, name="out3", labels=str(tmp_path / "none.json"))
    assert not (tmp_path / "out3" / "bench.json").exists()


def test_variants_cover_backends_and_precisions(tmp_path):
    onnx = tmp_path / "m.onnx"
    names = [(v.backend, v.precision) for v in variants_for(onnx, "fp32", None)]
    assert names == [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("opencv", "fp32")]
    assert [(v.backend, v.precision) for v in variants_for(tmp_path / "m.xml", "int8", None)] == [("openvino", "int8")]
    assert [v.backend for v in variants_for(tmp_path / "m.engine", "fp16", None)] == ["tensorrt"]


def test_compare_flags_regressions_and_other_machines(tmp_path, model_and_clip):
    model, clip = model_and_clip
    report = _bench(tmp_path, [model], clip)
    faster = json.loads(json.dumps(report))
    faster["rows"][0]["latency_ms"]["p50"] = report["rows"][0]["latency_ms"]["p50"] / 10
    faster["machine"]["cpu"] = "another cpu"
    result = compare(report, faster, 0.1)
    assert result["matched"] == 1 and len(result["regressions"]) == 1
    assert any(note.startswith("other machine") for note in result["notes"])
    assert compare(report, report, 0.1)["regressions"] == []
    other = json.loads(json.dumps(report))
    other["rows"][0].update(sha256="0" * 64, model="other")
    result = compare(report, other, 0.1)
    assert result["matched"] == 0 and any(note.startswith("other model") for note in result["notes"])


def test_cli_compare_exit_codes(tmp_path, model_and_clip, capsys):
    model, clip = model_and_clip
    args = ["bench", str(model), "--clip", str(clip), "--frames", "128x96", "--tilings", "tiled", "--backends",
            "onnxruntime", "--repeats", "3", "--warmup", "0", "--max-seconds", "1", "--no-floor"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    previous = json.loads((tmp_path / "a" / "bench.json").read_text())
    previous["rows"][0]["latency_ms"]["p50"] /= 100  # pretend it used to be 100x faster
    (tmp_path / "prev.json").write_text(json.dumps(previous))
    assert main([*args, "--out", str(tmp_path / "b"), "--compare", str(tmp_path / "prev.json"),
                 "--tolerance", "10%"]) == 1
    out = capsys.readouterr().out  # p50 is a regression; frames/s may be one too on a busy machine
    assert "p50" in out and "vs" in out and " 0 regression(s)" not in out


def test_without_out_it_writes_a_new_timestamped_folder(tmp_path, model_and_clip, monkeypatch):
    model, clip = model_and_clip
    monkeypatch.chdir(tmp_path)
    args = ["bench", str(model), "--clip", str(clip), "--frames", "128x96", "--tilings", "tiled", "--backends",
            "onnxruntime", "--repeats", "3", "--warmup", "0", "--max-seconds", "1", "--no-floor"]
    assert main(args) == 0
    (folder,) = tmp_path.glob("patchdet-bench-*")
    assert json.loads((folder / "bench.json").read_text())["rows"][0]["status"] == "ok"
    # a folder of that name exists already (two runs in one second): the next name gets a counter
    (tmp_path / new_output_folder(0.0)).mkdir()
    assert new_output_folder(0.0).endswith("-2")


@pytest.mark.parametrize("changes, message", [
    (dict(repeats=0), "repeats 0 is invalid"),
    (dict(frames=("16x16",)), "smaller than a 32x32 tile"),
    (dict(frames=("huge",)), "frame size 'huge' is invalid"),
    (dict(tilings=("diagonal",)), "tiling 'diagonal' is unknown"),
    (dict(scales=(0.0,)), "scales \\(0.0,\\) are invalid"),
])
def test_bad_inputs_raise_one_line_errors(tmp_path, model_and_clip, changes, message):
    model, clip = model_and_clip
    with pytest.raises(ValueError, match=message):
        _bench(tmp_path, [model], clip, **changes)
    assert not (tmp_path / "out" / "bench.json").exists()


def test_unwritable_output_and_bad_compare_file(tmp_path, model_and_clip, capsys):
    model, clip = model_and_clip
    (tmp_path / "file").write_text("x")
    assert main(["bench", str(model), "--out", str(tmp_path / "file" / "sub"), "--repeats", "3"]) == 2
    assert "not writable" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["bench", str(model), "--out", str(tmp_path / "o"), "--clip", str(clip), "--frames", "128x96",
                 "--tilings", "tiled", "--backends", "onnxruntime", "--repeats", "3", "--no-floor",
                 "--compare", str(tmp_path / "bad.json")]) == 2
    assert "not a patchdet bench.json" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "z"), "--repeats", "0"]) == 2


def test_frame_names():
    assert frame_wh("1080p") == (1920, 1080) and frame_wh("4K") == (3840, 2160) and frame_wh("640x480") == (640, 480)


def test_motion_gate_row_reports_agreement(tmp_path, model_and_clip):
    model, clip = model_and_clip
    report = _bench(tmp_path, [model], clip, motion_gate=True, floor=False)
    plain, gated = report["rows"]
    assert gated["tiling"] == plain["tiling"] + " motion-gate"
    assert 0 <= gated["agreement"] <= 1 and gated["fps"] > 0 and gated["motion_gate"]["frames"] == 4
    assert plain["agreement"] is None and gated["latency_ms"] is None  # the gate's cost is in its frames/s


@pytest.mark.slow  # a child process imports torch and exports (about 10 s idle, minutes on a busy machine)
def test_checkpoint_is_exported_first(tmp_path, model_and_clip):
    pytest.importorskip("torch")
    from tests.export_helpers import make_checkpoint

    _, clip = model_and_clip
    checkpoint = make_checkpoint(tmp_path / "tiny.pt")
    report = _bench(tmp_path, [checkpoint], clip, floor=False)
    assert [(r["artifact"], r["status"]) for r in report["rows"]] == [("tiny.onnx", "ok")]
    assert (tmp_path / "out" / "exports" / "tiny" / "tiny.onnx").is_file()


def test_dense_rows(tmp_path, model_and_clip):
    model, clip = model_and_clip
    dense = write_model(tmp_path / "d.onnx", "dense")
    rows = _bench(tmp_path, [dense, model], clip, tilings=("dense",), floor=False)["rows"]
    assert rows[0]["status"] == "ok" and rows[0]["tiles"] == 7 * 5  # windows of 32 every 16 px on 128x96
    assert rows[1]["status"].startswith("skipped: dense tiling needs a dense export")


def test_a_dense_exports_card_row_runs_it_dense_as_detect_does(tmp_path, model_and_clip):
    model, clip = model_and_clip
    dense = write_model(tmp_path / "d.onnx", "dense")
    rows = _bench(tmp_path, [dense, model], clip, tilings=("card", "tiled"), floor=False)["rows"]
    by_tiling = {(r["artifact"], r["tiling"]) for r in rows}
    assert by_tiling == {("d.onnx", "card (dense)"), ("d.onnx", "dense windows 32"), ("m.onnx", "card"),
                         ("m.onnx", "tiled 32/32")}
    rows = [r for r in rows if r["tiling"].startswith("card")]
    assert rows[0]["status"] == "ok" and rows[0]["tiles"] == 7 * 5  # the dense score map, not explicit tiles


def test_tiled_rows_at_chosen_scales(tmp_path, model_and_clip, capsys):
    model, clip = model_and_clip
    (one,) = _bench(tmp_path, [model], clip, scales=(1.0,), floor=False)["rows"]
    (two,) = _bench(tmp_path, [model], clip, name="two", scales=(1.0, 0.5), floor=False)["rows"]
    assert one["tiling"] == "tiled 32/32 x1" and one["tiles"] == 4 * 3
    assert two["tiling"] == "tiled 32/32 x1,0.5" and two["tiles"] > one["tiles"]
    assert main(["bench", str(model), "--out", str(tmp_path / "bad"), "--scales", "1,x"]) == 2
    assert "scales '1,x' are invalid" in capsys.readouterr().err
