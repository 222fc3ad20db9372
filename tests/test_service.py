"""patchdet serve: site-file validation, event hysteresis, the shared batched model, zones, metrics and health."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml

from patchdet.cli import main
from patchdet.runtime.detections import Detections
from patchdet.runtime.events import EventTracker
from patchdet.runtime.service import Service, keep_in_zones
from patchdet.runtime.service_config import EventConfig, load_site_config
from patchdet.runtime.settings import DetectorSettings, load_detector
from patchdet.runtime.shared_model import SharedModel, camera_view
from tests.fixtures_onnx import white_square_frame, write_model
from tests.runtime_media import moving_square_frames, write_video


@pytest.fixture
def video(tmp_path):
    return write_video(tmp_path / "square.avi", moving_square_frames(12))


def write_site(tmp_path, model, cameras, **extra):
    site = {"detector": {"model": str(model), "backend": "onnxruntime", "threads": 1, "tile": 32, "stride": 16},
            "metrics": {"port": 0}, "output_dir": str(tmp_path / "out"), "startup_timeout_s": 20,
            "cameras": cameras, **extra}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site), encoding="utf-8")
    return path


# -- site file ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cameras, extra, message", [
    ([{"name": "a", "source": "x.avi", "thresold": 1}], {}, "unknown config key(s) thresold"),
    ([{"name": "a", "source": "x.avi"}], {"metrics": {"port": "http"}}, "'port' expects a number"),
    ([{"name": "a", "source": "x.avi"}, {"name": "a", "source": "y.avi"}], {}, "'a' is used twice"),
    ([{"name": "a"}], {}, "missing required key(s) 'source'"),
    ([{"name": "a b", "source": "x.avi"}], {}, "camera name 'a b' is invalid"),
    ([{"name": "a", "source": "x.avi", "sinks": ["mqtt"]}], {}, "has no 'mqtt' block"),
    ([{"name": "a", "source": "x.avi", "zones": [[[0, 0], [1, 1]]]}], {}, "zones[0] is invalid"),
    ([], {}, "non-empty list of cameras"),
    ([{"name": "a", "source": "x.avi"}], {"mqtt": {"qos": 3}}, "mqtt qos 3"),
    ([{"name": "a", "source": "x.avi"}], {"extra": 1}, "unknown config key(s) extra"),
    ([{"name": "a", "source": "x.avi"}], {"events": {"same_object_overlap": 0}}, "same_object_overlap 0"),
    ([{"name": "a", "source": "x.avi", "motion_gate": True, "motion_threshold": -1}], {}, "'a': motion threshold"),
    ([{"name": "a", "source": "x.avi", "detector": {"dense": True}}], {}, "dense and tile/stride exclude"),
])
def test_bad_site_file_is_one_line_naming_key_and_file(tmp_path, model, cameras, extra, message):
    path = write_site(tmp_path, model, cameras, **extra)
    with pytest.raises(ValueError) as info:
        load_site_config(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_cli_reports_bad_site_file_with_exit_2(tmp_path, model, capsys):
    path = write_site(tmp_path, model, [{"name": "a", "source": "x.avi", "colour": "red"}])
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("patchdet serve: error:") and "colour" in err and str(path) in err


def test_camera_settings_merge_site_and_camera_keys(tmp_path, model):
    from patchdet.runtime.service_config import camera_settings

    site = load_site_config(write_site(tmp_path, model, [{"name": "a", "source": "x", "detector": {"threshold": 2}}]))
    settings = camera_settings(site, site.cameras[0])
    assert settings.threshold == 2 and settings.tile == 32 and settings.model == str(model)


# -- events ------------------------------------------------------------------------------------------------
def _dets(*boxes, score=1.0, class_id=0):
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    return Detections(xyxy, np.full(len(xyxy), score, np.float32), np.full(len(xyxy), class_id), np.arange(len(xyxy)))


def test_one_moving_object_is_one_event_with_hysteresis():
    tracker = EventTracker("cam", ("car",), EventConfig(min_hits=3, window=5, end_after_s=1.0))
    transitions = []
    for i in range(20):  # a car moving 10 px per frame at 10 fps, missed in every 4th frame
        boxes = [] if i % 4 == 3 else [(10 * i, 50, 10 * i + 60, 90)]
        transitions += tracker.update(_dets(*boxes, score=0.5 + i / 100), i * 0.1)
    for i in range(20, 35):  # gone
        transitions += tracker.update(_dets(), i * 0.1)
    kinds = [(kind, e.class_name) for kind, e, _ in transitions]
    assert kinds == [("start", "car"), ("end", "car")]
    event = transitions[-1][1]
    assert event.start_time == 0.0 and event.end_time == pytest.approx(1.8)
    assert event.best_score == pytest.approx(0.5 + 18 / 100) and event.best_xyxy[0] == 180


def test_flicker_makes_no_event_and_two_objects_make_two():
    tracker = EventTracker("cam", ("car",), EventConfig(min_hits=3, window=5, end_after_s=0.5))
    flicker = []
    for i in range(10):
        flicker += tracker.update(_dets((0, 0, 20, 20)) if i in (0, 4, 8) else _dets(), i * 0.1)
    assert flicker == []
    tracker = EventTracker("cam", ("car",), EventConfig(min_hits=2, window=3, end_after_s=0.5))
    both = []
    for i in range(5):
        both += tracker.update(_dets((0, 0, 20, 20), (200, 0, 220, 20)), i * 0.1)
    both += tracker.close()
    assert [k for k, _, _ in both] == ["start", "start", "end", "end"]
    assert len({e.event_id for _, e, _ in both}) == 2


def test_a_second_box_inside_a_tracked_object_starts_no_event():
    # The pickup of benchmarks/results/serve.md: a box on the car and one on its lower half in the same frames.
    tracker = EventTracker("cam", ("car",), EventConfig(min_hits=2, window=3, end_after_s=0.5))
    transitions = []
    for i in range(6):
        whole, lower = (100 + 5 * i, 40, 260 + 5 * i, 150), (100 + 5 * i, 80, 180 + 5 * i, 134)
        boxes = [lower] if i == 0 else [lower, whole]  # the lower half is seen first, then both
        transitions += tracker.update(_dets(*boxes), i * 0.1)
    transitions += tracker.close()
    assert [k for k, _, _ in transitions] == ["start", "end"]
    # A third box mostly inside the second box (not the first) is the same object too.
    tracker = EventTracker("cam", ("car",), EventConfig(min_hits=2, window=3, end_after_s=0.5))
    chain = []
    for i in range(5):
        boxes = [(100, 40, 260, 150)] if i == 0 else [(100, 40, 260, 150), (200, 60, 300, 140), (265, 80, 305, 120)]
        chain += tracker.update(_dets(*boxes), i * 0.1)
    chain += tracker.close()
    assert [k for k, _, _ in chain] == ["start", "end"]
    # Two cars side by side overlap a little: both are events.
    tracker = EventTracker("cam", ("car",), EventConfig(min_hits=2, window=3, end_after_s=0.5))
    side_by_side = []
    for i in range(4):
        side_by_side += tracker.update(_dets((0, 0, 100, 60), (90, 0, 190, 60)), i * 0.1)
    assert [k for k, _, _ in side_by_side] == ["start", "start"]


def test_a_car_coming_nearer_stays_one_event():
    # A car that grows from 40 to 200 px wide as it comes nearer and moves faster in the picture, missed in
    # two frames: its box jumps farther than the last box's diagonal, but not from where its velocity puts it.
    tracker = EventTracker("cam", ("car",), EventConfig(min_hits=3, window=5, end_after_s=1.0))
    transitions = []
    for i in range(12):
        side, x = 40 + 15 * i, 100 + 3 * i * i
        boxes = [] if i in (6, 7) else [(x, 100 + 2 * i * i, x + side, 100 + 2 * i * i + 0.6 * side)]
        transitions += tracker.update(_dets(*boxes), i * 0.1)
    transitions += tracker.close()
    assert [k for k, _, _ in transitions] == ["start", "end"]


def test_overlap_of_smaller_box():
    from patchdet.runtime.events import overlap_of_smaller

    assert overlap_of_smaller(np.array([0, 0, 10, 10]), np.array([2, 2, 6, 6])) == 1.0
    assert overlap_of_smaller(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == 0.5
    assert overlap_of_smaller(np.array([0, 0, 10, 10]), np.array([10, 0, 20, 10])) == 0.0


def test_zones_keep_inside_and_masks_drop():
    dets = _dets((0, 0, 10, 10), (100, 100, 110, 110))
    zone = ((0, 0), (50, 0), (50, 50), (0, 50))
    assert len(keep_in_zones(dets, (zone,), ())) == 1
    assert keep_in_zones(dets, (), (zone,)).xyxy[0, 0] == 100
    assert len(keep_in_zones(dets, (), ())) == 2


# -- shared model -----------------------------------------------------------------------------------------
def test_shared_model_scores_two_cameras_in_one_call_like_separate_calls(model):
    settings = DetectorSettings(model=str(model), backend="onnxruntime", threads=1, tile=32, stride=16)
    detector = load_detector(settings)
    shared = SharedModel(detector, max_tiles=4096, linger_ms=2000.0)  # long linger: both requests join
    view = camera_view(detector, settings)
    frames = [white_square_frame((160, 96), (40, 20, 80, 60)), white_square_frame((128, 64), (0, 0, 32, 32))]
    batches = [view.preprocess(f).batch.copy() for f in frames]
    expected = [detector.backend(b) for b in batches]
    results = [None, None]

    def score(i):
        results[i] = shared.score(batches[i])

    threads = [threading.Thread(target=score, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    assert shared.calls == 1 and shared.frames == 2 and shared.tiles == sum(len(b) for b in batches)
    for got, want in zip(results, expected, strict=True):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def _score_together(shared, batches):
    results = [None] * len(batches)

    def score(i):
        results[i] = shared.score(batches[i])

    threads = [threading.Thread(target=score, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_shared_dense_model_stacks_mosaics_of_equal_shape_and_calls_others_apart(tmp_path):
    dense = write_model(tmp_path / "dense.onnx", "dense")
    settings = DetectorSettings(model=str(dense), backend="onnxruntime", threads=1)
    detector = load_detector(settings)
    assert detector.dense
    shared = SharedModel(detector, max_tiles=4096, linger_ms=2000.0)
    view = camera_view(detector, settings)
    frames = [white_square_frame((160, 96), (40, 20, 80, 60)), white_square_frame((160, 96), (0, 0, 32, 32)),
              white_square_frame((96, 160), (10, 10, 50, 50))]  # the third: another aspect, another canvas
    prepared = [view.preprocess(f) for f in frames]
    batches = [p.batch.copy() for p in prepared]
    assert batches[0].shape == batches[1].shape != batches[2].shape
    assert all(len(detector(f).detections) for f in frames)
    expected = [detector.backend(b) for b in batches]
    results = _score_together(shared, batches)
    shared.close()
    assert shared.frames == 3 and shared.calls == 2  # the two equal canvases in one call
    for got, want, prep, frame in zip(results, expected, prepared, frames, strict=True):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(view.decide(got, prep).detections.xyxy, detector(frame).detections.xyxy)


def test_dense_cameras_tile_into_rows_of_one_block_and_are_scored_without_a_copy(tmp_path):
    dense = write_model(tmp_path / "dense.onnx", "dense")
    settings = DetectorSettings(model=str(dense), backend="onnxruntime", threads=1)
    detector = load_detector(settings)
    shared = SharedModel(detector, max_tiles=2, linger_ms=2000.0)
    assert shared.pool is not None and shared.pool.stack == 2
    views = [camera_view(detector, settings, shared.pool) for _ in range(2)]  # two cameras, one pool
    frames = [white_square_frame((160, 96), (40, 20, 80, 60)), white_square_frame((160, 96), (0, 0, 32, 32))]
    prepared = [v.preprocess(f) for v, f in zip(views, frames, strict=True)]
    first, second = (p.batch for p in prepared)
    assert first.base is second.base and len(first.base) == 2  # rows 0 and 1 of one block
    expected = [detector.backend(b.copy()) for b in (first, second)]
    results = _score_together(shared, [second, first])  # arrival order does not matter
    assert shared.calls == 1 and shared.stacked_in_place == 1
    for got, want in zip(results, expected[::-1], strict=True):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    for v, p, f in zip(views, prepared, frames, strict=True):
        np.testing.assert_allclose(v.decide(results[::-1][views.index(v)], p).detections.xyxy,
                                   detector(f).detections.xyxy)
    # rows come back to the pool and are lent again; a third canvas on loan gets a second block
    assert shared.pool.give(first) and shared.pool.give(second)
    again = [views[0].preprocess(frames[0]).batch for _ in range(3)]
    assert again[0].base is first.base and again[1].base is first.base and again[2].base is not first.base
    shared.close()


def test_adjacent_rows_only_for_consecutive_rows_of_one_array():
    from patchdet.runtime.shared_model import adjacent_rows

    block = np.zeros((4, 2, 3), np.float32)  # owns its memory, as a StackingPool block does
    block[:] = np.arange(4 * 2 * 3).reshape(4, 2, 3)
    assert np.shares_memory(adjacent_rows([block[1:2], block[2:4]]), block)
    np.testing.assert_array_equal(adjacent_rows([block[1:2], block[2:4]]), block[1:4])
    assert adjacent_rows([block[2:3], block[1:2]]) is None  # out of order
    assert adjacent_rows([block[0:1], block[2:3]]) is None  # a gap
    assert adjacent_rows([block[0:1], block.copy()[1:2]]) is None  # two arrays
    assert adjacent_rows([np.zeros((1, 2, 3), np.float32)] * 2) is None  # no base


def test_stackable_groups_keep_arrival_order_and_respect_a_fixed_batch():
    from types import SimpleNamespace

    from patchdet.runtime.shared_model import stackable_groups

    a, b, c = (SimpleNamespace(batch=np.zeros(shape, np.float32))
               for shape in ((1, 3, 8, 8), (1, 3, 8, 16), (2, 3, 8, 8)))
    assert stackable_groups([a, b, c]) == [[a, c], [b]]
    assert stackable_groups([a, b, c], fixed_batch=True) == [[a], [b], [c]]


def test_dense_model_with_explicit_tiles_is_refused_per_camera(tmp_path, video):
    dense = write_model(tmp_path / "dense.onnx", "dense")
    site = load_site_config(write_site(tmp_path, dense, [{"name": "cam1", "source": str(video)}]))
    with pytest.raises(ValueError, match="cam1.*dense export.*tile/stride"):
        Service(site)


# -- the service --------------------------------------------------------------------------------------------
def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_service_runs_cameras_serves_metrics_and_reports_a_down_camera(tmp_path, model, video):
    cameras = [{"name": "left", "source": str(video), "loop": True, "max_fps": 20},
               {"name": "right", "source": str(video), "loop": True, "max_fps": 20,
                "masks": [[[0, 0], [160, 0], [160, 96], [0, 96]]]},
               {"name": "gone", "source": "http://127.0.0.1:9/nothing.mjpg"}]
    site = load_site_config(write_site(tmp_path, model, cameras, metrics={"port": 0, "camera_down_s": 1.0},
                                       events={"min_hits": 2, "window": 3, "end_after_s": 0.3}))
    service = Service(site)
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (service.server and all(
                c.frames >= 15 for c in service.cameras[:2])):
            time.sleep(0.1)
        base = f"http://127.0.0.1:{service.server.port}"
        status, text = _get(base + "/metrics")
        assert status == 200
        assert 'patchdet_frames_total{camera="left"}' in text and 'patchdet_camera_up{camera="gone"} 0.0' in text
        assert 'patchdet_stage_latency_seconds_count{camera="right",stage="infer"}' in text
        status, body = _get(base + "/healthz")
        while status == 200 and time.monotonic() < deadline:  # healthy until 'gone' has been down 1 s
            time.sleep(0.2)
            status, body = _get(base + "/healthz")
        health = json.loads(body)
        assert status == 503 and health["down"] == ["gone"] and health["cameras"]["gone"]["state"] == "unreachable"
        assert "127.0.0.1:9" in health["cameras"]["gone"]["error"]
    finally:
        service.stop_event.set()
        runner.join(30)
    assert not runner.is_alive()
    records = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    events = [r for r in records if r["kind"] == "events"]
    assert {r["camera"] for r in events} == {"left"}  # right's mask covers its whole frame
    starts = [r for r in events if r["type"] == "start"]
    assert starts and all((tmp_path / "out" / "snapshots" / "left" / f"{r['id']}.jpg").is_file() for r in starts)
    assert len([r for r in events if r["type"] == "end"]) == len(starts)
    assert service.models and next(iter(service.models.values())).frames >= 30


@pytest.mark.parametrize("kind", ["modulus", "dense"])
def test_motion_gated_camera_gives_the_same_events_as_an_ungated_one(tmp_path, video, kind):
    model = write_model(tmp_path / f"{kind}.onnx", kind)
    cameras = [{"name": "plain", "source": str(video)},
               {"name": "gated", "source": str(video), "motion_gate": True, "motion_threshold": 0}]
    path = write_site(tmp_path, model, cameras, events={"min_hits": 2, "window": 3, "end_after_s": 0.3})
    if kind == "dense":  # a dense export scores every window: no tile/stride
        site = yaml.safe_load(path.read_text())
        site["detector"] = {k: v for k, v in site["detector"].items() if k not in ("tile", "stride")}
        path.write_text(yaml.safe_dump(site))
    service = Service(load_site_config(path))
    service.run()
    plain, gated = service.cameras
    assert plain.frames == gated.frames == 12 and plain.detections == gated.detections > 0
    assert plain.events == gated.events > 0
    # the still background was not scored again (a dense mosaic this small is re-scored whole: test_motion.py)
    assert gated.view.tiles_scored < gated.view.tiles_seen or kind == "dense"


def test_zone_outside_the_frame_stops_the_service_with_one_line(tmp_path, model, video, capsys):
    path = write_site(tmp_path, model, [{"name": "a", "source": str(video),
                                         "zones": [[[0, 0], [500, 0], [500, 50]]]}])
    assert main(["serve", "--config", str(path), "--duration", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "zones[0] point (500, 0) is outside the 160x96 frame" in err


def test_cli_serves_two_files_until_they_end(tmp_path, model, video, capsys):
    path = write_site(tmp_path, model, [{"name": "a", "source": str(video)}, {"name": "b", "source": str(video)}])
    summary_path = tmp_path / "summary.json"
    assert main(["serve", "--config", str(path), "--summary", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 24 and summary["cameras"]["a"]["state"] == "ended" and summary["healthy"]
    assert summary["models"]["bright.onnx"]["frames"] == 24


def test_webhook_posts_events_and_retries_after_a_failure():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from patchdet.runtime.event_sinks import WebhookSink
    from patchdet.runtime.service_config import WebhookConfig

    received, calls = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body)
            ok = len(calls) > 1  # the first post fails: the sink must retry it
            if ok:
                received.append(body)
            self.send_response(200 if ok else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sink = WebhookSink(WebhookConfig(url=f"http://127.0.0.1:{server.server_address[1]}/hook", retry_s=0.1))
    try:
        sink.publish("cam", "status", {"state": "running"})  # status is not posted
        for i in range(3):
            sink.publish("cam", "events", {"id": i})
        deadline = time.monotonic() + 20
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r["id"] for r in received] == [0, 1, 2] and sink.status()["failures"] == 1
    finally:
        sink.close(timeout_s=0)
        server.shutdown()


def test_unreachable_broker_queues_events_and_status_says_so(tmp_path, model, video, caplog):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_site(tmp_path, model, [{"name": "a", "source": str(video)}], mqtt={"port": port},
                      events={"min_hits": 2, "window": 3, "end_after_s": 0.3})
    with caplog.at_level("WARNING"):
        summary = Service(load_site_config(path)).run()
    mqtt = summary["sinks"]["mqtt"]
    assert summary["events"] >= 1 and not mqtt["connected"] and mqtt["refused"] == 0
    assert mqtt["queued"] >= 2 * summary["events"]  # start and end of each event, plus status messages
    assert any("unreachable" in r.message and str(port) in r.message for r in caplog.records)


def test_a_failing_camera_is_reported_and_restarted_while_the_others_run(tmp_path, model, video):
    path = write_site(tmp_path, model, [{"name": "bad", "source": str(video), "loop": True},
                                        {"name": "good", "source": str(video)}], duration_s=4)
    service = Service(load_site_config(path))

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    service.cameras[0].view.decide = broken
    summary = service.run()
    bad, good = summary["cameras"]["bad"], summary["cameras"]["good"]
    assert bad["state"] == "error" and "decoder exploded" in bad["error"] and bad["frames"] == 0
    assert good["frames"] == 12 and good["state"] == "ended"
