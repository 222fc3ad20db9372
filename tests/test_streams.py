"""Frame sources: parsing, files without drops, corrupt frames, newest-frame live reading, reconnects."""

from __future__ import annotations

import socket
import threading

import cv2
import numpy as np
import pytest

from patchdet.runtime import capture
from patchdet.runtime.grabber import LiveSource, describe_camera_failure
from patchdet.runtime.streams import SourceSpec, StreamOptions, open_source, parse_source
from tests.runtime_media import corrupt_mjpeg_frame, moving_square_frames, write_video


@pytest.fixture
def video(tmp_path):
    return write_video(tmp_path / "clip.avi", moving_square_frames(12))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- parsing --------------------------------------------------------------------
def test_parse_source_kinds(tmp_path, video):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b.jpg"), np.zeros((8, 8, 3), np.uint8))
    assert parse_source("0") == SourceSpec("camera", 0)
    assert parse_source("rtsp://cam.local/stream").kind == "url"
    assert parse_source("http://127.0.0.1:8080/x.mjpg").kind == "url"
    assert parse_source(str(video)).kind == "video"
    assert parse_source(str(image)).kind == "image"
    folder = parse_source(str(tmp_path))
    assert folder.kind == "images" and [p.name for p in folder.paths] == ["a.png", "b.jpg"]
    pattern = parse_source(str(tmp_path / "*.jpg"))
    assert pattern.kind == "images" and [p.name for p in pattern.paths] == ["b.jpg"]


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("missing.mp4", OSError, "no such file"),
        ("ftp://host/x", ValueError, "scheme 'ftp' is not supported"),
        ("", ValueError, "source is empty"),
    ],
)
def test_parse_source_errors(tmp_path, text, error, message):
    with pytest.raises(error, match=message):
        parse_source(str(tmp_path / text) if text.endswith(".mp4") else text)


def test_empty_folder_and_glob_say_why(tmp_path):
    with pytest.raises(OSError, match="has no images"):
        parse_source(str(tmp_path))
    with pytest.raises(OSError, match="no image files match"):
        parse_source(str(tmp_path / "*.png"))


def test_unopenable_sources_name_the_reason(tmp_path):
    port = _free_port()
    with pytest.raises(OSError, match=f"connection refused by 127.0.0.1:{port}"):
        open_source(f"http://127.0.0.1:{port}/stream.mjpg", StreamOptions(open_timeout_s=2, read_timeout_s=2))
    garbage = tmp_path / "not_a_video.mp4"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(OSError, match="not a video"):
        open_source(str(garbage))


@pytest.mark.skipif(not __import__("pathlib").Path("/dev").is_dir(), reason="needs a /dev folder to check cameras")
def test_missing_camera_is_named():
    assert "no camera at index 97" in describe_camera_failure(97)


def test_stream_options_validation():
    with pytest.raises(ValueError, match="vid_stride 0 is invalid"):
        StreamOptions(vid_stride=0)
    with pytest.raises(ValueError, match="max_fps -1 is invalid"):
        StreamOptions(max_fps=-1)


# -- files ----------------------------------------------------------------------
def test_video_file_reads_every_frame_in_order(video):
    with open_source(str(video)) as source:
        assert not source.live and source.fps == pytest.approx(10.0)
        frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert frames[3].timestamp == pytest.approx(0.3)
    assert all(f.image.shape == (96, 160, 3) and f.image.dtype == np.uint8 for f in frames)
    assert source.counters.dropped_frames == 0 and source.counters.corrupt_frames == 0


def test_vid_stride_skips_frames(video):
    with open_source(str(video), StreamOptions(vid_stride=5)) as source:
        assert [f.index for f in source] == [0, 5, 10]


def test_corrupt_frame_is_skipped_and_counted(video):
    corrupt_mjpeg_frame(video, 5)
    with open_source(str(video)) as source:
        indices = [f.index for f in source]
    assert 5 not in indices and len(indices) == 11
    assert source.counters.corrupt_frames == 1


def test_close_is_idempotent_and_stops_iteration(video):
    source = open_source(str(video))
    next(source)
    source.close()
    source.close()
    assert list(source) == []


def test_images_skip_unreadable_files(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((10, 12, 3), i, np.uint8))
    (tmp_path / "1b.jpg").write_bytes(b"not a jpeg")
    with open_source(str(tmp_path)) as source:
        frames = list(source)
    assert [f.name.rsplit("/", 1)[-1] for f in frames] == ["0.png", "1.png", "2.png"]
    assert source.counters.corrupt_frames == 1


# -- live sources with a scripted capture ----------------------------------------
class ScriptedCapture:
    """A fake cv2.VideoCapture: hands out ``count`` frames, then either fails (stream lost) or blocks."""

    def __init__(self, count: int, start: int, then: str, done: threading.Event) -> None:
        self.count, self.next_value, self.then, self.done = count, start, then, done
        self.released = threading.Event()

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return True

    def get(self, prop):
        return 0.0

    def read(self):
        if self.count == 0:
            self.done.set()
            if self.then == "fail":
                return False, None
            self.released.wait(0.05)  # a camera waiting for its next frame, then timing out
            return False, None
        self.count -= 1
        frame = np.full((24, 32, 3), self.next_value % 256, np.uint8)
        self.next_value += 1
        return True, frame

    def release(self):
        self.released.set()


def test_live_source_keeps_only_the_newest_frame(monkeypatch):
    done = threading.Event()
    monkeypatch.setattr(capture, "open_capture", lambda spec, options: ScriptedCapture(50, 0, "block", done))
    with LiveSource(SourceSpec("url", "http://fake/stream"), StreamOptions()) as source:
        assert done.wait(10)
        frame = next(source)
        assert frame.index == 49 and int(frame.image[0, 0, 0]) == 49
        assert source.counters.dropped_frames == 49


def test_live_source_reconnects_after_loss(monkeypatch):
    done_first, done_second = threading.Event(), threading.Event()
    opens = []

    def opener(spec, options):
        opens.append(len(opens))
        if len(opens) == 1:
            return ScriptedCapture(3, 0, "fail", done_first)
        if len(opens) == 3:
            return ScriptedCapture(3, 100, "block", done_second)
        return None  # still down: back-off doubles

    monkeypatch.setattr(capture, "open_capture", opener)
    options = StreamOptions(reconnect_initial_s=0.01, reconnect_max_s=0.05)
    with LiveSource(SourceSpec("url", "http://fake/stream"), options) as source:
        values = []
        while len(values) < 6 and not (done_second.is_set() and values and values[-1] == 102):
            values.append(int(next(source).image[0, 0, 0]))
        assert done_second.wait(10)
    assert source.counters.reconnects == 1
    assert len(source.counters.gaps) == 1 and source.counters.gaps[0]["seconds"] >= 0
    assert values[-1] == 102 and values == sorted(values)
    assert len(opens) >= 3


def test_live_source_gives_up_after_reconnect_timeout(monkeypatch):
    done = threading.Event()
    calls = []

    def opener(spec, options):
        calls.append(1)
        return ScriptedCapture(2, 0, "fail", done) if len(calls) == 1 else None

    monkeypatch.setattr(capture, "open_capture", opener)
    options = StreamOptions(reconnect_initial_s=0.01, reconnect_max_s=0.02, reconnect_timeout_s=0.1)
    with LiveSource(SourceSpec("url", "http://fake/stream"), options) as source:
        frames = list(source)  # ends instead of hanging
    assert 1 <= len(frames) <= 2
    assert source.counters.reconnects == 0 and len(source.counters.gaps) == 1


def test_file_played_live_ends_at_its_end(video):
    with open_source(str(video), StreamOptions(drop_frames=True)) as source:
        assert source.live
        indices = [f.index for f in source]
    assert indices == sorted(indices) and indices[-1] <= 11
    assert len(indices) + source.counters.dropped_frames == 12


def test_max_fps_slows_a_file_without_dropping(video):
    with open_source(str(video), StreamOptions(max_fps=500.0)) as source:
        assert [f.index for f in source] == list(range(12))
