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
from patchdet.training.config import BACKGROUND_CLASS, TrainConfig
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

    def arch_kwargs(self) -> dict[str, Any]:
        """DisCNN is a modulus model already; the other backbones get a ReLU'd latent of ``--latent-dim`` (16)."""
        from patchdet.training.backbones import BACKBONES

        if self.cfg.arch not in BACKBONES:
            return {}
        return {"head": "modulus", "num_classes": 1, "latent_dim": int(self.cfg.latent_dim or 16)}

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

    def begin_epoch(self, loss_fn: nn.Module, epoch: int) -> None:
        """Hook for losses with a schedule (none for N2O)."""

    def epoch_end(self, loss_fn: nn.Module, epoch_outputs: dict[str, Any]) -> None:
        """Hook for losses with epoch-level state (none for N2O)."""




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
        """Called once after the model is built, before any epoch: returns the loss options.

        Cosine-family losses receive the model's own PEDCC centroid tensor
        (shared storage), so a resumed checkpoint's centroids reach the loss
        too; CosFace/ArcFace learn theirs instead. Losses that read more than
        the output get the sizes they need, and the taps they read are
        located (and checked, e.g. Gini needs non-negative activations) here.
        """
        from patchdet.training.losses import LEARNED_CENTROIDS, loss_needs

        self.model = model
        options = dict(loss_options)
        needs = loss_needs(self.cfg.loss)
        num_classes = len(self.class_names)
        if needs or self.cfg.loss in LEARNED_CENTROIDS:
            options["num_classes"] = num_classes
        if "latent" in needs:
            options["latent_dim"] = self.latent_dim
        if self.cfg.loss in LEARNED_CENTROIDS:
            options["embedding_dim"] = self.latent_dim
        self.taps = self._locate_taps(model, needs)
        if "blocks" in needs:
            options["block_channels"] = [end.channels for end in self.taps]
        if self.head != "cosine" or self.cfg.loss in LEARNED_CENTROIDS:
            return options
        from patchdet.training.pedcc import pedcc_centroids

        model.set_centroids(torch.from_numpy(pedcc_centroids(num_classes, self.latent_dim, self.cfg.seed)))
        return {**options, "centroids": model.pedcc.weight.detach()}

    def _locate_taps(self, model: torch.nn.Module, needs: tuple[str, ...]) -> list:
        from patchdet.training.losses.taps import stage_ends

        if "blocks" not in needs and "last_block" not in needs:
            return []
        ends = stage_ends(model, int(self.cfg.input_size), seed=self.cfg.seed)
        if "blocks" in needs:  # MSL: the model's own head is the module at the last block
            return ends[:-1]
        ends = ends[-1:]
        if ends[0].min_value < 0:
            raise ValueError(f"loss {self.cfg.loss!r} needs non-negative activations, but the last conv layer of "
                             f"{self.cfg.arch!r} (features[{ends[0].index}]) outputs negative values")
        return ends

    def loss(self, model: torch.nn.Module, loss_fn: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
        needs = getattr(loss_fn, "needs", ())
        if not needs:
            return loss_fn(model(images), labels)
        from patchdet.training.losses.taps import capture, conv_features

        indices = [end.index for end in self.taps]
        with capture(conv_features(model), indices) as blocks:
            output, latent = model(images, return_latent=True)
        extra: dict[str, Any] = {"latent": latent} if "latent" in needs else {"blocks": list(blocks)}
        return loss_fn(output, labels, **extra)

    def begin_epoch(self, loss_fn: torch.nn.Module, epoch: int) -> None:
        """Losses with a schedule (Gini + KL starts at an epoch) learn the 1-based epoch here."""
        begin = getattr(loss_fn, "begin_epoch", None)
        if begin is not None:
            begin(epoch)

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
        """NaC/POD: M := mean training latent norm of the epoch just finished (eq. 16); CosFace/ArcFace: the
        learned class vectors become the model's centroids (what validation and export use)."""
        class_centroids = getattr(loss_fn, "class_centroids", None)
        if class_centroids is not None and self.model is not None:
            self.model.set_centroids(class_centroids())
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
