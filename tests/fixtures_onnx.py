"""Tiny ONNX models with model cards, built without torch (``onnx.helper``), for runtime tests.

Reusable by every runtime test (detect pipeline, calibration, fault tests)::

    from tests.fixtures_onnx import write_model
    path = write_model(tmp_path / "m.onnx", "modulus")   # + m.card.json and metadata_props

Kinds (all patch models take float32 [N, 3, 32, 32], normalised with mean 0.5 / std 0.25):

- ``modulus``: Conv3x3(+) -> ReLU -> GlobalAveragePool -> Flatten -> MatMul(+) -> ReLU
  = ``embedding`` [N, 4]; ``score`` [N] = L2 norm. All weights are positive and
  dark pixels normalise to negative values, so **bright patches score high and
  black patches score exactly 0**: draw a white square on a black frame and
  the tiles over it are the positives. Card threshold: :data:`MODULUS_THRESHOLD`.
- ``cosine``: POD-style head with 3 classes ``("car", "person", "background")``:
  ``embedding`` [N, 4], ``cosine`` [N, 3], ``norm`` [N], ``score`` [N].
- ``softmax``: ``logits`` [N, 3], ``probs`` [N, 3], ``score`` [N].
- ``window``: Conv 32x32 stride 16 (positive weights) -> ReLU -> Flatten = ``embedding``
  [N, 4]; ``score`` = L2 norm. The patch version of ``dense``.
- ``dense``: the same convolution on whole frames [N, 3, H, W] (H, W multiples
  of 16, at least 32): ``embedding`` [1, 4, Hs, Ws], ``score`` [1, Hs, Ws] with
  ``Hs = (H - 32) / 16 + 1``. Card ``dense=True``, ``dense_stride=16``. Scores of
  ``dense`` equal ``window`` scores of tiles cut at stride 16 (same weights).

``write_model(path, kind, card=True, metadata=True, **card_changes)`` writes the
model, the JSON card beside it (``card=False``: none) and the card inside
``metadata_props`` (``metadata=False``: none), and returns ``path``.
``fixture_card(kind, **changes)`` gives the card alone. ``white_square_frame``
draws the test frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from patchdet.runtime.card import CARD_METADATA_KEY, ModelCard, card_path_for, write_card

PATCH = 32
EMBED = 4
OPSET = 17
KINDS = ("modulus", "cosine", "softmax", "window", "dense")
MODULUS_THRESHOLD = 0.5
CLASS_NAMES_3 = ("car", "person", "background")


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv_w": (rng.uniform(0.2, 1.0, size=(8, 3, 3, 3)) / 27.0).astype(np.float32),
        "conv_b": np.zeros(8, np.float32),
        "fc_pos": rng.uniform(0.2, 1.0, size=(8, EMBED)).astype(np.float32),
        "fc_signed": rng.normal(size=(8, EMBED)).astype(np.float32),
        "centroids": rng.normal(size=(3, EMBED)).astype(np.float32),
        "window_w": (rng.uniform(0.2, 1.0, size=(EMBED, 3, PATCH, PATCH)) / (3 * PATCH * PATCH)).astype(np.float32),
    }


def fixture_card(kind: str, seed: int = 0, **changes) -> ModelCard:
    """The model card that :func:`write_model` attaches to a fixture of ``kind`` (built with ``seed``)."""
    w = _weights(seed)
    base = dict(name=f"fixture-{kind}", arch=f"fixture-{kind}", input_wh=(PATCH, PATCH), mean=(0.5, 0.5, 0.5),
                std=(0.25, 0.25, 0.25), versions={"onnx_opset": str(OPSET)})
    if kind in ("modulus", "window", "dense"):
        card = dict(base, head="modulus", class_names=("bright",), positive_class="bright",
                    threshold=MODULUS_THRESHOLD, outputs=("embedding", "score"))
        if kind == "dense":
            card.update(dense=True, dense_stride=16)
    elif kind == "cosine":
        card = dict(base, head="cosine", class_names=CLASS_NAMES_3, centroids=tuple(map(tuple, w["centroids"].tolist())),
                    threshold=0.5, norm_gate=0.1, background_class="background",
                    outputs=("embedding", "cosine", "norm", "score"))
    elif kind == "softmax":
        card = dict(base, head="softmax", class_names=CLASS_NAMES_3, threshold=0.5, outputs=("logits", "probs", "score"))
    else:
        raise ValueError(f"fixture kind {kind!r} is unknown: expected one of {', '.join(KINDS)}")
    card.update(changes)
    return ModelCard(**card)


def build_model(kind: str, seed: int = 0):
    """The ``onnx.ModelProto`` of a fixture (no card attached)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = _weights(seed)
    inits = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    nodes = []
    if kind == "dense":
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    else:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, PATCH, PATCH])
    if kind in ("window", "dense"):
        nodes += [
            helper.make_node("Conv", ["input", const("window_w", w["window_w"])], ["conv"], kernel_shape=[PATCH, PATCH],
                             strides=[16, 16]),
            helper.make_node("Relu", ["conv"], ["relu"]),
        ]
        if kind == "window":
            nodes += [helper.make_node("Flatten", ["relu"], ["embedding"], axis=1),
                      helper.make_node("ReduceL2", ["embedding"], ["score"], axes=[1], keepdims=0)]
            outs = [("embedding", ["batch", EMBED]), ("score", ["batch"])]
        else:
            nodes += [helper.make_node("Identity", ["relu"], ["embedding"]),
                      helper.make_node("ReduceL2", ["embedding"], ["score"], axes=[1], keepdims=0)]
            outs = [("embedding", ["batch", EMBED, "rows", "cols"]), ("score", ["batch", "rows", "cols"])]
    else:
        nodes += [
            helper.make_node("Conv", ["input", const("conv_w", w["conv_w"]), const("conv_b", w["conv_b"])], ["conv"],
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["feat"], axis=1),
        ]
        if kind == "modulus":
            nodes += [helper.make_node("MatMul", ["feat", const("fc_pos", w["fc_pos"])], ["fc"]),
                      helper.make_node("Relu", ["fc"], ["embedding"]),
                      helper.make_node("ReduceL2", ["embedding"], ["score"], axes=[1], keepdims=0)]
            outs = [("embedding", ["batch", EMBED]), ("score", ["batch"])]
        elif kind == "cosine":
            centroids = w["centroids"] / np.linalg.norm(w["centroids"], axis=1, keepdims=True)
            nodes += [helper.make_node("MatMul", ["feat", const("fc_signed", w["fc_signed"])], ["embedding"]),
                      helper.make_node("ReduceL2", ["embedding"], ["norm_k"], axes=[1], keepdims=1),
                      helper.make_node("Add", ["norm_k", const("eps", np.array([1e-8], np.float32))], ["norm_eps"]),
                      helper.make_node("Div", ["embedding", "norm_eps"], ["unit"]),
                      helper.make_node("MatMul", ["unit", const("cent_t", centroids.T.astype(np.float32))], ["cosine"]),
                      helper.make_node("Reshape", ["norm_k", const("shape_n", np.array([-1], np.int64))], ["norm"]),
                      helper.make_node("ReduceMax", ["cosine"], ["score"], axes=[1], keepdims=0)]
            outs = [("embedding", ["batch", EMBED]), ("cosine", ["batch", 3]), ("norm", ["batch"]), ("score", ["batch"])]
        elif kind == "softmax":
            nodes += [helper.make_node("MatMul", ["feat", const("fc_logits", w["fc_signed"][:, :3].copy())], ["logits"]),
                      helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
                      helper.make_node("ReduceMax", ["probs"], ["score"], axes=[1], keepdims=0)]
            outs = [("logits", ["batch", 3]), ("probs", ["batch", 3]), ("score", ["batch"])]
        else:
            raise ValueError(f"fixture kind {kind!r} is unknown: expected one of {', '.join(KINDS)}")
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outs]
    graph = helper.make_graph(nodes, f"fixture_{kind}", [x], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="patchdet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(path: str | Path, kind: str = "modulus", *, card: bool = True, metadata: bool = True, seed: int = 0,
                **card_changes) -> Path:
    """Write a fixture model (and its card beside it / inside it); returns ``path``."""
    import onnx
    from onnx import helper

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_model(kind, seed)
    model_card = fixture_card(kind, seed, **card_changes)
    if metadata:
        helper.set_model_props(model, {CARD_METADATA_KEY: model_card.to_json()})
    onnx.save(model, str(path))
    if card:
        write_card(model_card, card_path_for(path))
    return path


def white_square_frame(frame_wh: tuple[int, int] = (160, 96), square_xyxy: tuple[int, int, int, int] = (40, 20, 80, 60),
                       ) -> np.ndarray:
    """uint8 BGR [H, W, 3] black frame with one white rectangle (exclusive ends)."""
    w, h = frame_wh
    frame = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = square_xyxy
    frame[y0:y1, x0:x1] = 255
    return frame
