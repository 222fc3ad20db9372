"""What a training run optimises and measures, per head kind.

A task turns a batch into a loss, a model's outputs into the arrays the
runtime will see (same names as the exported graph, see ``runtime.card``),
and those arrays into validation metrics. The training loop is shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from patchdet.runtime.metrics import binary_report, fraction_at_origin
from patchdet.training.config import TrainConfig
from patchdet.training.pod import CosineTask, SoftmaxTask


class ModulusTask:
    """DisCNN single-class detection: ``class_names[0]`` is positive, the rest negative.

    Validation metric: mean of positive and negative F1 at ``cfg.threshold``.
    """

    head = "modulus"

    def __init__(self, cfg: TrainConfig, class_names: tuple[str, ...]) -> None:
        if cfg.positive is None or not cfg.negatives:
            raise ValueError("a modulus (DisCNN) run needs --positive CLASS and --negatives CLASS[,CLASS...]")
        self.cfg = cfg
        self.class_names = class_names

    @staticmethod
    def class_list(cfg: TrainConfig) -> list[str]:
        return [cfg.positive, *cfg.negatives]

    def loss(self, model: nn.Module, loss_fn: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, pre_activation = model(images, return_pre_activation=True)
        return loss_fn(pre_activation, labels == 0)

    def outputs(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = model(images).float()
        return {"embedding": embedding, "score": embedding.norm(dim=1)}

    def metrics(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
        report = binary_report(outputs["score"], labels == 0, self.cfg.threshold)
        report["at_origin"] = {
            name: fraction_at_origin(outputs["score"][labels == i]) for i, name in enumerate(self.class_names)
        }
        report["val_metric"] = (report["positive"]["f1"] + report["negative"]["f1"]) / 2
        return report

    def checkpoint_fields(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "class_names": [self.cfg.positive],
            "positive_class": self.cfg.positive,
            "negative_classes": list(self.cfg.negatives),
            "threshold": float(self.cfg.threshold),
        }

    def epoch_end(self, loss_fn: nn.Module, epoch_outputs: dict[str, Any]) -> None:
        """Hook for losses with epoch-level state (none for N2O)."""


TASKS: dict[str, type] = {"modulus": ModulusTask, "cosine": CosineTask, "softmax": SoftmaxTask}


def make_task(head: str, cfg: TrainConfig, class_names: tuple[str, ...]):
    try:
        return TASKS[head](cfg, class_names)
    except KeyError:
        raise ValueError(f"no training task for head {head!r}: expected one of {', '.join(TASKS)}") from None


def class_list_for(head: str, cfg: TrainConfig) -> list[str] | None:
    return TASKS[head].class_list(cfg)
