"""`inspectd bridge mqtt`: republish every result to an MQTT broker (paho-mqtt), for a plant's MES.

Topic layout (prefix `mqtt.topic_prefix`, default `inspectd`; also in docs/messages.md):

    <prefix>/<camera>/result            the result JSON as published on ZeroMQ (schema, frame_id,
                                        decision, defects, ...), QoS mqtt.qos, retained
    <prefix>/<camera>/mask              the defect mask, PNG (mqtt.mask = "topic"), published just
                                        before its result, QoS mqtt.qos, retained
    <prefix>/<camera>/preview           the result's preview JPEG (schema 3, when the refiner sends
                                        one; its box is the result's `preview.box`), published
                                        just before its result, QoS mqtt.qos, retained
    <prefix>/bridge/<client_id>/status  "online" / "offline" (retained; "offline" is the will)

With mqtt.mask = "base64" the PNG (and the preview JPEG) travel inside the result JSON as
`mask_png_base64` (and `preview_jpeg_base64`) instead; with "none" both are left out. Retained messages give a subscriber that connects later the last
state of each camera at once (MQTT marks them as retained).

Delivery: results wait in a bounded in-memory queue (mqtt.queue_max). paho-mqtt holds up to
mqtt.max_inflight of them until the broker acknowledges (QoS 1: PUBACK) and sends them again
after a reconnect; the rest wait in the queue, so a result taken while the broker is away goes
out when it is back. When the queue is full the oldest result is dropped, logged and counted
(inspectd_mqtt_dropped_total): the newest state matters most to a line. Delivery is at least
once (a resend after a reconnect can repeat a message): de-duplicate by frame_id.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from inspectd.errors import ConfigError
from inspectd.geometry import CroppedMask
from inspectd.service.masks import mask_offset, mask_png
from inspectd.service.messages import MESSAGE_ERROR_KINDS
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.sdnotify import Notifier
from inspectd.service.settings import MqttSettings, Settings
from inspectd.service.watch import results

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 60.0  # a progress line in the log at most this often


@dataclass
class Outgoing:
    topic: str
    payload: bytes
    camera: str
    is_result: bool  # counts as a published result once the broker has it (a mask part does not)


# --- pure: what a result becomes on MQTT ------------------------------------------------------
def result_topic(prefix: str, camera: str) -> str:
    return f"{prefix}/{camera}/result"


def mask_topic(prefix: str, camera: str) -> str:
    return f"{prefix}/{camera}/mask"


def status_topic(prefix: str, client_id: str) -> str:
    return f"{prefix}/bridge/{client_id}/status"


def preview_topic(prefix: str, camera: str) -> str:
    return f"{prefix}/{camera}/preview"


def mqtt_messages(result: dict, mask: CroppedMask, settings: MqttSettings) -> list[Outgoing]:
    """The MQTT messages for one result, in publishing order (mask and preview before their
    result). The mask PNG covers the box around all defects; `mask_offset` in the JSON says where
    it sits. The preview JPEG (schema 3, optional) was checked from its header by parse_result."""
    camera = result["camera"]
    payload = {**result, "mask_offset": mask_offset(result, mask)}
    preview = getattr(mask, "preview", None)
    messages = []
    if settings.mask == "topic":
        messages.append(Outgoing(mask_topic(settings.topic_prefix, camera), mask_png(result, mask), camera, False))
        if preview is not None:
            messages.append(Outgoing(preview_topic(settings.topic_prefix, camera), preview, camera, False))
    elif settings.mask == "base64":
        payload["mask_png_base64"] = base64.b64encode(mask_png(result, mask)).decode("ascii")
        if preview is not None:
            payload["preview_jpeg_base64"] = base64.b64encode(preview).decode("ascii")
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    messages.append(Outgoing(result_topic(settings.topic_prefix, camera), body, camera, True))
    return messages


class BoundedQueue:
    """FIFO of outgoing messages; when full, the oldest is dropped and reported to `on_drop`."""

    def __init__(self, capacity: int, on_drop=lambda message: None):
        self.items: collections.deque[Outgoing] = collections.deque()
        self.capacity, self.on_drop = capacity, on_drop
        self.lock = threading.Lock()

    def put(self, message: Outgoing) -> None:
        with self.lock:
            self.items.append(message)
            dropped = self.items.popleft() if len(self.items) > self.capacity else None
        if dropped is not None:
            self.on_drop(dropped)

    def get(self) -> Outgoing | None:
        with self.lock:
            return self.items.popleft() if self.items else None

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)


# --- the broker side ------------------------------------------------------------------------------
class MqttPublisher:
    """A paho client (its network thread reconnects with back-off) fed from a BoundedQueue by a
    pump thread that keeps at most max_inflight messages unacknowledged."""

    def __init__(self, settings: MqttSettings, metrics: ServiceMetrics):
        self.settings, self.metrics = settings, metrics
        self.queue = BoundedQueue(settings.queue_max, self.dropped)
        self.unacked: dict[int, Outgoing] = {}  # mid -> message; touched by the pump thread only
        self.acked: queue.SimpleQueue[int] = queue.SimpleQueue()  # mids from paho's thread
        self.connected = threading.Event()
        self.stop_event = threading.Event()
        self.client = self.make_client()
        self.pump_thread = threading.Thread(target=self.pump, name="mqtt-pump", daemon=True)

    def make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv311)
        if s.username is not None:
            client.username_pw_set(s.username, read_password(s.password_file))
        if s.tls_ca is not None:
            client.tls_set(ca_certs=str(s.tls_ca))
        client.max_inflight_messages_set(s.max_inflight)
        client.reconnect_delay_set(max(1, round(s.reconnect_min_s)), max(1, round(s.reconnect_max_s)))
        client.will_set(status_topic(s.topic_prefix, s.client_id), "offline", qos=1, retain=True)
        client.on_connect, client.on_disconnect, client.on_publish = self.on_connect, self.on_disconnect, \
            self.on_publish
        return client

    def start(self) -> None:
        s = self.settings
        log.info("MQTT: connecting to %s:%d as %s", s.host, s.port, s.client_id)
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self.client.loop_start()  # paho's network thread: connects, reconnects, resends unacked messages
        self.pump_thread.start()

    def stop(self, drain_s: float = 2.0) -> None:
        """Give queued results up to drain_s to reach the broker, then say offline and disconnect."""
        deadline = time.monotonic() + drain_s
        while (len(self.queue) or self.unacked) and self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop_event.set()
        self.pump_thread.join(timeout=5)
        if self.connected.is_set():
            self.client.publish(status_topic(self.settings.topic_prefix, self.settings.client_id), "offline", qos=1,
                                retain=True).wait_for_publish(1.0)
        self.client.disconnect()
        self.client.loop_stop()
        self.metrics.mqtt_connected.set(0)

    def put(self, message: Outgoing) -> None:
        self.queue.put(message)

    # pump thread ----------------------------------------------------------------------------
    def pump(self) -> None:
        while not self.stop_event.wait(0.02):
            self.take_acks()
            while len(self.unacked) < self.settings.max_inflight and (message := self.queue.get()) is not None:
                self.hand_over(message)
            self.metrics.mqtt_queue.set(len(self.queue) + len(self.unacked))

    def hand_over(self, message: Outgoing) -> None:
        """To paho, which keeps a QoS >= 1 message until the broker has it, across reconnects."""
        info = self.client.publish(message.topic, message.payload, qos=self.settings.qos,
                                   retain=self.settings.retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("MQTT: publishing on %s failed (%s); dropped", message.topic, mqtt.error_string(info.rc))
            self.dropped(message)
            return
        if self.settings.qos == 0 and info.rc == mqtt.MQTT_ERR_NO_CONN:
            self.dropped(message)  # paho does not keep QoS 0 messages for a reconnect
            return
        self.unacked[info.mid] = message

    def take_acks(self) -> None:
        while True:
            try:
                mid = self.acked.get_nowait()
            except queue.Empty:
                return
            message = self.unacked.pop(mid, None)
            if message is not None and message.is_result:
                self.metrics.mqtt_published.labels(message.camera).inc()

    def dropped(self, message: Outgoing) -> None:
        if message.is_result:
            log.warning("MQTT: queue full (mqtt.queue_max=%d): dropped the oldest result for %s",
                        self.settings.queue_max, message.camera)
            self.metrics.mqtt_dropped.inc()

    # paho's network thread ----------------------------------------------------------------------
    def on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT: broker %s:%d refused the connection: %s", self.settings.host, self.settings.port,
                      reason_code)
            self.metrics.mqtt_connect_failures.labels(reason_label(reason_code)).inc()
            return
        log.info("MQTT: connected to %s:%d", self.settings.host, self.settings.port)
        self.connected.set()
        self.metrics.mqtt_connected.set(1)
        client.publish(status_topic(self.settings.topic_prefix, self.settings.client_id), "online", qos=1,
                       retain=True)

    def on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if self.connected.is_set() and not self.stop_event.is_set():  # not our own disconnect at stop
            log.warning("MQTT: connection to %s:%d lost (%s); reconnecting", self.settings.host, self.settings.port,
                        reason_code)
            self.metrics.mqtt_connect_failures.labels("connection_lost").inc()
        self.connected.clear()
        self.metrics.mqtt_connected.set(0)

    def on_publish(self, _client, _userdata, mid, _reason_code, _properties) -> None:
        self.acked.put(mid)


def reason_label(reason_code) -> str:
    return str(reason_code).lower().replace(" ", "_")[:40]


def read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"mqtt.password_file {path}: cannot read ({exc.strerror or exc})") from None


# --- the process ---------------------------------------------------------------------------------
def run_bridge(settings: Settings, stop_event: threading.Event, metrics: ServiceMetrics | None = None,
               notifier: Notifier | None = None, ready: threading.Event | None = None) -> dict:
    """Subscribe to every camera's results and republish them until stop_event; returns counts."""
    metrics = metrics or ServiceMetrics("bridge")
    notifier = notifier or Notifier()
    metrics.init_series(None, (), MESSAGE_ERROR_KINDS)
    publisher = MqttPublisher(settings.mqtt, metrics)
    serving = settings.metrics.port is not None
    if serving:
        metrics.serve(settings.metrics.host, settings.metrics.port)
    counts, last_progress = {"results": 0}, time.monotonic()
    watchdog_interval, last_ping = notifier.watchdog_interval(), [0.0]

    def tick() -> None:  # every 100 ms from the subscriber loop
        if watchdog_interval and time.monotonic() - last_ping[0] >= watchdog_interval:
            notifier.watchdog()
            last_ping[0] = time.monotonic()

    publisher.start()
    metrics.up.labels("bridge").set(1)
    try:
        notifier.ready("bridging results to MQTT")
        # `ready` is set once the subscriber has connected to every refiner
        for result, mask in results(settings, stop_event, ready=ready, tick=tick,
                                    on_bad=lambda kind: metrics.bad_inputs.labels(kind).inc()):
            metrics.results_received.labels(result["camera"]).inc()
            for message in mqtt_messages(result, mask, settings.mqtt):
                publisher.put(message)
            counts["results"] += 1
            if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                log.info("MQTT bridge: %d result(s) so far, %d message(s) waiting for the broker", counts["results"],
                         len(publisher.queue) + len(publisher.unacked))
                last_progress = time.monotonic()
    finally:
        notifier.stopping()
        publisher.stop()
        metrics.up.labels("bridge").set(0)
        if serving:
            metrics.stop()
        log.info("MQTT bridge stopped: %s", counts)
    return counts

