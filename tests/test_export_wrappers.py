"""Head arithmetic in the graph and the dense (fully-convolutional) rewrite of DisCNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchdet.export.datasets import aligned_windows, mosaic
from patchdet.export.wrappers import HEAD_OUTPUTS, DenseBody, build_graph
from patchdet.training.models import get_model
from tests.export_helpers import randomize_batchnorm


def _model(input_size: int = 32, nonnegative: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_model("discnn8", input_size=input_size, nonnegative_output=nonnegative).eval()
    randomize_batchnorm(model)
    return model


@pytest.mark.parametrize("head", sorted(HEAD_OUTPUTS))
def test_head_outputs_match_hand_computation(head):
    model = _model(nonnegative=head == "modulus")
    centroids = torch.randn(3, 16) if head == "cosine" else None
    graph = build_graph(model, head, centroids)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        raw = model(x)
        outputs = dict(zip(graph.output_names, graph(x), strict=True))
    assert tuple(outputs) == HEAD_OUTPUTS[head]
    if head == "modulus":
        torch.testing.assert_close(outputs["score"], raw.norm(dim=1))
    elif head == "softmax":
        torch.testing.assert_close(outputs["probs"], torch.softmax(raw, dim=1))
        torch.testing.assert_close(outputs["score"], torch.softmax(raw, dim=1).max(dim=1).values)
    else:
        expected = torch.nn.functional.normalize(raw, dim=1) @ torch.nn.functional.normalize(centroids, dim=1).T
        torch.testing.assert_close(outputs["cosine"], expected)
        torch.testing.assert_close(outputs["norm"], raw.norm(dim=1))
        torch.testing.assert_close(outputs["score"], expected.max(dim=1).values)


def test_cosine_head_without_centroids_is_refused():
    with pytest.raises(ValueError, match="centroids"):
        build_graph(_model(nonnegative=False), "cosine")


def test_dense_rewrite_is_exact_on_the_feature_map():
    """Window (i, j) of the dense map is the FC stack applied to the 2x2 feature window at (i, j) (32 px patches)."""
    model = _model()
    dense = DenseBody(model).eval()
    frame = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        maps = dense(frame)  # [1, 16, 5, 7]
        features = model.features(frame)  # [1, 8, 6, 8]
        fh = model.feature_hw
        for i in range(maps.shape[2]):
            for j in range(maps.shape[3]):
                window = features[:, :, i:i + fh, j:j + fh].flatten(1)
                torch.testing.assert_close(maps[0, :, i, j], model.classifier(window)[0], rtol=1e-5, atol=1e-5)
        # A frame that is exactly one patch gives the patch model's output.
        patch = frame[:, :, :32, :32]
        torch.testing.assert_close(dense(patch)[:, :, 0, 0], model(patch), rtol=1e-5, atol=1e-5)


def test_dense_windows_match_patch_model_on_crops():
    """Interior windows vs the patch model on the same 64x64 crops.

    Tolerance: 5 % of the frame's largest patch score. They cannot agree exactly:
    the patch model zero-pads at each crop's edge, the dense model sees the real
    neighbouring pixels there (measured on a random DisCNN-8: 2.6 % worst, 0.7 % median).
    """
    model = _model(input_size=64)
    dense = build_graph(model, "modulus", dense=True)
    patch = build_graph(model, "modulus")
    torch.manual_seed(1)
    frame = torch.nn.functional.interpolate(torch.randn(1, 3, 24, 32), size=(192, 256), mode="bilinear")
    with torch.no_grad():
        _, score_map = dense(frame)
        hs, ws = score_map.shape[1:]
        assert (hs, ws) == (192 // 16 - 3, 256 // 16 - 3)
        interior = [(i, j) for i in range(1, hs - 1) for j in range(1, ws - 1)]
        crops = torch.stack([frame[0, :, 16 * i:16 * i + 64, 16 * j:16 * j + 64] for i, j in interior])
        _, crop_scores = patch(crops)
    dense_scores = torch.stack([score_map[0, i, j] for i, j in interior])
    relative = (dense_scores - crop_scores).abs() / crop_scores.abs().max()
    assert float(relative.max()) < 0.05


def test_dense_refuses_models_without_fc_stack():
    with pytest.raises(ValueError, match="DisCNN-like"):
        DenseBody(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


def test_mosaic_windows_are_the_patches():
    patches = np.random.default_rng(0).standard_normal((9, 3, 32, 32)).astype(np.float32)
    frames = mosaic(patches, 3)
    assert frames.shape == (1, 3, 96, 96)
    # Identity "map" with one cell per 16 px: picking the aligned cells gives patch order back.
    cell_ids = np.arange(36, dtype=np.float32).reshape(1, 6, 6)
    picked = aligned_windows(cell_ids, 3, 2)
    assert picked.tolist() == [0, 2, 4, 12, 14, 16, 24, 26, 28]
    np.testing.assert_array_equal(frames[0, :, 32:64, 64:96], patches[5])
