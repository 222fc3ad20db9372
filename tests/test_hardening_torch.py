"""Issue 12's catalogue, the cases of the torch stages: export faults and exit codes, NaN models,
thresholds and counts that mean nothing, training and graft settings that ended in tracebacks."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from patchdet.cli import main  # noqa: E402
from patchdet.export.batch import export  # noqa: E402
from patchdet.export.config import ExportConfig  # noqa: E402
from patchdet.runtime.config import build_config  # noqa: E402
from patchdet.training.config import TrainConfig  # noqa: E402
from tests.export_helpers import make_checkpoint, make_image_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    return {
        "ckpt": make_checkpoint(tmp_path / "car.pt"),
        "eval": make_image_folder(tmp_path / "eval", per_class=4, seed=2),
        "out": tmp_path / "out",
    }


def _one_line_exit_2(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith(f"patchdet {argv[0]}: error: ")
    return err[-1]


# -- 4. export: workers die with their parent; one export per output folder -------------
def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc (Linux)")
def test_export_workers_die_with_a_killed_parent(workspace, tmp_path):
    models = [str(make_checkpoint(tmp_path / f"m{i}.pt", seed=i)) for i in range(6)]  # work left when killed
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from patchdet.cli import main; sys.exit(main())", "export", *models,
         "--workers", "2", "--threads", "1", "--out", str(workspace["out"]), "--eval", str(workspace["eval"])],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        for _ in range(2400):  # until both workers run (spawned interpreters importing torch take a while)
            workers = {p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()}
            if len(workers) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) >= 2, "the export ended before its workers could be seen"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for _ in range(600):  # poll up to a minute on a loaded machine; alone they go within about a second
            if not any(_alive(p) for p in workers):
                break
            time.sleep(0.1)
        survivors = [p for p in workers if _alive(p)]
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert survivors == []


def test_second_export_into_a_busy_folder_is_refused(workspace):
    from patchdet.export.batch import OutputFolderLock

    out = workspace["out"]
    out.mkdir()
    live_staging = out / ".staging-car-onnx-first"  # the first export's work in progress
    live_staging.mkdir()
    (out / "manifest.json").write_text("[]\n")
    cfg = ExportConfig(models=(str(workspace["ckpt"]),), formats=("onnx",), out_dir=str(out),
                       eval_dir=str(workspace["eval"]))
    with OutputFolderLock(out), pytest.raises(ValueError, match=f"in use by another export \\(pid {os.getpid()}\\)"):
        export(cfg)
    assert live_staging.is_dir() and (out / "manifest.json").read_text() == "[]\n"
    assert export(cfg)[0]["status"] == "ok"  # once the first is done, the folder is free


# -- 5. NaN models fail parity --------------------------------------------------------
def _nan_weights(path: Path) -> Path:
    payload = torch.load(path, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.dim() > 1)
    payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("broken", ["weights", "threshold"])
def test_non_finite_model_fails_parity(workspace, tmp_path, broken):
    if broken == "weights":
        ckpt = _nan_weights(make_checkpoint(tmp_path / "nan.pt"))
    else:
        ckpt = make_checkpoint(tmp_path / "nan.pt", threshold=float("nan"))
    entry = export(ExportConfig(models=(str(ckpt),), formats=("onnx",), out_dir=str(workspace["out"]),
                                eval_dir=str(workspace["eval"])))[0]
    assert entry["status"] == "failed" and "not finite" in entry["reason"]
    assert not (workspace["out"] / "nan.onnx").exists()  # only under failed/, never published


# -- 9. export of the user's bad input: one line, exit 2 --------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("case", ["missing", "malicious", "truncated", "too-few-calibration-images",
                                  "corrupt-calibration-images"])
def test_export_of_bad_input_is_one_line_exit_2(workspace, tmp_path, case, capsys):
    ckpt, extra = workspace["ckpt"], []
    if case == "missing":
        ckpt = tmp_path / "nope.pt"
    elif case == "malicious":
        ckpt = tmp_path / "evil.pt"
        ckpt.write_bytes(pickle.dumps(_Evil()))
    elif case == "truncated":
        data = workspace["ckpt"].read_bytes()
        ckpt = tmp_path / "cut.pt"
        ckpt.write_bytes(data[: len(data) // 2])
    elif case == "corrupt-calibration-images":  # three unreadable files are not "3 usable images"
        calib = tmp_path / "calib"
        calib.mkdir()
        for i in range(3):
            (calib / f"bad{i}.png").write_bytes(b"not an image")
        extra = ["--formats", "onnx-int8", "--calib", str(calib)]
    else:
        calib = tmp_path / "calib"
        calib.mkdir()
        for i in range(3):
            (calib / f"bad{i}.png").write_bytes(b"not an image")
        make_image_folder(tmp_path / "few", per_class=1, classes=("automobile",))
        (tmp_path / "few" / "automobile" / "000.png").replace(calib / "good.png")
        extra = ["--formats", "onnx-int8", "--calib", str(calib), "--calib-images", "4"]
    line = _one_line_exit_2(["export", str(ckpt), "--out", str(tmp_path / "out"), "--eval",
                             str(workspace["eval"]), *extra], capsys)
    expected = {"missing": "does not exist", "malicious": "cannot be read", "truncated": "cannot be read",
                "too-few-calibration-images": "1 readable image",
                "corrupt-calibration-images": "3 image file(s)"}[case]
    assert expected in line and "usable" not in line
    assert not (tmp_path / "pwned").exists()


# -- 5. thresholds and counts that mean nothing -----------------------------------------
@pytest.mark.parametrize(("overrides", "named"), [
    ({"threshold": math.nan}, "threshold"),
    ({"threshold": math.inf}, "threshold"),
    ({"threshold": -1.0}, "threshold"),
    ({"max_per_class": 0}, "max_per_class"),
    ({"max_per_class": -3}, "max_per_class"),
])
def test_train_settings_that_mean_nothing_are_refused(overrides, named):
    with pytest.raises(ValueError, match=named):
        build_config(TrainConfig, data="data", **overrides)


@pytest.mark.parametrize(("argv", "named"), [
    (["--classes", "automobile,automobile"], "two different classes"),
    (["--classes", "automobile,bird", "--epochs", "0"], "epochs 0"),
    (["--classes", "automobile,bird", "--batch-size", "0"], "batch size 0"),
    (["--classes", "automobile,bird", "--max-per-class", "0"], "max-per-class 0"),
    (["--classes", "automobile,bird", "--lr", "nan"], "learning rate nan"),
])
def test_graft_settings_that_mean_nothing_are_one_line_exit_2(workspace, tmp_path, argv, named, capsys):
    line = _one_line_exit_2(["graft", str(workspace["ckpt"]), "--data", str(workspace["eval"]),
                             "--out", str(tmp_path / "g"), *argv], capsys)
    assert named in line


@pytest.mark.parametrize(("argv", "named"), [
    (["--thresholds", "nan"], "thresholds nan"),
    (["--thresholds", "1,inf"], "thresholds 1.0,inf"),
    (["--batch-size", "0"], "batch size 0"),
])
def test_evaluate_settings_that_mean_nothing_are_one_line_exit_2(workspace, argv, named, capsys):
    line = _one_line_exit_2(["evaluate", str(workspace["ckpt"]), "--data", str(workspace["eval"]), *argv], capsys)
    assert named in line


# -- 8. resume from a checkpoint without training state ----------------------------------
def test_resume_from_a_weights_only_checkpoint_is_a_clear_error(tmp_path, tiny_folder):
    from patchdet.training.train import train

    cfg = TrainConfig(data=str(tiny_folder), positive="car", negatives=("bird", "cat"), arch="discnn1",
                      input_size=32, epochs=1, batch_size=16, out=str(tmp_path / "run"), tensorboard=False,
                      device="cpu", amp="off", channels_last=False)
    train(cfg)
    last = tmp_path / "run" / "last.pt"
    payload = torch.load(last, weights_only=True)
    del payload["optimizer"]
    torch.save(payload, last)
    with pytest.raises(ValueError, match="no optimizer state"):
        train(TrainConfig(**{**cfg.__dict__, "epochs": 2, "resume": True}))


def test_manifest_records_input_failures(workspace, tmp_path):
    entries = export(ExportConfig(models=(str(tmp_path / "nope.pt"),), formats=("onnx",),
                                  out_dir=str(workspace["out"]), eval_dir=str(workspace["eval"])))
    assert entries[0]["status"] == "failed" and entries[0]["cause"] == "input"
    assert json.loads((workspace["out"] / "manifest.json").read_text())[0]["cause"] == "input"
