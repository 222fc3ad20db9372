"""Detector: cards, thresholds, decisions per head, dense mode, heatmaps."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from patchdet.runtime.backends import available_backends
from patchdet.runtime.card import ModelCardError, card_path_for, read_artifact_card, read_card, write_card
from patchdet.runtime.decisions import validate_threshold
from patchdet.runtime.detector import Detector, TilingConfig
from tests.fixtures_onnx import MODULUS_THRESHOLD, fixture_card, white_square_frame, write_model

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
TILE32 = TilingConfig(tile_wh=(32, 32), stride_wh=(32, 32))
SQUARE = (40, 20, 80, 60)  # white square on a black 160x96 frame


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("detector_models")
    for kind in ("modulus", "cosine", "softmax", "window", "dense"):
        write_model(root / f"{kind}.onnx", kind)
    return root


def _overlaps_square(xyxy):
    x0, y0, x1, y1 = SQUARE
    return (xyxy[:, 0] < x1) & (xyxy[:, 2] > x0) & (xyxy[:, 1] < y1) & (xyxy[:, 3] > y0)


@pytest.mark.parametrize("backend", [b for b in ("onnxruntime", "openvino", "opencv") if b in available_backends()])
def test_modulus_finds_the_white_square(model_dir, backend):
    det = Detector(model_dir / "modulus.onnx", backend=backend, tiling=TILE32, threads=1)
    assert det.backend_name == backend and det.threshold == MODULUS_THRESHOLD
    result = det(white_square_frame(square_xyxy=SQUARE))
    assert result.tile_xyxy.shape == (15, 4) and result.tile_scores.shape == (15,)
    np.testing.assert_array_equal(result.positive_mask, _overlaps_square(result.tile_xyxy))
    assert (result.tile_scores[~result.positive_mask] == 0).all()
    assert len(result.detections) == 1  # the four positive tiles touch: one object box
    box = result.detections.xyxy[0]
    x0, y0, x1, y1 = SQUARE
    assert box[0] <= x0 and box[1] <= y0 and box[2] >= x1 and box[3] >= y1
    assert result.detections.score[0] == pytest.approx(result.tile_scores.max())


def test_stages_equal_call_and_preprocess_normalises(model_dir):
    det = Detector(model_dir / "modulus.onnx", tiling=TILE32, backend="onnxruntime")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(96, 160, 3), dtype=np.uint8)
    prepared = det.preprocess(frame)
    assert prepared.batch.shape == (15, 3, 32, 32) and prepared.batch.dtype == np.float32
    x0, y0, x1, y1 = prepared.tiles_xyxy[7]
    expected = (frame[y0:y1, x0:x1, ::-1].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(prepared.batch[7], expected.transpose(2, 0, 1), atol=1e-5)
    staged = det.decide(det.infer(prepared.batch), prepared)
    direct = det(frame)
    np.testing.assert_array_equal(staged.tile_scores, direct.tile_scores)


def test_resized_tiles_and_multiscale(model_dir):
    det = Detector(model_dir / "modulus.onnx", tiling=TilingConfig((64, 64), (32, 32), scales=(1.0, 2.0)))
    result = det(white_square_frame((160, 96), SQUARE))
    sizes = result.tile_xyxy[:, 2:] - result.tile_xyxy[:, :2]
    assert {tuple(s) for s in sizes.tolist()} == {(64, 64), (32, 32)}
    assert result.positive_mask.any()
    assert (_overlaps_square(result.tile_xyxy) | ~result.positive_mask).all()


def test_threshold_override_and_validation(model_dir):
    path = model_dir / "modulus.onnx"
    high = Detector(path, threshold=1e6, tiling=TILE32)
    assert not high(white_square_frame()).positive_mask.any()
    assert Detector(path, threshold="2.5", tiling=TILE32).threshold == 2.5
    for bad in ("abc", float("nan"), float("inf"), None.__class__, True):
        with pytest.raises(ValueError, match="threshold .* is invalid: expected a finite number"):
            Detector(path, threshold=bad, tiling=TILE32)
    assert validate_threshold(3) == 3.0


def test_named_operating_point_and_warmup(tmp_path):
    path = write_model(tmp_path / "m.onnx", "modulus", thresholds={"paper": 1.0, "strict": 4.0})
    det = Detector(path, threshold="strict", tiling=TILE32)
    assert det.threshold == 4.0
    det.with_threshold("paper")
    assert det.threshold == 1.0
    with pytest.raises(ValueError, match=r"expected a finite number or one of the model card's operating points "
                                         r"\(paper, strict\)"):
        Detector(path, threshold="loose", tiling=TILE32)
    assert det.warmup((160, 96)) > 0


def test_cosine_head_classes_norm_gate_and_background(model_dir):
    path = model_dir / "cosine.onnx"
    frame = white_square_frame((160, 96), SQUARE)
    det = Detector(path, tiling=TILE32)
    result = det(frame)
    lit = _overlaps_square(result.tile_xyxy)
    # black tiles have a zero latent: below the norm gate, never positive
    assert not result.positive_mask[~lit].any()
    assert result.positive_mask[lit].any()
    background = det.card.class_names.index("background")
    assert not (result.positive_mask & (result.tile_class_id == background)).any()
    gated = Detector(path, tiling=TILE32, norm_gate=1e9)
    assert not gated(frame).positive_mask.any()
    # per-class thresholds: silence the first non-background class seen
    cls = int(result.tile_class_id[result.positive_mask][0])
    name = det.card.class_names[cls]
    silenced = Detector(path, tiling=TILE32, threshold={name: 2.0})(frame)
    assert not (silenced.positive_mask & (silenced.tile_class_id == cls)).any()
    with pytest.raises(ValueError, match="threshold for class 'truck' is invalid"):
        Detector(path, tiling=TILE32, threshold={"truck": 0.5})


def test_card_class_thresholds_are_used(tmp_path):
    path = write_model(tmp_path / "cos.onnx", "cosine", thresholds={"class:car": 0.99, "class:person": 0.1})
    det = Detector(path, tiling=TILE32)
    assert det.class_thresholds.tolist() == pytest.approx([0.99, 0.1, 0.5])


def test_softmax_head(model_dir):
    det = Detector(model_dir / "softmax.onnx", tiling=TILE32)
    result = det(white_square_frame((160, 96), SQUARE))
    probs_ok = (result.tile_scores >= 1 / 3 - 1e-6) & (result.tile_scores <= 1 + 1e-6)
    assert probs_ok.all()
    assert (result.positive_mask == ((result.tile_scores > 0.5) & (result.tile_class_id != 2))).all()


def test_dense_matches_explicit_tiles_at_stride_16(model_dir):
    frame = white_square_frame((160, 96), SQUARE)
    tiled = Detector(model_dir / "window.onnx", tiling=TilingConfig((32, 32), (16, 16)), backend="onnxruntime")
    dense = Detector(model_dir / "dense.onnx", tiling=TilingConfig((32, 32), (16, 16), dense=True),
                     backend="onnxruntime")
    a, b = tiled(frame), dense(frame)
    assert b.dense_map_hw == (5, 9)
    np.testing.assert_array_equal(a.tile_xyxy, b.tile_xyxy)
    np.testing.assert_allclose(a.tile_scores, b.tile_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.positive_mask, b.positive_mask)
    np.testing.assert_allclose(tiled.heatmap(a), dense.heatmap(b), rtol=1e-5, atol=1e-6)


def test_dense_pads_odd_frames_and_rescales(model_dir):
    det = Detector(model_dir / "dense.onnx", tiling=TilingConfig((64, 64), (64, 64), dense=True))
    frame = white_square_frame((170, 101), (40, 10, 150, 101))  # at scale 1/2 it fills whole windows
    result = det(frame)
    assert (result.tile_xyxy[:, 2] <= 170).all() and (result.tile_xyxy[:, 3] <= 101).all()
    assert result.positive_mask.any()
    assert det.heatmap(result).shape == (101, 170)


def test_dense_needs_a_dense_artifact(model_dir):
    with pytest.raises(ValueError, match="dense mode needs a dense export"):
        Detector(model_dir / "modulus.onnx", tiling=TilingConfig(dense=True))


def test_dense_mosaic_scores_every_scale_and_wide_tiles_in_one_call(model_dir):
    frame = white_square_frame((160, 96), SQUARE)
    single = Detector(model_dir / "dense.onnx", tiling=TilingConfig((32, 32), (16, 16), dense=True),
                      backend="onnxruntime")
    mosaic = Detector(model_dir / "dense.onnx", tiling=TilingConfig((32, 32), (16, 16), scales=(1.0, 0.5), dense=True),
                      backend="onnxruntime")
    a, b = single(frame), mosaic(frame)
    sizes = {tuple(size) for size in (b.tile_xyxy[:, 2:] - b.tile_xyxy[:, :2]).tolist()}
    assert {(32, 32), (64, 64)} <= sizes
    # the scale-1 level sits at the canvas origin: its windows are the single-scale windows, same scores
    # away from the level's far edges (there the next level's pixels replace zero padding)
    by_box = {tuple(box): score for box, score in zip(b.tile_xyxy.tolist(), b.tile_scores.tolist(), strict=True)}
    interior = (a.tile_xyxy[:, 2] < 160 - 16) & (a.tile_xyxy[:, 3] < 96 - 16)
    for box, score in zip(a.tile_xyxy[interior].tolist(), a.tile_scores[interior].tolist(), strict=True):
        assert by_box[tuple(box)] == pytest.approx(score, rel=1e-4, abs=1e-5)
    wide = Detector(model_dir / "dense.onnx", tiling=TilingConfig((64, 32), (64, 32), dense=True),
                    backend="onnxruntime")
    boxes = wide(frame).tile_xyxy
    full = boxes[(boxes[:, 2] - boxes[:, 0] == 64)]
    assert len(full) and (full[:, 3] - full[:, 1] == 32).all()  # a 32x32 window covers 64x32 frame pixels


def test_heatmap_is_max_of_covering_tiles(model_dir):
    det = Detector(model_dir / "modulus.onnx", tiling=TilingConfig((32, 32), (16, 16)))
    result = det(white_square_frame((160, 96), SQUARE))
    heat = det.heatmap(result)
    assert heat.shape == (96, 160) and heat.dtype == np.float32
    assert heat.max() == pytest.approx(result.tile_scores.max())
    assert heat[0, 0] == pytest.approx(result.tile_scores[0])
    assert result.heatmap is heat


def test_frames_of_other_kinds(model_dir):
    det = Detector(model_dir / "modulus.onnx", tiling=TILE32)
    grey = white_square_frame()[:, :, 0]
    assert det(grey).positive_mask.any()
    with pytest.raises(ValueError, match="smaller than the tile 32x32"):
        det(np.zeros((20, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="expected uint8"):
        det(np.zeros((96, 160, 3), np.float32))
    with pytest.raises(ValueError, match="expected a BGR image"):
        det(None)


def test_card_from_metadata_only(tmp_path):
    path = write_model(tmp_path / "m.onnx", "modulus", card=False)
    assert not card_path_for(path).exists()
    assert read_artifact_card(path).name == "fixture-modulus"
    assert Detector(path, tiling=TILE32).card.head == "modulus"


def test_card_from_onnxruntime_metadata_without_onnx(tmp_path, monkeypatch):
    import sys

    path = write_model(tmp_path / "m.onnx", "modulus", card=False)
    monkeypatch.setitem(sys.modules, "onnx", None)  # the light install has no onnx package
    assert read_artifact_card(path).name == "fixture-modulus"


def test_missing_model_and_missing_or_corrupt_card(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file .*none.onnx' does not exist"):
        Detector(tmp_path / "none.onnx")
    bare = write_model(tmp_path / "bare.onnx", "modulus", card=False, metadata=False)
    with pytest.raises(ModelCardError, match="has no model card: expected bare.card.json beside it"):
        Detector(bare)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ModelCardError, match="not a valid ONNX model"):
        Detector(corrupt)
    broken_card = write_model(tmp_path / "broken.onnx", "modulus")
    card_path_for(broken_card).write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        Detector(broken_card)


def test_card_argument_uses_a_calibrated_copy(tmp_path, model_dir):
    card = read_card(card_path_for(model_dir / "modulus.onnx")).replace(threshold=1.25)
    copy = write_card(card, tmp_path / "calibrated.card.json")
    det = Detector(model_dir / "modulus.onnx", card=copy, tiling=TILE32)
    assert det.threshold == 1.25
    assert json.loads(json.dumps(det.describe()))["threshold"] == 1.25


@pytest.mark.openvino
@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO not installed (pip install 'patchdet[openvino]')")
def test_card_from_openvino_rt_info(tmp_path, model_dir):
    import openvino as ov

    model = ov.convert_model(str(model_dir / "modulus.onnx"))
    model.set_rt_info(fixture_card("modulus").to_json(), ["patchdet", "card"])
    xml = tmp_path / "m.xml"
    ov.save_model(model, str(xml))
    det = Detector(xml, tiling=TILE32)
    assert det.backend_name == "openvino" and det.card.name == "fixture-modulus"
    assert det(white_square_frame()).positive_mask.any()


def test_tiling_config_validation():
    with pytest.raises(ValueError, match="tile size 0 is invalid"):
        TilingConfig(tile_wh=0)
    with pytest.raises(ValueError, match="stride -1 is invalid"):
        TilingConfig(stride_wh=-1)
    with pytest.raises(ValueError, match="merge method 'x' is unknown"):
        TilingConfig(merge="x")
    with pytest.raises(ValueError, match="reference height 0 is invalid"):
        TilingConfig(reference_height=0)
    assert TilingConfig(dense=True, scales=(1.0, 2.0)).scales == (1.0, 2.0)  # one mosaic canvas
    tall = TilingConfig(tile_wh=32, scales=(1.0, 0.5), reference_height=360)
    assert tall.scales_for((640, 360)) == (1.0, 0.5) and tall.scales_for((320, 180)) == (1.0, 0.5)
    assert tall.scales_for((1920, 1080)) == pytest.approx((1 / 3, 1 / 6))  # 3x taller frame: 3x larger tiles
    assert tall.grid((1920, 1080))[0].tolist() == [0, 0, 96, 96]
    assert TilingConfig(tile_wh=48).tile_wh == (48, 48)


def test_buffer_reuse_gives_the_same_results(model_dir):
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, size=(96, 160, 3), dtype=np.uint8) for _ in range(3)]
    pooled = Detector(model_dir / "modulus.onnx", tiling=TILE32)
    fresh = Detector(model_dir / "modulus.onnx", tiling=TILE32, reuse_buffers=False)
    first = pooled.preprocess(frames[0])
    pooled.infer(first.batch)
    again = pooled.preprocess(frames[1])
    assert again.batch is first.batch  # recycled after infer
    pooled.infer(again.batch)
    for frame in frames:
        np.testing.assert_array_equal(pooled(frame).tile_scores, fresh(frame).tile_scores)
    a = pooled.preprocess(frames[0])
    b = pooled.preprocess(frames[1])  # a not inferred yet: never handed out twice
    assert a.batch is not b.batch


def test_buffer_reuse_in_dense_mode_keeps_padding_zero(model_dir):
    det = Detector(model_dir / "dense.onnx", tiling=TilingConfig((32, 32), (16, 16), dense=True))
    ref = Detector(model_dir / "dense.onnx", tiling=TilingConfig((32, 32), (16, 16), dense=True), reuse_buffers=False)
    for w in (170, 165, 170):  # same padded width 176, different interiors
        frame = np.full((101, w, 3), 255, np.uint8)
        np.testing.assert_array_equal(det(frame).tile_scores, ref(frame).tile_scores)


@pytest.mark.parametrize("backend, options", [("onnxruntime", {}), pytest.param(
    "openvino", {"hint": "THROUGHPUT", "requests": 2}, marks=[pytest.mark.openvino, pytest.mark.skipif(
        not HAS_OPENVINO, reason="OpenVINO not installed (pip install 'patchdet[openvino]')")])])
def test_submit_and_wait_give_the_same_results(model_dir, backend, options):
    det = Detector(model_dir / "modulus.onnx", tiling=TILE32, backend=backend, backend_options=options)
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, size=(96, 160, 3), dtype=np.uint8) for _ in range(4)]
    expected = [det(f).tile_scores for f in frames]
    results = {}
    for k, frame in enumerate(frames):
        prepared = det.preprocess(frame)
        det.submit(prepared.batch, lambda outputs, k=k, p=prepared: results.__setitem__(k, det.decide(outputs, p)))
    det.wait()
    for k in range(len(frames)):
        np.testing.assert_allclose(results[k].tile_scores, expected[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "drop"), [("modulus", "score"), ("cosine", "cosine"), ("cosine", "norm"),
                                            ("softmax", "probs")])
def test_decisions_recompute_missing_outputs(model_dir, kind, drop):
    det = Detector(model_dir / f"{kind}.onnx", tiling=TILE32, threshold=0.3)
    prepared = det.preprocess(white_square_frame((160, 96), SQUARE))
    outputs = det.infer(prepared.batch)
    full = det.tile_decisions(outputs)
    partial = det.tile_decisions({k: v for k, v in outputs.items() if k != drop})
    for a, b in zip(full, partial, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_buffer_pool_does_not_keep_dropped_buffers():
    import gc

    from patchdet.runtime.preprocess import BufferPool

    pool = BufferPool(max_per_key=2)
    kept = [pool.take((2, 3)) for _ in range(3)]
    dropped = pool.take((2, 3))
    del dropped
    gc.collect()
    assert len(pool._out) == 3  # the dropped buffer is not kept alive by the pool
    assert all(pool.give(a) for a in kept)
    assert not pool.give(np.zeros((2, 3), np.float32))  # not from the pool
    assert not pool.give(kept[0])  # given back already
    again = pool.take((2, 3))
    assert any(again is a for a in kept[:2]) and len(pool._free[((2, 3), ())]) == 1


def test_max_batch_splits_calls_without_changing_results(model_dir):
    frame = white_square_frame((160, 96), SQUARE)
    tiling = TilingConfig((32, 32), (8, 8))  # 17 x 9 = 153 tiles
    one = Detector(model_dir / "modulus.onnx", tiling=tiling, max_batch=None)
    split = Detector(model_dir / "modulus.onnx", tiling=tiling, max_batch=16)
    calls = []
    backend_call = split.backend.__call__
    split.inference.backend = type("Counting", (), {"__call__": lambda self, b: calls.append(len(b)) or backend_call(b),
                                                    "name": "counting"})()
    np.testing.assert_allclose(split(frame).tile_scores, one(frame).tile_scores, rtol=1e-6)
    assert calls == [16] * 9 + [9]
    with pytest.raises(ValueError, match="max_batch 0 is invalid"):
        Detector(model_dir / "modulus.onnx", tiling=tiling, max_batch=0)


def test_negative_threshold_on_a_modulus_head_is_refused_from_python_too(model_dir):
    with pytest.raises(ValueError, match="threshold -1 is invalid .* a modulus head's score is a norm"):
        Detector(model_dir / "modulus.onnx", threshold=-1.0, tiling=TILE32)
