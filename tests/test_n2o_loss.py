"""The N2O loss does what the DisCNN paper claims, on tiny hand-made batches."""

import math

import pytest
import torch

from patchdet.training.losses import build_loss
from patchdet.training.losses.n2o import N2OLoss, N2OSoftmaxLoss

FORMULATIONS = [
    pytest.param(lambda: N2OLoss(scale=1.0, target_norm=4.0, compactness=0.1), id="n2o"),
    pytest.param(lambda: N2OSoftmaxLoss(embedding_dim=4, beta=1.0), id="n2o-softmax"),
]


def test_oracle_by_hand():
    loss = N2OLoss(scale=2.0, target_norm=2.0, compactness=0.5, reduction="none")
    z = torch.tensor([[1.0, -3.0], [0.5, 1.5]])
    y = torch.tensor([False, True])
    got = loss(z, y)
    # negative: relu(z) = (1, 0) -> r^2 / s^2 = 1 / 4
    # positive: r^2 / s^2 = (0.25 + 2.25) / 4 = 0.625; target c = (2/sqrt 2, 2/sqrt 2)
    c = 2.0 / math.sqrt(2.0)
    positive = -math.log(1 - math.exp(-0.625)) + 0.5 * ((0.5 - c) ** 2 + (1.5 - c) ** 2) / 2
    torch.testing.assert_close(got, torch.tensor([0.25, positive]))
    mean_loss = N2OLoss(scale=2.0, target_norm=2.0, compactness=0.5, reduction="mean")
    assert mean_loss(z, y).item() == pytest.approx(float(got.mean()), rel=1e-6)


def test_negative_at_origin_costs_nothing_and_has_no_gradient():
    loss = N2OLoss()
    z = torch.tensor([[-1.0, -0.5, -2.0, 0.0]], requires_grad=True)  # relu(z) = 0: the origin
    value = loss(z, torch.tensor([False]))
    value.backward()
    assert value.item() == 0.0
    assert torch.count_nonzero(z.grad) == 0


@pytest.mark.parametrize("make_loss", FORMULATIONS)
def test_gradient_descent_pulls_negatives_to_origin(make_loss):
    loss = make_loss()
    z = torch.tensor([[0.5, 1.0, 0.2, 0.7]], requires_grad=True)
    loss(z, torch.tensor([False])).backward()
    step = z - 0.05 * z.grad
    assert torch.relu(step).norm() < torch.relu(z).norm()


@pytest.mark.parametrize("make_loss", FORMULATIONS)
def test_gradient_descent_pushes_positives_away_from_origin(make_loss):
    torch.manual_seed(0)  # n2o-softmax's random 2-way head decides the CE direction; unseeded this was flaky
    loss = make_loss()
    z = torch.tensor([[0.1, 0.2, 0.05, 0.1]], requires_grad=True)
    loss(z, torch.tensor([True])).backward()
    step = z - 0.05 * z.grad
    assert torch.relu(step).norm() > torch.relu(z).norm()


def test_positive_at_origin_still_gets_gradient():
    # All outputs clipped by the final ReLU: the pre-activation term must still move it.
    z = torch.tensor([[-0.5, -0.5, -0.5, -0.5]], requires_grad=True)
    N2OLoss()(z, torch.tensor([True])).backward()
    assert (z.grad < 0).all()  # descent increases z toward the positive target


def test_positives_are_pulled_into_a_compact_set():
    loss = N2OLoss(target_norm=4.0, compactness=0.1)
    far = torch.full((1, 4), 10.0, requires_grad=True)  # norm 20, beyond the target
    loss(far, torch.tensor([True])).backward()
    assert ((far - 0.5 * far.grad).norm() < far.norm()).item()


@pytest.mark.parametrize("make_loss", FORMULATIONS)
@pytest.mark.parametrize("labels", [[True, True], [False, False], [True, False]], ids=["only-pos", "only-neg", "mixed"])
def test_finite_for_zero_outputs_and_single_kind_batches(make_loss, labels):
    loss = make_loss()
    z = torch.zeros(2, 4, requires_grad=True)
    value = loss(z, torch.tensor(labels))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(z.grad).all()


def test_probability_is_monotone_in_modulus():
    loss = N2OLoss(scale=1.0, compactness=0.0, reduction="none")
    radii = torch.linspace(0.1, 5, 20)
    z = torch.stack([radii, torch.zeros_like(radii)], dim=1)
    positive_cost = loss(z, torch.ones(20, dtype=torch.bool))
    negative_cost = loss(z, torch.zeros(20, dtype=torch.bool))
    assert (positive_cost.diff() <= 0).all() and positive_cost[0] > positive_cost[-1]
    assert (negative_cost.diff() > 0).all()


def test_registry_and_bad_options():
    assert isinstance(build_loss("n2o", scale=2.0), N2OLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("nope")
    with pytest.raises(ValueError, match="bad option"):
        build_loss("n2o", wrong=1)
    with pytest.raises(ValueError, match="must be > 0"):
        N2OLoss(scale=0)
    with pytest.raises(ValueError, match="reduction"):
        N2OLoss(reduction="avg")(torch.zeros(1, 2), torch.tensor([True]))


@pytest.mark.parametrize("kind", ["modulus", "l1", "hinge", "squared+hinge"])
def test_negative_variants_by_hand_and_they_reach_the_origin_in_finite_steps(kind):
    z = torch.tensor([[3.0, -4.0, 4.0]])
    expected = {"modulus": 5.0 / 2, "l1": 7.0 / 2, "hinge": (3.5 + 0.0 + 4.5) / 2,
                "squared+hinge": (9 + 16) / 4 + 0.1 * (3.5 + 0.0 + 4.5) / 2}[kind]
    loss = N2OLoss(scale=2.0, negative_term=kind, negative_margin=0.5, reduction="none")
    assert loss(z, torch.tensor([False])).tolist() == pytest.approx([expected])
    # plain gradient descent: the squared term only shrinks geometrically, these land exactly on 0
    steps = {}
    for name in ("squared", kind):
        zz = torch.tensor([[0.3, 0.2]], requires_grad=True)
        loss = N2OLoss(negative_term=name)
        for step in range(1, 200):
            loss(zz, torch.tensor([False])).backward()
            with torch.no_grad():
                zz -= 0.05 * zz.grad
            zz.grad = None
            if torch.relu(zz).norm() == 0:
                steps[name] = step
                break
    assert kind in steps and "squared" not in steps
    at_origin = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    N2OLoss(negative_term=kind)(at_origin, torch.tensor([False])).backward()
    assert torch.isfinite(at_origin.grad).all()


def test_unknown_negative_term_is_refused():
    with pytest.raises(ValueError, match="negative_term 'cubic'.*squared, modulus, l1, hinge, squared\\+hinge"):
        N2OLoss(negative_term="cubic")
