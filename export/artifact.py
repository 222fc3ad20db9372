"""What a format builder gets and returns, and how finished files reach their final names.

Builders write into a private staging folder inside the output folder; only a
complete, checked artifact is moved to its final name (``os.replace`` within
one file system is atomic). Multi-file artifacts move their data files first
and the card last, so an interrupted publish leaves at worst a stale or missing
card, which makes the next run rebuild instead of skipping.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.export.formats import FormatSpec
from patchdet.runtime.card import ModelCard, card_path_for

log = logging.getLogger(__name__)


@dataclass
class BuildContext:
    """Inputs of one format builder.

    Attributes:
        graph: The torch module to export (``export.wrappers.HeadGraph``, eval mode).
        card: The artifact's card without parity results.
        spec: The format.
        staging_dir: Private folder for files under construction.
        out_dir: The final output folder (TensorRT reads its ONNX source there).
        base_name: Artifact base name (``discnn8_automobile`` or ``..._dense``).
        input_size: Patch side in pixels.
        dense: Dense (fully-convolutional) graph.
        opset: ONNX opset.
        calibration: float32 [N, 3, H, W] normalised calibration inputs, or None.
        float_head: Keep the final FC layer and head arithmetic in float when quantizing.
        threads: Intra-op threads the builder may use.
    """

    graph: Any
    card: ModelCard
    spec: FormatSpec
    staging_dir: Path
    out_dir: Path
    base_name: str
    input_size: int
    dense: bool
    opset: int
    calibration: np.ndarray | None = None
    float_head: bool = True
    threads: int = 1


@dataclass
class BuildResult:
    """What a builder made.

    Attributes:
        path: Main artifact file inside the staging folder.
        export_info: Format-specific settings recorded in the card's ``export``.
        embed_card: Writes the final card (with parity) into the staged artifact.
        skipped_reason: Set when the format cannot be built here (nothing to publish).
        extra_files: Additional staged files published beside the artifact (e.g. ``.trtexec.sh``).
    """

    path: Path | None
    export_info: dict[str, Any] = field(default_factory=dict)
    embed_card: Callable[[ModelCard], None] | None = None
    skipped_reason: str | None = None
    extra_files: list[Path] = field(default_factory=list)


def artifact_files(path: Path, spec: FormatSpec) -> list[Path]:
    """The artifact's data files (main file last, so it appears only when its weights are there)."""
    return [path.with_suffix(suffix) for suffix in spec.companion_suffixes()] + [path]


def make_staging_dir(out_dir: Path, base_name: str, format_name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".staging-{base_name}-{format_name}-", dir=out_dir))


def publish(staged_main: Path, spec: FormatSpec, card: ModelCard, dest_dir: Path,
            extra_files: list[Path] | None = None) -> Path:
    """Move a staged artifact and its card to ``dest_dir`` under their final names.

    Returns:
        The final path of the main artifact file.
    """
    from patchdet.runtime.card import write_card

    dest_dir.mkdir(parents=True, exist_ok=True)
    final_main = dest_dir / staged_main.name
    card_path = card_path_for(final_main)
    card_path.unlink(missing_ok=True)  # a stale card must never vouch for new data files
    for staged in artifact_files(staged_main, spec):
        os.replace(staged, dest_dir / staged.name)
    for staged in extra_files or []:
        os.replace(staged, dest_dir / staged.name)
    write_card(card, card_path)
    return final_main


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def total_size(path: Path, spec: FormatSpec) -> int:
    return sum(p.stat().st_size for p in artifact_files(path, spec) if p.is_file())


def clean_stale_staging(out_dir: Path) -> int:
    """Remove staging folders left by a killed run; returns how many were removed."""
    if not out_dir.is_dir():
        return 0
    stale = [p for p in out_dir.glob(".staging-*") if p.is_dir()]
    for path in stale:
        remove_tree(path)
    if stale:
        log.info("removed %d staging folder(s) left by an interrupted run in %s", len(stale), out_dir)
    return len(stale)
