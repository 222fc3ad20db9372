"""Live statistics: frame rate window, latency percentiles in bounded buffers, the summary."""

from __future__ import annotations

import numpy as np
import pytest

from patchdet.runtime.stats import STAGES, FpsMonitor, LatencyTracker, RunStats


def test_fps_from_timestamps():
    monitor = FpsMonitor(window=5)
    assert monitor.fps == 0.0
    for i in range(20):
        monitor.tick(now=i * 0.1)  # 10 frames per second, only the last 5 stamps kept
    assert monitor.fps == pytest.approx(10.0)
    monitor.reset()
    assert monitor.fps == 0.0


def test_fps_window_must_hold_two_frames():
    with pytest.raises(ValueError, match="fps window 1 is invalid"):
        FpsMonitor(window=1)


def test_latency_median_and_p90_match_numpy():
    tracker = LatencyTracker(window=100)
    values = np.arange(1, 51, dtype=np.float32)
    for v in values:
        tracker.add("infer", float(v))
    summary = tracker.summary("infer")
    assert summary["median"] == pytest.approx(np.percentile(values, 50), abs=1e-3)
    assert summary["p90"] == pytest.approx(np.percentile(values, 90), abs=1e-3)
    assert summary["mean"] == pytest.approx(25.5) and summary["count"] == 50
    assert tracker.summary("write") == {"median": 0.0, "p90": 0.0, "mean": 0.0, "count": 0}


def test_latency_buffer_is_bounded_and_keeps_the_latest():
    tracker = LatencyTracker(window=4)
    before = tracker._buffers["decode"].nbytes
    for v in range(10_000):
        tracker.add("decode", float(v))
    assert tracker._buffers["decode"].nbytes == before
    assert sorted(tracker.samples("decode").tolist()) == [9996.0, 9997.0, 9998.0, 9999.0]
    assert tracker.summary("decode")["mean"] == pytest.approx(4999.5)  # the mean covers the whole run


def test_unknown_stage_is_named():
    with pytest.raises(KeyError, match="unknown stage 'paint'"):
        LatencyTracker().add("paint", 1.0)


def test_run_summary_has_the_documented_keys():
    stats = RunStats()
    stats.start()
    for i in range(3):
        stats.frame_done(detections=i, latency_ms={stage: 1.0 + i for stage in STAGES})
    stats.stop()
    summary = stats.summary(backend="onnxruntime", dropped_frames=0)
    assert summary["frames"] == 3 and summary["detections"] == 3 and summary["frames_with_detections"] == 2
    assert set(summary["latency_ms"]) == set(STAGES)
    assert set(summary["latency_ms"]["infer"]) >= {"median", "p90"}
    assert summary["latency_ms"]["infer"]["median"] == pytest.approx(2.0)
    assert summary["backend"] == "onnxruntime" and summary["seconds"] >= 0 and summary["fps"] >= 0
    assert "frames 3" in stats.log_line()


def test_fps_counts_from_the_first_inference_so_a_draining_writer_does_not_inflate_it():
    # inference starts at 1 s; the writer lags and finishes 4 frames at 5.0-5.3 s: 4 frames in 4.3 s, not 3 in 0.3 s
    stats = RunStats()
    stats.start(now=0.0)
    stats.inference_started(now=1.0)
    for t in (5.0, 5.1, 5.2, 5.3):
        stats.frame_done(0, {}, now=t)
    assert stats.fps == pytest.approx(4 / 4.3)


def test_two_slow_frames_are_not_reported_as_a_high_rate():
    stats = RunStats()
    stats.start(now=0.0)
    stats.inference_started(now=0.5)  # after loading and warm-up
    stats.frame_done(0, {"infer": 179.0}, now=0.5 + 0.179)
    stats.frame_done(0, {"infer": 179.0}, now=0.5 + 0.358)
    assert stats.fps == pytest.approx(2 / 0.358)


def test_log_line_and_summary_report_the_same_fps():
    stats = RunStats()
    stats.start(now=0.0)
    stats.inference_started(now=3.0)  # a slow model load: wall fps would be far lower
    for i in range(10):
        stats.frame_done(1, {}, now=3.0 + 0.1 * (i + 1))
    stats.stop(now=4.2)
    summary = stats.summary()
    assert summary["fps"] == pytest.approx(10.0)
    assert f"| {summary['fps']:.1f} fps |" in stats.log_line()
    assert summary["seconds"] == pytest.approx(4.2)
