"""Motion-gated tile cache: which tiles are re-scored, decisions against scoring every tile, detect end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from patchdet.runtime.detector import Detector
from patchdet.runtime.motion import (
    BLOCK_PX,
    DenseMotionGatedDetector,
    MotionGate,
    MotionGatedDetector,
    gate_detector,
    gated_agreement,
    stale_rectangles,
    windows_touching,
)
from patchdet.runtime.run import DetectConfig, detect
from patchdet.runtime.tiling import tile_grid
from patchdet.runtime.tiling_config import TilingConfig
from tests.fixtures_onnx import write_model
from tests.runtime_media import moving_square_frames, write_video

TILES = tile_grid((160, 96), 32, 32)  # 5 x 3 tiles


def test_gate_scores_all_first_then_only_changed_tiles():
    gate = MotionGate(threshold=2.0, refresh_every=100)
    frame = np.zeros((96, 160, 3), np.uint8)
    assert gate.select(frame, TILES).all()
    assert not gate.select(frame.copy(), TILES).any()
    moved = frame.copy()
    moved[40:56, 40:56] = 255  # inside the tile at x 32-64, y 32-64 only
    changed = gate.select(moved, TILES)
    expected = (TILES[:, 0] == 32) & (TILES[:, 1] == 32)
    np.testing.assert_array_equal(changed, expected)
    assert not gate.select(moved, TILES).any()  # its reference was updated when it was re-scored


def test_small_noise_below_threshold_is_not_rescored():
    gate = MotionGate(threshold=3.0, refresh_every=100)
    frame = np.full((96, 160, 3), 100, np.uint8)
    gate.select(frame, TILES)
    noisy = (frame.astype(np.int16) + np.random.default_rng(0).integers(-1, 2, frame.shape)).astype(np.uint8)
    assert not gate.select(noisy, TILES).any()


def test_refresh_and_frame_size_change_rescore_everything():
    gate = MotionGate(threshold=2.0, refresh_every=3)
    frame = np.zeros((96, 160, 3), np.uint8)
    picks = [gate.select(frame, TILES).sum() for _ in range(6)]
    assert picks == [15, 0, 0, 15, 0, 0]
    bigger = np.zeros((128, 160, 3), np.uint8)
    assert gate.select(bigger, tile_grid((160, 128), 32, 32)).all()


@pytest.mark.parametrize("kwargs, message", [(dict(threshold=-1), "motion threshold"),
                                             (dict(refresh_every=0), "motion refresh")])
def test_bad_gate_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MotionGate(**kwargs)


@pytest.fixture
def detector(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    return Detector(model, backend="onnxruntime", threads=1, tiling=TilingConfig((32, 32), (16, 16)))


def test_gated_decisions_equal_full_scoring_when_every_change_rescores(detector):
    frames = moving_square_frames(8)
    gated = MotionGatedDetector(detector, MotionGate(threshold=0.0, refresh_every=1000))
    for frame in frames:
        result, full = gated(frame), detector(frame)
        np.testing.assert_array_equal(result.positive_mask, full.positive_mask)
        np.testing.assert_allclose(result.tile_scores, full.tile_scores, rtol=1e-5, atol=1e-6)
        assert len(result.detections) == len(full.detections)
    assert 0 < gated.tiles_scored < gated.tiles_seen  # the black background was reused, not re-scored


def test_gated_agreement_report(detector):
    report = gated_agreement(detector, moving_square_frames(6), MotionGate(threshold=1.0, refresh_every=50))
    assert report["agreement"] == 1.0 and 0 < report["rescored_fraction"] < 1 and report["fps"] > 0


@pytest.fixture
def dense(tmp_path):
    return Detector(write_model(tmp_path / "d.onnx", "dense"), backend="onnxruntime", threads=1)


def test_wrappers_refuse_the_other_kind_of_model_and_gate_detector_picks_the_right_one(detector, dense):
    with pytest.raises(ValueError, match="patch model"):
        MotionGatedDetector(dense)
    with pytest.raises(ValueError, match="dense model"):
        DenseMotionGatedDetector(detector)
    assert isinstance(gate_detector(dense), DenseMotionGatedDetector)
    assert isinstance(gate_detector(detector), MotionGatedDetector)


def test_blocks_change_only_where_the_frame_changed_and_the_reference_follows():
    gate = MotionGate(threshold=2.0, refresh_every=100)
    frame = np.zeros((96, 160, 3), np.uint8)
    assert gate.changed_blocks(frame) is None  # first frame: score everything
    assert not gate.changed_blocks(frame.copy()).any()
    moved = frame.copy()
    moved[40:56, 70:86] = 255  # inside the block of frame pixels x 64-96, y 32-64
    changed = gate.changed_blocks(moved)
    assert changed.shape == (3, 5) and np.argwhere(changed).tolist() == [[1, 2]]
    assert not gate.changed_blocks(moved).any()  # its reference was updated
    assert gate.changed_blocks(np.zeros((128, 160, 3), np.uint8)) is None  # a new frame size: everything


def test_windows_touching_changed_blocks():
    blocks = np.zeros((3, 5), bool)
    blocks[1, 2] = True  # frame pixels x 64-96, y 32-64
    windows = np.array([[64, 32, 96, 64], [0, 0, 64, 32], [90, 60, 130, 90], [96, 64, 128, 96], [70, 40, 70, 40]])
    assert windows_touching(blocks, windows, BLOCK_PX).tolist() == [True, False, True, False, False]


def test_dense_gated_scores_equal_full_scoring_and_only_moving_pieces_are_rescored(dense):
    frames = moving_square_frames(8, frame_wh=(640, 352))
    gated = DenseMotionGatedDetector(dense, MotionGate(threshold=0.0, refresh_every=1000))
    for frame in frames:
        result, full = gated(frame), dense(frame)
        np.testing.assert_array_equal(result.positive_mask, full.positive_mask)
        np.testing.assert_allclose(result.tile_scores, full.tile_scores, rtol=1e-5, atol=1e-6)
        assert result.detections.xyxy.tolist() == full.detections.xyxy.tolist()
    assert 0 < gated.tiles_scored < gated.tiles_seen  # the black background was reused
    still = gated.preprocess(frames[-1])  # nothing moved: nothing re-scored, no engine call
    assert len(still.regions) == 0 and len(still.batch) == 0 and still.cells == 0


def test_dense_gated_agreement_report(dense):
    report = gated_agreement(dense, moving_square_frames(6, frame_wh=(640, 352)), MotionGate(1.0, 50))
    assert report["agreement"] == 1.0 and 0 < report["rescored_fraction"] < 1 and report["fps"] > 0


def test_stale_rectangles_join_close_cells_and_fit_the_mask():
    stale = np.zeros((10, 12), bool)
    stale[1, 1] = stale[2, 3] = True  # two cells apart: one rectangle
    stale[8:10, 9:12] = True  # far away: its own
    assert sorted(stale_rectangles(stale, join_cells=2)) == [(1, 1, 2, 3), (8, 9, 2, 3)]
    assert len(stale_rectangles(stale, join_cells=0)) == 3
    assert stale_rectangles(np.zeros((4, 4), bool)) == []


@pytest.mark.parametrize("kind, tiling", [("modulus", dict(tile=32, stride=16)), ("dense", {})])
def test_detect_with_motion_gate_matches_detect_without(tmp_path, kind, tiling):
    model = write_model(tmp_path / "m.onnx", kind)
    video = write_video(tmp_path / "v.avi", moving_square_frames(10))
    outputs = []
    for gate in (False, True):
        jsonl = tmp_path / f"d{gate}.jsonl"
        cfg = DetectConfig(model=str(model), source=str(video), backend="onnxruntime", threads=1, log_every_s=0,
                           jsonl=str(jsonl), motion_gate=gate, motion_threshold=0.0, **tiling)
        summary = detect(cfg)
        assert summary["frames"] == 10 and (summary["motion_gate"] is None) == (not gate)
        if gate:
            fraction = summary["motion_gate"]["rescored_fraction"]  # a tiny mosaic is re-scored whole
            assert 0 < fraction <= 1 and (kind == "dense" or fraction < 1)
        outputs.append([json.loads(line)["boxes"] for line in jsonl.read_text().splitlines()])
    assert outputs[0] == outputs[1] and any(outputs[0])
