"""Detection evaluation on a labelled frame set (``runtime.evaluation``, ``patchdet evaluate --labels``).

Synthetic frames and COCO files in tmp_path only: metrics against hand-computed
values with a fake detector, the CLI report, one-line errors for bad labels,
and the CLI path without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from patchdet.cli import main
from patchdet.runtime.evaluation import load_labelled_frames, score_detector
from tests.fixtures_onnx import white_square_frame, write_model
from tests.no_torch import BLOCK_TORCH

REPO = Path(__file__).resolve().parents[1]
FRAME_WH = (160, 96)
REPORT_KEYS = {"ap50", "recall", "precision", "false_alarms_per_frame", "empty_frame_detections", "frames", "boxes"}


def write_set(folder: Path, frames: list[np.ndarray], annotations: list[dict], car_free: tuple[int, ...] = (),
              categories: list[dict] | None = None) -> Path:
    """PNG frames (image ids 1..N) and ``set.json`` beside them; ``annotations`` as (image_id, xywh, iscrowd)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"f{i}.png"), frame)
        image = {"id": i, "file_name": f"f{i}.png", "width": frame.shape[1], "height": frame.shape[0],
                 "source": "videos/synthetic.mp4" if i <= 2 else "photos/x.png"}
        if i in car_free:
            image["car_free"] = True
        images.append(image)
    anns = [{"id": k, "image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"],
             "area": a["bbox"][2] * a["bbox"][3], "iscrowd": a.get("iscrowd", 0)} for k, a in enumerate(annotations, 1)]
    doc = {"images": images, "annotations": anns,
           "categories": categories if categories is not None else [{"id": 1, "name": "car"}]}
    path = folder / "set.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _coded_frame(code: int) -> np.ndarray:
    """A frame whose top-left pixel says which frame it is (for the fake detector)."""
    frame = np.zeros((FRAME_WH[1], FRAME_WH[0], 3), np.uint8)
    frame[0, 0] = code
    return frame


# Frame 1 (cars): G1 found by D1, G2 missed, D2 a false alarm, D3 on an ignored (crowd) car.
# Frame 2 (cars, only an ignored one): nothing detected.  Frame 3 (car-free): two detections.
ORACLE_ANNOTATIONS = [
    {"image_id": 1, "bbox": [10, 10, 30, 30]},                 # G1: 30 px wide (< 48)
    {"image_id": 1, "bbox": [60, 10, 60, 40]},                 # G2: 60 px wide (48-96)
    {"image_id": 1, "bbox": [130, 60, 20, 20], "iscrowd": 1},  # C1
    {"image_id": 2, "bbox": [5, 5, 20, 10], "iscrowd": 1},
]


def _fake_detector(fp_score: float):
    boxes = {
        1: ([[10, 10, 40, 40], [0, 60, 30, 90], [131, 61, 149, 79]], [0.9, fp_score, 0.7]),
        2: ([], []),
        3: ([[0, 0, 50, 50], [60, 0, 120, 50]], [0.5, 0.4]),
    }

    def detect(frame):
        xyxy, score = boxes[int(frame[0, 0, 0])]
        return np.asarray(xyxy, np.float32).reshape(-1, 4), np.asarray(score, np.float32)

    return detect


@pytest.fixture
def oracle_set(tmp_path):
    return load_labelled_frames(write_set(tmp_path / "set", [_coded_frame(i) for i in (1, 2, 3)],
                                          ORACLE_ANNOTATIONS, car_free=(3,)))


@pytest.mark.parametrize(
    "fp_score, ap50",
    [
        # PR points (recall, precision): (0.5, 1), (0.5, 0.5); COCO's 101 recall steps 0.00..0.50 have precision 1.
        (0.8, 51 / 101),
        # The false alarm ranks first: (0, 0), (0.5, 0.5) -> interpolated precision 0.5 up to recall 0.5.
        (0.95, 0.5 * 51 / 101),
    ],
)
def test_metrics_match_hand_computed_values(oracle_set, fp_score, ap50):
    report = score_detector(oracle_set, _fake_detector(fp_score))
    assert report["ap50"] == pytest.approx(ap50)
    assert report["recall"] == pytest.approx(0.5)  # G1 of G1, G2 (crowd boxes are not required)
    assert report["precision"] == pytest.approx(0.5)  # D1 of D1, D2 (D3 on a crowd box is ignored)
    assert report["false_alarms"] == 1
    assert report["false_alarms_per_frame"] == pytest.approx(0.5)  # 1 over the 2 frames with cars
    assert report["empty_frame_detections"] == 2
    assert (report["frames"], report["frames_with_cars"], report["car_free_frames"]) == (3, 2, 1)
    assert (report["boxes"], report["ignored_boxes"], report["found"], report["detections"]) == (2, 2, 1, 5)
    by_width = report["recall_by_width_px"]
    assert by_width["<48"] == {"boxes": 1, "found": 1, "recall": 1.0}
    assert by_width["48-96"] == {"boxes": 1, "found": 0, "recall": 0.0}
    assert by_width["96-160"]["boxes"] == by_width[">=160"]["boxes"] == 0
    assert report["fps"] > 0
    street = report["by_source"]["videos/synthetic.mp4"]
    assert street["frames"] == 2 and street["recall"] == pytest.approx(0.5)
    assert report["by_source"]["photos/*"]["empty_frame_detections"] == 2


def test_perfect_and_silent_detectors(oracle_set):
    truth = {1: [[10, 10, 40, 40], [60, 10, 120, 50]], 2: [], 3: []}

    def perfect(frame):
        boxes = np.asarray(truth[int(frame[0, 0, 0])], np.float32).reshape(-1, 4)
        return boxes, np.ones(len(boxes), np.float32)

    report = score_detector(oracle_set, perfect)
    assert (report["ap50"], report["recall"], report["precision"]) == (1.0, 1.0, 1.0)
    assert report["false_alarms_per_frame"] == 0 and report["empty_frame_detections"] == 0
    silent = score_detector(oracle_set, lambda frame: (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))
    assert silent["ap50"] == 0 and silent["recall"] == 0 and silent["precision"] is None


def test_a_box_at_iou_below_half_is_a_false_alarm_and_a_miss(tmp_path):
    labels = write_set(tmp_path / "s", [_coded_frame(1)], [{"image_id": 1, "bbox": [0, 0, 40, 40]}])
    # [20, 0, 60, 40] overlaps the car by 800 / 2400 = 1/3 < 0.5
    report = score_detector(load_labelled_frames(labels),
                            lambda f: (np.array([[20, 0, 60, 40]], np.float32), np.array([1.0], np.float32)))
    assert report["recall"] == 0 and report["precision"] == 0 and report["false_alarms"] == 1


# -- the command line --------------------------------------------------------------------------------------------


@pytest.fixture
def square_set(tmp_path):
    squares = [(40, 20, 80, 60), (96, 32, 144, 80)]
    frames = [white_square_frame(FRAME_WH, s) for s in squares] + [np.zeros((FRAME_WH[1], FRAME_WH[0], 3), np.uint8)]
    annotations = [{"image_id": i, "bbox": [x0, y0, x1 - x0, y1 - y0]} for i, (x0, y0, x1, y1) in enumerate(squares, 1)]
    return write_set(tmp_path / "squares", frames, annotations, car_free=(3,))


def test_cli_writes_the_report(tmp_path, square_set, capsys):
    model = write_model(tmp_path / "m.onnx", "modulus")
    out = tmp_path / "out" / "report.json"
    code = main(["evaluate", str(model), "--labels", str(square_set), "--json", str(out), "--tile", "32",
                 "--stride", "16", "--backend", "onnxruntime", "--threads", "1"])
    assert code == 0
    report = json.loads(out.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["frames"] == 3 and report["boxes"] == 2
    assert report["empty_frame_detections"] == 0  # the black car-free frame scores exactly 0
    assert 0 <= report["recall"] <= 1 and 0 <= report["ap50"] <= 1
    assert report["detector"]["tiling"]["tile_wh"] == [32, 32] and report["detector"]["backend"] == "onnxruntime"
    assert "AP50" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]


def _break_box(doc):
    doc["annotations"][0]["bbox"] = [150, 10, 20, 20]  # 150 + 20 > 160


def _no_car(doc):
    doc["categories"] = [{"id": 1, "name": "truck"}]


def _not_coco(doc):
    doc.clear()
    doc["frames"] = []


def _unknown_image(doc):
    doc["annotations"][0]["image_id"] = 99


@pytest.mark.parametrize(
    "damage, message",
    [
        (_break_box, "outside its 160x96 frame"),
        (_no_car, "no 'car' category"),
        (_not_coco, "is not a COCO detection file"),
        (_unknown_image, "image_id 99"),
        ("missing_image", "does not exist"),
        ("invalid_json", "is not a COCO detection file"),
    ],
)
def test_bad_labels_are_one_line_errors(tmp_path, square_set, capsys, damage, message):
    model = write_model(tmp_path / "m.onnx", "modulus")
    if damage == "missing_image":
        (square_set.parent / "f2.png").unlink()
    elif damage == "invalid_json":
        square_set.write_text("{not json", encoding="utf-8")
    else:
        doc = json.loads(square_set.read_text())
        damage(doc)
        square_set.write_text(json.dumps(doc), encoding="utf-8")
    out = tmp_path / "out"
    code = main(["evaluate", str(model), "--labels", str(square_set), "--json", str(out / "r.json"), "--tile", "32"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("patchdet evaluate: error:") and message in err
    assert not out.exists() or list(out.iterdir()) == []


def test_labels_and_data_are_exclusive(tmp_path, square_set, capsys):
    assert main(["evaluate", "--labels", str(square_set), "--data", str(tmp_path)]) == 2
    assert "exclusive" in capsys.readouterr().err


CHILD = BLOCK_TORCH + textwrap.dedent(
    r"""
    import json
    from patchdet.cli import main
    code = main(["-q", "evaluate", sys.argv[1], "--labels", sys.argv[2], "--json", sys.argv[3], "--tile", "32",
                 "--threads", "1"])
    print(json.dumps({"code": code, "torch_loaded": any(m.split(".")[0] == "torch" for m in sys.modules)}))
    """
)


def test_cli_detection_evaluation_runs_without_torch(tmp_path, square_set):
    model = write_model(tmp_path / "m.onnx", "modulus")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(square_set), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "torch_loaded": False}
    assert REPORT_KEYS <= set(json.loads(out.read_text()))
