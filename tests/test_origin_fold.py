"""``patchdet fold-origin``: the last-layer fold that lands near-origin negatives exactly on the origin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from patchdet.cli import main
from patchdet.training.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from patchdet.training.origin_fold import (
    best_threshold,
    fit_fold,
    fold_into_linear,
    mean_f1,
    origin_margin,
    shifted_modulus,
)
from tests.test_adapt import run  # noqa: F401  (fixture: a tiny N2O DisCNN trained on generated crops)


def test_origin_margin_puts_the_target_share_of_negatives_on_the_origin():
    rng = np.random.default_rng(0)
    z = rng.normal(-0.2, 0.3, size=(1000, 16))
    for target in (0.5, 0.9, 0.99):
        delta = origin_margin(z, target)
        at_origin = np.mean(shifted_modulus(z, delta) == 0)
        assert target <= at_origin <= target + 0.002
    assert origin_margin(np.full((10, 4), -1.0), 0.9) == 0.0  # already all at the origin: no margin
    with pytest.raises(ValueError, match="no negatives"):
        origin_margin(np.zeros((0, 4)), 0.9)


def test_fold_into_linear_is_a_margin_and_a_scale_before_the_relu():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    x = torch.randn(20, 8)
    before = layer(x).detach()
    fold_into_linear(layer, delta=0.3, alpha=2.5)
    assert torch.allclose(layer(x), 2.5 * (before - 0.3), atol=1e-5)
    with pytest.raises(ValueError, match="alpha > 0"):
        fold_into_linear(layer, 0.1, 0.0)


def test_best_threshold_separates_separable_scores_in_the_middle():
    scores = np.array([0.0, 0.1, 0.2, 2.0, 2.5, 3.0])
    is_positive = np.array([False, False, False, True, True, True])
    t = best_threshold(scores, is_positive)
    assert 0.2 < t < 2.0 and mean_f1(scores, is_positive, t) == 1.0
    with pytest.raises(ValueError, match="every score is 0"):
        best_threshold(np.zeros(4), is_positive[:4])


def test_fit_fold_keeps_the_threshold_meaningful():
    rng = np.random.default_rng(1)
    negatives = np.abs(rng.normal(0, 0.05, size=(500, 16))) * (rng.random((500, 16)) < 0.5)
    positives = rng.normal(1.0, 0.3, size=(500, 16))
    z = np.concatenate([negatives, positives])
    is_positive = np.r_[np.zeros(500, bool), np.ones(500, bool)]
    assert np.mean(shifted_modulus(z[:500], 0) == 0) < 0.01  # a squared pull leaves them just off the origin
    delta, alpha = fit_fold(z, is_positive, 0.95, threshold=1.0)
    folded = alpha * shifted_modulus(z, delta)
    assert np.mean(folded[:500] == 0) >= 0.95
    assert mean_f1(folded, is_positive, 1.0) == 1.0  # threshold 1 still separates them


def test_fold_origin_command_writes_a_folded_checkpoint(tmp_path, run):  # noqa: F811
    out = tmp_path / "folded"
    assert main(["fold-origin", str(run), "--target", "0.9", "--out", str(out)]) == 0
    report = json.loads((out / "fold.json").read_text())
    fit = report["fit"]
    assert report["after"]["negatives_at_origin"] >= 0.9 and fit["alpha"] > 0 and fit["delta"] >= 0
    original, folded = load_checkpoint(run), load_checkpoint(out / "best.pt")
    assert folded["training"]["origin_fold"]["target"] == 0.9 and "optimizer" not in folded
    # conv layers untouched; the folded model's outputs are alpha * relu(z - delta) of the original's
    for name, weight in original["state_dict"].items():
        if name.startswith("features."):
            assert torch.equal(weight, folded["state_dict"][name]), name
    before_model, after_model = build_model_from_checkpoint(original).eval(), build_model_from_checkpoint(folded).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        _, z = before_model(x, return_pre_activation=True)
        expected = fit["alpha"] * torch.relu(z - fit["delta"])
        assert torch.allclose(after_model(x), expected, atol=1e-4 * max(1.0, float(expected.abs().max())))


def test_fold_origin_refuses_bad_input(tmp_path, run, capsys):  # noqa: F811
    assert main(["fold-origin", str(run), "--target", "1.5", "--out", str(tmp_path / "a")]) == 2
    assert "target 1.5 is invalid" in capsys.readouterr().err
    payload = load_checkpoint(run)
    payload["head"] = "cosine"
    save_checkpoint(payload, tmp_path / "pod.pt")
    assert main(["fold-origin", str(tmp_path / "pod.pt"), "--out", str(tmp_path / "b")]) == 2
    assert "not a DisCNN trained with an N2O loss" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_fold_origin_keeps_earlier_results_and_drops_a_stale_operating_threshold(tmp_path, run, capsys):  # noqa: F811
    payload = load_checkpoint(run)
    payload["threshold"], payload["thresholds"] = 3.0, {"training": 1.0, "card": 3.0}
    save_checkpoint(payload, tmp_path / "shipped.pt")
    out = tmp_path / "folded"
    assert main(["fold-origin", str(tmp_path / "shipped.pt"), "--out", str(out)]) == 0
    folded = load_checkpoint(out / "best.pt")
    assert folded["threshold"] == 1.0 and folded["thresholds"] == {"training": 1.0}  # 3 meant the unfolded scores
    first = (out / "best.pt").read_bytes()
    assert main(["fold-origin", str(run), "--target", "0.8", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "best.pt").read_bytes() == first
    assert main(["fold-origin", str(run), "--target", "0.8", "--out", str(out), "--force"]) == 0
    assert json.loads((out / "fold.json").read_text())["fit"]["target"] == 0.8
