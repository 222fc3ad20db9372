"""Property test: generated YAML thrown at every config loader never ends in a traceback.

Each loader (detect, calibrate, export, train) either returns its config or raises ``ValueError`` /
``OSError`` with a one-line message naming the file or one of the keys the file holds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchdet.runtime.calibrate import CalibrateConfig
from patchdet.runtime.config import build_config
from patchdet.runtime.run import DetectConfig

pytest.importorskip("torch")  # TrainConfig / ExportConfig live in the torch stages' packages
from patchdet.export.config import ExportConfig  # noqa: E402
from patchdet.training.config import TrainConfig  # noqa: E402

LOADERS = {cls.__name__: cls for cls in (DetectConfig, CalibrateConfig, ExportConfig, TrainConfig)}
# Settings each stage needs, so that the generated keys are what gets checked.
REQUIRED = {"DetectConfig": {}, "CalibrateConfig": {"background": "footage"}, "ExportConfig": {"models": ["a.pt"]},
            "TrainConfig": {"data": "data"}}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["x", "nan", "inf", "-1", "0", "1e400", "all", "a,b", "1,2,3"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3),
                      max_leaves=6)


def _keys(cls: type) -> st.SearchStrategy:
    names = [f.name for f in dataclasses.fields(cls)]
    return st.one_of(st.sampled_from(names), st.sampled_from(names), st.text(max_size=6), st.integers(), st.none())


def _check(cls: type, path: Path, mapping_keys: list[str]) -> None:
    try:
        build_config(cls, path)
    except (ValueError, OSError) as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message.strip(), message
        assert path.name in message or any(key in message for key in mapping_keys) or \
            any(key.replace("_", "-") in message for key in mapping_keys), message


@pytest.mark.parametrize("name", sorted(LOADERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_yaml_never_ends_in_a_traceback(name, data, tmp_path):
    cls = LOADERS[name]
    drawn = data.draw(st.dictionaries(_keys(cls), values, max_size=4))
    mapping = {**REQUIRED[name], **drawn}
    path = tmp_path / "generated.yaml"
    path.write_text(yaml.safe_dump(mapping, allow_unicode=True), encoding="utf-8")
    _check(cls, path, [str(k) for k in mapping if isinstance(k, str) and k])


@pytest.mark.parametrize("name", sorted(LOADERS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("ab:[]{}-,'\"&*!|>%@ \n\t.1")), max_size=30))
def test_arbitrary_text_is_a_one_line_error_or_a_config(name, text, tmp_path):
    path = tmp_path / "generated.yaml"
    path.write_text(text, encoding="utf-8")
    _check(LOADERS[name], path, list(REQUIRED[name]))


@pytest.mark.parametrize(("name", "text", "named"), [
    ("DetectConfig", "tile: [x\n", "not valid YAML"),
    ("DetectConfig", "1: 2\n", "key 1"),
    ("DetectConfig", "tile: .inf\n", "'tile'"),
    ("DetectConfig", "threshold: .nan\n", "threshold"),
    ("DetectConfig", "source: [1]\n", "'source'"),
    ("DetectConfig", "tile: true\n", "'tile' expects a number"),
    ("CalibrateConfig", "false_alarms: .inf\nbackground: x\n", "'false_alarms'"),
    ("ExportConfig", "models: [a.pt]\ncalibration: [1, 2]\n", "'calibration'"),
    ("ExportConfig", "models: [a.pt]\nworkers: many\n", "'workers'"),
    ("ExportConfig", "models: [a.pt]\ncalibration: {1: 2}\n", "'calibration'"),
    ("ExportConfig", "models: [a.pt]\ncalibration: {num_images: .inf}\n", "num_images"),
    ("TrainConfig", "epochs: .inf\n", "'epochs'"),
    ("TrainConfig", "threshold: .nan\n", "'threshold'"),
    ("TrainConfig", "mean: 5\n", "'mean'"),
])
def test_bad_config_files_name_the_file_and_key(name, text, named, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        build_config(LOADERS[name], path, **{k: v for k, v in REQUIRED[name].items() if k not in text})
    message = str(info.value)
    assert "bad.yaml" in message and named in message and "\n" not in message
