"""Calibration: threshold choices by hand, background footage, labelled folders, the card copy."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from patchdet.cli import main
from patchdet.runtime.calibrate import (
    CalibrateConfig,
    calibrate,
    threshold_for_false_alarms,
    threshold_for_precision,
    threshold_for_recall,
)
from patchdet.runtime.card import read_card
from patchdet.runtime.detector import Detector, TilingConfig
from tests.fixtures_onnx import MODULUS_THRESHOLD, write_model
from tests.runtime_media import write_video


@pytest.mark.parametrize(("allowed", "expected"), [(0, 9.0), (1, 5.0), (2, 3.0), (10, 1.0)])
def test_threshold_for_false_alarms(allowed, expected):
    frame_max = np.array([5.0, 3.0, 9.0, 1.0])
    threshold = threshold_for_false_alarms(frame_max, allowed)
    assert threshold == expected
    assert np.sum(frame_max > threshold) == min(allowed, 3)


def test_threshold_for_precision_and_recall_by_hand():
    scores = np.array([0.0, 0.0, 0.2, 0.4, 0.5, 0.7, 0.9])
    truth = np.array([False, False, False, True, False, True, True])
    # score > 0.5: 2 TP, 0 FP (precision 1, recall 2/3); score > 0.2: 3 TP, 1 FP (0.75, 1.0)
    assert threshold_for_precision(scores, truth, 1.0) == 0.5
    assert threshold_for_precision(scores, truth, 0.75) == 0.2
    assert threshold_for_recall(scores, truth, 1.0) == 0.2
    assert threshold_for_recall(scores, truth, 0.6) == 0.5
    with pytest.raises(ValueError, match="no threshold reaches precision"):
        threshold_for_precision(np.array([1.0, 1.0]), np.array([True, False]), 0.9)


def _background_video(path, count=8):
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):  # dark textured frames: low but non-zero scores, one brighter frame
        frame = rng.integers(0, 60, size=(64, 96, 3), dtype=np.uint8)
        if i == 3:
            frame[16:48, 32:64] = 150
        frames.append(frame)
    return write_video(path, frames, fps=10.0)


def test_background_calibration_silences_every_background_patch(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    video = _background_video(tmp_path / "empty.avi")
    out = tmp_path / "calibrated.card.json"
    report = calibrate(CalibrateConfig(model=str(model), background=str(video), output=str(out), tile=32,
                                       backend="onnxruntime", threads=1, report=str(tmp_path / "r.json")))
    card = read_card(out)
    assert card.threshold == pytest.approx(report["threshold"])
    assert card.thresholds["calibrated"] == pytest.approx(report["threshold"])
    assert report["previous_threshold"] == pytest.approx(MODULUS_THRESHOLD)
    assert report["background"]["frames"] == 8 and report["background"]["alarm_frames"] == 0
    assert json.loads((tmp_path / "r.json").read_text())["threshold"] == pytest.approx(report["threshold"])
    detector = Detector(model, backend="onnxruntime", tiling=TilingConfig((32, 32), (32, 32)), card=out)
    cap = cv2.VideoCapture(str(video))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert len(detector(frame).detections) == 0  # the calibrated card keeps the footage silent


def test_background_false_alarm_budget_per_frame_and_per_hour(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    video = _background_video(tmp_path / "empty.avi")
    common = dict(model=str(model), background=str(video), tile=32, backend="onnxruntime", threads=1)
    strict = calibrate(CalibrateConfig(**common, output=str(tmp_path / "a.json")))
    loose = calibrate(CalibrateConfig(**common, false_alarms=0.25, output=str(tmp_path / "b.json")))
    assert loose["background"]["allowed_alarm_frames"] == 2 and loose["background"]["alarm_frames"] <= 2
    assert loose["threshold"] < strict["threshold"]
    # 8 frames at 10 fps = 0.8 s; 9000 alarms per hour = 2 per 0.8 s
    hourly = calibrate(CalibrateConfig(**common, false_alarms=9000, per="hour", output=str(tmp_path / "c.json")))
    assert hourly["background"]["allowed_alarm_frames"] == 2
    assert hourly["threshold"] == pytest.approx(loose["threshold"])


def _labelled_folder(root, positives=6, negatives=6):
    rng = np.random.default_rng(1)
    for name, count, low, high in (("bright", positives, 150, 256), ("dark", negatives, 0, 40)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(root / name / f"{i}.png"), rng.integers(low, high, size=(32, 32, 3), dtype=np.uint8))
    return root


def test_labelled_calibration_reaches_the_target(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    folder = _labelled_folder(tmp_path / "patches")
    report = calibrate(CalibrateConfig(model=str(model), labelled=str(folder), target_precision=1.0,
                                       backend="onnxruntime", output=str(tmp_path / "card.json")))
    labelled = report["labelled"]
    assert labelled["patches"] == 12 and labelled["positives"] == 6
    assert labelled["report"]["positive"]["precision"] == 1.0 and labelled["report"]["positive"]["recall"] == 1.0
    recall = calibrate(CalibrateConfig(model=str(model), labelled=str(folder), target_recall=1.0,
                                       backend="onnxruntime", output=str(tmp_path / "card2.json")))
    assert recall["labelled"]["report"]["positive"]["recall"] == 1.0
    assert read_card(tmp_path / "card2.json").threshold == pytest.approx(recall["threshold"])


def test_labelled_norm_gate_of_a_cosine_head_reaches_the_target(tmp_path):
    # The fixture's cosine head calls bright patches "person" with a latent norm that grows with brightness
    # (about 2 at grey 120-200, 6.3 at 200-255): with dim greys as negatives, precision 1 needs a gate between.
    model = write_model(tmp_path / "c.onnx", "cosine")
    rng = np.random.default_rng(2)
    for name, low, high in (("person", 200, 256), ("car", 120, 200)):
        (tmp_path / "patches" / name).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(tmp_path / "patches" / name / f"{i}.png"),
                        rng.integers(low, high, size=(32, 32, 3), dtype=np.uint8))
    before = read_card(model.with_suffix(".card.json"))
    report = calibrate(CalibrateConfig(model=str(model), labelled=str(tmp_path / "patches"), positive_class="person",
                                       target_precision=1.0, backend="onnxruntime", output=str(tmp_path / "card.json")))
    gate = report["labelled"]["norm_gate"]
    assert 1.9 < gate <= 6.3 and report["labelled"]["report"]["positive"]["recall"] == 1.0
    card = read_card(tmp_path / "card.json")
    assert card.norm_gate == pytest.approx(gate) and card.threshold == before.threshold  # the class rule stays
    detector = Detector(str(model), backend="onnxruntime", card=tmp_path / "card.json")
    from patchdet.runtime.imagefolder import normalize_batch

    for name, expected in (("person", True), ("car", False)):
        images = np.stack([cv2.imread(str(p))[..., ::-1] for p in sorted((tmp_path / "patches" / name).iterdir())])
        _, _, positive = detector.tile_decisions(detector.infer(normalize_batch(images, card.mean, card.std)))
        assert positive.all() if expected else not positive.any()


def test_both_sources_take_the_stricter_threshold(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    report = calibrate(CalibrateConfig(model=str(model), background=str(_background_video(tmp_path / "e.avi")),
                                       tile=32, labelled=str(_labelled_folder(tmp_path / "p")), target_recall=1.0,
                                       backend="onnxruntime", output=str(tmp_path / "card.json")))
    assert report["threshold"] == max(report["background"]["threshold"], report["labelled"]["threshold"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "nothing to calibrate on"),
        ({"background": "x.mp4", "per": "minute"}, "unit 'minute' is unknown"),
        ({"background": "x.mp4", "false_alarms": 2.0}, "per frame is invalid"),
        ({"labelled": "dir"}, "exactly one of --target-precision or --target-recall"),
        ({"labelled": "dir", "target_precision": 1.5}, "target-precision 1.5 is invalid"),
        ({"background": "x.mp4", "target_recall": 0.9}, "need a labelled folder"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        CalibrateConfig(**changes)


def test_cli_calibrate(tmp_path, capsys):
    model = write_model(tmp_path / "m.onnx", "modulus")
    video = _background_video(tmp_path / "empty.avi")
    code = main(["calibrate", "--model", str(model), "--background", str(video), "--tile", "32", "--backend",
                 "onnxruntime", "--output", str(tmp_path / "c.json")])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["card"] == str(tmp_path / "c.json")
    code = main(["calibrate", "--model", str(model), "--background", str(tmp_path / "none.mp4"), "--backend",
                 "onnxruntime"])
    assert code == 2 and "no such file" in capsys.readouterr().err
