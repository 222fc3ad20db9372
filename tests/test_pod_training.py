"""POD / softmax heads through the shared training loop, evaluation, and the Table I helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from patchdet.training.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from patchdet.training.config import TrainConfig
from patchdet.training.evaluate import EvalConfig, evaluate, format_report
from patchdet.training.losses import LOSS_HEADS
from patchdet.training.pedcc import pedcc_centroids
from patchdet.training.pod import (
    check_checkpoint_centroids,
    check_same_classes,
    cosine_to_centroids,
    multiclass_evaluation,
    norm_split_accuracy,
    pod_predict,
)
from patchdet.training.train import train
from tests.conftest import make_image_folder

CLASSES = {"car": 8, "bird": 8, "cat": 8}


@pytest.fixture
def three_class_folder(tmp_path):
    return make_image_folder(tmp_path / "data", CLASSES, size=16)


def _cfg(data, out, **overrides) -> TrainConfig:
    values = dict(data=str(data), val_data=str(data), arch="smallcnn", input_size=16, latent_dim=8, loss="pod",
                  epochs=2, batch_size=8, optimizer="sgd", lr=0.05, out=str(out), tensorboard=False, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


# -- helpers -------------------------------------------------------------------------------


def test_norm_split_accuracy_by_hand() -> None:
    predicted = np.array([0, 1, 1, 2, 0, 2])
    truth = np.array([0, 1, 0, 2, 1, 1])
    norms = np.array([1.0, 5.0, 2.0, 6.0, 1.5, 2.5])  # mean 3.0
    split = norm_split_accuracy(predicted, truth, norms)
    assert split["threshold"] == pytest.approx(3.0)
    # low: indices 0 (right), 2 (wrong), 4 (wrong), 5 (wrong); high: 1 (right), 3 (right)
    assert split["low"] == {"count": 4, "accuracy": pytest.approx(0.25)}
    assert split["high"] == {"count": 2, "accuracy": pytest.approx(1.0)}
    assert norm_split_accuracy(predicted, truth, norms, threshold=10.0)["high"] == {"count": 0, "accuracy": None}


def test_cosine_prediction_ignores_the_norm_eq_24() -> None:
    centroids = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    latent = torch.tensor([[3.0, 1.0], [0.1, 0.2], [-5.0, 4.0]])
    predicted, score, norm = pod_predict(latent, centroids)
    assert predicted.tolist() == [0, 1, 2]
    torch.testing.assert_close(score, torch.tensor([3 / 10**0.5, 2 / 5**0.5, 5 / 41**0.5]))
    torch.testing.assert_close(norm, latent.norm(dim=1))
    torch.testing.assert_close(cosine_to_centroids(latent * 7, centroids), cosine_to_centroids(latent, centroids))
    # eq. 21 (argmax of x . c with unit centroids) picks the same class
    assert (latent @ centroids.T).argmax(dim=1).tolist() == predicted.tolist()


def test_multiclass_evaluation_layout() -> None:
    report = multiclass_evaluation(np.array([0, 1, 1]), np.array([0, 1, 0]), np.array([1.0, 2.0, 3.0]), ["a", "b"])
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["confusion_matrix"] == [[1, 1], [0, 1]]
    assert report["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert report["norm_split"]["low"]["count"] == 1
    assert multiclass_evaluation(np.array([0]), np.array([0]), None, ["a", "b"])["norm_split"] is None


def test_different_train_and_test_classes_are_refused_with_counts() -> None:
    check_same_classes(["a", "b"], ["b", "a"])
    with pytest.raises(ValueError, match="train set has 3 classes and test set 2: only in train: c; only in test: none"):
        check_same_classes(["a", "b", "c"], ["a", "b"])


def test_pod_family_losses_map_to_cosine_heads() -> None:
    assert {name: LOSS_HEADS[name] for name in ("cosine", "nac", "pod", "softmax")} == {
        "cosine": "cosine", "nac": "cosine", "pod": "cosine", "softmax": "softmax"}


def test_check_checkpoint_centroids_against_class_list_and_frozen_layer() -> None:
    centroids = torch.from_numpy(pedcc_centroids(3, 4))
    payload = {"centroids": centroids, "class_names": ["a", "b", "c"], "state_dict": {"pedcc.weight": centroids}}
    assert check_checkpoint_centroids(payload).shape == (3, 4)
    with pytest.raises(ValueError, match="3 centroids do not match 4 classes"):
        check_checkpoint_centroids({**payload, "class_names": ["a", "b", "c", "d"]})
    with pytest.raises(ValueError, match="differ from the model's frozen PEDCC layer"):
        check_checkpoint_centroids({**payload, "state_dict": {"pedcc.weight": -centroids}})
    with pytest.raises(ValueError, match="no centroids"):
        check_checkpoint_centroids({"class_names": ["a"]})


# -- the training loop -------------------------------------------------------------------------


def test_pod_training_checkpoints_centroids_and_nac_state_then_resumes(three_class_folder, tmp_path):
    result = train(_cfg(three_class_folder, tmp_path / "run", epochs=1))
    last = load_checkpoint(result.last_checkpoint)
    assert last["head"] == "cosine" and last["class_names"] == ["bird", "car", "cat"]
    centroids = last["centroids"]
    assert centroids.shape == (3, 8)
    torch.testing.assert_close(centroids, last["state_dict"]["pedcc.weight"])
    gram = centroids.double() @ centroids.double().T
    torch.testing.assert_close(gram, torch.full((3, 3), -0.5, dtype=torch.float64).fill_diagonal_(1.0), atol=1e-6,
                               rtol=0)
    state = last["loss_state"]
    assert state["epoch"] == 2 and state["mean_norm"] != pytest.approx(0.05)  # M from epoch 1's latents
    # Resume with another seed: the checkpoint's centroids win, none are regenerated.
    resumed = train(_cfg(three_class_folder, tmp_path / "run", epochs=2, resume=True, seed=99))
    final = load_checkpoint(resumed.last_checkpoint)
    torch.testing.assert_close(final["centroids"], centroids)
    assert final["loss_state"]["epoch"] == 3
    model = build_model_from_checkpoint(load_checkpoint(resumed.best_checkpoint))
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 8)


def test_softmax_baseline_trains_with_the_same_backbone(three_class_folder, tmp_path):
    result = train(_cfg(three_class_folder, tmp_path / "run", loss="softmax", epochs=1))
    payload = load_checkpoint(result.best_checkpoint)
    assert payload["head"] == "softmax" and "centroids" not in payload
    assert payload["arch_kwargs"]["latent_dim"] == 8
    split = result.history[-1]["val"]["norm_split"]  # Table I split on the softmax model's latent
    assert split["low"]["count"] + split["high"]["count"] == 24


def test_evaluate_reports_accuracy_confusion_and_norm_split(three_class_folder, tmp_path):
    for loss in ("pod", "softmax"):
        result = train(_cfg(three_class_folder, tmp_path / loss, loss=loss, epochs=1))
        report = evaluate(EvalConfig(model=str(result.best_checkpoint), data=str(three_class_folder)))
        assert report["head"] == ("cosine" if loss == "pod" else "softmax")
        assert report["count"] == 24 and sum(map(sum, report["confusion_matrix"])) == 24
        assert set(report["per_class"]) == {"bird", "car", "cat"}
        split = report["norm_split"]
        assert split["low"]["count"] + split["high"]["count"] == 24
        text = format_report(report)
        assert "accuracy" in text and "low-norm" in text and "confusion matrix" in text
        subset = evaluate(EvalConfig(model=str(result.best_checkpoint), data=str(three_class_folder),
                                     classes=("cat",)))
        assert subset["count"] == 8


# -- bad input -----------------------------------------------------------------------------------


def test_train_refuses_a_test_set_with_other_class_folders(three_class_folder, tmp_path):
    other = make_image_folder(tmp_path / "test", {"car": 2, "bird": 2}, size=16)
    with pytest.raises(ValueError, match="train set has 3 classes and test set 2: only in train: cat"):
        train(_cfg(three_class_folder, tmp_path / "run", val_data=str(other)))


def test_train_refuses_a_latent_dimension_below_k_minus_one(three_class_folder, tmp_path):
    with pytest.raises(ValueError, match="3 evenly-distributed centroids do not fit in 1 dimensions"):
        train(_cfg(three_class_folder, tmp_path / "run", latent_dim=1))


def test_train_refuses_binary_class_options_for_pod(three_class_folder, tmp_path):
    with pytest.raises(ValueError, match="--positive/--negatives are for modulus"):
        train(_cfg(three_class_folder, tmp_path / "run", positive="car", negatives=("cat",)))


def test_evaluate_refuses_centroids_that_do_not_match_the_class_list(three_class_folder, tmp_path):
    result = train(_cfg(three_class_folder, tmp_path / "run", epochs=1))
    payload = load_checkpoint(result.best_checkpoint)
    payload.pop("path")
    payload["class_names"] = ["bird", "car"]
    save_checkpoint(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="3 centroids do not match 2 classes"):
        evaluate(EvalConfig(model=str(tmp_path / "bad.pt"), data=str(three_class_folder)))
    with pytest.raises(ValueError, match="3 classes and test set 2"):
        evaluate(EvalConfig(model=str(result.best_checkpoint), data=str(make_image_folder(
            tmp_path / "two", {"car": 2, "bird": 2}, size=16))))


def test_pod_under_ddp_averages_the_mean_norm_over_ranks(three_class_folder, tmp_path):
    script = tmp_path / "ddp_pod.py"
    script.write_text(
        "from training.config import TrainConfig\n"
        "from patchdet.training.train import train\n"
        f"train(TrainConfig(data={str(three_class_folder)!r}, val_data={str(three_class_folder)!r}, arch='smallcnn',"
        f" input_size=16, latent_dim=8, loss='pod', epochs=1, batch_size=4, optimizer='sgd', lr=0.05,"
        f" out={str(tmp_path / 'ddp')!r}, tensorboard=False))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547", str(script)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    payload = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert payload["loss_state"]["epoch"] == 2 and payload["loss_state"]["mean_norm"] != pytest.approx(0.05)
    torch.testing.assert_close(payload["centroids"], payload["state_dict"]["pedcc.weight"])
