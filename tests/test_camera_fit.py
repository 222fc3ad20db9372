"""Fitting a fixed camera from its footage: plate, stability, perspective tiling, and `patchdet calibrate --video`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from patchdet.cli import main
from patchdet.runtime.camera_fit import (
    PerspectiveFit,
    background_plate,
    fit_perspective,
    perspective_tiling,
    plate_match_shares,
    scales_for_fit,
)
from patchdet.runtime.tiling import perspective_grid
from patchdet.runtime.tiling_config import TilingConfig, tiling_for_card
from tests.fixtures_onnx import write_model
from tests.runtime_media import write_video

FRAME_WH = (192, 128)


def _road(seed: int = 0) -> np.ndarray:
    """A textured, edge-rich static scene (kerbs and lane lines stand in as stripes and blocks)."""
    rng = np.random.default_rng(seed)
    image = np.full((FRAME_WH[1], FRAME_WH[0], 3), 90, np.uint8)
    for _ in range(40):
        x, y = rng.integers(0, FRAME_WH[0] - 12), rng.integers(0, FRAME_WH[1] - 12)
        image[y:y + rng.integers(3, 12), x:x + rng.integers(3, 12)] = rng.integers(0, 255, 3)
    return image


def _traffic(count: int, pan: bool = False) -> list[np.ndarray]:
    """Cars (bright boxes) driving down the road, larger lower in the frame; with ``pan`` the camera moves."""
    road = _road()
    frames = []
    for i in range(count):
        frame = np.roll(road, 3 * i, axis=1) if pan else road.copy()
        for lane, speed in ((0, 3), (1, 5)):
            y = (speed * i + 40 * lane) % (FRAME_WH[1] - 30)
            side = 10 + y // 4  # perspective: 10 px at the top, ~34 px at the bottom
            x = 30 + 90 * lane
            frame[y:y + side, x:x + side] = (230, 230, 230)
        frames.append(frame)
    return frames


@pytest.mark.parametrize(("frame_wh", "size_at_row"), [((640, 352), (20.0, 0.4)), ((192, 128), (12.0, 0.2)),
                                                       ((100, 60), (200.0, 0.0))])
def test_perspective_grid_covers_the_frame_with_growing_tiles(frame_wh, size_at_row):
    boxes = perspective_grid(frame_wh, size_at_row, 0.5)
    w, h = frame_wh
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    sides = boxes[:, 2] - boxes[:, 0]
    assert (sides == boxes[:, 3] - boxes[:, 1]).all()  # square
    assert (np.diff(sides[np.argsort(boxes[:, 1], kind="stable")]) >= 0).all()  # never smaller further down
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_plate_removes_passing_cars_and_tells_fixed_from_moving_cameras():
    fixed = _traffic(40)
    plate = background_plate(fixed[::2])
    assert np.abs(plate.astype(int) - _road().astype(int)).mean() < 2  # the road without its cars
    assert np.median(plate_match_shares(fixed, plate)) > 0.6
    moving = _traffic(40, pan=True)
    assert np.median(plate_match_shares(moving, background_plate(moving[::2]))) < 0.5


def test_perspective_fit_recovers_the_width_per_row():
    rows = np.arange(10, 120, 4, dtype=np.float32)
    widths = 8 + 0.25 * rows
    blobs = np.stack([np.full_like(rows, 20), rows - widths / 2, 20 + widths, rows + widths / 2], axis=1)
    blobs = np.concatenate([blobs, blobs + [1, 0, 1, 0], blobs + [2, 0, 2, 0]])
    fit = fit_perspective(blobs, FRAME_WH)
    assert fit is not None and fit.a == pytest.approx(8, abs=1.5) and fit.b == pytest.approx(0.25, abs=0.03)
    assert perspective_tiling(fit, FRAME_WH, car_fraction=0.5, min_tile=4) == pytest.approx((2 * fit.a, 2 * fit.b))
    assert fit_perspective(blobs[:3], FRAME_WH) is None  # too few to fit


def test_dense_calibration_keeps_the_scales_that_frame_this_cameras_cars():
    tiling = TilingConfig((48, 32), dense=True, scales=(1.2, 0.96, 0.6, 0.3, 0.19), reference_height=360)
    fit = PerspectiveFit(a=30.0, b=0.1, blobs=40, rows=(100, 300))  # cars 40 to 60 px wide
    # tile widths 40, 50, 80, 160, 252 px: the ones within 1.4x of 40-60 px stay
    assert scales_for_fit(tiling, fit, (640, 360)) == (1.2, 0.96, 0.6)
    # a 720p frame gets tiles twice as wide: the same cars now need the scales of 20-42 px tiles
    assert scales_for_fit(tiling, fit, (1280, 720)) == (1.2,)
    far = PerspectiveFit(a=1000.0, b=0.0, blobs=40, rows=(100, 300))
    assert scales_for_fit(tiling, far, (640, 360)) == tiling.scales  # nothing fits: keep them all


def test_fixed_tile_flags_drop_a_fitted_perspective(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    from patchdet.runtime.card import read_artifact_card

    card = read_artifact_card(model).replace(tiling={"tile_wh": [32, 32], "stride_wh": [16, 16],
                                                     "perspective": [12.0, 0.2]})
    assert tiling_for_card(card).perspective == (12.0, 0.2)
    assert tiling_for_card(card, tile=24).perspective is None
    assert len(TilingConfig((32, 32), (16, 16), perspective=(12.0, 0.2)).grid(FRAME_WH)) > 0


def test_calibrate_video_writes_threshold_and_perspective_into_the_card(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    video = write_video(tmp_path / "cam.avi", _traffic(60), fps=10.0)
    out = tmp_path / "cam.card.json"
    code = main(["calibrate", "--model", str(model), "--video", str(video), "--out", str(out), "--tile", "32",
                 "--report", str(tmp_path / "report.json")])
    assert code == 0
    card = json.loads(out.read_text())
    report = json.loads((tmp_path / "report.json").read_text())["video"]
    assert card["thresholds"]["plate"] == pytest.approx(card["threshold"])
    assert card["threshold"] >= report["plate_max_score"] * 1.1 - 1e-6  # no plate tile fires, with margin
    assert card["tiling"]["perspective"] is not None and report["moving_blobs"] > 0
    summary = tmp_path / "s.json"
    assert main(["detect", "--model", str(model), "--card", str(out), "--source", str(video), "--max-frames", "3",
                 "--summary", str(summary), "--log-every", "0"]) == 0
    assert json.loads(summary.read_text())["tiling"]["perspective"] == card["tiling"]["perspective"]


@pytest.mark.parametrize(("frames", "pan", "message"), [(12, False, "is 1.2 s long: expected at least 3 s"),
                                                         (60, True, "does not look like a fixed camera")])
def test_calibrate_video_refuses_short_or_moving_footage(tmp_path, capsys, frames, pan, message):
    model = write_model(tmp_path / "m.onnx", "modulus")
    video = write_video(tmp_path / "cam.avi", _traffic(frames, pan=pan), fps=10.0)
    out = tmp_path / "cam.card.json"
    assert main(["calibrate", "--model", str(model), "--video", str(video), "--out", str(out), "--tile", "32"]) == 2
    assert message in capsys.readouterr().err and not out.exists()
