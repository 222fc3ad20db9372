"""PNG plots of a training run: loss curves, score histograms per class, P/R/F1 against threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from patchdet.runtime.metrics import threshold_sweep  # noqa: E402


def plot_losses(history: list[dict[str, Any]], path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["val"]["val_metric"] for h in history], color="tab:orange", marker="s", label="val metric")
    ax2.set_ylabel("validation metric")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_score_histograms(scores: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
                          xlabel: str = "modulus |f|") -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    upper = float(np.quantile(scores, 0.995)) if scores.size else 1.0
    bins = np.linspace(0.0, max(upper, 1e-6), 50)
    for i, name in enumerate(class_names):
        member = scores[labels == i]
        zero = float(np.mean(member == 0)) if member.size else 0.0
        ax.hist(member, bins=bins, alpha=0.5, label=f"{name} ({zero:.0%} at 0)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_threshold_curves(scores: np.ndarray, is_positive: np.ndarray, path: Path, marked: float | None = None) -> Path:
    reports = threshold_sweep(scores, is_positive)
    thresholds = [r["threshold"] for r in reports]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("precision", "recall", "f1"):
        ax.plot(thresholds, [r["positive"][key] for r in reports], label=f"positive {key}")
    ax.plot(thresholds, [r["negative"]["f1"] for r in reports], linestyle="--", label="negative f1")
    if marked is not None:
        ax.axvline(marked, color="gray", linewidth=0.8)
    ax.set_xlabel("threshold")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: Path, history: list[dict[str, Any]], head: str, outputs: dict[str, np.ndarray],
             labels: np.ndarray, class_names: list[str], threshold: float) -> list[Path]:
    """All plots of a finished run, written into ``run_dir``."""
    written = [plot_losses(history, run_dir / "loss.png")]
    if head == "modulus":
        written.append(plot_score_histograms(outputs["score"], labels, class_names, run_dir / "modulus_hist.png"))
        written.append(plot_threshold_curves(outputs["score"], labels == 0, run_dir / "threshold_curves.png",
                                             threshold))
    elif "norm" in outputs:
        written.append(plot_score_histograms(outputs["norm"], labels, class_names, run_dir / "norm_hist.png",
                                             xlabel="latent norm |x|"))
    return written
