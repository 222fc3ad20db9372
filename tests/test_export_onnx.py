"""Round trips torch -> artifact -> inference engine on tiny models, for every head and format."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch

from patchdet.export.batch import export
from patchdet.export.config import ExportConfig
from patchdet.export.formats import CPU_FORMATS, FORMATS, format_table_markdown
from patchdet.export.onnx import export_graph_onnx, read_onnx_card
from patchdet.export.wrappers import HEAD_OUTPUTS, build_graph
from patchdet.runtime.card import card_path_for, read_card
from patchdet.training.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from tests.export_helpers import make_checkpoint, make_image_folder

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="needs the [openvino] extra (openvino, nncf)")


def _ort_run(path, batch):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": batch}), strict=True))


def _torch_run(graph, batch):
    with torch.no_grad():
        return {n: o.numpy() for n, o in zip(graph.output_names, graph(torch.from_numpy(batch)), strict=True)}


@pytest.mark.parametrize("head", sorted(HEAD_OUTPUTS))
@pytest.mark.parametrize("dense", [False, True])
def test_onnx_matches_torch_for_every_head(tmp_path, head, dense):
    payload = load_checkpoint(make_checkpoint(tmp_path / "m.pt", head=head))
    graph = build_graph(build_model_from_checkpoint(payload), head, payload.get("centroids"), dense=dense)
    path = export_graph_onnx(graph, tmp_path / "m.onnx", 32, dense, opset=17)
    onnx.checker.check_model(onnx.load(str(path)))
    shape = (1, 3, 80, 112) if dense else (5, 3, 32, 32)  # dense: any frame size, not only the traced one
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref, art = _torch_run(graph, batch), _ort_run(path, batch)
    assert tuple(art) == HEAD_OUTPUTS[head]
    for name in HEAD_OUTPUTS[head]:
        assert art[name].shape == ref[name].shape
        np.testing.assert_allclose(art[name], ref[name], rtol=1e-4, atol=1e-5)
    if dense:
        assert art["score"].shape == (1, 80 // 16 - 1, 112 // 16 - 1)


@needs_openvino
@pytest.mark.openvino
def test_three_clients_give_the_same_scores(tmp_path):
    """ONNX Runtime, OpenVINO and OpenCV's DNN module read the exported file alike."""
    import cv2
    import openvino as ov

    payload = load_checkpoint(make_checkpoint(tmp_path / "m.pt"))
    graph = build_graph(build_model_from_checkpoint(payload), "modulus")
    path = export_graph_onnx(graph, tmp_path / "m.onnx", 32, dense=False, opset=17)
    batch = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    reference = _torch_run(graph, batch)["score"]
    by_ort = _ort_run(path, batch)["score"]
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    by_openvino = np.asarray(compiled(batch)[compiled.output("score")])
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(batch)
    names = list(net.getUnconnectedOutLayersNames())
    by_opencv = net.forward(names)[names.index("score")].reshape(-1)
    for scores in (by_ort, by_openvino, by_opencv):
        np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-5)


def _export_all(tmp_path, formats, dense=False, head="modulus", **changes):
    checkpoint = make_checkpoint(tmp_path / "tiny.pt", head=head)
    calib = make_image_folder(tmp_path / "calib", per_class=12, seed=1)
    evaluation = make_image_folder(tmp_path / "eval", per_class=12, seed=2)
    cfg = ExportConfig(models=(str(checkpoint),), formats=tuple(formats), out_dir=str(tmp_path / "out"),
                       calib_dir=str(calib), eval_dir=str(evaluation), dense=dense, **changes)
    return export(cfg)


def test_onnx_and_int8_artifacts_carry_complete_cards(tmp_path):
    entries = _export_all(tmp_path, ["onnx", "onnx-int8"])
    assert [e["status"] for e in entries] == ["ok", "ok"], [e["reason"] for e in entries]
    for entry in entries:
        card = read_card(card_path_for(entry["path"]))
        embedded = read_onnx_card(entry["path"])
        assert embedded.to_dict() == card.to_dict()
        assert card.head == "modulus" and card.positive_class == "automobile" and card.input_wh == (32, 32)
        assert card.source["sha256"] and card.versions["onnxruntime"]
        assert card.parity["passed"] and card.parity["samples"] == 36
        assert card.parity["eval"]["classes"] == ["automobile", "bird", "cat"]
    fp32, int8 = entries
    assert fp32["parity"]["score_rel"] <= 1e-4 and fp32["parity"]["decision_agreement"] == 1.0
    assert "threshold_shift" in int8["parity"] and int8["parity"]["precision"] == "int8"
    assert int8["size_bytes"] < fp32["size_bytes"]
    qdq = {node.op_type for node in onnx.load(int8["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= qdq
    # The runtime finds the embedded card when the JSON beside the file is gone.
    from patchdet.runtime.card import read_artifact_card

    card_path_for(int8["path"]).unlink()
    assert read_artifact_card(int8["path"]).parity == int8["parity"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [m["format"] for m in manifest] == ["onnx", "onnx-int8"]
    assert {"model", "format", "path", "status", "reason", "size_bytes", "seconds", "parity"} <= set(manifest[0])


def test_a_checkpoints_runtime_defaults_reach_every_card(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "tiny.pt")
    payload = load_checkpoint(checkpoint)
    tiling = {"tile_wh": [48, 32], "stride_wh": [24, 16], "scales": [1.0, 0.5], "merge": "nms",
              "reference_height": 360, "dense": True}
    payload.update(tiling=tiling, threshold=3.0, thresholds={"training": 1.0})
    payload.pop("path")
    save_checkpoint(payload, checkpoint)
    calib = make_image_folder(tmp_path / "calib", per_class=12, seed=1)
    for dense in (False, True):
        cfg = ExportConfig(models=(str(checkpoint),), formats=("onnx",), out_dir=str(tmp_path / f"out{dense}"),
                           calib_dir=str(calib), dense=dense)
        (entry,) = export(cfg)
        card = read_card(card_path_for(entry["path"]))
        assert card.threshold == 3.0 and card.thresholds == {"training": 1.0}
        assert card.tiling == {k: v for k, v in tiling.items() if k != "dense"} and card.dense == dense


def test_int8_keeps_head_in_float_when_asked(tmp_path):
    entries = _export_all(tmp_path, ["onnx-int8"])
    excluded = read_card(card_path_for(entries[0]["path"])).export["excluded_nodes"]
    assert any("Sqrt" in name for name in excluded)
    # The norm arithmetic is not wrapped in QDQ pairs.
    model = onnx.load(entries[0]["path"])
    sqrt = next(n for n in model.graph.node if n.op_type == "Sqrt")
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers[sqrt.input[0]].op_type != "DequantizeLinear"


def test_int8_keeps_fully_connected_layers_float_and_runs_on_opencv(tmp_path):
    from patchdet.runtime.backends import load_backend

    entries = _export_all(tmp_path, ["onnx", "onnx-int8"])
    float_path, path = entries[0]["path"], entries[1]["path"]
    model = onnx.load(path)
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    gemms = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert gemms and all(n.input[1] not in producers for n in gemms)  # float initializers, no DequantizeLinear
    assert convs and all(producers[n.input[1]].op_type == "DequantizeLinear" for n in convs)
    batch = np.random.default_rng(0).uniform(-2, 2, (6, 3, 32, 32)).astype(np.float32)
    int8 = load_backend(path, "onnxruntime", threads=1)(batch)["score"]
    float32 = load_backend(float_path, "onnxruntime", threads=1)(batch)["score"]
    # OpenCV DNN 5.0 rejects a QDQ Flatten/Gemm; with the FC layers in float it runs the INT8 file. OpenCV 5.0
    # emulated ONNX Runtime's int8 arithmetic (equal scores); 5.1 dequantizes the weights and computes in float
    # (scores nearer the float model's). Either way its scores stay within the INT8 file's own error.
    opencv = load_backend(path, "opencv", threads=1)(batch)["score"]
    assert np.abs(opencv - float32).max() <= np.abs(int8 - float32).max() + 1e-4


def test_dense_export_reports_patch_model_agreement(tmp_path):
    entries = _export_all(tmp_path, ["onnx"], dense=True)
    entry = entries[0]
    assert entry["status"] == "ok", entry["reason"]
    assert entry["path"].endswith("tiny_dense.onnx")
    card = read_card(card_path_for(entry["path"]))
    assert card.dense and card.dense_stride == 16 and card.input_wh == (32, 32)
    parity = entry["parity"]
    assert parity["samples"] == 32  # two 4x4 mosaics of the 36 eval patches
    assert parity["map_score_rel"] <= 1e-4
    assert 0 < parity["dense_vs_patch_model"]["windows"] == 32


@needs_openvino
@pytest.mark.openvino
@pytest.mark.slow
@pytest.mark.parametrize("head", ["modulus", "cosine"])
def test_openvino_formats_export_and_pass_parity(tmp_path, head):
    from patchdet.export.openvino import read_openvino_card

    entries = _export_all(tmp_path, ["openvino", "openvino-fp16", "openvino-int8"], head=head)
    assert [e["status"] for e in entries] == ["ok", "ok", "ok"], [e["reason"] for e in entries]
    for entry in entries:
        assert entry["path"].endswith(".xml")
        assert read_openvino_card(entry["path"]).to_dict() == read_card(card_path_for(entry["path"])).to_dict()
    assert entries[0]["parity"]["score_rel"] <= 1e-4
    assert entries[1]["size_bytes"] < entries[0]["size_bytes"]


def test_u8s8_int8_has_unsigned_activations_and_signed_weights(tmp_path):
    from onnx import numpy_helper

    entries = _export_all(tmp_path, ["onnx-int8", "onnx-int8-u8s8"])
    assert [e["status"] for e in entries] == ["ok", "ok"], [e["reason"] for e in entries]
    for entry, activation_dtype in zip(entries, (np.int8, np.uint8), strict=True):
        model = onnx.load(entry["path"])
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        for conv in convs:
            activation_dq = producers[conv.input[0]]
            weight_dq = producers[conv.input[1]]
            assert inits[activation_dq.input[2]].dtype == activation_dtype
            assert inits[weight_dq.input[0]].dtype == np.int8 and not inits[weight_dq.input[2]].any()
    card = read_card(card_path_for(entries[1]["path"]))
    assert card.export["activations"].startswith("uint8") and card.parity["passed"]


def test_every_format_is_in_the_table():
    table = format_table_markdown()
    for name, spec in FORMATS.items():
        assert f"`{name}`" in table
        assert spec.device in ("cpu", "gpu")
    assert set(CPU_FORMATS) == {"onnx", "onnx-int8", "onnx-int8-u8s8", "openvino", "openvino-fp16", "openvino-int8"}
    stems = [spec.stem_suffix for spec in FORMATS.values()]
    assert len(set(stems)) == len(stems)  # every artifact gets its own card file
