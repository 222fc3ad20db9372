"""Frames to model input: the dense frame blob against a plain numpy reference."""

import numpy as np
import pytest

from patchdet.runtime.preprocess import BufferPool, Normalization, frame_to_blob

NORM = Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _reference(frame_bgr: np.ndarray, pad_wh: tuple[int, int]) -> np.ndarray:
    rgb = frame_bgr[:, :, ::-1].astype(np.float32) / 255.0
    norm = (rgb - np.asarray(NORM.mean, np.float32)) / np.asarray(NORM.std, np.float32)
    out = np.zeros((1, 3, pad_wh[1], pad_wh[0]), np.float32)
    out[0, :, : frame_bgr.shape[0], : frame_bgr.shape[1]] = norm.transpose(2, 0, 1)
    return out


@pytest.mark.parametrize(
    ("frame_wh", "padded_wh"),
    [
        ((128, 96), (128, 96)),  # already a multiple of the stride: no padding
        ((100, 90), (112, 96)),  # padded right and bottom to multiples of 16
        ((40, 30), (96, 96)),  # padded up to the model window
    ],
)
def test_dense_blob_matches_reference_and_pads_with_zero(frame_wh, padded_wh):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (frame_wh[1], frame_wh[0], 3), dtype=np.uint8)
    blob, size = frame_to_blob(frame, 1.0, 16, (96, 96), NORM)
    assert size == frame_wh and blob.shape == (1, 3, padded_wh[1], padded_wh[0]) and blob.dtype == np.float32
    np.testing.assert_allclose(blob, _reference(frame, padded_wh), atol=1e-5)


def test_pooled_dense_blob_is_reused_and_its_padding_rewritten():
    pool = BufferPool()
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (90, 100, 3), dtype=np.uint8)
    first, _ = frame_to_blob(frame, 1.0, 16, (96, 96), NORM, pool)
    first[...] = 7.0  # a later frame must not see this frame's values, padding included
    assert pool.give(first)
    second, _ = frame_to_blob(frame, 1.0, 16, (96, 96), NORM, pool)
    assert second is first
    np.testing.assert_allclose(second, _reference(frame, (112, 96)), atol=1e-5)
