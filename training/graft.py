"""Algorithm 1 of the DisCNN paper: feature determination by grafting.

Copy the convolutional layers (conv + BN) of a trained DisCNN into a fresh
DisCNN of the same architecture, freeze them (BN statistics included),
append a 2-way linear softmax layer, and train only the FC layers with
cross-entropy on two classes. If the loss converges, the frozen features
carry information about at least one of the two classes; if it stays near
its initial value (ln 2), they carry none.

"Converges" is made measurable: the last epoch's mean training loss is below
``converge_ratio`` (default 0.5) times the first epoch's, *and* held-out
accuracy is at least ``converge_accuracy`` (default 0.75). With
``control=True`` the same is run on randomly initialised frozen conv layers,
which separates "the features carry the classes" from "any random features
would do".
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from patchdet.training.checkpoint import build_model_from_checkpoint, load_checkpoint
from patchdet.training.data import load_image_set, normalize_on_device, stratified_split
from patchdet.training.models import get_model
from patchdet.training.train import autocast_for, resolve_device, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraftConfig:
    model: str
    data: str
    classes: tuple[str, str]
    out: str
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    max_per_class: int | None = None
    control: bool = False
    seed: int = 0
    amp: str = "auto"
    heldout_fraction: float = 0.2
    converge_ratio: float = 0.5
    converge_accuracy: float = 0.75

    def __post_init__(self) -> None:
        if len(self.classes) != 2 or self.classes[0] == self.classes[1]:
            raise ValueError(f"classes {','.join(self.classes)} are invalid: expected two different classes")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs {self.epochs} and batch size {self.batch_size} must be positive")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"learning rate {self.lr} is invalid: expected a number > 0")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ValueError(f"max-per-class {self.max_per_class} is invalid: expected >= 1 (leave it out for all)")


class GraftedDisCNN(nn.Module):
    """Frozen conv layers + trainable FC layers + a 2-way linear (softmax) layer."""

    def __init__(self, donor: nn.Module | None, arch: str, arch_kwargs: dict[str, Any]) -> None:
        super().__init__()
        body = get_model(arch, **arch_kwargs)
        if donor is not None:
            body.features.load_state_dict(donor.features.state_dict())
        for parameter in body.features.parameters():
            parameter.requires_grad_(False)
        self.body = body
        self.softmax_layer = nn.Linear(body.embedding_dim, 2)

    def train(self, mode: bool = True) -> GraftedDisCNN:
        super().train(mode)
        self.body.features.eval()  # frozen means frozen: BN running statistics stay the donor's
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax_layer(self.body(x))


def _run(name: str, model: GraftedDisCNN, train_set, heldout_set, cfg: GraftConfig, mean, std, device) -> dict:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    autocast, _ = autocast_for(device, cfg.amp)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch_losses: list[float] = []
    epoch_losses: list[float] = []
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=generator)
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            index = order[start:start + cfg.batch_size]
            images = normalize_on_device(train_set.images[index].to(device), mean, std)
            with autocast:
                logits = model(images)
            loss = F.cross_entropy(logits.float(), train_set.labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        batch_losses.extend(losses)
        epoch_losses.append(float(np.mean(losses)))
        log.info("%s: epoch %d loss %.4f", name, len(epoch_losses), epoch_losses[-1])
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(heldout_set), 512):
            images = normalize_on_device(heldout_set.images[start:start + 512].to(device), mean, std)
            predicted = model(images).argmax(dim=1).cpu()
            correct += int((predicted == heldout_set.labels[start:start + 512]).sum())
    accuracy = correct / max(len(heldout_set), 1)
    converged = epoch_losses[-1] < cfg.converge_ratio * epoch_losses[0] and accuracy >= cfg.converge_accuracy
    return {"epoch_losses": epoch_losses, "batch_losses": batch_losses, "first_epoch_loss": epoch_losses[0],
            "last_epoch_loss": epoch_losses[-1], "heldout_accuracy": accuracy, "converged": bool(converged)}


def graft(cfg: GraftConfig) -> dict[str, Any]:
    """Run Algorithm 1; writes ``graft.json`` and ``graft_loss.png`` into ``cfg.out``."""
    payload = load_checkpoint(cfg.model)
    donor = build_model_from_checkpoint(payload)
    if not hasattr(donor, "features"):
        raise ValueError(f"checkpoint {cfg.model} ({payload['arch']}) is not a DisCNN: grafting needs conv layers")
    seed_everything(cfg.seed)
    device = resolve_device("auto")
    size = int(payload["input_size"])
    data = load_image_set(cfg.data, list(cfg.classes), size, max_per_class=cfg.max_per_class, seed=cfg.seed)
    train_idx, heldout_idx = stratified_split(data.labels.numpy(), cfg.heldout_fraction, cfg.seed)
    train_set, heldout_set = data.subset(train_idx), data.subset(heldout_idx)
    mean = torch.tensor(payload["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(payload["std"], device=device).view(1, 3, 1, 1)
    runs = {}
    variants = [("grafted", donor)] + ([("random_frozen_conv", None)] if cfg.control else [])
    for name, source in variants:
        torch.manual_seed(cfg.seed)  # same FC initialisation for every variant
        model = GraftedDisCNN(source, payload["arch"], payload["arch_kwargs"]).to(device)
        runs[name] = _run(name, model, train_set, heldout_set, cfg, mean, std, device)
    result = {"config": asdict(cfg), "source_arch": payload["arch"], "positive_class": payload.get("positive_class"),
              "train_counts": train_set.counts(), "heldout_counts": heldout_set.counts(), "runs": runs}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graft.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _plot(runs, cfg.classes, out / "graft_loss.png")
    return result


def _plot(runs: dict[str, dict], classes: tuple[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        ax.plot(run["batch_losses"], label=name, linewidth=0.8)
    ax.axhline(np.log(2), color="gray", linestyle=":", label="ln 2 (chance)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"grafting on {{{', '.join(classes)}}}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
