"""Scoring an image folder with a checkpoint (PyTorch) or an exported artifact (any runtime backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from patchdet.runtime.imagefolder import load_images, normalize_batch, scan_image_folder

ARTIFACT_SUFFIXES = (".onnx", ".xml", ".engine", ".plan")


class _Scorer:
    """Common face of a checkpoint and an artifact: uint8 RGB images -> output arrays."""

    head: str
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    positive: str | None
    negatives: tuple[str, ...]
    class_names: tuple[str, ...]
    extra: dict[str, Any]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


class CheckpointScorer(_Scorer):
    def __init__(self, path: str) -> None:
        import torch

        from patchdet.training.checkpoint import CheckpointInfo, build_model_from_checkpoint, load_checkpoint

        self._torch = torch
        payload = load_checkpoint(path)
        self.model = build_model_from_checkpoint(payload)
        info = CheckpointInfo.from_payload(payload)
        self.head = info.head
        self.input_size = info.input_size
        self.mean, self.std = info.mean, info.std
        self.positive = info.positive_class
        self.negatives = info.negative_classes
        self.class_names = info.class_names
        self.extra = {"centroids": info.centroids, "threshold": info.threshold}

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._torch.no_grad():
            output = self.model(self._torch.from_numpy(batch)).float()
        if self.head == "modulus":
            return {"embedding": output.numpy(), "score": output.norm(dim=1).numpy()}
        if self.head == "cosine":
            centroids = self._torch.nn.functional.normalize(self._torch.as_tensor(self.extra["centroids"]).float(), dim=1)
            cosine = self._torch.nn.functional.normalize(output, dim=1) @ centroids.T
            return {"embedding": output.numpy(), "cosine": cosine.numpy(), "norm": output.norm(dim=1).numpy(),
                    "score": cosine.max(dim=1).values.numpy()}
        probs = output.softmax(dim=1)
        return {"logits": output.numpy(), "probs": probs.numpy(), "score": probs.max(dim=1).values.numpy()}


class ArtifactScorer(_Scorer):
    def __init__(self, path: str, backend: str) -> None:
        from patchdet.runtime.backends import load_backend
        from patchdet.runtime.card import read_artifact_card

        self.card = read_artifact_card(path)
        if self.card.dense:
            raise ValueError(f"{path} is a dense (whole-frame) artifact: evaluate the patch artifact instead")
        self.backend = load_backend(path, backend)
        self.head = self.card.head
        if self.card.input_wh[0] != self.card.input_wh[1]:
            raise ValueError(f"{path} has a non-square input {self.card.input_wh}: not supported by evaluate")
        self.input_size = int(self.card.input_wh[0])
        self.mean, self.std = self.card.mean, self.card.std
        self.positive = self.card.positive_class
        self.negatives = tuple(self.card.training.get("negative_classes", ()))
        self.class_names = self.card.class_names
        self.extra = {"centroids": self.card.centroids, "threshold": self.card.threshold}

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend(batch)


def load_scorer(model: str, backend: str = "auto") -> _Scorer:
    if Path(model).suffix.lower() in ARTIFACT_SUFFIXES:
        return ArtifactScorer(model, backend)
    return CheckpointScorer(model)


def score_folder(scorer: _Scorer, data: str, class_names: list[str], batch_size: int) -> tuple[dict, np.ndarray]:
    """Run ``scorer`` on every image of the given classes: (outputs, labels into class_names)."""
    index = scan_image_folder(data, class_names)
    size = (scorer.input_size, scorer.input_size)
    outputs: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    for start in range(0, len(index), batch_size * 8):  # decode in chunks: bounded memory on big folders
        paths = index.paths[start:start + batch_size * 8]
        loaded = load_images(paths, index.labels[start:start + batch_size * 8], size)
        for b in range(0, len(loaded.labels), batch_size):
            batch = normalize_batch(loaded.images[b:b + batch_size], scorer.mean, scorer.std)
            for name, value in scorer(batch).items():
                outputs.setdefault(name, []).append(np.asarray(value))
        labels.append(loaded.labels)
    return {k: np.concatenate(v) for k, v in outputs.items()}, np.concatenate(labels)
