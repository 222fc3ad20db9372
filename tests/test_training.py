"""The training loop end to end on tiny generated data (CPU, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patchdet.training.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint, save_checkpoint
from patchdet.training.config import TrainConfig
from patchdet.training.train import TrainingDiverged, train


def _cfg(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(data=str(data), positive="car", negatives=("bird", "cat"), input_size=32, epochs=2,
                  batch_size=16, lr=3e-3, out=str(out), val_fraction=0.25, tensorboard=False)
    values.update(overrides)
    return TrainConfig(**values)


def test_train_writes_checkpoints_metrics_plots_and_config(tiny_folder, tmp_path):
    result = train(_cfg(tiny_folder, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.jsonl", "loss.png", "modulus_hist.png",
                 "threshold_curves.png"):
        assert (run / name).is_file(), name
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    payload = load_checkpoint(result.best_checkpoint)
    assert payload["head"] == "modulus" and payload["positive_class"] == "car"
    assert payload["negative_classes"] == ["bird", "cat"]
    assert "optimizer" not in payload  # best.pt is for inference; last.pt carries the resume state
    assert "optimizer" in load_checkpoint(result.last_checkpoint)
    model = build_model_from_checkpoint(payload)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 16)


def test_resume_continues_where_it_stopped(tiny_folder, tmp_path):
    train(_cfg(tiny_folder, tmp_path / "run", epochs=1))
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(tiny_folder, tmp_path / "run", epochs=2))
    result = train(_cfg(tiny_folder, tmp_path / "run", epochs=2, resume=True))
    assert [h["epoch"] for h in result.history] == [1, 2]
    with pytest.raises(ValueError, match="cannot resume: arch"):
        train(_cfg(tiny_folder, tmp_path / "run", epochs=3, resume=True, arch="discnn1"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_folder, tmp_path):
    train(_cfg(tiny_folder, tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train(_cfg(tiny_folder, tmp_path / "run", epochs=2, resume=True, loss_options={"scale": float("nan")}))
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_bad_data_is_reported_clearly(tmp_path, tiny_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(_cfg(tmp_path / "missing", tmp_path / "run"))
    with pytest.raises(ValueError, match="'plane' not found"):
        train(_cfg(tiny_folder, tmp_path / "run", negatives=("plane",)))
    (tiny_folder / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        train(_cfg(tiny_folder, tmp_path / "run", negatives=("empty",)))
    with pytest.raises(ValueError, match="both the positive and a negative"):
        _cfg(tiny_folder, tmp_path / "run", negatives=("car",))


def test_unreadable_images_are_skipped_and_counted(tiny_folder, tmp_path):
    (tiny_folder / "bird" / "broken.jpg").write_bytes(b"not an image")
    result = train(_cfg(tiny_folder, tmp_path / "run", epochs=1))
    assert load_checkpoint(result.best_checkpoint)["training"]["skipped_unreadable"] == 1


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    truncated = tmp_path / "truncated.pt"
    save_checkpoint({"arch": "discnn8", "state_dict": {}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    save_checkpoint({"arch": "resnet999", "state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet999'"):
        load_checkpoint(foreign)
    wrong = tmp_path / "wrong.pt"
    from patchdet.training.models import get_model

    save_checkpoint({"arch": "discnn1", "arch_kwargs": {}, "state_dict": get_model("discnn8").state_dict()}, wrong)
    with pytest.raises(CheckpointError, match="do not fit architecture 'discnn1'"):
        build_model_from_checkpoint(load_checkpoint(wrong))


def test_pickled_objects_are_refused(tmp_path):
    import argparse

    path = tmp_path / "evil.pt"  # any class outside the tensor allow-list must not be unpickled
    torch.save({"format": "patchdet-checkpoint", "arch": "discnn8", "obj": argparse.Namespace(x=1)}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_on_gloo(tiny_folder, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import sys\n"
        "from training.config import TrainConfig\n"
        "from patchdet.training.train import train\n"
        f"train(TrainConfig(data={str(tiny_folder)!r}, positive='car', negatives=('bird', 'cat'), input_size=32,"
        f" epochs=1, batch_size=8, out={str(tmp_path / 'ddp')!r}, val_fraction=0.25, tensorboard=False))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", str(script)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    payload = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert payload["epoch"] == 1
    # Each rank saw half of the training images: 2 processes x ceil(N/2) samples.
    assert not any(k.startswith("module.") for k in payload["state_dict"])
