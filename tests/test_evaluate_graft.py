"""``patchdet evaluate`` and ``patchdet graft`` on a tiny trained checkpoint."""

from __future__ import annotations

import json

import pytest

from patchdet.cli import main
from patchdet.training.config import TrainConfig
from patchdet.training.evaluate import EvalConfig, evaluate, format_report
from patchdet.training.graft import GraftConfig, graft
from patchdet.training.train import train


@pytest.fixture
def tiny_checkpoint(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(TrainConfig(data=str(tiny_folder), positive="car", negatives=("bird", "cat"), input_size=32,
                               epochs=2, batch_size=16, lr=3e-3, out=str(out), val_fraction=0.25, tensorboard=False))
    return result.best_checkpoint


def test_evaluate_report_layout(tiny_checkpoint, tiny_folder):
    report = evaluate(EvalConfig(model=str(tiny_checkpoint), data=str(tiny_folder), unseen=("truck", "deer"),
                                 thresholds=(0.0, 1.0)))
    assert report["positive"] == "car" and report["negatives"] == ["bird", "cat"]
    assert [t["threshold"] for t in report["thresholds"]] == [0.0, 1.0]
    for entry in report["thresholds"]:
        c = entry["confusion"]
        assert c["tp"] + c["fn"] == 24 and c["fp"] + c["tn"] == 32
        assert set(entry["positive"]) == {"precision", "recall", "f1"}
        assert set(entry["unseen"]) == {"truck", "deer"}
        assert all(0.0 <= v <= 1.0 for v in entry["unseen"].values())
    assert set(report["at_origin"]) == {"car", "bird", "cat", "truck", "deer"}
    text = format_report(report)
    assert "positive" in text and "unseen classes" in text


def test_evaluate_cli_writes_json(tiny_checkpoint, tiny_folder, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["evaluate", str(tiny_checkpoint), "--data", str(tiny_folder), "--positive", "car",
                 "--negative", "bird,cat", "--unseen", "truck", "--thresholds", "0,1,2", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [t["threshold"] for t in report["thresholds"]] == [0.0, 1.0, 2.0]
    assert "TP" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--positive", "car", "--negative", "plane"], "'plane' not found"),
        (["--thresholds", "a,b"], "thresholds 'a,b' are invalid"),
        (["--unseen", "bird"], "also positive/negative"),
    ],
)
def test_evaluate_bad_input_is_one_line(tiny_checkpoint, tiny_folder, capsys, args, message):
    assert main(["evaluate", str(tiny_checkpoint), "--data", str(tiny_folder), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_graft_reports_convergence_with_control(tiny_checkpoint, tiny_folder, tmp_path):
    result = graft(GraftConfig(model=str(tiny_checkpoint), data=str(tiny_folder), classes=("car", "bird"),
                               out=str(tmp_path / "graft"), epochs=2, batch_size=8, control=True))
    assert set(result["runs"]) == {"grafted", "random_frozen_conv"}
    for run in result["runs"].values():
        assert len(run["epoch_losses"]) == 2 and isinstance(run["converged"], bool)
    assert (tmp_path / "graft" / "graft.json").is_file() and (tmp_path / "graft" / "graft_loss.png").is_file()


def test_graft_needs_two_classes(tiny_checkpoint, tiny_folder, tmp_path, capsys):
    assert main(["graft", str(tiny_checkpoint), "--data", str(tiny_folder), "--classes", "car",
                 "--out", str(tmp_path)]) == 2
    assert "exactly two classes" in capsys.readouterr().err


def test_evaluate_exported_artifact_matches_checkpoint(tiny_checkpoint, tiny_folder, tmp_path):
    from patchdet.export.batch import export
    from patchdet.export.config import ExportConfig

    manifest = export(ExportConfig(models=(str(tiny_checkpoint),), formats=("onnx",), out_dir=str(tmp_path / "out"),
                                   eval_dir=str(tiny_folder)))
    assert manifest[0]["status"] == "ok", manifest[0]["reason"]
    common = dict(data=str(tiny_folder), unseen=("truck",), thresholds=(0.0, 1.0))
    from_checkpoint = evaluate(EvalConfig(model=str(tiny_checkpoint), **common))
    from_artifact = evaluate(EvalConfig(model=manifest[0]["path"], **common))
    assert from_artifact["positive"] == "car" and from_artifact["negatives"] == ["bird", "cat"]
    for a, b in zip(from_checkpoint["thresholds"], from_artifact["thresholds"], strict=True):
        assert a["confusion"] == b["confusion"]
        assert a["unseen"] == pytest.approx(b["unseen"])
