"""The fault and bad-input catalogue of issue 12: each case once failed (data lost, a file clobbered, a
silent wrong result or a traceback) and must now end cleanly.

Stage-specific cases that need torch live in ``tests/test_hardening_torch.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchdet.runtime.atomic import atomic_write_json
from patchdet.runtime.run import DetectConfig, detect
from tests.fixtures_onnx import write_model
from tests.runtime_media import detect_cfg, moving_square_frames, read_video, write_video

REPO = Path(__file__).resolve().parents[1]


def _patchdet(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from patchdet.cli import main; sys.exit(main())",
                             *args], cwd=kwargs.pop("cwd", REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


# -- 1. SIGTERM / SIGHUP end a run like Ctrl-C ------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_termination_signal_keeps_a_playable_video_and_the_summary(tmp_path, model, signum):
    if signal.getsignal(signum) is signal.SIG_IGN:  # inherited by the child, which then keeps ignoring it
        pytest.skip(f"{signum.name} is ignored in this process (started under nohup?)")
    long_video = write_video(tmp_path / "long.avi", moving_square_frames(600))
    out = tmp_path / "out"
    proc = _patchdet("detect", "--model", str(model), "--source", str(long_video), "--backend", "onnxruntime",
                     "--tile", "32", "--stride", "16", "--max-fps", "40", "--save-video", str(out / "a.mp4"),
                     "--jsonl", str(out / "a.jsonl"), "--summary", str(out / "a.json"))
    try:
        jsonl = out / "a.jsonl"
        for _ in range(600):  # wait (up to a minute) until frames are being written, then stop the run
            if jsonl.is_file() and len(jsonl.read_text().splitlines()) >= 5:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    summary = json.loads((out / "a.json").read_text())
    assert summary["interrupted"] is True and 5 <= summary["frames"] < 600
    assert not (out / "a.partial.mp4").exists()
    assert len(read_video(out / "a.mp4")) == summary["frames"]
    assert len(jsonl.read_text().splitlines()) == summary["frames"]


# -- 2. writes never replace devices, symlinks, folders or pipes --------------------
def _special_files(tmp_path: Path) -> dict[str, Path]:
    target = tmp_path / "target.json"
    target.write_text("keep me\n")
    (tmp_path / "link.json").symlink_to(target)
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "folder.json").mkdir()
    files = {"symlink": tmp_path / "link.json", "fifo": tmp_path / "pipe.json", "folder": tmp_path / "folder.json"}
    if os.geteuid() == 0:  # the kernel's "full" device, as in the report; only root can make device nodes
        os.mknod(tmp_path / "full", 0o666 | 0o020000, os.makedev(1, 7))
        files["device"] = tmp_path / "full"
    return files


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder", "device"])
def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path, kind):
    files = _special_files(tmp_path)
    if kind not in files:
        pytest.skip("making a device node needs root")
    path = files[kind]
    before = os.lstat(path)
    with pytest.raises(OSError, match="not a regular file"):
        atomic_write_json(path, {"a": 1})
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert (tmp_path / "target.json").read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.parametrize("option", ["summary", "save_video"])
@pytest.mark.parametrize("kind", ["symlink", "device"])
def test_detect_refuses_special_outputs_before_writing_anything(tmp_path, model, video, option, kind):
    files = _special_files(tmp_path)
    if kind not in files:
        pytest.skip("making a device node needs root")
    path = files[kind]
    if option == "save_video":
        path = path.rename(path.with_suffix(".mp4"))
    listing, before = sorted(p.name for p in tmp_path.iterdir()), os.lstat(path)
    with pytest.raises(OSError, match="not a regular file"):
        detect(detect_cfg(model, video, **{option: str(path)}))
    assert (os.lstat(path).st_mode, os.lstat(path).st_ino) == (before.st_mode, before.st_ino)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no .config.yaml beside it


@pytest.mark.parametrize("kind", ["symlink", "device"])
def test_calibrate_refuses_a_special_output(tmp_path, model, video, kind):
    from patchdet.runtime.calibrate import CalibrateConfig, calibrate

    files = _special_files(tmp_path)
    if kind not in files:
        pytest.skip("making a device node needs root")
    before = os.lstat(files[kind])
    with pytest.raises(OSError, match="not a regular file"):
        calibrate(CalibrateConfig(model=str(model), background=str(video), output=str(files[kind]), tile=32))
    assert (os.lstat(files[kind]).st_mode, os.lstat(files[kind]).st_ino) == (before.st_mode, before.st_ino)
    assert (tmp_path / "target.json").read_text() == "keep me\n"


def test_jsonl_to_a_pipe_gets_no_side_file(tmp_path, model, video):
    from patchdet.runtime.run import config_path_for

    os.mkfifo(tmp_path / "stream.jsonl")
    assert config_path_for(detect_cfg(model, video, jsonl=str(tmp_path / "stream.jsonl"))) is None
    cfg = detect_cfg(model, video, jsonl=str(tmp_path / "stream.jsonl"), summary=str(tmp_path / "s.json"))
    assert config_path_for(cfg) == tmp_path / "s.config.yaml"


# -- 3. names from a card never escape their folder --------------------------------
@pytest.mark.parametrize(("name", "expected"), [
    ("x/../../ESCAPED", "x_.._.._ESCAPED"), ("../up", "up"), ("..", "unnamed"), ("/etc/passwd", "etc_passwd"),
    ("a\\b", "a_b"), ("car", "car"), ("", "unnamed"), ("nul\x00byte", "nul_byte"),
])
def test_safe_file_stem(name, expected):
    from patchdet.runtime.atomic import safe_file_stem

    assert safe_file_stem(name) == expected


def test_crop_names_from_the_card_stay_in_the_crops_folder(tmp_path, video):
    model = write_model(tmp_path / "models" / "evil.onnx", "modulus", class_names=("x/../../ESCAPED",),
                        positive_class="x/../../ESCAPED")
    crops = tmp_path / "deep" / "crops"
    summary = detect(detect_cfg(model, video, crops=str(crops), max_frames=2))
    assert summary["detections"] > 0
    written = sorted(crops.iterdir())
    assert any("ESCAPED" in p.name for p in written)
    assert all(p.parent == crops for p in written)
    assert not any("ESCAPED" in p.name for p in tmp_path.rglob("*") if p.parent != crops)


# -- 5. thresholds and scores that mean nothing are refused -------------------------
@pytest.mark.parametrize("threshold", [-1.0, -0.5])
def test_negative_threshold_on_a_modulus_head_is_refused(tmp_path, model, video, threshold):
    with pytest.raises(ValueError, match="threshold"):
        detect(detect_cfg(model, video, threshold=threshold, max_frames=1))


# -- 8. configs built from Python are checked like files ----------------------------
@pytest.mark.parametrize(("key", "value"), [("log_every_s", None), ("log_every_s", "5"), ("queue_size", None),
                                            ("log_every_s", float("nan")), ("queue_size", 2.5)])
def test_detect_config_from_python_is_a_value_error(key, value):
    with pytest.raises(ValueError, match=key.replace("_", "[_-]")):
        DetectConfig(**{key: value})


# -- 6. a card that does not match its model ----------------------------------------
@pytest.mark.parametrize(("changes", "field"), [
    ({"input_wh": (64, 64)}, "input_wh"),
    ({"mean": None}, "mean"),
    ({"std": (0.5, 0.5)}, "std"),
])
def test_card_that_disagrees_with_the_model_names_the_field(tmp_path, video, changes, field):
    from patchdet.runtime.card import read_artifact_card

    model = write_model(tmp_path / "m.onnx", "modulus")
    card_path = tmp_path / "other.card.json"
    card_path.write_text(json.dumps({**json.loads(read_artifact_card(model).to_json()), **changes}))
    with pytest.raises(ValueError, match=field):
        detect(detect_cfg(model, video, card=str(card_path), max_frames=1))


@pytest.mark.parametrize("sidecar", [True, False], ids=["card-file", "embedded-card"])
def test_model_whose_own_card_disagrees_with_its_graph_is_refused(tmp_path, video, sidecar):
    model = write_model(tmp_path / "m.onnx", "modulus", card=sidecar, input_wh=(64, 64))
    with pytest.raises(ValueError, match="input_wh 64x64 does not match"):
        detect(detect_cfg(model, video, max_frames=1))


def test_cli_card_mismatch_is_one_line_exit_2(tmp_path, video):
    from patchdet.runtime.card import read_artifact_card

    model = write_model(tmp_path / "m.onnx", "modulus")
    card_path = tmp_path / "other.card.json"
    card_path.write_text(json.dumps({**json.loads(read_artifact_card(model).to_json()), "input_wh": [64, 64]}))
    proc = _patchdet("detect", "--model", str(model), "--card", str(card_path), "--source", str(video),
                     "--max-frames", "1")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in stderr
    assert "input_wh" in stderr.strip().splitlines()[-1]


# -- 9. the missing-dependency line names the package and the extra -----------------
def test_missing_backend_names_the_package_and_extra(tmp_path, model, video, monkeypatch, capsys):
    import importlib.util

    from patchdet.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "openvino" else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "openvino", None)
    code = main(["detect", "--model", str(model), "--source", str(video), "--backend", "openvino",
                 "--max-frames", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "None" not in err and "openvino" in err and "patchdet[openvino]" in err


def test_check_replaceable_accepts_absent_and_regular_files(tmp_path):
    from patchdet.runtime.atomic import check_replaceable

    assert check_replaceable(tmp_path / "new.json") == tmp_path / "new.json"
    (tmp_path / "old.json").write_text("{}")
    assert check_replaceable(tmp_path / "old.json") == tmp_path / "old.json"
