"""``patchdet adapt``: head-only fine-tune on a fixed camera's background plates (tiny generated data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchdet.cli import main
from patchdet.training.adapt import AdaptConfig, adapt, plate_tiles, plates_of
from patchdet.training.checkpoint import load_checkpoint
from patchdet.training.config import AugmentConfig, TrainConfig
from patchdet.training.train import train
from tests.fixtures_onnx import write_model
from tests.runtime_media import write_video
from tests.test_camera_fit import _traffic
from tests.test_synthesis import _write_frames


@pytest.fixture
def run(tmp_path):
    _write_frames(tmp_path / "vehicles" / "vehicles" / "GTI", 24)
    _write_frames(tmp_path / "vehicles" / "non-vehicles" / "Extras", 24, start_value=40)
    cfg = TrainConfig(data=str(tmp_path / "vehicles"), positive="vehicles", negatives=("non-vehicles",),
                      split="blocks", val_fraction=0.25, augment=AugmentConfig(kind="tiles"), input_size=32,
                      epochs=1, batch_size=16, out=str(tmp_path / "run"), tensorboard=False)
    return train(cfg).best_checkpoint


def test_plates_and_their_tiles():
    frames = _traffic(30)
    plates = plates_of(frames, 3)
    assert len(plates) == 3 and all(p.shape == frames[0].shape for p in plates)
    from patchdet.runtime.tiling_config import TilingConfig

    tiles = plate_tiles(plates, TilingConfig((48, 32), (24, 16), scales=(1.0, 0.5), dense=True), (32, 32))
    per_plate = len(TilingConfig((48, 32), (24, 16), scales=(1.0, 0.5)).grid((192, 128)))
    assert tiles.shape == (3 * per_plate, 3, 32, 32) and tiles.dtype == np.uint8


def test_adapt_trains_only_the_head_and_reports_before_and_after(tmp_path, run):
    video = write_video(tmp_path / "cam.avi", _traffic(60), fps=10.0)
    card = write_model(tmp_path / "m.onnx", "modulus").with_name("m.card.json")
    out = tmp_path / "adapted"
    assert main(["adapt", str(run), "--video", str(video), "--out", str(out), "--card", str(card),
                 "--steps", "5", "--plates", "2"]) == 0
    before, after = load_checkpoint(run), load_checkpoint(out / "best.pt")
    for name, weight in before["state_dict"].items():
        same = torch.equal(weight, after["state_dict"][name])
        assert same if name.startswith("features.") else True, name  # conv layers and BN statistics kept
    assert any(not torch.equal(w, after["state_dict"][n]) for n, w in before["state_dict"].items()
               if n.startswith("classifier."))
    assert after["training"]["adapted"]["plates"] == 2 and "optimizer" not in after
    report = json.loads((out / "adapt.json").read_text())
    assert report["plate_tiles"] > 0 and {"plate_max_score", "training", "card"} <= set(report["after"])
    # a second run into the same folder keeps the first unless --force
    first = (out / "best.pt").read_bytes()
    assert main(["adapt", str(run), "--video", str(video), "--out", str(out), "--card", str(card),
                 "--steps", "1", "--plates", "1"]) == 2
    assert (out / "best.pt").read_bytes() == first


def test_adapt_refuses_footage_without_a_stable_plate(tmp_path, run):
    video = write_video(tmp_path / "pan.avi", _traffic(60, pan=True), fps=10.0)
    with pytest.raises(ValueError, match="does not look like a fixed camera"):
        adapt(AdaptConfig(checkpoint=str(run), video=str(video), out=str(tmp_path / "x"), steps=1))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="plate-share 1.5 is invalid"):
        AdaptConfig(checkpoint="c", video="v", out="o", plate_share=1.5)
