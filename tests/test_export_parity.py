"""The parity rules on hand-made outputs: what passes, what fails, how far an INT8 threshold moves."""

from __future__ import annotations

import numpy as np
import pytest

from patchdet.export.config import ParityConfig
from patchdet.export.parity import compare_outputs, matched_threshold
from patchdet.runtime.card import ModelCard

CARD = ModelCard(name="t", arch="discnn8", head="modulus", input_wh=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
                 class_names=("automobile",), positive_class="automobile", threshold=1.0)


def _outputs(scores):
    scores = np.asarray(scores, dtype=np.float32)
    return {"embedding": np.stack([scores, np.zeros_like(scores)], axis=1), "score": scores}


TRUTH = np.array([True, True, True, False, False, False])
REF = [3.0, 2.0, 1.5, 0.0, 0.5, 0.9]


@pytest.mark.parametrize(
    ("precision", "scores", "passed", "failure"),
    [
        ("fp32", [3.0, 2.0, 1.5, 0.0, 0.5, 0.9], True, None),
        ("fp32", [3.001, 2.0, 1.5, 0.0, 0.5, 0.9], False, "score relative error"),
        ("fp16", [3.001, 2.0, 1.5, 0.0, 0.5, 0.9], True, None),
        ("fp16", [3.0, 2.0, 1.5, 0.0, 0.5, 1.01], False, "decision agreement"),
        ("int8", [2.7, 1.9, 1.4, 0.0, 0.6, 0.8], True, None),
        ("int8", [2.7, 1.9, 0.8, 0.0, 0.6, 0.8], False, "f1_artifact"),
    ],
    ids=["fp32-exact", "fp32-off", "fp16-within", "fp16-flip", "int8-same-f1", "int8-f1-drop"],
)
def test_pass_rules(precision, scores, passed, failure):
    result = compare_outputs(_outputs(REF), _outputs(scores), CARD, np.zeros(6, dtype=np.int64), TRUTH,
                             precision, ParityConfig())
    assert result["passed"] is passed
    if failure:
        assert any(failure in f for f in result["failures"])


def test_int8_threshold_shift_keeps_the_fp32_operating_point():
    # Torch flags 3 patches above 1.0; the INT8 scores are scaled by 0.8, so 1.5 -> 1.2 and 0.9 -> 0.72.
    art = np.asarray(REF) * 0.8
    moved = matched_threshold(np.asarray(REF), art, 1.0)
    assert moved == 1.0  # 3 positives either way: no move needed
    art[2] = 0.95  # the third positive fell below 1.0
    moved = matched_threshold(np.asarray(REF), art, 1.0)
    assert 0.72 < moved < 0.95
    assert int(np.sum(art > moved)) == 3
    result = compare_outputs(_outputs(REF), _outputs(art), CARD, np.zeros(6, dtype=np.int64), TRUTH, "int8",
                             ParityConfig())
    assert result["threshold_shift"] == pytest.approx(moved - 1.0)
    assert result["f1_artifact_at_matched_threshold"] == result["f1_torch"] == 1.0


def test_missing_output_fails():
    art = _outputs(REF)
    del art["embedding"]
    result = compare_outputs(_outputs(REF), art, CARD, np.zeros(6, dtype=np.int64), TRUTH, "fp32", ParityConfig())
    assert not result["passed"] and "lacks output(s) embedding" in result["failures"][0]
