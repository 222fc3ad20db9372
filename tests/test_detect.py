"""The detect pipeline end to end with tiny ONNX fixtures: outputs, summary, config, bad input, Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from patchdet.cli import main
from patchdet.runtime import builtin
from patchdet.runtime.card import read_card, write_card
from patchdet.runtime.run import DetectConfig, config_path_for, detect, load_detect_config
from patchdet.runtime.tiling_config import tiling_for_card
from tests.fixtures_onnx import write_model
from tests.runtime_media import (
    corrupt_mjpeg_frame,
    detect_cfg,
    moving_square_frames,
    read_video,
    square_box,
)

SUMMARY_KEYS = {"frames", "seconds", "fps", "backend", "latency_ms", "dropped_frames", "reconnects",
                "corrupt_frames", "detections"}


def _overlaps(box, ref) -> bool:
    return box[0] < ref[2] and ref[0] < box[2] and box[1] < ref[3] and ref[1] < box[3]


def test_detect_writes_every_output(tmp_path, model, video):
    out = tmp_path / "out"
    cfg = detect_cfg(model, video, jsonl=str(out / "d.jsonl"), save_video=str(out / "v.mp4"),
               summary=str(out / "s.json"), crops=str(out / "crops"), heatmap=True)
    summary = detect(cfg)
    assert SUMMARY_KEYS <= set(summary)
    assert summary["frames"] == 10 and summary["backend"] == "onnxruntime"
    assert summary["dropped_frames"] == 0 and summary["reconnects"] == 0 and summary["corrupt_frames"] == 0
    assert set(summary["latency_ms"]) == {"decode", "tile", "infer", "decide", "write"}
    assert all({"median", "p90"} <= set(v) for v in summary["latency_ms"].values())
    assert json.loads((out / "s.json").read_text())["frames"] == 10
    records = [json.loads(line) for line in (out / "d.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(10))
    for r in records:  # the white square is found, and nothing else
        assert r["boxes"] and all(_overlaps(b, square_box(r["frame"])) for b in r["boxes"])
        assert len(r["scores"]) == len(r["class_ids"]) == len(r["boxes"])
    assert summary["detections"] == sum(len(r["boxes"]) for r in records)
    assert len(read_video(out / "v.mp4")) == 10
    assert len(list((out / "crops").iterdir())) == summary["detections"]
    resolved = load_detect_config(out / "s.config.yaml")  # the resolved config reloads as-is
    assert resolved.tile == 32 and resolved.stride == 16 and resolved.threshold == pytest.approx(0.5)


def test_max_frames_vid_stride_and_threshold(tmp_path, model, video):
    summary = detect(detect_cfg(model, video, max_frames=3, vid_stride=2, jsonl=str(tmp_path / "d.jsonl")))
    assert summary["frames"] == 3 and summary["stopped_by"] == "max_frames"
    frames = [json.loads(line)["frame"] for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert frames == [0, 2, 4]
    silent = detect(detect_cfg(model, video, threshold=1e6))
    assert silent["detections"] == 0 and silent["threshold"] == pytest.approx(1e6)


def test_image_folder_with_a_corrupt_image(tmp_path, model):
    import cv2

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, frame in enumerate(moving_square_frames(3)):
        cv2.imwrite(str(folder / f"{i}.png"), frame)
    (folder / "1x.jpg").write_bytes(b"\xff\xd8 broken")
    summary = detect(detect_cfg(model, folder))
    assert summary["frames"] == 3 and summary["corrupt_frames"] == 1


def test_corrupt_video_frame_is_skipped(tmp_path, model, video):
    corrupt_mjpeg_frame(video, 4)
    summary = detect(detect_cfg(model, video, save_video=str(tmp_path / "v.avi")))
    assert summary["frames"] == 9 and summary["corrupt_frames"] == 1
    assert len(read_video(tmp_path / "v.avi")) == 9


def test_dense_model(tmp_path, video):
    dense = write_model(tmp_path / "dense.onnx", "dense")
    summary = detect(detect_cfg(dense, video, dense=True, jsonl=str(tmp_path / "d.jsonl")))
    assert summary["frames"] == 10 and summary["tiling"]["dense"] is True
    first = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert first["boxes"] and all(_overlaps(b, square_box(0)) for b in first["boxes"])


def test_ctrl_c_leaves_complete_outputs(tmp_path, model, video, monkeypatch):
    from patchdet.runtime.detector import WARMUP_CALLS, Detector

    real_infer = Detector.infer
    calls = []

    def infer(self, batch):
        calls.append(1)
        if len(calls) == WARMUP_CALLS + 4:  # the 4th frame, after the warm-up calls on the first one
            raise KeyboardInterrupt
        return real_infer(self, batch)

    monkeypatch.setattr(Detector, "infer", infer)
    summary = detect(detect_cfg(model, video, jsonl=str(tmp_path / "d.jsonl"), save_video=str(tmp_path / "v.mp4")))
    assert summary["interrupted"] is True and summary["frames"] == 3
    assert len(read_video(tmp_path / "v.mp4")) == 3
    assert [json.loads(line)["frame"] for line in (tmp_path / "d.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert not (tmp_path / "v.partial.mp4").exists()


def test_backend_is_warmed_up_before_the_first_frame(tmp_path, model, video, monkeypatch):
    from patchdet.runtime.detector import WARMUP_CALLS, Detector

    real_infer = Detector.infer
    calls = []

    def infer(self, batch):
        calls.append(batch.shape)
        return real_infer(self, batch)

    monkeypatch.setattr(Detector, "infer", infer)
    summary = detect(detect_cfg(model, video, max_frames=5))
    assert summary["frames"] == 5 and summary["warmup_ms"] > 0
    assert len(calls) == 5 + WARMUP_CALLS and len(set(calls)) == 1  # warm-up on the first frame's batch shape
    assert summary["latency_ms"]["infer"]["count"] == 5  # warm-up calls are not timed as inference


def test_yaml_config_then_overrides(tmp_path, model):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"tile": 48, "stride": 24, "merge": "nms", "scales": [1.0, 0.5]}))
    cfg = load_detect_config(config, stride=12, model=str(model))
    assert (cfg.tile, cfg.stride, cfg.merge, cfg.scales) == (48, 12, "nms", (1.0, 0.5))
    config.write_text(yaml.safe_dump({"tiles": 48}))
    with pytest.raises(ValueError, match="unknown config key"):
        load_detect_config(config)


@pytest.mark.parametrize(
    ("card_tiling", "overrides", "expected"),
    [
        ({}, {}, ((96, 96), (96, 96), (1.0,), "connected")),  # no tiling in the card: input size, no overlap
        ({}, {"tile": 64}, ((64, 64), (64, 64), (1.0,), "connected")),  # tile alone: no overlap at that size
        ({"tile_wh": [64, 64], "stride_wh": [32, 32], "scales": [1.0, 0.5], "merge": "nms"}, {},
         ((64, 64), (32, 32), (1.0, 0.5), "nms")),  # the card's own
        ({"tile_wh": [64, 64], "stride_wh": [32, 32], "merge": "nms"}, {"stride": 16, "merge": "none"},
         ((64, 64), (16, 16), (1.0,), "none")),  # flags override single fields
        ({"tile_wh": [64, 64], "stride_wh": [32, 32]}, {"tile": 48}, ((48, 48), (48, 48), (1.0,), "connected")),
    ],
)
def test_tiling_comes_from_the_card_unless_overridden(model, card_tiling, overrides, expected):
    card = read_card(model.with_name("bright.card.json")).replace(input_wh=(96, 96), tiling=card_tiling)
    tiling = tiling_for_card(card, **overrides)
    assert (tiling.tile_wh, tiling.stride_wh, tiling.scales, tiling.merge) == expected


def test_config_paths(tmp_path):
    assert config_path_for(DetectConfig(summary=str(tmp_path / "run" / "s.json"))) == tmp_path / "run" / "s.config.yaml"
    assert config_path_for(DetectConfig()) is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tile": 0}, "tile 0 is invalid"),
        ({"stride": -4}, "stride -4 is invalid"),
        ({"threshold": float("nan")}, "threshold nan is invalid"),
        ({"save_video": "out.gif"}, "unsupported suffix"),
        ({"merge": "union"}, "merge 'union' is unknown"),
        ({"vid_stride": 0}, "vid-stride 0 is invalid"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        DetectConfig(**changes)


def _cli(args, capsys) -> tuple[int, str]:
    code = main(["detect", *args])
    return code, capsys.readouterr().err


def test_cli_bad_input_is_one_line_without_traceback(tmp_path, model, video, capsys):
    nocard = write_model(tmp_path / "nocard.onnx", "modulus", card=False, metadata=False)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    corrupt.with_name("corrupt.card.json").write_text((model.parent / "bright.card.json").read_text())
    base = ["--backend", "onnxruntime", "--source", str(video)]
    cases = [
        (["--model", str(tmp_path / "missing.onnx"), *base], "missing.onnx"),
        (["--model", str(nocard), *base], "no model card"),
        (["--model", str(corrupt), *base], "corrupt.onnx"),
        (["--model", str(model), "--backend", "onnxruntime", "--source", str(tmp_path / "nope.mp4")], "no such file"),
        (["--model", str(model), *base, "--tile", "0"], "tile 0 is invalid"),
        (["--model", str(model), *base, "--tile", "200", "--save-video", str(tmp_path / "small.mp4")],
         "smaller than the tile"),
    ]
    for args, expected in cases:
        code, err = _cli(args, capsys)
        assert code == 2, (args, err)
        assert expected in err and "Traceback" not in err, err
        assert err.strip().count("\n") == 0 or "patchdet detect: error:" in err.strip().splitlines()[-1]
    assert not (tmp_path / "small.mp4").exists() and not (tmp_path / "small.partial.mp4").exists()


def test_cli_non_numeric_threshold_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["detect", "--threshold", "high"])
    assert exc.value.code == 2
    assert "'high' is not a number" in capsys.readouterr().err


def test_cli_prints_the_summary(tmp_path, model, video, capsys):
    code = main(["detect", "--model", str(model), "--source", str(video), "--backend", "onnxruntime", "--tile", "32",
                 "--max-frames", "2", "--summary", str(tmp_path / "s.json")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["frames"] == 2 and json.loads((tmp_path / "s.json").read_text())["frames"] == 2


def test_runtime_modules_do_not_import_torch():
    code = ("import sys, patchdet.runtime.run, patchdet.runtime.streams, patchdet.runtime.sinks, "
            "patchdet.runtime.stats, patchdet.runtime.calibrate, "
            "patchdet.runtime.cli, patchdet.runtime.detector; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not builtin.BUILTIN_MODEL.is_file() or not builtin.BUILTIN_CLIP.is_file(),
                    reason="the built-in model is not in runtime/assets")
def test_builtin_default_runs(tmp_path):
    summary = detect(DetectConfig(max_frames=3, log_every_s=0, jsonl=str(tmp_path / "d.jsonl")))
    assert summary["frames"] == 3 and summary["frame_wh"] == [640, 352]
    assert np.isfinite(summary["fps"])


def test_builtin_default_uses_its_card_for_any_source(tmp_path, model, video, monkeypatch):
    card_path = model.with_name("bright.card.json")
    write_card(read_card(card_path).replace(threshold=1e6, tiling={"tile_wh": [32, 32], "stride_wh": [16, 16]}),
               card_path)
    monkeypatch.setattr(builtin, "BUILTIN_MODEL", model)
    monkeypatch.setattr(builtin, "BUILTIN_CLIP", video)
    summary = detect(DetectConfig(backend="onnxruntime", log_every_s=0))
    assert summary["threshold"] == pytest.approx(1e6) and summary["detections"] == 0
    assert summary["tiling"]["stride_wh"] == [16, 16] and summary["frames"] == 10
    explicit = detect(DetectConfig(backend="onnxruntime", log_every_s=0, threshold=0.5, max_frames=2))
    assert explicit["threshold"] == pytest.approx(0.5) and explicit["detections"] > 0
