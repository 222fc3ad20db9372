"""The training loop: ``train(cfg) -> TrainResult``.

Device auto (CUDA > MPS > CPU), mixed precision, seeded, checkpoints
``last.pt`` (every epoch) and ``best.pt`` (best validation metric) written
atomically, ``resume`` after an interruption, a progress bar, metrics per
epoch in ``metrics.jsonl`` (and TensorBoard when installed), PNG plots at the
end, and multi-GPU / multi-process data parallelism under ``torchrun`` (DDP;
gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from patchdet.runtime.config import config_to_dict, write_config
from patchdet.training.checkpoint import load_checkpoint, save_checkpoint
from patchdet.training.config import TrainConfig
from patchdet.training.data import (
    ImageSet,
    normalize_on_device,
)
from patchdet.training.losses import LOSS_HEADS, build_loss
from patchdet.training.models import get_model
from patchdet.training.run_data import data_summary, load_run_data, training_dataset
from patchdet.training.tasks import class_list_for, make_task

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    epochs_run: int
    best_metric: float
    history: list[dict[str, Any]]


# -- environment ------------------------------------------------------------


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(device: torch.device, amp: str):
    """Mixed precision: on by default on CUDA (bf16 where supported, else fp16), opt-in bf16 on CPU."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return nullcontext(), None
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None
    return torch.autocast(device_type=device.type, dtype=dtype), scaler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


# -- evaluation helper shared with evaluate.py ----------------------------------


@torch.no_grad()
def collect_outputs(task, model: nn.Module, image_set: ImageSet, cfg_mean, cfg_std, device: torch.device,
                    batch_size: int = 256, autocast=None) -> dict[str, np.ndarray]:
    """Run ``model`` over an ImageSet; arrays named as the exported graph's outputs."""
    model.eval()
    mean = torch.tensor(cfg_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg_std, device=device).view(1, 3, 1, 1)
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(image_set), batch_size):
        images = image_set.images[start:start + batch_size].to(device, non_blocking=True)
        images = normalize_on_device(images, mean, std)
        with autocast or nullcontext():
            outputs = task.outputs(model, images)
        for name, value in outputs.items():
            chunks.setdefault(name, []).append(value.float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


# -- the loop -------------------------------------------------------------------


def train(cfg: TrainConfig) -> TrainResult:
    """Train one model as ``cfg`` says; see the module docstring for what is written."""
    head = LOSS_HEADS.get(cfg.loss)
    if head is None:
        raise ValueError(f"unknown loss {cfg.loss!r}: expected one of {', '.join(sorted(LOSS_HEADS))}")
    rank, world, local_rank = _distributed()
    is_main = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device, local_rank)
    seed_everything(cfg.seed + rank)
    run_dir = Path(cfg.out)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"

    resume_state: dict[str, Any] | None = None
    if cfg.resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"cannot resume: {last_path} does not exist")
        resume_state = load_checkpoint(last_path)
        _check_resume_compatible(resume_state, cfg)
    elif last_path.exists():
        raise FileExistsError(f"run folder {run_dir} already holds a checkpoint: pass --resume or choose another --out")

    train_set, val_set = load_run_data(cfg, class_list_for(head, cfg))
    task = make_task(head, cfg, train_set.class_names)
    summary = data_summary(train_set, val_set, cfg)
    if is_main:
        log.info("device %s, world size %d; train %s; val %s", device, world, summary["train_counts"],
                 summary["val_counts"])
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")

    arch_kwargs = {"input_size": cfg.input_size}
    arch_kwargs.update(getattr(task, "arch_kwargs", lambda: {})())
    model = get_model(cfg.arch, **arch_kwargs).to(device)
    loss_options = dict(cfg.loss_options)
    if cfg.loss == "n2o-softmax":
        loss_options.setdefault("embedding_dim", getattr(model, "embedding_dim", 16))
    if hasattr(task, "prepare"):  # POD: PEDCC centroids go into the model and, shared, into the loss
        loss_options = task.prepare(model, loss_options)
    loss_fn = build_loss(cfg.loss, **loss_options).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    parameters = [p for p in list(model.parameters()) + list(loss_fn.parameters()) if p.requires_grad]
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(parameters, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)

    dataset = training_dataset(cfg, train_set)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed) \
        if world > 1 else None
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, drop_last=len(dataset) > cfg.batch_size, generator=generator,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0)
    steps_per_epoch = max(1, len(loader))
    scheduler = _make_scheduler(cfg, optimizer, steps_per_epoch)
    autocast, scaler = autocast_for(device, cfg.amp)

    start_epoch, best_metric, history = 1, -math.inf, []
    if resume_state is not None:
        start_epoch, best_metric, history = _restore(resume_state, cfg, model, loss_fn, optimizer, scheduler, scaler,
                                                     generator, steps_per_epoch)
        if is_main:
            log.info("resumed from %s at epoch %d", last_path, start_epoch)
        if start_epoch > cfg.epochs:
            log.info("nothing to do: %s already finished %d epochs", last_path, cfg.epochs)

    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    writer = _tensorboard(run_dir) if is_main and cfg.tensorboard else None
    progress = _progress_factory(is_main)

    for epoch in range(start_epoch, cfg.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_model.train()
        loss_fn.train()
        task.begin_epoch(loss_fn, epoch)
        loss_sum, seen, lr_used, train_seconds = _train_epoch(
            cfg, epoch, progress(loader, desc=f"epoch {epoch}/{cfg.epochs}", total=steps_per_epoch), train_model,
            loss_fn, task, optimizer, scheduler, scaler, autocast, device, mean, std, last_path)
        task.epoch_end(loss_fn, {"model": model, "train_set": train_set, "device": device})

        if world > 1:
            dist.barrier()
        if not is_main:
            continue
        outputs = collect_outputs(task, model, val_set, cfg.mean, cfg.std, device, autocast=autocast)
        metrics = task.metrics(outputs, val_set.labels.numpy())
        record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": lr_used,
                  "epoch_seconds": round(train_seconds, 2), "val": metrics}
        history.append(record)
        improved = metrics["val_metric"] > best_metric
        best_metric = max(best_metric, metrics["val_metric"])
        payload = _checkpoint_payload(cfg, task, model, loss_fn, optimizer, scheduler, scaler, epoch, best_metric,
                                      history, generator, summary)
        save_checkpoint(payload, last_path)
        if improved:
            save_checkpoint({k: v for k, v in payload.items() if k not in _RESUME_KEYS}, best_path)
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if writer is not None:
            writer.add_scalar("loss/train", record["train_loss"], epoch)
            writer.add_scalar("val/metric", metrics["val_metric"], epoch)
        log.info("epoch %d: loss %.4f, val metric %.4f%s, %.1f s", epoch, record["train_loss"],
                 metrics["val_metric"], " (best)" if improved else "", train_seconds)

    if writer is not None:
        writer.close()
    if is_main and history:
        from patchdet.training.plots import plot_run  # matplotlib only when a run finishes

        best = load_checkpoint(best_path)
        best_model = get_model(best["arch"], **best["arch_kwargs"]).to(device)
        best_model.load_state_dict(best["state_dict"])
        outputs = collect_outputs(task, best_model, val_set, cfg.mean, cfg.std, device)
        plot_run(run_dir, history, task.head, outputs, val_set.labels.numpy(), list(val_set.class_names),
                 cfg.threshold)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(run_dir, best_path, last_path, len(history), best_metric, history)


def _restore(resume_state: dict[str, Any], cfg: TrainConfig, model, loss_fn, optimizer, scheduler, scaler,
             generator, steps_per_epoch: int) -> tuple[int, float, list]:
    """Load a ``last.pt``'s weights and training state; (first epoch to run, best metric, history)."""
    model.load_state_dict(resume_state["state_dict"])
    if "loss_module" in resume_state:
        loss_fn.load_state_dict(resume_state["loss_module"])
    optimizer.load_state_dict(resume_state["optimizer"])
    if scheduler is not None and resume_state.get("scheduler") is not None:
        if resume_state["config"].get("epochs") == cfg.epochs:
            scheduler.load_state_dict(resume_state["scheduler"])
        else:  # a longer (or shorter) run: same schedule shape, stretched, fast-forwarded
            log.warning("epochs changed from %s to %d: the learning-rate schedule is recomputed",
                        resume_state["config"].get("epochs"), cfg.epochs)
            with warnings.catch_warnings():  # stepping without optimizer.step() is the point here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(min(int(resume_state["epoch"]) * steps_per_epoch, cfg.epochs * steps_per_epoch)):
                    scheduler.step()
    if scaler is not None and resume_state.get("scaler"):
        scaler.load_state_dict(resume_state["scaler"])
    if hasattr(loss_fn, "load_state") and resume_state.get("loss_state"):
        loss_fn.load_state(resume_state["loss_state"])
    torch.set_rng_state(resume_state["rng"]["torch"])
    generator.set_state(resume_state["rng"]["loader"])
    return (int(resume_state["epoch"]) + 1, float(resume_state.get("best_metric", -math.inf)),
            list(resume_state.get("history", [])))



def _train_epoch(cfg: TrainConfig, epoch: int, bar, train_model, loss_fn, task, optimizer, scheduler, scaler, autocast,
                 device, mean, std, last_path: Path) -> tuple[float, int, float, float]:
    """One pass over the loader; (summed loss, samples seen, the last batch's lr, seconds)."""
    started = time.monotonic()
    loss_sum, seen, lr_used = 0.0, 0, optimizer.param_groups[0]["lr"]
    for step, (images, labels) in enumerate(bar):
        images = normalize_on_device(images.to(device, non_blocking=True), mean, std)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast:
            loss = task.loss(train_model, loss_fn, images, labels)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {epoch} step {step}: stopped; the last good checkpoint "
                f"is {last_path if last_path.exists() else 'none (first epoch)'}; try a lower --lr"
            )
        optimizer.zero_grad(set_to_none=True)
        lr_used = optimizer.param_groups[0]["lr"]  # this batch's lr (the scheduler steps to the next one below)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += float(loss.detach()) * labels.shape[0]
        seen += labels.shape[0]
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{lr_used:.2e}")
    return loss_sum, seen, lr_used, time.monotonic() - started


_RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "loss_module")


def _checkpoint_payload(cfg, task, model, loss_fn, optimizer, scheduler, scaler, epoch, best_metric, history,
                        generator, summary) -> dict[str, Any]:
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {
        "arch": cfg.arch,
        "arch_kwargs": {"input_size": cfg.input_size, **getattr(task, "arch_kwargs", lambda: {})()},
        "state_dict": state_dict,
        "input_size": cfg.input_size,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "config": config_to_dict(cfg),
        "epoch": epoch,
        "best_metric": best_metric,
        "history": history,
        "training": summary,
        "loss": cfg.loss,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "loader": generator.get_state()},
        **task.checkpoint_fields(),
    }
    if list(loss_fn.state_dict()):
        payload["loss_module"] = {k: v.detach().cpu() for k, v in loss_fn.state_dict().items()}
    if hasattr(loss_fn, "get_state"):
        payload["loss_state"] = loss_fn.get_state()
    return payload


def _check_resume_compatible(state: dict[str, Any], cfg: TrainConfig) -> None:
    missing = [key for key in ("optimizer", "epoch", "rng", "config") if key not in state]
    if missing:  # e.g. a best.pt copied over last.pt: weights only, no training state
        raise ValueError(f"cannot resume from {state.get('path', 'last.pt')}: it holds no {', '.join(missing)} "
                         "state (a weights-only checkpoint); start a new run or point --out elsewhere")
    previous = state.get("config", {})
    for key in ("arch", "input_size", "loss", "positive", "negatives", "classes", "data"):
        old, new = previous.get(key), config_to_dict(cfg).get(key)
        if old != new:
            raise ValueError(f"cannot resume: {key} was {old!r} in the checkpoint, now {new!r}")


def _make_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        # OneCycle's last value (lr / 2.5e5) is where it ends, not a step worth training: with total_steps = the
        # number of batches the last batch trained at 8e-9 (a 1-batch run did not train at all) and the step after
        # it wrapped the lr up again. One step more, never taken, keeps every batch on the useful part of the cycle.
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total + 1, pct_start=0.15)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _progress_factory(enabled: bool):
    def plain(iterable, **_kwargs):
        return iterable

    if not enabled:
        return plain
    try:
        from tqdm import tqdm
    except ImportError:
        return plain

    def bar(iterable, desc: str, total: int):
        return tqdm(iterable, desc=desc, total=total, unit="batch", leave=False, dynamic_ncols=True)

    return bar
