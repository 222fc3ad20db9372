"""What a run writes for each kind of source: photos, files, streams; the overlay and the heatmap legend."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from patchdet.cli import main
from patchdet.runtime.detections import Detections
from patchdet.runtime.detector import FrameResult
from patchdet.runtime.drawing import annotate, heatmap_overlay
from patchdet.runtime.run import DetectConfig, detect, video_timing
from patchdet.runtime.sinks import VideoSink
from patchdet.runtime.streams import Frame
from tests.fixtures_onnx import write_model
from tests.runtime_media import moving_square_frames, read_video, write_video
from tests.test_stream_fault import MjpegServer, _loopback_available


@pytest.fixture
def model(tmp_path):
    return write_model(tmp_path / "models" / "bright.onnx", "modulus")


@pytest.fixture
def photos(tmp_path):
    """Two photos of different sizes, each with a white square the bright model finds."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, (w, h) in (("a_wide.png", (160, 96)), ("b_tall.png", (96, 128))):
        image = np.full((h, w, 3), 40, np.uint8)
        image[16:48, 16:48] = 255
        cv2.imwrite(str(folder / name), image)
    return folder


def _cfg(model, source, **changes) -> DetectConfig:
    base = dict(model=str(model), source=str(source), backend="onnxruntime", threads=1, tile=32, stride=16,
                log_every_s=0)
    return DetectConfig(**{**base, **changes})


def _empty_record(index: int, timestamp: float, frame_wh=(64, 48)) -> FrameResult:
    w, h = frame_wh
    image = np.full((h, w, 3), 90, np.uint8)
    return FrameResult(Detections.empty(), np.zeros(0, np.float32), np.zeros((0, 4), np.int32), np.zeros(0, bool),
                       frame_wh=(w, h), frame=Frame(index, image, timestamp, 1.0), latency_ms={})


def test_photos_give_one_annotated_image_each_with_their_own_name_and_size(tmp_path, model, photos):
    out = tmp_path / "annotated"
    summary = detect(_cfg(model, photos, save_images=str(out), jsonl=str(tmp_path / "d.jsonl"),
                          crops=str(tmp_path / "crops")))
    assert summary["frames"] == 2 and summary["outputs"]["images"] == str(out)
    for name in ("a_wide.png", "b_tall.png"):
        source, written = cv2.imread(str(photos / name)), cv2.imread(str(out / name))
        assert written is not None and written.shape == source.shape
        assert not np.array_equal(written, source)  # boxes are drawn
        assert np.array_equal(written[-1, -1], source[-1, -1])  # and no fps caption or legend corner
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == [str(photos / "a_wide.png"), str(photos / "b_tall.png")]
    crops = sorted(p.name for p in (tmp_path / "crops").glob("*.jpg"))
    assert crops and all(c.startswith(("a_wide_", "b_tall_")) for c in crops)


def test_photos_get_no_fps_caption(tmp_path, model, photos):
    out = tmp_path / "annotated"
    detect(_cfg(model, photos, save_images=str(out), threshold=1e9))  # nothing detected: nothing drawn at all
    for name in ("a_wide.png", "b_tall.png"):
        assert np.array_equal(cv2.imread(str(out / name)), cv2.imread(str(photos / name)))


def test_save_images_refuses_to_overwrite_the_source_photos(model, photos):
    with pytest.raises(OSError, match="would overwrite the source photo"):
        detect(_cfg(model, photos, save_images=str(photos)))
    assert cv2.imread(str(photos / "a_wide.png"))[20, 20].tolist() == [255, 255, 255]


def test_save_video_of_photos_is_refused_with_a_hint(tmp_path, model, photos, capsys):
    argv = ["detect", "--model", str(model), "--source", str(photos), "--save-video", str(tmp_path / "v.mp4")]
    assert main(argv) == 2
    assert "use --save-images DIR" in capsys.readouterr().err
    assert not (tmp_path / "v.mp4").exists()


def test_video_of_a_file_read_with_vid_stride_keeps_its_real_speed(tmp_path, model):
    video = write_video(tmp_path / "clip.avi", moving_square_frames(10), fps=10.0)
    out = tmp_path / "out.avi"
    detect(_cfg(model, video, save_video=str(out), vid_stride=2))
    cap = cv2.VideoCapture(str(out))
    try:
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    finally:
        cap.release()
    assert len(read_video(out)) == 5


def test_live_video_is_placed_by_timestamps_so_it_plays_at_real_speed(tmp_path):
    sink = VideoSink(tmp_path / "live.avi", fps=25.0, timed=True)
    for i in range(5):  # processed at 5 frames/s from a nominal 25 fps stream
        sink.write(_empty_record(i, 1_700_000_000.0 + 0.2 * i), None)
    sink.close()
    frames = read_video(tmp_path / "live.avi")
    assert len(frames) == 21  # 0.8 s of stream at 25 fps, first and last frame included
    assert sink.records == 5


def test_a_reconnect_gap_is_shortened_in_the_live_video(tmp_path):
    sink = VideoSink(tmp_path / "gap.avi", fps=10.0, timed=True)
    sink.write(_empty_record(0, 100.0), None)
    sink.write(_empty_record(1, 160.0), None)  # a minute without frames
    sink.close()
    assert sink.frames == 1 + int(VideoSink.MAX_GAP_S * 10)


def test_video_timing_per_source_kind():
    class Source:
        def __init__(self, live, fps):
            self.live, self.fps = live, fps

    assert video_timing(Source(False, 30.0), vid_stride=3) == (10.0, False)
    assert video_timing(Source(True, 25.0), vid_stride=1) == (25.0, True)
    assert video_timing(Source(False, None)) == (None, False)


def test_caption_sits_on_a_dark_box_readable_over_a_white_sky():
    sky = np.full((120, 200, 3), 255, np.uint8)
    drawn = annotate(sky, Detections.empty(), caption="12.3 fps")
    assert drawn[1, 1].max() < 64  # backing box
    corner = drawn[:20, :60]
    assert (corner > 200).any() and (corner < 64).any()  # white text on it


def test_heatmap_has_a_colour_scale():
    image = np.full((180, 320, 3), 128, np.uint8)
    heat = np.zeros((180, 320), np.float32)
    heat[60:120, 60:120] = 3.0
    blended = heatmap_overlay(image, heat, threshold=1.0)
    right = blended[:, -12:-4].reshape(-1, 3).astype(int)
    is_red = (right[:, 2] > 200) & (right[:, 0] < 80)
    is_blue = (right[:, 0] > 200) & (right[:, 2] < 80)
    assert is_red.any() and is_blue.any()  # the JET bar from 0 (blue) to the top score (red)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not _loopback_available(), reason="needs a loopback interface to serve the stream")
def test_a_live_stream_reports_the_rate_it_really_sends(tmp_path, model):
    server = MjpegServer(frame_interval_s=1 / 12)  # 12 frames/s; OpenCV announces such streams as 25 fps
    server.start()
    try:
        summary = detect(_cfg(model, server.url, max_frames=24, tile=32, stride=32))
    finally:
        server.stop()
    # Bounded above only: a busy machine can deliver fewer frames, never more than were sent.
    assert 0 < summary["source_fps"] < 18
