"""Oracle tests: each POD-family loss recomputed by hand on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch

from patchdet.training.losses.cosine import CosineLoss
from patchdet.training.losses.nac import NaCLoss
from patchdet.training.losses.pod import PODLoss
from patchdet.training.losses.sc import SCLoss
from patchdet.training.losses.softmax import SoftmaxLoss

# Three classes in 2-D: a regular simplex written out by hand.
CENTROIDS = torch.tensor([[1.0, 0.0], [-0.5, math.sqrt(3) / 2], [-0.5, -math.sqrt(3) / 2]])
LATENT = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 4.0], [-1.0, -1.0]])
TARGET = torch.tensor([0, 1, 0, 2])


def _cosines_by_hand() -> list[float]:
    cos = []
    for (x0, x1), y in zip(LATENT.tolist(), TARGET.tolist(), strict=True):
        c0, c1 = CENTROIDS[y].tolist()
        cos.append((x0 * c0 + x1 * c1) / math.hypot(x0, x1))
    return cos  # [1, sqrt(3)/2, 0.6, (0.5 + sqrt(3)/2) / sqrt(2)]


def test_cosine_loss_matches_hand_computation() -> None:
    expected = [(1 - c) ** 2 for c in _cosines_by_hand()]
    loss = CosineLoss(CENTROIDS, reduction="none")(LATENT, TARGET)
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(CosineLoss(CENTROIDS)(LATENT, TARGET), torch.tensor(sum(expected) / 4))
    torch.testing.assert_close(CosineLoss(CENTROIDS, reduction="sum")(LATENT, TARGET), torch.tensor(sum(expected)))


def test_cosine_loss_is_zero_on_the_centroids_and_scale_free() -> None:
    loss = CosineLoss(CENTROIDS)
    assert loss(CENTROIDS * 5.0, torch.arange(3)).item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(loss(LATENT, TARGET), loss(LATENT * 10, TARGET))


def test_nac_loss_matches_hand_computation_with_delta() -> None:
    loss = NaCLoss(CENTROIDS, alpha=0.5, reduction="none")
    loss.load_state({"mean_norm": 2.0, "epoch": 3})
    delta = 0.5 * 3 * 2.0  # alpha * e * M
    norms = [math.hypot(*row) for row in LATENT.tolist()]
    expected = [(1 - c / (1 + delta / n)) ** 2 for c, n in zip(_cosines_by_hand(), norms, strict=True)]
    torch.testing.assert_close(loss(LATENT, TARGET), torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_nac_with_alpha_zero_is_the_cosine_loss() -> None:
    torch.testing.assert_close(NaCLoss(CENTROIDS, alpha=0.0)(LATENT, TARGET), CosineLoss(CENTROIDS)(LATENT, TARGET))


def test_nac_mean_norm_follows_the_previous_epoch_and_round_trips_state_dict() -> None:
    loss = NaCLoss(CENTROIDS, alpha=0.01)
    assert loss.get_state() == {"mean_norm": pytest.approx(0.05), "epoch": 1}  # paper's initial M  # paper's initial M
    assert loss.delta == pytest.approx(0.01 * 1 * 0.05)
    loss.set_epoch(1)
    loss(LATENT[:2], TARGET[:2])
    loss(LATENT[2:], TARGET[2:])
    with torch.no_grad():  # validation batches do not count
        loss(LATENT * 100, TARGET)
    mean_norm = sum(math.hypot(*row) for row in LATENT.tolist()) / 4
    assert loss.end_epoch() == pytest.approx(mean_norm)
    assert loss.get_state()["epoch"] == 2
    assert loss.delta == pytest.approx(0.01 * 2 * mean_norm)

    resumed = NaCLoss(CENTROIDS, alpha=0.01)
    resumed.load_state(loss.get_state())
    assert resumed.get_state() == {"mean_norm": pytest.approx(mean_norm), "epoch": 2}
    assert list(resumed.state_dict()) == []  # centroids belong to the model, not to the loss
    # An epoch without training batches leaves M unchanged.
    assert resumed.end_epoch() == pytest.approx(mean_norm)


def test_nac_state_survives_torch_save_with_weights_only(tmp_path) -> None:
    loss = PODLoss(CENTROIDS)
    loss.load_state({"mean_norm": 3.5, "epoch": 4})
    torch.save({"loss_state": loss.get_state()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["loss_state"]
    fresh = PODLoss(CENTROIDS)
    fresh.load_state(state)
    assert fresh.get_state() == {"mean_norm": 3.5, "epoch": 4}
    assert fresh.nac.delta == pytest.approx(0.01 * 4 * 3.5)


def _sc_by_hand(latent: torch.Tensor, target: torch.Tensor) -> float:
    rows = []
    for x, y in zip(latent.tolist(), target.tolist(), strict=True):
        norm = math.sqrt(sum(v * v for v in x))
        rows.append([v / norm - c for v, c in zip(x, CENTROIDS[y].tolist(), strict=True)])
    batch, dim = len(rows), len(rows[0])
    total = 0.0
    for i in range(dim):
        for j in range(dim):
            if i != j:
                r_ij = sum(row[i] * row[j] for row in rows) / (batch - 1)
                total += r_ij**2
    return total


def test_sc_loss_matches_hand_computation() -> None:
    by_hand = _sc_by_hand(LATENT, TARGET)
    assert by_hand > 0
    assert SCLoss(CENTROIDS, reduction="sum")(LATENT, TARGET).item() == pytest.approx(by_hand, rel=1e-5)
    assert SCLoss(CENTROIDS)(LATENT, TARGET).item() == pytest.approx(by_hand / (2 - 1), rel=1e-5)


def test_sc_loss_is_zero_when_every_sample_sits_on_its_centroid_and_for_one_sample() -> None:
    assert SCLoss(CENTROIDS)(CENTROIDS * 3, torch.arange(3)).item() == pytest.approx(0.0, abs=1e-12)
    assert SCLoss(CENTROIDS)(LATENT[:1], TARGET[:1]).item() == 0.0


def test_pod_is_nac_plus_lambda_sc() -> None:
    pod = PODLoss(CENTROIDS, alpha=0.01, lam=2.5)
    pod.load_state({"mean_norm": 1.5, "epoch": 2})
    nac = NaCLoss(CENTROIDS, alpha=0.01)
    nac.load_state({"mean_norm": 1.5, "epoch": 2})
    expected = nac(LATENT, TARGET) + 2.5 * SCLoss(CENTROIDS)(LATENT, TARGET)
    torch.testing.assert_close(pod(LATENT, TARGET), expected)


def test_losses_have_gradients_for_the_latent() -> None:
    latent = LATENT.clone().requires_grad_(True)
    PODLoss(CENTROIDS)(latent, TARGET).backward()
    assert latent.grad is not None and torch.isfinite(latent.grad).all() and latent.grad.abs().sum() > 0


def test_softmax_loss_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    target = torch.tensor([0, 2])
    expected = []
    for row, y in zip(logits.tolist(), target.tolist(), strict=True):
        expected.append(-(row[y] - math.log(sum(math.exp(v) for v in row))))
    torch.testing.assert_close(SoftmaxLoss(reduction="none")(logits, target), torch.tensor(expected))
    torch.testing.assert_close(SoftmaxLoss()(logits, target), torch.tensor(sum(expected) / 2))


@pytest.mark.parametrize("build", [lambda: CosineLoss(CENTROIDS, reduction="avg"), lambda: SCLoss(CENTROIDS, reduction="none"),
                                   lambda: NaCLoss(CENTROIDS, alpha=-1.0), lambda: PODLoss(CENTROIDS, lam=-1.0)])
def test_bad_options_are_refused(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_latent_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match=r"latent has shape \(4, 3\): expected \[N, 2\]"):
        CosineLoss(CENTROIDS)(torch.ones(4, 3), TARGET)
