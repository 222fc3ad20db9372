"""Where ``patchdet serve`` sends events and camera status: MQTT (paho-mqtt), an HTTP webhook, a JSON Lines file.

Every sink has ``publish(camera, kind, payload)`` with ``kind`` ``events`` or ``status`` and never blocks the
camera threads: MQTT messages wait in paho's own bounded queue while the broker is away (QoS 1: delivered
at least once, so a consumer may see a repeated event id after a reconnect); webhook posts wait in a
bounded queue of their own and are retried.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from patchdet.runtime.service_config import MqttConfig, WebhookConfig

logger = logging.getLogger(__name__)


class MqttSink:
    """Publishes to ``<prefix>/<camera>/events`` and ``<prefix>/<camera>/status`` (status retained).

    paho's network thread connects in the background and reconnects with back-off
    (``reconnect_delay_set``); QoS 1 messages published while disconnected stay in its queue, bounded by
    ``max_queued_messages_set``, and are sent on reconnection.
    """

    name = "mqtt"

    def __init__(self, config: MqttConfig, client_id: str = "patchdet-serve") -> None:
        import paho.mqtt.client as mqtt

        self.config = config
        self.connected = False
        self.published = 0  # acknowledged by the broker
        self.refused = 0  # the offline queue was full
        self.submitted = 0
        self._lock = threading.Lock()
        self._pending: set[int] = set()  # message ids sent but not acknowledged
        self._early: set[int] = set()  # acknowledged before publish() returned their id
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id or client_id,
                                   clean_session=False)
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        self._client.max_queued_messages_set(config.queue_size)
        self._client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(config.reconnect_max_s)))
        self._client.will_set(f"{config.topic_prefix}/service/status", json.dumps({"state": "offline"}), qos=1,
                              retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._unreachable_logged = False
        self._closing = False
        self._client.on_publish = self._on_publish
        self._mqtt = mqtt
        self._client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        self._client.loop_start()

    @property
    def queued(self) -> int:
        """Messages not yet acknowledged by the broker."""
        with self._lock:
            return self.submitted - self.published - self.refused

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.warning("mqtt %s:%d refused the connection: %s", self.config.host, self.config.port, reason_code)
            return
        self.connected = True
        self._unreachable_logged = False
        logger.info("mqtt connected to %s:%d", self.config.host, self.config.port)
        self._send(f"{self.config.topic_prefix}/service/status", {"state": "online"}, retain=True)

    def _on_connect_fail(self, client, userdata) -> None:
        if not self._unreachable_logged:  # once per outage: paho retries every few seconds
            self._unreachable_logged = True
            logger.warning("mqtt broker %s:%d unreachable; retrying, queueing up to %d messages", self.config.host,
                           self.config.port, self.config.queue_size)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected and not self._closing:
            logger.warning("mqtt lost %s:%d (%s); queueing up to %d messages", self.config.host, self.config.port,
                           reason_code, self.config.queue_size)
            self._unreachable_logged = True
        self.connected = False

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if self.config.qos == 0:  # counted when sent
            return
        with self._lock:
            if mid in self._pending:
                self._pending.discard(mid)
                self.published += 1
            else:
                self._early.add(mid)

    def _send(self, topic: str, payload: dict[str, Any], retain: bool = False):
        # paho may acknowledge (on its network thread) before publish() returns the id: hence _early.
        info = self._client.publish(topic, json.dumps(payload), qos=self.config.qos, retain=retain)
        with self._lock:
            self.submitted += 1
            if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
                self.refused += 1
            elif self.config.qos == 0 or info.mid in self._early:
                self._early.discard(info.mid)
                self.published += 1
            else:
                self._pending.add(info.mid)
        return info

    def publish(self, camera: str, kind: str, payload: dict[str, Any]) -> None:
        info = self._send(f"{self.config.topic_prefix}/{camera}/{kind}", payload, retain=kind == "status")
        if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            logger.warning("mqtt offline queue full (%d): %s message of %s dropped", self.config.queue_size, kind,
                           camera)

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "queued": self.queued, "published": self.published,
                "refused": self.refused}

    def close(self, timeout_s: float = 3.0) -> None:
        """Send what is queued if the broker is there (up to ``timeout_s``), then disconnect."""
        import time

        self._closing = True
        deadline = time.monotonic() + timeout_s
        while self.connected and self.queued > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.connected:
            info = self._send(f"{self.config.topic_prefix}/service/status", {"state": "stopped"}, retain=True)
            if info.rc == self._mqtt.MQTT_ERR_SUCCESS:
                info.wait_for_publish(timeout=1.0)
        self._client.disconnect()
        self._client.loop_stop()


class WebhookSink:
    """POSTs every event as JSON to one URL from a sender thread; failures are retried from a bounded queue."""

    name = "webhook"

    def __init__(self, config: WebhookConfig) -> None:
        if not config.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url {config.url!r} is invalid: expected http:// or https://")
        self.config = config
        self._queue: collections.deque[dict] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self.sent = 0
        self.refused = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name="webhook", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def publish(self, camera: str, kind: str, payload: dict[str, Any]) -> None:
        if kind != "events":
            return
        with self._cond:
            if len(self._queue) >= self.config.queue_size:
                self.refused += 1
                logger.warning("webhook queue full (%d): event of %s dropped", self.config.queue_size, camera)
                return
            self._queue.append(payload)
            self._cond.notify()

    def _post(self, payload: dict) -> None:
        request = urllib.request.Request(self.config.url, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
            response.read()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return
                payload = self._queue[0]
            try:
                self._post(payload)
            except (OSError, urllib.error.URLError) as exc:
                self.failures += 1
                logger.warning("webhook %s failed (%s); retrying in %.1f s", self.config.url, exc, self.config.retry_s)
                with self._cond:
                    if self._stop:
                        return
                    self._cond.wait(self.config.retry_s)
                continue
            with self._cond:
                self._queue.popleft()
                self.sent += 1

    def status(self) -> dict[str, Any]:
        return {"queued": self.queued, "sent": self.sent, "refused": self.refused, "failures": self.failures}

    def close(self, timeout_s: float = 3.0) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline and self.failures == 0:
            time.sleep(0.05)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=self.config.timeout_s + 1.0)


class JsonlEventSink:
    """Appends every event and status message as one JSON line (``<output_dir>/events.jsonl``)."""

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def publish(self, camera: str, kind: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps({"camera": camera, "kind": kind, **payload}) + "\n")
            self._file.flush()

    def status(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def close(self, timeout_s: float = 0.0) -> None:
        with self._lock:
            self._file.close()
