"""``patchdet adapt``: fine-tune a DisCNN's FC head on one fixed camera's background (hard negatives).

The per-pixel median of a fixed camera's frames is a car-free background plate
(``runtime.camera_fit.read_fixed_camera``). Its tiles, cut as the detector cuts
frames (the card's windows and scales), are negatives no training set held:
this camera's kerbs, pavements, fences and lawns. As in the DisCNN paper's
grafting, the conv layers keep their trained weights (frozen, batch-norm
statistics included) and only the FC head learns, with the run's own N2O loss,
on batches that mix plate tiles with the run's own training data (its tile
synthesis), so that cars are not forgotten. Plates of several stretches of
the video (``plates``) give the head the same background in other light.
The result is an ordinary checkpoint: ``patchdet export`` it, then
``patchdet calibrate --video`` the exported model on the same camera.

The held-out part of the training data (the run's own validation blocks, as
tile-like patches) is scored before and after, so a fine-tune that costs car
recall shows it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from patchdet.runtime.atomic import atomic_write_json, check_new_outputs
from patchdet.runtime.camera_fit import background_plate, read_fixed_camera
from patchdet.runtime.card import read_artifact_card, read_card
from patchdet.runtime.config import build_config
from patchdet.runtime.tiling_config import tiling_for_card
from patchdet.training.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from patchdet.training.config import TrainConfig
from patchdet.training.data import ImageSet, load_block_split, normalize_on_device
from patchdet.training.losses import build_loss
from patchdet.training.synthesis import TileSynthesis, synthesize_tiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of one ``patchdet adapt`` run.

    Attributes:
        checkpoint: The trained DisCNN (N2O) checkpoint file or run folder.
        video: Footage of the fixed camera (traffic included, no labels).
        out: Folder for ``best.pt`` (the adapted checkpoint) and ``adapt.json`` (before/after measurements).
        card: The card whose tiling cuts the plate into tiles (``None``: the built-in default's).
        data: The run's training data (``None``: the path in the checkpoint's config).
        plates: Background plates from that many equal stretches of the video (at least 1).
        steps: Optimisation steps of the head.
        batch_size: Patches per step.
        plate_share: Share of each batch taken from plate tiles (the rest: the run's own training data).
        lr: Learning rate (AdamW) of the head.
        samples_per_class: Training images per class loaded for the mix (sub-sampled, seeded).
        seed: Seed of sampling and synthesis.
        force: Replace ``best.pt`` / ``adapt.json`` of an earlier run in ``out``.
    """

    checkpoint: str
    video: str
    out: str
    card: str | None = None
    data: str | None = None
    plates: int = 3
    steps: int = 300
    batch_size: int = 128
    plate_share: float = 0.25
    lr: float = 1e-3
    samples_per_class: int = 2000
    seed: int = 0
    force: bool = False

    def __post_init__(self) -> None:
        for name in ("plates", "steps", "batch_size", "samples_per_class"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} {value!r} is invalid: expected a positive integer")
        if not 0.0 < self.plate_share < 1.0:
            raise ValueError(f"plate-share {self.plate_share!r} is invalid: expected a fraction in (0, 1)")
        if not self.lr > 0:
            raise ValueError(f"lr {self.lr!r} is invalid: expected a positive number")


def plates_of(frames: list[np.ndarray], count: int) -> list[np.ndarray]:
    """Background plates of ``count`` consecutive stretches of ``frames`` (fewer when frames run short)."""
    stretches = [part for part in np.array_split(np.arange(len(frames)), count) if len(part) >= 3]
    return [background_plate([frames[i] for i in part]) for part in stretches] or [background_plate(frames)]


def plate_tiles(plates: list[np.ndarray], tiling, input_wh: tuple[int, int]) -> np.ndarray:
    """uint8 [N, 3, h, w] RGB tiles of every plate, cut on the tiling's explicit grid and resized to the input."""
    explicit = dataclasses.replace(tiling, dense=False)
    tiles = []
    for plate in plates:
        rgb = cv2.cvtColor(plate, cv2.COLOR_BGR2RGB)
        for x0, y0, x1, y1 in explicit.grid((plate.shape[1], plate.shape[0])).tolist():
            crop = rgb[y0:y1, x0:x1]
            shrink = crop.shape[1] > input_wh[0]
            tiles.append(cv2.resize(crop, input_wh, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR))
    return np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2))


def _scores(model, images_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, chunk: int = 512) -> np.ndarray:
    with torch.inference_mode():
        parts = [model(normalize_on_device(images_uint8[i:i + chunk], mean, std)).norm(dim=1)
                 for i in range(0, len(images_uint8), chunk)]
    return torch.cat(parts).numpy()


def _measure(model, plate: torch.Tensor, heldout: ImageSet, mean, std, thresholds: dict[str, float]) -> dict[str, Any]:
    plate_scores = _scores(model, plate, mean, std)
    held = _scores(model, heldout.images, mean, std)
    positive = heldout.labels.numpy() == 0
    report: dict[str, Any] = {"plate_max_score": round(float(plate_scores.max()), 4)}
    for name, threshold in thresholds.items():
        predicted = held > threshold
        tp = float(np.sum(predicted & positive))
        precision, recall = tp / max(float(predicted.sum()), 1.0), tp / max(float(positive.sum()), 1.0)
        report[name] = {"threshold": threshold,
                        "plate_tiles_above": int(np.sum(plate_scores > threshold)),
                        "heldout_car_recall": round(recall, 4),
                        "heldout_f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4)}
    return report


def adapt(cfg: AdaptConfig) -> dict[str, Any]:
    """Fine-tune the head on the camera's plate tiles; writes ``out/best.pt`` and ``out/adapt.json``."""
    out = Path(cfg.out)
    check_new_outputs(out, ("best.pt", "adapt.json"), cfg.force)
    payload = load_checkpoint(cfg.checkpoint)
    if payload.get("head") != "modulus" or payload["config"].get("loss") not in ("n2o",):
        raise ValueError(f"checkpoint {cfg.checkpoint} is not a DisCNN trained with the N2O loss: adapt fine-tunes "
                         "the modulus head of one")
    train_cfg = build_config(TrainConfig, **payload["config"])
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    start = time.perf_counter()

    camera = read_fixed_camera(cfg.video)
    plates = plates_of(camera.scan.sampled, cfg.plates)
    if cfg.card is not None:
        card = read_card(cfg.card)
    else:
        from patchdet.runtime.builtin import builtin_model

        card = read_artifact_card(builtin_model())
    side = int(payload["input_size"])
    plate = torch.from_numpy(plate_tiles(plates, tiling_for_card(card), (side, side)))
    log.info("%d plate(s) of %s: %d tiles", len(plates), cfg.video, len(plate))

    data = cfg.data or train_cfg.data
    classes = [train_cfg.positive, *train_cfg.negatives]
    train_set, heldout = load_block_split(data, classes, side, train_cfg.val_fraction, cfg.samples_per_class,
                                          cfg.seed)
    background = tuple(range(1, len(classes)))
    mix = TileSynthesis(train_set, train_cfg.augment, background)
    heldout = synthesize_tiles(heldout, train_cfg.augment, background, cfg.seed)

    model = build_model_from_checkpoint(payload)
    mean = torch.tensor(payload["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(payload["std"]).view(1, 3, 1, 1)
    training_threshold = float((payload.get("thresholds") or {}).get("training", payload["threshold"]))
    thresholds = {"training": training_threshold, "card": float(card.threshold)}
    before = _measure(model, plate, heldout, mean, std, thresholds)

    for parameter in model.features.parameters():  # grafting: the conv layers stay as trained
        parameter.requires_grad_(False)
    head = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(head, lr=cfg.lr, weight_decay=train_cfg.weight_decay)
    loss_fn = build_loss("n2o", **train_cfg.loss_options)
    n_plate = max(1, int(round(cfg.batch_size * cfg.plate_share)))
    n_mix = cfg.batch_size - n_plate
    losses = []
    model.train()
    model.features.eval()  # batch-norm statistics frozen too
    for _ in range(cfg.steps):
        picks = rng.integers(0, len(mix), n_mix)
        samples = [mix[int(i)] for i in picks]
        images = torch.stack([image for image, _ in samples])
        labels = torch.tensor([label for _, label in samples])
        plate_pick = plate[torch.from_numpy(rng.integers(0, len(plate), n_plate))]
        flip = torch.from_numpy(rng.random(n_plate) < 0.5)
        plate_pick[flip] = plate_pick[flip].flip(-1)
        batch = normalize_on_device(torch.cat([images, plate_pick]), mean, std)
        is_positive = torch.cat([labels == 0, torch.zeros(n_plate, dtype=torch.bool)])
        _, z = model(batch, return_pre_activation=True)
        loss = loss_fn(z, is_positive)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    after = _measure(model, plate, heldout, mean, std, thresholds)

    adapted = {**payload, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    for key in ("optimizer", "scheduler", "scaler", "loss_state", "rng", "history", "path"):
        adapted.pop(key, None)  # a fine-tuned head is not a resumable training run
    if not payload.get("tiling"):  # the export's card should tile frames as the card the plates were cut with
        adapted.update(tiling={k: v for k, v in card.tiling.items() if k != "dense"}, threshold=float(card.threshold),
                       thresholds={**card.thresholds, "training": training_threshold})
    adapted["training"] = {**payload.get("training", {}), "adapted": {
        "video": str(cfg.video), "plates": len(plates), "plate_tiles": int(len(plate)), "steps": cfg.steps,
        "from_checkpoint": str(cfg.checkpoint)}}
    report = {"config": dataclasses.asdict(cfg), "plates": len(plates), "plate_tiles": int(len(plate)),
              "camera": {"frames": camera.scan.frames, "seconds": round(camera.seconds, 2),
                         "plate_edge_share": round(camera.plate_edge_share, 3)},
              "before": before, "after": after, "loss_first_last": [round(np.mean(losses[:20]), 4),
                                                                    round(np.mean(losses[-20:]), 4)],
              "seconds": round(time.perf_counter() - start, 1)}
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(adapted, out / "best.pt")
    atomic_write_json(out / "adapt.json", report)
    log.info("adapted head: plate max score %.3g -> %.3g; held-out car recall at %.3g: %.3f -> %.3f (%.0f s)",
             before["plate_max_score"], after["plate_max_score"], thresholds["card"],
             before["card"]["heldout_car_recall"], after["card"]["heldout_car_recall"], report["seconds"])
    return report
