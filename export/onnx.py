"""FP32 ONNX: torch export (pinned opset, dynamic batch), onnxslim simplification, checker, model card.

The card goes into ``metadata_props`` under ``runtime.card.CARD_METADATA_KEY``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from patchdet.export.artifact import BuildContext, BuildResult
from patchdet.export.wrappers import HeadGraph
from patchdet.runtime.card import CARD_METADATA_KEY, ModelCard

log = logging.getLogger(__name__)

INPUT_NAME = "input"


def _dynamic_axes(output_names: tuple[str, ...], dense: bool) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"} if dense else {0: "batch"}}
    for name in output_names:
        if not dense:
            axes[name] = {0: "batch"}
        elif name in ("score", "norm"):  # [N, Hs, Ws]
            axes[name] = {0: "batch", 1: "map_h", 2: "map_w"}
        else:  # [N, C, Hs, Ws]
            axes[name] = {0: "batch", 2: "map_h", 3: "map_w"}
    return axes


def export_graph_onnx(graph: HeadGraph, path: str | Path, input_size: int, dense: bool, opset: int) -> Path:
    """Export ``graph`` to an FP32 ONNX file, simplified and checked.

    Args:
        graph: The head-in-graph module (eval mode).
        path: Output file.
        input_size: Patch side in pixels; a dense graph is traced on a frame of twice that.
        dense: Dynamic height and width as well as batch.
        opset: ONNX opset.

    Returns:
        ``path``.
    """
    path = Path(path)
    side = input_size * 2 if dense else input_size
    dummy = torch.zeros(1, 3, side, side, dtype=torch.float32)
    graph = graph.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; dynamo needs onnxscript
        torch.onnx.export(
            graph,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(graph.output_names),
            dynamic_axes=_dynamic_axes(graph.output_names, dense),
            do_constant_folding=True,
        )
    graph.eval()  # the exporter restores the caller's mode; make sure no BN ever runs in training mode
    model = onnx.load(str(path))
    model = simplify(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim's graph simplification; the unsimplified graph is kept (and logged) if it fails."""
    try:
        import onnxslim

        slimmed = onnxslim.slim(model)
    except Exception as exc:  # a simplifier bug must not block an export that is otherwise valid
        log.warning("onnxslim failed (%s); keeping the unsimplified graph", str(exc).splitlines()[0][:200])
        return model
    return slimmed if slimmed is not None else model


def set_onnx_card(model: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """Put ``card`` into ``metadata_props`` (replacing an older card) and return ``model``."""
    kept = [p for p in model.metadata_props if p.key != CARD_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = CARD_METADATA_KEY
    entry.value = card.to_json()
    model.producer_name = "patchdet"
    model.doc_string = f"patchdet {card.arch} {card.head} model ({card.name})"
    return model


def read_onnx_card(path: str | Path) -> ModelCard:
    """The card embedded in an ONNX file's ``metadata_props``."""
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            return ModelCard.from_json(prop.value)
    raise ValueError(f"ONNX file {path} carries no {CARD_METADATA_KEY} metadata")


def write_onnx_card(path: str | Path, card: ModelCard) -> None:
    """Embed ``card`` in the ONNX file at ``path`` (rewrites the file in place; callers stage it)."""
    model = onnx.load(str(path))
    onnx.save(set_onnx_card(model, card), str(path))


def build_onnx(ctx: BuildContext) -> BuildResult:
    """Format ``onnx``: FP32, dynamic batch, simplified, checked, card embedded."""
    path = ctx.staging_dir / ctx.spec.artifact_name(ctx.base_name)
    export_graph_onnx(ctx.graph, path, ctx.input_size, ctx.dense, ctx.opset)
    return BuildResult(
        path=path,
        export_info={"opset": ctx.opset, "simplifier": "onnxslim"},
        embed_card=lambda card: write_onnx_card(path, card),
    )
