"""Reading what an artifact says about itself: its model card, beside it or inside it. No torch, no onnx needed."""

from __future__ import annotations

from pathlib import Path

from patchdet.runtime.card import CARD_METADATA_KEY, ModelCard, ModelCardError, card_path_for, read_card


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
        return None
    try:
        model = ov.Core().read_model(str(path))
    except Exception:
        raise ModelCardError(f"model file {str(path)!r} is not a valid OpenVINO IR") from None
    for key in (["patchdet", "card"], [CARD_METADATA_KEY]):
        if model.has_rt_info(key):
            return model.get_rt_info(key).astype(str)
    return None
