"""Every loss trains with every registered backbone through ``patchdet train``'s loop, and exports clean.

Tiny data (16x16 synthetic patches), one epoch: these check wiring and exports, not accuracy.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from patchdet.export.onnx import export_graph_onnx
from patchdet.export.wrappers import HEAD_OUTPUTS, build_graph
from patchdet.training.checkpoint import build_model_from_checkpoint, load_checkpoint
from patchdet.training.config import TrainConfig
from patchdet.training.losses import LOSS_HEADS
from patchdet.training.models import list_models
from patchdet.training.train import train
from tests.conftest import make_image_folder

MULTICLASS = ("softmax", "center", "cosface", "arcface", "msl", "gini-kl", "cosine", "nac", "pod")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), {"car": 6, "bird": 6, "cat": 6}, size=16)


def _train(folder, out, loss: str, arch: str = "smallcnn", **overrides):
    binary = LOSS_HEADS[loss] == "modulus"
    values = dict(data=str(folder), val_data=str(folder), arch=arch, input_size=16, loss=loss, epochs=1,
                  batch_size=9, optimizer="sgd", lr=0.01, out=str(out), tensorboard=False, seed=1, amp="off",
                  latent_dim=None if binary else 8, channels_last=False)
    if binary:
        values.update(positive="car", negatives=("bird", "cat"))
    else:
        values.update(loss_options={"start_epoch": 1} if loss == "gini-kl" else {})
    values.update(overrides)
    return train(TrainConfig(**values))


def _export_and_check(tmp_path, checkpoint_path, head: str) -> None:
    payload = load_checkpoint(checkpoint_path)
    assert payload["head"] == head
    leaked = [k for k in payload["state_dict"] if k.startswith(("heads.", "centers", "inner."))]
    assert not leaked
    model = build_model_from_checkpoint(payload)
    graph = build_graph(model, head, payload.get("centroids"))
    path = export_graph_onnx(graph, tmp_path / "m.onnx", 16, False, opset=17)
    exported = onnx.load(str(path))
    assert tuple(o.name for o in exported.graph.output) == HEAD_OUTPUTS[head]
    # nothing training-only in the graph: its parameter count is the model's
    stored = sum(int(np.prod(t.dims)) for t in exported.graph.initializer)
    assert stored <= sum(t.numel() for t in model.state_dict().values())


@pytest.mark.parametrize("loss", MULTICLASS)
def test_each_multiclass_loss_trains_and_exports_its_head(folder, tmp_path, loss):
    result = _train(folder, tmp_path / "run", loss)
    assert np.isfinite(result.history[-1]["train_loss"])
    _export_and_check(tmp_path, result.best_checkpoint, LOSS_HEADS[loss])


def test_cosface_centroids_are_the_learned_class_vectors(folder, tmp_path):
    result = _train(folder, tmp_path / "run", "cosface")
    payload = load_checkpoint(result.best_checkpoint)
    centroids = torch.as_tensor(payload["centroids"])
    assert torch.allclose(centroids.norm(dim=1), torch.ones(3), atol=1e-5)
    learned = payload["loss_module"]["inner.W"] if "loss_module" in payload else None
    last = load_checkpoint(result.last_checkpoint)
    weights = last["loss_module"]["inner.W"].t()
    assert learned is None or learned.shape == weights.shape
    assert torch.allclose(torch.as_tensor(last["centroids"]), weights / weights.norm(dim=1, keepdim=True), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in list_models() if a != "smallcnn"])
@pytest.mark.parametrize("loss", ["msl", "gini-kl", "n2o"])
def test_losses_compose_with_every_backbone(folder, tmp_path, arch, loss):
    result = _train(folder, tmp_path / "run", loss, arch=arch, batch_size=18)
    assert np.isfinite(result.history[-1]["train_loss"])
    _export_and_check(tmp_path, result.best_checkpoint, LOSS_HEADS[loss])


def test_n2o_on_a_multiclass_backbone_detects_by_modulus(folder, tmp_path):
    result = _train(folder, tmp_path / "run", "n2o")
    val = result.history[-1]["val"]
    assert set(val["at_origin"]) == {"car", "bird", "cat"}
    _export_and_check(tmp_path, result.best_checkpoint, "modulus")


def test_gini_on_a_layer_with_negative_activations_is_refused_before_training(folder, tmp_path, monkeypatch):
    from patchdet.training import backbones

    def signed_smallcnn(**kwargs):
        model = backbones.smallcnn(**kwargs)
        model.backbone.features.append(torch.nn.Conv2d(64, 8, 1))  # last layer without a ReLU
        model.backbone.out_features = 8
        model.latent = torch.nn.Linear(8, model.latent_dim)
        return model

    monkeypatch.setitem(__import__("patchdet.training.models", fromlist=["_MODELS"])._MODELS, "signed", signed_smallcnn)
    with pytest.raises(ValueError, match="non-negative activations"):
        _train(folder, tmp_path / "run", "gini-kl", arch="signed")
    assert not (tmp_path / "run" / "last.pt").exists()
