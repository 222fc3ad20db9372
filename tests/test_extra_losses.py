"""Oracle tests for MSL, Gini + KL, center loss, CosFace and ArcFace: each recomputed by hand on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from patchdet.training.losses import LOSS_HEADS, LOSSES, build_loss, loss_needs
from patchdet.training.losses.center import CenterLoss
from patchdet.training.losses.gini_kl import GiniKLLoss, gini_kl_terms
from patchdet.training.losses.margin import ArcFaceLoss, CosFaceLoss
from patchdet.training.losses.msl import MSLoss, within_class_distances


def test_msl_within_class_distance_by_hand_and_singletons_contribute_nothing() -> None:
    q = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [5.0, 5.0]])
    target = torch.tensor([0, 0, 0, 1])  # class 1 has one sample
    # pairs of class 0: |(0,0)-(3,4)| = 5, |(0,0)-(0,1)| = 1, |(3,4)-(0,1)| = sqrt(18); lambda = 3
    expected = (5.0 + 1.0 + math.sqrt(18.0)) / 3
    distances = within_class_distances(q, target)
    assert distances.tolist() == pytest.approx([expected])
    assert within_class_distances(q[:1], target[:1]).numel() == 0


def test_msl_is_cross_entropy_plus_squared_hinge_averaged_over_modules() -> None:
    torch.manual_seed(0)
    loss = MSLoss(num_classes=2, block_channels=[3], margin=0.5)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -1.0]])
    target = torch.tensor([0, 1, 1, 0])
    block = torch.rand(4, 3, 2, 2)
    value = loss(logits, target, blocks=[block])

    def module_loss(q: torch.Tensor) -> torch.Tensor:
        between = F.cross_entropy(q, target)
        d0 = (q[0] - q[3]).norm()
        d1 = (q[1] - q[2]).norm()
        return between + torch.relu(d0 - 0.5) ** 2 + torch.relu(d1 - 0.5) ** 2

    aux = loss.heads[0](block.mean(dim=(2, 3)))
    assert value.item() == pytest.approx(((module_loss(aux) + module_loss(logits)) / 2).item(), rel=1e-5)


def test_msl_with_one_sample_per_class_is_cross_entropy_and_finite() -> None:
    loss = MSLoss(num_classes=3)
    logits = torch.randn(3, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2])
    value = loss(logits, target)
    assert value.item() == pytest.approx(F.cross_entropy(logits, target).item())
    value.backward()
    assert torch.isfinite(logits.grad).all()
    # identical samples of one class: distance 0, still a finite gradient (no sqrt(0) NaN)
    same = torch.zeros(2, 3, requires_grad=True)
    loss(same, torch.tensor([1, 1])).backward()
    assert torch.isfinite(same.grad).all()


def test_msl_margin_drops_ten_percent_after_patience_unchanged_iterations() -> None:
    loss = MSLoss(num_classes=2, margin=0.5, patience=3)
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # L_W = 0 every time: unchanged
    target = torch.tensor([0, 0])
    for _ in range(3):
        loss(logits.clone().requires_grad_(True), target)
    assert float(loss.margin) == pytest.approx(0.5)  # first call only sets the reference
    loss(logits.clone().requires_grad_(True), target)
    assert float(loss.margin) == pytest.approx(0.45)
    assert "margin" in loss.state_dict()


def test_gini_and_kl_by_hand() -> None:
    # m = 3 samples, c = 2 channels (already pooled), n = 2 classes
    pooled = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]])
    target = torch.tensor([0, 0, 1])
    # S: channel means per class: class 0 -> (2, 1), class 1 -> (0, 4); rows [c, n]: ch0 (2, 0), ch1 (1, 4)
    # Sbar: ch0 (1, 0), ch1 (0.2, 0.8); Gini = ((1 - 1) + (1 - 0.04 - 0.64)) / 2 = 0.16
    # H^S = column sums (1.2, 0.8) / 2 = (0.6, 0.4); H^Y = (2/3, 1/3)
    gini, kl = gini_kl_terms(pooled[:, :, None, None], target, num_classes=2)
    assert gini.item() == pytest.approx(0.16)
    expected_kl = 0.6 * math.log(0.6 / (2 / 3)) + 0.4 * math.log(0.4 / (1 / 3))
    assert kl.item() == pytest.approx(expected_kl, rel=1e-5)


def test_gini_kl_ignores_absent_classes_and_starts_at_its_epoch() -> None:
    activations = torch.rand(4, 3, 2, 2, requires_grad=True)
    target = torch.tensor([0, 0, 2, 2])  # class 1 of 3 absent
    gini, kl = gini_kl_terms(activations, target, num_classes=3)
    assert torch.isfinite(gini) and torch.isfinite(kl)
    loss = GiniKLLoss(num_classes=3, start_epoch=2)
    logits = torch.randn(4, 3)
    ce = F.cross_entropy(logits, target).item()
    assert loss(logits, target, blocks=[activations]).item() == pytest.approx(ce)
    loss.begin_epoch(2)
    total = loss(logits, target, blocks=[activations])
    assert total.item() == pytest.approx(ce + 0.5 * gini.item() + 0.5 * kl.item(), rel=1e-5)
    total.backward()
    assert torch.isfinite(activations.grad).all()


def test_center_loss_by_hand() -> None:
    loss = CenterLoss(num_classes=2, latent_dim=2, weight=0.1)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    latent = torch.tensor([[3.0, 4.0], [1.0, 2.0]])
    target = torch.tensor([0, 1])
    pull = 0.5 * torch.tensor([25.0, 1.0])
    expected = (F.cross_entropy(logits, target, reduction="none") + 0.1 * pull).mean()
    assert loss(logits, target, latent=latent).item() == pytest.approx(expected.item())


@pytest.mark.parametrize(("cls", "margin_of"), [
    (CosFaceLoss, lambda cos, m: cos - m),
    (ArcFaceLoss, lambda cos, m: torch.cos(torch.acos(cos.clamp(-1, 1)) + math.radians(m))),
])
def test_margin_losses_match_the_formula_and_expose_unit_centroids(cls, margin_of) -> None:
    torch.manual_seed(1)
    margin = 0.35 if cls is CosFaceLoss else 28.6
    loss = cls(num_classes=3, embedding_dim=4, margin=margin, scale=10.0)
    latent = torch.randn(5, 4)
    target = torch.tensor([0, 1, 2, 0, 1])
    centroids = loss.class_centroids()
    assert centroids.shape == (3, 4)
    assert centroids.norm(dim=1).tolist() == pytest.approx([1.0] * 3)
    cos = F.normalize(latent, dim=1) @ centroids.t()
    target_mask = F.one_hot(target, 3).bool()
    logits = torch.where(target_mask, margin_of(cos, margin), cos) * 10.0
    assert loss(latent, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-4)


def test_every_loss_has_a_head_and_needs_are_declared() -> None:
    assert set(LOSSES) == set(LOSS_HEADS)
    assert {"softmax", "center", "cosface", "arcface", "msl", "gini-kl", "cosine", "nac", "pod", "n2o"} <= set(LOSSES)
    assert loss_needs("msl") == ("blocks",) and loss_needs("gini-kl") == ("last_block",)
    assert loss_needs("center") == ("latent",) and loss_needs("softmax") == ()


def test_unknown_loss_lists_the_known_ones_and_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="expected one of .*arcface.*gini-kl.*msl"):
        build_loss("focal")
    with pytest.raises(ValueError, match="bad option"):
        build_loss("msl", num_classes=2, colour="red")
    with pytest.raises(ValueError, match="margin"):
        build_loss("msl", num_classes=2, margin=0)


def test_train_help_lists_every_loss_and_the_cli_refuses_unknown_ones(capsys) -> None:
    from patchdet.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    help_text = "".join(capsys.readouterr().out.split())  # argparse wraps "gini-kl" after the hyphen
    for name in LOSSES:
        assert name in help_text
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "x", "--loss", "focal"])
    assert exit_info.value.code == 2
    assert "gini-kl" in capsys.readouterr().err
