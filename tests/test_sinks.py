"""Sinks: playable video only under its final name, complete JSON Lines, crops, several at once."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from patchdet.runtime.detections import Detections
from patchdet.runtime.detector import FrameResult
from patchdet.runtime.sinks import (
    CropSink,
    DisplaySink,
    JsonlSink,
    SinkSet,
    VideoSink,
    annotate,
    heatmap_overlay,
    partial_path,
)
from patchdet.runtime.streams import Frame
from tests.runtime_media import read_video


def _record(index: int, frame_wh=(96, 64), boxes=((10, 8, 42, 40),), scores=(1.5,)) -> FrameResult:
    w, h = frame_wh
    image = np.full((h, w, 3), 40, np.uint8)
    image[8:40, 10:42] = 200
    dets = Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.zeros(len(scores), np.int64), np.arange(len(scores)))
    heat = np.zeros((h, w), np.float32)
    heat[8:40, 10:42] = 2.0
    n = len(scores)
    return FrameResult(dets, dets.score, dets.xyxy.astype(np.int32), np.ones(n, bool), dets.class_id, (w, h),
                       heatmap=heat, frame=Frame(index, image, index / 10, 1.0), latency_ms={"infer": 2.5})


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_video_appears_only_when_closed_and_plays(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    sink = VideoSink(path, fps=10)
    for i in range(5):
        sink.write(_record(i), None)
    assert not path.exists() and partial_path(path).exists()
    sink.close()
    sink.close()  # idempotent
    assert path.exists() and not partial_path(path).exists()
    frames = read_video(path)
    assert len(frames) == 5 and frames[0].shape == (64, 96, 3)


def test_video_without_frames_leaves_no_file(tmp_path):
    sink = VideoSink(tmp_path / "empty.mp4")
    sink.close()
    assert list(tmp_path.iterdir()) == []


def test_video_resizes_frames_of_another_size(tmp_path):
    sink = VideoSink(tmp_path / "mixed.avi")
    sink.write(_record(0), None)
    sink.write(_record(1, frame_wh=(50, 40), boxes=(), scores=()), None)
    sink.close()
    assert [f.shape for f in read_video(tmp_path / "mixed.avi")] == [(64, 96, 3)] * 2


def test_video_suffix_is_checked(tmp_path):
    with pytest.raises(ValueError, match="unsupported suffix '.gif'"):
        VideoSink(tmp_path / "out.gif")


def test_jsonl_records(tmp_path):
    sink = JsonlSink(tmp_path / "d.jsonl", class_names=("car",))
    sink.write(_record(0), None)
    sink.write(_record(1, boxes=np.zeros((0, 4)), scores=()), None)
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert lines[0]["frame"] == 0 and lines[0]["boxes"] == [[10.0, 8.0, 42.0, 40.0]]
    assert lines[0]["scores"] == [1.5] and lines[0]["class_ids"] == [0] and lines[0]["classes"] == ["car"]
    assert lines[0]["latency_ms"] == {"infer": 2.5} and lines[1]["timestamp"] == pytest.approx(0.1)
    assert lines[1]["boxes"] == [] and lines[1]["scores"] == []


def test_crops_have_the_box_size(tmp_path):
    sink = CropSink(tmp_path / "crops", class_names=("car",))
    sink.write(_record(3, boxes=((10, 8, 42, 40), (90, 60, 200, 200)), scores=(1.5, 1.2)), None)
    files = sorted((tmp_path / "crops").iterdir())
    assert [f.name for f in files] == ["f000003_00_car_1.50.jpg", "f000003_01_car_1.20.jpg"]
    assert cv2.imread(str(files[0])).shape == (32, 32, 3)
    assert cv2.imread(str(files[1])).shape == (4, 6, 3)  # clipped to the frame


def test_heatmap_overlay_and_annotation_change_pixels():
    record = _record(0)
    overlay = heatmap_overlay(record.frame.image, record.heatmap, threshold=1.0)
    assert overlay.shape == record.frame.image.shape and overlay.dtype == np.uint8
    assert not np.array_equal(overlay[20, 20], record.frame.image[20, 20])
    small = heatmap_overlay(record.frame.image, np.ones((2, 3), np.float32))  # any map resolution
    assert small.shape == record.frame.image.shape
    drawn = annotate(record.frame.image, record.detections, ("car",))
    assert not np.array_equal(drawn[39, 10:42], record.frame.image[39, 10:42])  # bottom edge of the box
    assert np.array_equal(drawn[63, 95], record.frame.image[63, 95])


class _Failing:
    wants_annotated = False

    def write(self, record, annotated):
        pass

    def close(self):
        raise OSError("disk full")


def test_sink_set_closes_everything_even_when_one_fails(tmp_path):
    video = VideoSink(tmp_path / "v.mp4")
    jsonl = JsonlSink(tmp_path / "d.jsonl")
    sinks = SinkSet([video, _Failing(), jsonl], ("car",), heatmap=True, threshold=1.0)
    sinks.write(_record(0))
    with pytest.raises(OSError, match="disk full"):
        sinks.close()
    assert (tmp_path / "v.mp4").exists() and (tmp_path / "d.jsonl").read_text().count("\n") == 1
    sinks.close()  # idempotent, nothing raised twice


def _has_gui() -> bool:
    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        return True
    except cv2.error:
        return False


@pytest.mark.skipif(_has_gui(), reason="this OpenCV has a GUI: the headless error path does not apply")
def test_show_on_headless_opencv_is_a_clear_error():
    with pytest.raises(OSError, match="--show needs OpenCV with GUI support"):
        DisplaySink()
