"""What a training run optimises and measures, per head kind.

A task turns a batch into a loss, a model's outputs into the arrays the
runtime will see (same names as the exported graph, see ``runtime.card``),
and those arrays into validation metrics. The training loop is shared.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from patchdet.runtime.metrics import binary_report, fraction_at_origin
from patchdet.training.config import TrainConfig
from patchdet.training.pod import (
    check_same_classes,
    cosine_to_centroids,
    multiclass_evaluation,
    predictions_from_outputs,
)

log = logging.getLogger(__name__)


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


BACKGROUND_CLASS = "background"


class MultiClassTask:
    """A K-class run with a ``cosine`` (POD family) or ``softmax`` head, for ``training.train``.

    The class list is ``cfg.classes`` or every class folder; a class folder named
    ``background`` becomes the card's background class (the runtime reports it
    as "nothing here"). Validation metric: accuracy.
    """

    head = ""

    def __init__(self, cfg: Any, class_names: Sequence[str]) -> None:
        from patchdet.training.backbones import default_latent_dim

        self.cfg = cfg
        self.class_names = tuple(class_names)
        self.latent_dim = int(cfg.latent_dim) if cfg.latent_dim else default_latent_dim(len(self.class_names))
        if self.head == "cosine":
            from patchdet.training.pedcc import check_pedcc_shape

            check_pedcc_shape(len(self.class_names), self.latent_dim)
        self.model: torch.nn.Module | None = None

    @classmethod
    def class_list(cls, cfg: Any) -> list[str] | None:
        """The classes to load (``None``: every folder); checks what can fail before any image is decoded."""
        if cfg.positive is not None or cfg.negatives:
            raise ValueError(f"--positive/--negatives are for modulus (DisCNN) losses; a {cfg.loss!r} run takes --classes")
        if str(cfg.data).startswith("torchvision:"):
            return list(cfg.classes) or None
        from patchdet.runtime.imagefolder import list_class_folders

        if not cfg.classes and cfg.val_data:
            check_same_classes(list_class_folders(cfg.data), list_class_folders(cfg.val_data))
        if cls.head == "cosine" and cfg.latent_dim:
            from patchdet.training.pedcc import check_pedcc_shape

            check_pedcc_shape(len(cfg.classes or list_class_folders(cfg.data)), int(cfg.latent_dim))
        return list(cfg.classes) or None

    def arch_kwargs(self) -> dict[str, Any]:
        return {"num_classes": len(self.class_names), "latent_dim": self.latent_dim, "head": self.head}

    def prepare(self, model: torch.nn.Module, loss_options: dict[str, Any]) -> dict[str, Any]:
        """Called once after the model is built: cosine heads get their PEDCC centroids here.

        Returns the loss options; cosine-family losses receive the model's own
        centroid tensor (shared storage), so a resumed checkpoint's centroids
        reach the loss too.
        """
        self.model = model
        if self.head != "cosine":
            return dict(loss_options)
        from patchdet.training.pedcc import pedcc_centroids

        model.set_centroids(torch.from_numpy(pedcc_centroids(len(self.class_names), self.latent_dim, self.cfg.seed)))
        return {**loss_options, "centroids": model.pedcc.weight.detach()}

    def loss(self, model: torch.nn.Module, loss_fn: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
        return loss_fn(model(images), labels)

    def outputs(self, model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        output, latent = model.forward_with_latent(images)
        if self.head == "cosine":
            cosine = cosine_to_centroids(output, model.centroids)
            return {"embedding": output.float(), "cosine": cosine, "norm": output.float().norm(dim=1),
                    "score": cosine.max(dim=1).values}
        probs = output.float().softmax(dim=1)
        # latent_norm is for the Table I analysis only; exported softmax graphs do not carry it.
        return {"logits": output.float(), "probs": probs, "score": probs.max(dim=1).values,
                "latent_norm": latent.float().norm(dim=1)}

    def metrics(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
        predicted, norms = predictions_from_outputs(outputs, self.head)
        report = multiclass_evaluation(predicted, labels, norms, self.class_names)
        report["val_metric"] = report["accuracy"]
        return report

    def checkpoint_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "head": self.head,
            "class_names": list(self.class_names),
            "positive_class": None,
            "negative_classes": [],
            "threshold": 0.0,  # argmax decides; a score threshold is a runtime choice
            "norm_gate": 0.0,  # no latent-norm gating until calibrated (see the val report's norm_split)
            "latent_dim": self.latent_dim,
            "background_class": BACKGROUND_CLASS if BACKGROUND_CLASS in self.class_names else None,
        }
        if self.head == "cosine" and self.model is not None:
            fields["centroids"] = self.model.centroids.detach().cpu().clone()
        return fields

    def epoch_end(self, loss_fn: torch.nn.Module, epoch_outputs: dict[str, Any]) -> None:
        """NaC/POD: M := mean training latent norm of the epoch just finished (eq. 16)."""
        end_epoch = getattr(loss_fn, "end_epoch", None)
        if end_epoch is not None:
            mean_norm = end_epoch()
            log.info("NaC: mean training latent norm M = %.4f, next delta = %.5f", mean_norm,
                     getattr(loss_fn, "nac", loss_fn).delta)


class CosineTask(MultiClassTask):
    """POD-family losses (cosine, nac, pod): latent output, frozen PEDCC centroids, cosine prediction."""

    head = "cosine"


class SoftmaxTask(MultiClassTask):
    """Cross-entropy baseline: same backbone and latent FC, trainable linear classifier, logits output."""

    head = "softmax"


TASKS: dict[str, type] = {"modulus": ModulusTask, "cosine": CosineTask, "softmax": SoftmaxTask}


def make_task(head: str, cfg: TrainConfig, class_names: tuple[str, ...]):
    try:
        return TASKS[head](cfg, class_names)
    except KeyError:
        raise ValueError(f"no training task for head {head!r}: expected one of {', '.join(TASKS)}") from None


def class_list_for(head: str, cfg: TrainConfig) -> list[str] | None:
    return TASKS[head].class_list(cfg)
