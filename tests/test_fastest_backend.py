"""``--backend auto`` by measured speed: picks an installed engine, caches the measurement, keeps numerics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from patchdet.runtime.backends import fastest as fastest_module
from patchdet.runtime.backends import is_installed
from patchdet.runtime.backends.fastest import cache_path, fastest_backend
from patchdet.runtime.settings import DetectorSettings, load_detector
from tests.fixtures_onnx import write_model


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_auto_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    model = write_model(tmp_path / "m.onnx", "modulus")
    probes = []
    real_probe = fastest_module._probe_ms
    monkeypatch.setattr(fastest_module, "_probe_ms", lambda *a: probes.append(a[1]) or real_probe(*a))
    name, options = fastest_backend(model, (32, 32), threads=1)
    installed = [n for n in ("onnxruntime", "openvino") if is_installed(n)]
    assert name in installed
    if len(installed) < 2:  # nothing to choose between: no timing at all
        assert probes == [] and options == {}
        return
    assert sorted(probes) == sorted(installed)
    assert options == ({"precision": "f32"} if name == "openvino" else {})  # never a silent bf16
    (entry,) = json.loads(cache_path().read_text()).values()
    assert entry["backend"] == name and set(entry["times_ms"]) == set(installed)
    assert fastest_backend(model, (32, 32), threads=1) == (name, options)
    assert len(probes) == len(installed)  # the second call measured nothing


def test_auto_detector_scores_like_onnxruntime(tmp_path):
    model = write_model(tmp_path / "m.onnx", "modulus")
    auto = load_detector(DetectorSettings(model=str(model), threads=1, tile=32))
    reference = load_detector(DetectorSettings(model=str(model), backend="onnxruntime", threads=1, tile=32))
    frame = np.random.default_rng(0).integers(0, 256, (96, 160, 3), np.uint8)
    np.testing.assert_allclose(auto(frame).tile_scores, reference(frame).tile_scores, rtol=1e-4, atol=1e-5)


def test_non_onnx_artifacts_are_not_timed(tmp_path, monkeypatch):
    monkeypatch.setattr(fastest_module, "_probe_ms", lambda *a: pytest.fail("timed an .xml artifact"))
    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    if is_installed("openvino"):
        assert fastest_backend(xml, (32, 32)) == ("openvino", {})
