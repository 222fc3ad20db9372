"""Registered POD/softmax classifiers: output contract, frozen centroid layer, refusals."""

from __future__ import annotations

import pytest
import torch

from patchdet.training.backbones import PODClassifier, default_latent_dim
from patchdet.training.models import count_parameters, get_model, list_models
from patchdet.training.pedcc import pedcc_centroids

POD_ARCHS = ("smallcnn", "mobilenetv2", "mobilenetv2_halfres", "resnet18")


def test_pod_architectures_are_registered_beside_discnn() -> None:
    assert set(POD_ARCHS) <= set(list_models())


@pytest.mark.parametrize("arch", POD_ARCHS)
@pytest.mark.parametrize("head", ["cosine", "softmax"])
def test_output_contract(arch: str, head: str) -> None:
    torch.manual_seed(0)
    model = get_model(arch, num_classes=5, latent_dim=16, head=head, input_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
        _, latent = model.forward_with_latent(torch.randn(2, 3, 32, 32))
    assert out.shape == ((2, 16) if head == "cosine" else (2, 5))
    assert latent.shape == (2, 16)
    assert out.dtype == torch.float32


def test_halfres_mobilenetv2_keeps_the_second_stage_downsampling() -> None:
    """At 32 px ``mobilenetv2`` runs its second stage at full resolution; the half-resolution variant does not."""
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        full = get_model("mobilenetv2", num_classes=3, input_size=32).backbone.features[:3](x)
        half = get_model("mobilenetv2_halfres", num_classes=3, input_size=32).backbone.features[:3](x)
    assert full.shape[-1] == 32 and half.shape[-1] == 16


def test_smallcnn_takes_96x96_patches() -> None:
    model = get_model("smallcnn", num_classes=3, latent_dim=8, input_size=96, widths=(8, 16)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 8)


def test_centroid_layer_is_frozen_and_in_the_state_dict() -> None:
    model = get_model("smallcnn", num_classes=4, latent_dim=8, widths=(8, 16))
    centroids = torch.from_numpy(pedcc_centroids(4, 8, seed=1))
    model.set_centroids(centroids)
    assert not model.pedcc.weight.requires_grad
    assert all(p is not model.pedcc.weight for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(model.state_dict()["pedcc.weight"], centroids)
    torch.testing.assert_close(model.centroids, centroids)
    # The PEDCC layer's output is x . c_j, whose argmax is the cosine argmax (eq. 21-24).
    with torch.no_grad():
        latent = model(torch.randn(3, 3, 32, 32))
        torch.testing.assert_close(model.pedcc(latent), latent @ centroids.T)
    trainable = count_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n != "pedcc.weight")


def test_softmax_head_has_a_trainable_classifier_and_no_centroids() -> None:
    model = get_model("smallcnn", num_classes=4, latent_dim=8, head="softmax", widths=(8, 16))
    assert model.classifier.weight.requires_grad
    with pytest.raises(ValueError, match="softmax head has no centroids"):
        _ = model.centroids


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    torch.manual_seed(0)
    model = get_model("smallcnn", num_classes=3, latent_dim=8, widths=(8, 16)).eval()
    model.set_centroids(torch.from_numpy(pedcc_centroids(3, 8)))
    clone = get_model("smallcnn", num_classes=3, latent_dim=8, widths=(8, 16)).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))


def test_default_latent_dim_follows_table_iii() -> None:
    assert [default_latent_dim(k) for k in (2, 10, 30, 100, 200, 500, 1000)] == [256, 256, 256, 512, 512, 1024, 2048]
    assert get_model("smallcnn", num_classes=10, widths=(8,)).latent_dim == 256


def test_latent_dimension_below_k_minus_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"10 evenly-distributed centroids do not fit in 8 dimensions.*>= 9"):
        get_model("smallcnn", num_classes=10, latent_dim=8)


def test_set_centroids_of_the_wrong_shape_is_refused() -> None:
    model = get_model("smallcnn", num_classes=3, latent_dim=8, widths=(8,))
    with pytest.raises(ValueError, match=r"centroids have shape \(4, 8\): expected \[3, 8\]"):
        model.set_centroids(torch.zeros(4, 8))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"head": "arcface"}, "head 'arcface' is unknown"),
    ({"num_classes": 1}, "at least 2 classes, got 1"),
    ({"dropout": 0.5}, "unknown model option"),
])
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_model("smallcnn", **kwargs)


def test_pod_classifier_wraps_any_backbone() -> None:
    model = PODClassifier(torch.nn.Flatten(), 12, num_classes=3, latent_dim=4, head="cosine", input_size=2)
    assert model(torch.randn(5, 3, 2, 2)).shape == (5, 4)
