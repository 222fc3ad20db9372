"""The model card: everything the runtime needs to use an exported artifact.

A card travels twice with every artifact: as a JSON file beside it
(``model.onnx`` -> ``model.card.json``) and inside the artifact itself
(ONNX ``metadata_props`` key ``patchdet.card``, OpenVINO ``rt_info``
``patchdet/card``). The runtime needs nothing else: no checkpoint, no torch.

Head kinds and the graph outputs they promise (all float32, batch first):

- ``modulus`` (DisCNN, N2O loss): ``embedding`` [N, D], ``score`` [N] = L2 norm
  of the embedding. A patch is positive when ``score > threshold``.
- ``cosine`` (POD loss): ``embedding`` [N, D], ``cosine`` [N, K] cosine to each
  class centroid, ``norm`` [N] latent norm, ``score`` [N] = max cosine.
  Predicted class = argmax cosine; ``norm < norm_gate`` means background/unknown.
- ``softmax`` (cross-entropy baselines): ``logits`` [N, K], ``probs`` [N, K],
  ``score`` [N] = max probability.

Dense artifacts (``dense=True``) take a whole frame [1, 3, H, W] and return
the same outputs as maps: ``score`` [1, Hs, Ws], with window (i, j) covering
pixels ``x0 = j * dense_stride``, ``y0 = i * dense_stride`` of size ``input_wh``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchdet.runtime.atomic import atomic_write_text

CARD_FORMAT = "patchdet-model-card"
CARD_VERSION = 1
CARD_METADATA_KEY = "patchdet.card"
HEAD_KINDS = ("modulus", "cosine", "softmax")
CARD_SUFFIX = ".card.json"


class ModelCardError(ValueError):
    """A model card is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class ModelCard:
    """Self-description of one exported artifact.

    Attributes:
        name: Human name of the model, e.g. ``discnn8-automobile``.
        arch: Registered architecture name, e.g. ``discnn8``.
        head: One of ``HEAD_KINDS``.
        input_wh: Patch size the model takes, (width, height) in pixels.
        mean: Per-channel mean in [0, 1] units, RGB order, subtracted after /255.
        std: Per-channel std in [0, 1] units, RGB order.
        class_names: Class names; for ``modulus`` heads the positive class is
            the only class the model scores (``[positive_class]``).
        positive_class: The class a ``modulus`` model detects; ``None`` otherwise.
        threshold: Recommended decision threshold on ``score``.
        thresholds: Other named operating points, e.g. ``{"paper": 1.0}``.
        centroids: POD class centroids [K][D] (``cosine`` heads only).
        norm_gate: Latent norm below which a ``cosine`` head says "background".
        background_class: Name of a background class among ``class_names``, if any.
        dense: True when the artifact is the fully-convolutional variant.
        dense_stride: Pixel step between windows of a dense score map.
        outputs: Graph output names in order.
        color_order: ``RGB``: the runtime converts OpenCV's BGR frames.
        training: Summary of the training data and run.
        source: Where the weights came from (checkpoint path, sha256).
        export: Export settings (format, precision, opset, calibration).
        parity: Results of the parity check against PyTorch.
        versions: Package versions at export time.
        tiling: The tiling that suits the model (keys of ``runtime.tiling_config.TilingConfig``: ``tile_wh``,
            ``stride_wh``, ``scales``, ``merge``, ``iou_threshold``); ``patchdet detect`` and ``Detector``
            use it unless told otherwise. Empty: tiles of ``input_wh`` without overlap.
    """

    name: str
    arch: str
    head: str
    input_wh: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    positive_class: str | None = None
    threshold: float = 0.0
    thresholds: dict[str, float] = field(default_factory=dict)
    centroids: tuple[tuple[float, ...], ...] | None = None
    norm_gate: float = 0.0
    background_class: str | None = None
    dense: bool = False
    dense_stride: int = 16
    outputs: tuple[str, ...] = ("embedding", "score")
    color_order: str = "RGB"
    training: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    tiling: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head not in HEAD_KINDS:
            raise ModelCardError(f"model card head {self.head!r} is unknown: expected one of {', '.join(HEAD_KINDS)}")
        if not _numbers(self.input_wh, 2, integers=True) or min(self.input_wh) <= 0:
            raise ModelCardError(f"model card input_wh {self.input_wh!r} is invalid: expected two positive integers")
        if not _numbers(self.mean, 3):
            raise ModelCardError(f"model card mean {self.mean!r} is invalid: expected 3 finite numbers")
        if not _numbers(self.std, 3) or min(self.std) <= 0:
            raise ModelCardError(f"model card std {self.std!r} is invalid: expected 3 positive numbers")
        if not self.class_names:
            raise ModelCardError("model card has no class_names")
        if self.head == "modulus" and self.positive_class is None:
            raise ModelCardError("model card with a modulus head must name its positive_class")
        if self.head == "cosine":
            if self.centroids is None:
                raise ModelCardError("model card with a cosine head must carry its centroids")
            if len(self.centroids) != len(self.class_names):
                raise ModelCardError(
                    f"model card has {len(self.centroids)} centroids for {len(self.class_names)} classes"
                )
        if self.dense_stride <= 0:
            raise ModelCardError(f"model card dense_stride {self.dense_stride} is invalid: expected > 0")

    # -- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data = {"format": CARD_FORMAT, "version": CARD_VERSION, **data}
        return json.loads(json.dumps(data))  # tuples -> lists, plain JSON types only

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if data.get("format") != CARD_FORMAT:
            raise ModelCardError(f"not a patchdet model card (format={data.get('format')!r})")
        if int(data.get("version", 0)) > CARD_VERSION:
            raise ModelCardError(
                f"model card version {data.get('version')} is newer than this runtime understands ({CARD_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ModelCardError(f"model card is missing required fields: {', '.join(missing)}")
        try:
            for key in ("input_wh", "mean", "std", "class_names", "outputs"):
                if isinstance(kwargs.get(key), list | tuple):
                    kwargs[key] = tuple(kwargs[key])
            if kwargs.get("centroids") is not None:
                kwargs["centroids"] = tuple(tuple(float(v) for v in row) for row in kwargs["centroids"])
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ModelCardError):
                raise
            raise ModelCardError(f"model card is invalid: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"model card is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelCardError("model card is not a JSON object")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)


def _numbers(value: Any, count: int, integers: bool = False) -> bool:
    """True for a sequence of ``count`` finite numbers (integers when asked; bools are not numbers)."""
    kind = numbers.Integral if integers else numbers.Real
    return isinstance(value, tuple | list) and len(value) == count and all(
        isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) for v in value)


def card_path_for(artifact: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.card.json`` (also for ``model.xml``, ``model.engine``)."""
    path = Path(artifact)
    return path.with_name(path.stem + CARD_SUFFIX)


def write_card(card: ModelCard, path: str | os.PathLike[str]) -> Path:
    """Write a card as JSON atomically (temporary name, then rename)."""
    return atomic_write_text(path, card.to_json() + "\n")


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelCardError(f"model card {path} does not exist") from None
    return ModelCard.from_json(text)


# -- what an artifact says about itself (no torch, no onnx needed) ------------------
def read_artifact_card(artifact: str | Path) -> ModelCard:
    """The model card of an artifact: the JSON beside it, else the one embedded in it.

    Raises:
        FileNotFoundError: When the artifact does not exist.
        ModelCardError: When no card is found or it is unreadable (one line saying which).
    """
    path = Path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    beside = card_path_for(path)
    if beside.is_file():
        return read_card(beside)
    embedded = None
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        embedded = _onnx_card_text(path)
    elif suffix == ".xml":
        embedded = _openvino_card_text(path)
    if embedded is None:
        raise ModelCardError(
            f"model {str(path)!r} has no model card: expected {beside.name} beside it"
            + (" or a card embedded in the model" if suffix in (".onnx", ".xml") else "")
        )
    return ModelCard.from_json(embedded)


def _onnx_card_text(path: Path) -> str | None:
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:
            raise ModelCardError(f"model file {str(path)!r} is not a valid ONNX model") from None
        return next((p.value for p in model.metadata_props if p.key == CARD_METADATA_KEY), None)
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except ImportError:
        return None
    except Exception:
        raise ModelCardError(f"model file {str(path)!r} is not a valid ONNX model") from None
    return session.get_modelmeta().custom_metadata_map.get(CARD_METADATA_KEY)


def _openvino_card_text(path: Path) -> str | None:
    try:
        import openvino as ov
    except ImportError:
        # The card may well be inside the IR: say what to install rather than "no model card".
        from patchdet.runtime.backends import require

        require("openvino")
        raise
    try:
        model = ov.Core().read_model(str(path))
    except Exception:
        raise ModelCardError(f"model file {str(path)!r} is not a valid OpenVINO IR") from None
    for key in (["patchdet", "card"], [CARD_METADATA_KEY]):
        if model.has_rt_info(key):
            return model.get_rt_info(key).astype(str)
    return None
