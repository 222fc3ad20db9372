"""The learning-rate schedule: every batch trains at a useful rate, also in very short runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from patchdet.training.train import _make_scheduler

PEAK_LR = 2e-3
ONECYCLE_END_LR = PEAK_LR / 25 / 1e4  # OneCycleLR's final value with its default div factors: 8e-9


def _lrs_used(scheduler_name: str, batches: int) -> list[float]:
    """The lr each batch trains at, stepping optimizer and scheduler as the training loop does."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=PEAK_LR)
    cfg = SimpleNamespace(epochs=1, lr=PEAK_LR, scheduler=scheduler_name)
    scheduler = _make_scheduler(cfg, optimizer, steps_per_epoch=batches)
    used = []
    for _ in range(batches):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return used


@pytest.mark.parametrize("batches", [1, 2, 3, 5, 20, 200])
def test_onecycle_never_trains_a_batch_at_its_terminal_rate(batches):
    used = _lrs_used("onecycle", batches)
    assert min(used) > ONECYCLE_END_LR * 1.5
    peak = used.index(max(used))
    assert all(a >= b for a, b in zip(used[peak:], used[peak + 1:], strict=False))  # annealing never rises again


@pytest.mark.parametrize("batches", [1, 2, 3])
def test_very_short_runs_still_train(batches):
    for name in ("onecycle", "cosine", "constant"):
        used = _lrs_used(name, batches)
        assert sum(used) / len(used) >= PEAK_LR / 4, (name, used)
