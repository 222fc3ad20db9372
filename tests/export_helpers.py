"""Tiny checkpoints and image folders for the export tests (generated, never read from /work/shared)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from patchdet.training.checkpoint import save_checkpoint
from patchdet.training.models import get_model

CLASSES = ("automobile", "bird", "cat")


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so an export that drops or mis-folds BN shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def make_checkpoint(path: Path, head: str = "modulus", input_size: int = 32, seed: int = 0,
                    threshold: float | None = None) -> Path:
    """A discnn8 checkpoint of any head kind (softmax / cosine use the 16-d output as logits / latent)."""
    torch.manual_seed(seed)
    kwargs = {"input_size": input_size}
    if head != "modulus":
        kwargs["nonnegative_output"] = False
    model = get_model("discnn8", **kwargs).eval()
    randomize_batchnorm(model, seed)
    payload = {
        "arch": "discnn8", "arch_kwargs": kwargs, "head": head, "state_dict": model.state_dict(),
        "input_size": input_size, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "config": {}, "epoch": 1, "training": {"images": 60},
    }
    if head == "modulus":
        payload.update(class_names=["automobile"], positive_class="automobile", negative_classes=["bird", "cat"])
        if threshold is None:  # the median score of random inputs: both decisions occur
            with torch.no_grad():
                scores = model(torch.randn(64, 3, input_size, input_size)).norm(dim=1)
            threshold = float(scores.median())
    elif head == "softmax":
        payload.update(class_names=[f"c{i}" for i in range(16)], positive_class=None, negative_classes=[])
    else:
        payload.update(class_names=list(CLASSES), positive_class=None, negative_classes=[],
                       centroids=torch.randn(3, 16, generator=torch.Generator().manual_seed(seed)))
    payload["threshold"] = 0.0 if threshold is None else threshold
    return save_checkpoint(payload, path)


def make_image_folder(root: Path, per_class: int = 12, size: int = 32, seed: int = 0,
                      classes: tuple[str, ...] = CLASSES) -> Path:
    """ImageFolder tree of smooth random images (class-dependent colour, so classes differ a little)."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = rng.integers(0, 255, (4, 4, 3)).astype(np.float32)
            small[..., k % 3] = np.clip(small[..., k % 3] + 80, 0, 255)
            image = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i:03d}.png"), image)
    return root
