"""Shared fixtures: small generated image folders (never ../shared)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# --backend auto caches its speed measurements; tests keep theirs out of the user's cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="patchdet-test-cache-")


def make_image_folder(root: Path, classes: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """Write ``classes[name]`` PNGs per class. Class "car"/"automobile" has a bright square, others noise."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            if name in ("car", "automobile", "truck"):
                s = size // 4
                image[s:3 * s, s:3 * s] = (40, 40, 250)
            else:
                image[:, :, index % 3] //= 2
            cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", {"car": 24, "bird": 16, "cat": 16, "truck": 8, "deer": 8})


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A tiny modulus ONNX model with its card: bright patches score high (``tests.fixtures_onnx``)."""
    from tests.fixtures_onnx import write_model

    return write_model(tmp_path / "models" / "bright.onnx", "modulus")


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """A 10-frame 160x96 MJPG clip of a white square moving right (``tests.runtime_media``)."""
    from tests.runtime_media import moving_square_frames, write_video

    return write_video(tmp_path / "square.avi", moving_square_frames(10))
