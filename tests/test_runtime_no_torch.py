"""The runtime never needs torch (nor onnx): import every runtime module and detect with torch blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures_onnx import write_model
from tests.no_torch import BLOCK_TORCH

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    r"""
    import importlib, importlib.abc, json, pkgutil, sys, traceback
    from pathlib import Path

    BLOCKED = ("torch", "torchvision", "onnx", "training", "export", "runtime", "benchmarks",
               "patchdet.training", "patchdet.export", "patchdet.cli")
    RUNTIME_DIR = str(Path(sys.argv[1]) / "runtime")
    attempts = []

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED or any(name == b or name.startswith(b + ".") for b in BLOCKED):
                callers = [f.filename for f in traceback.extract_stack() if f.filename.startswith(RUNTIME_DIR)]
                attempts.append({"module": name, "from_runtime": callers[-1:]})
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    for name in BLOCKED:
        sys.modules.pop(name, None)

    import patchdet.runtime
    names = ["patchdet.runtime"]
    for info in pkgutil.walk_packages(patchdet.runtime.__path__, "patchdet.runtime."):
        importlib.import_module(info.name)
        names.append(info.name)

    from patchdet.runtime.detector import Detector, TilingConfig
    import numpy as np
    frame = np.zeros((96, 160, 3), np.uint8)
    frame[20:60, 40:80] = 255
    det = Detector(sys.argv[2], tiling=TilingConfig((32, 32), (32, 32)))
    result = det(frame)
    print(json.dumps({
        "modules": names,
        "backend": det.backend_name,
        "positives": int(result.positive_mask.sum()),
        "boxes": result.detections.xyxy.tolist(),
        "runtime_import_attempts": [a for a in attempts if a["from_runtime"]],
        "torch_loaded": any(m is not None and m.split(".")[0] == "torch" for m in sys.modules
                            if sys.modules.get(m) is not None),
    }))
    """
)

HELP_CHILD = BLOCK_TORCH + textwrap.dedent(
    r"""
    from patchdet.cli import main
    code = main(["detect", "--help"])
    """
)


def test_runtime_imports_and_detects_without_torch(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(model)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"patchdet.runtime.tiling", "patchdet.runtime.detections", "patchdet.runtime.detector",
            "patchdet.runtime.backends", "patchdet.runtime.backends.onnxruntime",
            "patchdet.runtime.card"} <= set(report["modules"])
    assert report["runtime_import_attempts"] == []
    assert report["torch_loaded"] is False
    assert report["positives"] == 4 and len(report["boxes"]) == 1


@pytest.mark.skipif(not (REPO / "runtime" / "cli.py").exists(), reason="runtime/cli.py (patchdet detect) not built yet")
def test_patchdet_detect_help_without_torch():
    proc = subprocess.run([sys.executable, "-c", HELP_CHILD], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout and "detect" in proc.stdout


BENCH_CHILD = BLOCK_TORCH + textwrap.dedent(
    r"""
    from patchdet.cli import main
    code = main(["bench", sys.argv[1], "--out", sys.argv[2], "--frames", "128x96", "--tilings", "tiled",
                 "--backends", "onnxruntime", "--repeats", "3", "--warmup", "0", "--clip-frames", "2"])
    assert not any(m.split(".")[0] == "torch" for m in sys.modules), "torch was imported"
    raise SystemExit(code)
    """
)


def test_patchdet_bench_without_torch(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    proc = subprocess.run([sys.executable, "-c", BENCH_CHILD, str(model), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                            "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "bench.json").read_text())["rows"]
    assert [(r["backend"], r["status"]) for r in rows] == [("onnxruntime", "ok")]
