"""``ExportConfig``: the one frozen configuration of the export stage.

Resolution order is defaults -> YAML file (``--config``) -> CLI flags. Invalid
combinations raise ``ValueError`` naming the bad value; nothing is rewritten
silently. Rare knobs live in the nested ``ParityConfig`` and ``CalibrationConfig``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OPSET = 17  # pinned: ONNX Runtime, OpenVINO, OpenCV 5 DNN and TensorRT 10 all read it


@dataclass(frozen=True)
class ParityConfig:
    """Tolerances an artifact must meet against PyTorch, else it is marked failed.

    Attributes:
        fp32_rel_tol: Max of ``|score_art - score_ref| / max(|score_ref|)`` for FP32 artifacts.
        fp16_rel_tol: The same for FP16 artifacts (OpenVINO FP16 IR, TensorRT FP16).
        min_decision_agreement: Fraction of eval samples whose decision at the card
            threshold must agree with PyTorch (FP32 / FP16 artifacts).
        int8_max_f1_drop: Allowed drop of positive-class F1 (or accuracy for
            multi-class heads) at the card threshold for INT8 artifacts.
        warn_below: F1 (modulus) or accuracy (multi-class) under which an artifact that
            passed is still flagged in the manifest as a poor model (a 1-epoch run).
        warn_drop: Drop of F1 / accuracy against torch beyond which an artifact is flagged
            (INT8 artifacts within ``int8_max_f1_drop`` included), and ``1 - warn_drop``
            the decision agreement under which it is flagged.
        max_images: Cap on evaluation images (0 = all), sampled with ``seed``.
        batch_size: Images per inference call during the check.
        dense_mosaic: Eval patches per side of the frames that check dense artifacts.
        seed: Seed of the deterministic sub-sampling.
    """

    fp32_rel_tol: float = 1e-4
    fp16_rel_tol: float = 1e-2
    min_decision_agreement: float = 0.999
    int8_max_f1_drop: float = 0.01
    warn_below: float = 0.5
    warn_drop: float = 0.005
    max_images: int = 0
    batch_size: int = 64
    dense_mosaic: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("fp32_rel_tol", "fp16_rel_tol", "int8_max_f1_drop", "warn_below", "warn_drop"):
            if getattr(self, name) < 0:
                raise ValueError(f"parity {name} {getattr(self, name)} is invalid: expected >= 0")
        if not 0.0 <= self.min_decision_agreement <= 1.0:
            raise ValueError(
                f"parity min_decision_agreement {self.min_decision_agreement} is invalid: expected 0..1"
            )
        if self.max_images < 0 or self.batch_size <= 0 or self.dense_mosaic <= 0:
            raise ValueError(
                f"parity max_images/batch_size/dense_mosaic {self.max_images}/{self.batch_size}/"
                f"{self.dense_mosaic} invalid: expected >= 0 / > 0 / > 0"
            )


@dataclass(frozen=True)
class CalibrationConfig:
    """Post-training quantization settings shared by ONNX Runtime and NNCF.

    Attributes:
        num_images: Calibration images drawn (seeded) from ``--calib``.
        min_images: Fewer usable images than this and INT8 export is refused.
        classes: ``"model"`` uses only the checkpoint's own classes when ``--calib``
            is an ImageFolder tree holding them; ``"all"`` uses every image.
        float_head: Keep the final FC layer and the norm / cosine / softmax
            arithmetic in float (excluded nodes / ignored scope).
        seed: Seed of the sub-sampling.
    """

    num_images: int = 300
    min_images: int = 32
    classes: str = "model"
    float_head: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_images <= 0 or self.num_images < self.min_images:
            raise ValueError(
                f"calibration num_images {self.num_images} / min_images {self.min_images} invalid: "
                "expected num_images >= min_images > 0"
            )
        if self.classes not in ("model", "all"):
            raise ValueError(f"calibration classes {self.classes!r} is invalid: expected 'model' or 'all'")


@dataclass(frozen=True)
class ExportConfig:
    """Everything ``export(cfg)`` needs.

    Attributes:
        models: Checkpoint files or run folders (``best.pt`` / ``last.pt`` inside).
        formats: Format names from ``export.formats.FORMATS``.
        out_dir: Where artifacts, cards and ``manifest.json`` / ``manifest.md`` go.
        calib_dir: Calibration images (plain folder or ImageFolder tree); needed for INT8.
        eval_dir: ImageFolder tree for the parity check (default: the calibration images).
        dense: Export the fully-convolutional variant (whole frame -> score map, stride 16).
        workers: Parallel worker processes (1 = in this process).
        threads: Intra-op threads per worker (0 = cores // workers).
        opset: ONNX opset.
        force: Re-export even when inputs and settings are unchanged.
        name: Artifact base name override (only with a single model).
        parity: Tolerances of the parity check.
        calibration: Quantization settings.
    """

    models: tuple[str, ...]
    formats: tuple[str, ...] = ("onnx",)
    out_dir: str = "exports"
    calib_dir: str | None = None
    eval_dir: str | None = None
    dense: bool = False
    workers: int = 1
    threads: int = 0
    opset: int = DEFAULT_OPSET
    force: bool = False
    name: str | None = None
    parity: ParityConfig = field(default_factory=ParityConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        from patchdet.export.formats import FORMAT_GROUPS, FORMATS, expand_formats  # local: nothing heavy either

        object.__setattr__(self, "formats", expand_formats(tuple(self.formats)))  # documented shortcuts: cpu, all
        if not self.models:
            raise ValueError(f"no model given (models: {self.models!r}): expected one or more checkpoints or run folders")
        if not self.formats:
            raise ValueError(f"no format given (formats: {self.formats!r}): expected one or more of {', '.join(FORMATS)}")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown format {', '.join(map(repr, unknown))}: known formats are {', '.join(FORMATS)} "
                             f"(shortcuts: {', '.join(FORMAT_GROUPS)})")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"format list {','.join(self.formats)} names a format twice")
        if self.workers <= 0 or self.threads < 0:
            raise ValueError(f"workers {self.workers} / threads {self.threads} invalid: expected >= 1 / >= 0")
        if not 13 <= self.opset <= 21:
            raise ValueError(f"ONNX opset {self.opset} is invalid: expected 13..21")
        if self.name is not None and len(self.models) != 1:
            raise ValueError(f"--name {self.name!r} needs exactly one model, got {len(self.models)}")
        if self.name is not None and (not self.name or os.sep in self.name or self.name.startswith(".")):
            raise ValueError(f"artifact name {self.name!r} is invalid: expected a plain file stem")
        needs_calib = [f for f in self.formats if FORMATS[f].needs_calibration]
        if needs_calib and self.calib_dir is None:
            raise ValueError(
                f"{', '.join(needs_calib)} needs calibration images: pass --calib DIR with at least "
                f"{self.calibration.min_images} images ({self.calibration.num_images} are used when available)"
            )
        for label, value in (("calibration", self.calib_dir), ("evaluation", self.eval_dir)):
            if value is not None and not Path(value).is_dir():
                raise ValueError(f"{label} folder {value} does not exist or is not a folder")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
