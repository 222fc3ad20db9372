"""benchmarks.loss_comparison on tiny synthetic CIFAR-like folders: tables, JSON, plot, and reuse of finished runs."""

from __future__ import annotations

import json

import pytest

from benchmarks.loss_comparison import main, parse_loss
from tests.conftest import make_image_folder

CLASSES = {"automobile": 6, "bird": 6, "cat": 6}


@pytest.fixture
def cifar_like(tmp_path):
    make_image_folder(tmp_path / "data" / "train", CLASSES, size=16)
    unseen = {"truck": 3, "deer": 3, "frog": 3, "horse": 3}  # the n2o task's Table 5 check
    make_image_folder(tmp_path / "data" / "test", {**CLASSES, **unseen}, size=16, seed=1)
    return tmp_path / "data"


def test_parse_loss_options():
    assert parse_loss("n2o:negative_term=l1,scale=2") == ("n2o", {"negative_term": "l1", "scale": 2})
    assert parse_loss("softmax") == ("softmax", {})
    with pytest.raises(ValueError, match="key=value"):
        parse_loss("n2o:l1")


@pytest.mark.slow
def test_comparison_writes_table_json_and_plot_and_reuses_finished_runs(cifar_like, tmp_path):
    results = tmp_path / "out" / "cmp"
    args = ["--data", str(cifar_like), "--task", "cifar3", "--losses", "softmax;gini-kl", "--epochs", "1",
            "--seeds", "0,1", "--input-size", "16", "--batch-size", "9", "--threads", "1",
            "--max-test-per-class", "4", "--runs", str(tmp_path / "runs"), "--results", str(results)]
    assert main(args) == 0
    report = json.loads(results.with_suffix(".json").read_text())
    section = report["tasks"]["cifar3"]
    assert [(r["loss"], r["seed"], r["epochs"]) for r in section["runs"]] == [
        ("softmax", 0, 1), ("softmax", 1, 1), ("gini-kl", 0, 1), ("gini-kl", 1, 1)]
    assert section["runs"][2]["options"] == {"start_epoch": 1}  # 1 + epochs // 20, the paper's fraction
    assert section["settings"]["test_per_class"] == 4
    table = results.with_suffix(".md").read_text()
    assert "| `gini-kl` |" in table and "--losses 'softmax;gini-kl'" in table
    assert results.with_suffix(".png").stat().st_size > 0
    metrics = tmp_path / "runs" / "cifar3" / "softmax" / "seed0" / "metrics.jsonl"
    before = metrics.read_text()
    assert main(args) == 0
    assert metrics.read_text() == before  # finished runs are reused, not retrained
    n2o_args = [a for a in args]
    n2o_args[n2o_args.index("cifar3")] = "n2o"
    n2o_args[n2o_args.index("softmax;gini-kl")] = "n2o;n2o:negative_term=l1"
    assert main(n2o_args + ["--arch", "discnn8"]) == 0
    report = json.loads(results.with_suffix(".json").read_text())
    n2o_runs = report["tasks"]["n2o"]["runs"]
    assert {r["options"].get("negative_term") for r in n2o_runs} == {None, "l1"}
    assert "automobile" in n2o_runs[0]["history"][-1]["at_origin"]
    unseen = n2o_runs[0]["unseen"]
    assert set(unseen["thresholds"]) == {"0", "1"} and set(unseen["at_origin"]) >= {"truck", "deer", "frog", "horse"}
    assert all(0.0 <= v <= 1.0 for row in unseen["thresholds"].values() for v in row.values())
    assert "unseen truck F1" in results.with_suffix(".md").read_text()
    assert set(report["tasks"]) == {"cifar3", "n2o"}  # tasks accumulate in one report
