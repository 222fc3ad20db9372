"""What picks and tunes a ``Detector``: ``DetectorSettings`` (shared by detect and calibrate) and ``load_detector``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchdet.runtime.detections import MERGE_METHODS


def check_positive_ints(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name.replace('_', '-')} {value!r} is invalid: expected a positive integer")


@dataclass(frozen=True)
class DetectorSettings:
    """What picks and tunes the detector; ``None`` everywhere means "the model card's".

    Attributes:
        model: Exported artifact (``.onnx``, ``.xml``, ``.engine``) with its model card;
            ``None``: the built-in car model in ``runtime/assets``.
        card: A model card JSON to use instead of the artifact's own (e.g. from ``patchdet calibrate``).
        backend: ``auto`` or ``onnxruntime``, ``openvino``, ``opencv``, ``tensorrt``.
        threads: Inference threads (``None``: the backend's default).
        threshold: Decision threshold on the score (``None``: the card's).
        tile: Tile side in frame pixels at scale 1, resized to the model input (``None``: the card's tiling,
            else the model's input size).
        stride: Step between tiles in frame pixels (``None``: the card's, or ``tile`` when ``tile`` is given).
        scales: Look at the frame at these scales (0.5 = tiles twice as large; ``None``: the card's).
        dense: Score every window of a dense (fully-convolutional) export in one pass.
        merge: How positive tiles become boxes: ``connected``, ``nms`` or ``none`` (``None``: the card's).
    """

    model: str | None = None
    card: str | None = None
    backend: str = "auto"
    threads: int | None = None
    threshold: float | None = None
    tile: int | None = None
    stride: int | None = None
    scales: tuple[float, ...] | None = None
    dense: bool = False
    merge: str | None = None

    @property
    def needs_patch_model(self) -> bool:
        """Explicit tiles were asked for (a tile size or stride), which a dense model cannot score."""
        return self.tile is not None or self.stride is not None

    def __post_init__(self) -> None:
        check_positive_ints(self, ("tile", "stride", "threads"))
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or \
                    not math.isfinite(self.threshold):
                raise ValueError(f"threshold {self.threshold!r} is invalid: expected a finite number")
        if self.scales is not None and (not self.scales or any(
                not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0) for s in self.scales)):
            raise ValueError(f"scales {self.scales!r} are invalid: expected positive numbers, e.g. 1.0,0.5")
        if self.merge is not None and self.merge not in MERGE_METHODS:
            raise ValueError(f"merge {self.merge!r} is unknown: expected one of {', '.join(MERGE_METHODS)}")


def load_detector(settings: DetectorSettings, **detector_options: Any):
    """The ``Detector`` some settings ask for (card defaults filled in); backend failures become one-line ``OSError``.

    Without a model it is the built-in default: its dense export, or its per-tile export when the settings
    ask for explicit tiles (``needs_patch_model``).
    """
    from patchdet.runtime.backends import BackendError, MissingBackendError, resolve_backend_name
    from patchdet.runtime.backends.fastest import resolve_auto_backend
    from patchdet.runtime.builtin import builtin_model
    from patchdet.runtime.card import read_artifact_card, read_card
    from patchdet.runtime.detector import Detector
    from patchdet.runtime.tiling_config import tiling_for_card

    if settings.model is not None:
        model = Path(settings.model).expanduser()
        if not model.is_file():
            raise FileNotFoundError(f"model file {settings.model} does not exist")
    else:
        model = builtin_model(patch=settings.needs_patch_model and not settings.dense)
    card = read_artifact_card(model) if settings.card is None else read_card(settings.card)
    tiling = tiling_for_card(card, settings.tile, settings.stride, settings.scales, settings.dense or card.dense,
                             settings.merge)
    options = dict(detector_options.pop("backend_options", None) or {})
    backend, options = resolve_auto_backend(model, card, settings.backend, settings.threads, options)
    # Spin-waiting ONNX Runtime threads starve the pipeline's reader and writer threads on a small CPU.
    if resolve_backend_name(model, backend) == "onnxruntime":
        options.setdefault("spinning", False)
    try:
        return Detector(model, backend=backend, threshold=settings.threshold, tiling=tiling,
                        threads=settings.threads, card=card, backend_options=options, **detector_options)
    except MissingBackendError:
        raise
    except BackendError as exc:
        raise OSError(f"cannot load model {model}: {exc}") from None
