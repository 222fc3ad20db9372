"""patchdet: train tiny patch detectors, export them, run them on camera streams.

One import name for the whole pipeline: ``patchdet.training`` -> ``patchdet.export``
-> ``patchdet.runtime`` (the folders ``training/``, ``export/``, ``runtime/`` of the
repository). The public API below is imported lazily, so ``import patchdet`` is
light and never imports torch; only the light runtime is needed to detect::

    import patchdet

    detector = patchdet.Detector()                 # built-in car model; settings from its card
    for result in detector.stream("clip.mp4"):     # camera index, file, URL, folder or glob
        print(result.frame.index, result.detections.xyxy, result.detections.score)
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# Installed, the stage folders are mapped into this package (pyproject's package-dir). In a source
# checkout they sit beside it, and Python run from the checkout's root finds this folder first: let
# it find the stages there too, so `python -c "import patchdet; patchdet.Detector"` works in both.
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_checkout, "pyproject.toml")) and all(
        os.path.isfile(os.path.join(_checkout, stage, "__init__.py")) for stage in ("training", "export", "runtime")):
    __path__.append(_checkout)

# public name -> "module:attribute", imported on first use
_PUBLIC = {
    "Detector": "patchdet.runtime.detector:Detector",
    "FrameResult": "patchdet.runtime.detector:FrameResult",
    "Detections": "patchdet.runtime.detections:Detections",
    "ModelCard": "patchdet.runtime.card:ModelCard",
    "read_card": "patchdet.runtime.card:read_card",
    "TilingConfig": "patchdet.runtime.tiling_config:TilingConfig",
    "open_source": "patchdet.runtime.streams:open_source",
    "StreamOptions": "patchdet.runtime.streams:StreamOptions",
    "DetectConfig": "patchdet.runtime.run:DetectConfig",
    "detect": "patchdet.runtime.run:detect",
    "CalibrateConfig": "patchdet.runtime.calibrate:CalibrateConfig",
    "calibrate": "patchdet.runtime.calibrate:calibrate",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'patchdet' has no attribute {name!r}")
    module_name, attribute = target.split(":")
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
