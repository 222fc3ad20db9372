"""The MQTT sink against a real broker (Mosquitto) on 127.0.0.1: events arrive, nothing is lost while it is away.

Skipped with a reason when no ``mosquitto`` binary is installed (Debian: ``apt-get install mosquitto``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install 'patchdet[serve]')")

from patchdet.runtime.event_sinks import MqttSink  # noqa: E402
from patchdet.runtime.service import Service  # noqa: E402
from patchdet.runtime.service_config import MqttConfig, load_site_config  # noqa: E402
from tests.runtime_media import moving_square_frames, write_video  # noqa: E402
from tests.test_service import write_site  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto broker binary (apt-get install mosquitto)")


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Broker:
    """A Mosquitto on a free 127.0.0.1 port with persistence, so subscribers' sessions survive a restart."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.conf = folder / "mosquitto.conf"
        # Started as root, mosquitto drops to its own user, which cannot write the persistence file into
        # pytest's private temporary folder: sessions were then lost across the restart (seen in CI runs as root).
        keep_user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\n{keep_user}", encoding="utf-8")
        self.log = folder / "mosquitto.log"
        self.process = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log.open("ab"),
                                        stderr=subprocess.STDOUT)

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        if not wait_for(accepting, 10):
            self.stop()
            pytest.skip(f"mosquitto did not start: {self.log.read_text()[-300:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto writes its persistence file
            self.process.wait(10)
        self.process = None


@pytest.fixture
def broker(tmp_path):
    folder = tmp_path / "broker"
    folder.mkdir()
    b = Broker(folder)
    yield b
    b.stop()


class Subscriber:
    """A persistent-session QoS 1 subscriber collecting every message by topic."""

    def __init__(self, port: int, topic: str = "patchdet/#") -> None:
        self.messages: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-subscriber", clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "test setup: subscription not acknowledged"

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def payloads(self, suffix: str) -> list[dict]:
        with self.lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_service_publishes_events_and_status_per_camera(tmp_path, broker):
    from tests.fixtures_onnx import write_model

    model = write_model(tmp_path / "bright.onnx", "modulus")
    video = write_video(tmp_path / "square.avi", moving_square_frames(12))
    subscriber = Subscriber(broker.port)
    try:
        cameras = [{"name": "east", "source": str(video)}, {"name": "west", "source": str(video)}]
        site = load_site_config(write_site(tmp_path, model, cameras, mqtt={"port": broker.port},
                                           events={"min_hits": 2, "window": 3, "end_after_s": 0.3}))
        summary = Service(site).run()
        assert summary["sinks"]["mqtt"]["connected"]
        assert wait_for(lambda: len(subscriber.payloads("/events")) >= 2 * summary["events"], 10)
        events = subscriber.payloads("/events")
        for camera in ("east", "west"):
            mine = [e for e in events if e["camera"] == camera]
            assert [e["type"] for e in mine] == ["start", "end"] and mine[0]["id"] == mine[1]["id"]
            assert mine[1]["best_score"] > 0 and len(mine[1]["best_box"]) == 4
        states = [(t.split("/")[1], p["state"]) for t, p in subscriber.messages if t.endswith("/status")]
        assert ("east", "running") in states and ("west", "ended") in states
    finally:
        subscriber.close()


def test_events_published_while_the_broker_is_away_arrive_after_it_returns(broker):
    subscriber = Subscriber(broker.port)
    sink = MqttSink(MqttConfig(port=broker.port, queue_size=30, reconnect_max_s=1), client_id="test-sink")
    try:
        assert wait_for(lambda: sink.connected, 10)
        sink.publish("cam", "events", {"id": "before"})
        assert wait_for(lambda: len(subscriber.payloads("/events")) == 1, 10)
        broker.stop()
        assert wait_for(lambda: not sink.connected, 10)
        sent = [f"offline-{i}" for i in range(25)]
        for event_id in sent:
            sink.publish("cam", "events", {"id": event_id})
        status = sink.status()
        assert not status["connected"] and status["refused"] == 0 and status["queued"] >= 25
        broker.start()
        assert wait_for(lambda: {p["id"] for p in subscriber.payloads("/events")} >= set(sent), 30), \
            f"missing: {set(sent) - {p['id'] for p in subscriber.payloads('/events')}}"
        assert wait_for(lambda: sink.status()["queued"] == 0, 10)
    finally:
        sink.close()
        subscriber.close()


def test_offline_queue_is_bounded_and_counts_what_it_refused(broker):
    broker.stop()
    sink = MqttSink(MqttConfig(port=broker.port, queue_size=5), client_id="test-bounded")
    try:
        for i in range(8):
            sink.publish("cam", "events", {"id": i})
        status = sink.status()
        assert not status["connected"] and status["refused"] == 3 and status["queued"] == 5
    finally:
        sink.close(timeout_s=0)
