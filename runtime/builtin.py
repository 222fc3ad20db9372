"""The built-in model and sample clip shipped in ``runtime/assets`` (what runs when nothing is given)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
# DisCNN-8 at 64x64 trained on real car and road crops (models/discnn8_car64.pt; benchmarks/results/real_car_models.md).
# The CIFAR-10 model of the paper reproduction stays beside it (discnn8_automobile*.onnx, models/discnn8_automobile.pt).
# The default runs dense: one fully-convolutional pass over a mosaic of every scale scores windows at a quarter
# of a tile (benchmarks/results/scenes_eval.md). Explicit tiles (--tile/--stride, the motion gate) need the
# patch model beside it.
BUILTIN_MODEL = ASSETS / "discnn8_car64_dense.onnx"
BUILTIN_PATCH_MODEL = ASSETS / "discnn8_car64.onnx"
BUILTIN_CLIP = ASSETS / "street_cam_sample.mp4"


def builtin_model(patch: bool = False) -> Path:
    """The built-in artifact (dense; the per-tile patch model with ``patch``); FileNotFoundError when not installed."""
    path = BUILTIN_PATCH_MODEL if patch else BUILTIN_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"built-in model {path} is missing from this installation: pass --model ARTIFACT")
    return path


def builtin_clip() -> Path:
    """The built-in sample clip; FileNotFoundError when not installed."""
    if not BUILTIN_CLIP.is_file():
        raise FileNotFoundError(f"built-in sample clip {BUILTIN_CLIP} is missing: pass --source")
    return BUILTIN_CLIP
