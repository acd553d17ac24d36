"""`inspectd bridge mqtt` against a real Mosquitto broker (Debian package mosquitto, started here
on 127.0.0.1): every result arrives, the bridge survives a broker restart, a result taken while
the broker is down arrives when it is back, overflow of the bounded queue is counted, and a
malformed result or a broker refusing the bridge is counted and survived."""

from __future__ import annotations

import base64
import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from inspectd.data.images import decode_image
from inspectd.service.messages import parse_result
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.mqtt_bridge import BoundedQueue, Outgoing, mqtt_messages, run_bridge
from inspectd.service.settings import MqttSettings

from published_results import ResultPublisher, result_message
from test_service_doubles import free_port, ready_and_watchdog_seen, service_settings, start_thread, wait_until

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


# --- pure parts ----------------------------------------------------------------------------------
def test_topic_layout_and_mask_modes():
    _, result, mask = result_message("line1-cam1", 4)
    on_topic = mqtt_messages(result, mask, MqttSettings())
    assert [m.topic for m in on_topic] == ["inspectd/line1-cam1/mask", "inspectd/line1-cam1/result"]
    assert (decode_image(on_topic[0].payload).max(axis=2) > 0.5).sum() == mask.sum()
    inline = mqtt_messages(result, mask, MqttSettings(mask="base64", topic_prefix="plant/inspect"))
    assert [m.topic for m in inline] == ["plant/inspect/line1-cam1/result"]
    payload = json.loads(inline[0].payload)
    assert payload["frame_id"] == result["frame_id"] and payload["defects"] == json.loads(json.dumps(result["defects"]))
    inline_mask = decode_image(base64.b64decode(payload["mask_png_base64"])).max(axis=2) > 0.5
    x, y = payload["mask_offset"]  # the PNG covers the box around the defects, from this corner
    assert (mask[y:y + inline_mask.shape[0], x:x + inline_mask.shape[1]] == inline_mask).all()
    assert "mask_png_base64" not in json.loads(mqtt_messages(result, mask, MqttSettings(mask="none"))[0].payload)


def test_a_results_preview_picture_travels_on_its_own_topic_or_inline():
    parts, _, _ = result_message("line1-cam1", 5, preview=True)
    result, mask = parse_result(parts)
    on_topic = mqtt_messages(result, mask, MqttSettings())
    assert [m.topic for m in on_topic] == ["inspectd/line1-cam1/mask", "inspectd/line1-cam1/preview",
                                           "inspectd/line1-cam1/result"]
    assert on_topic[1].payload == parts[-1] and not on_topic[1].is_result
    assert json.loads(on_topic[2].payload)["preview"]["box"] == [0, 0, 64, 64]  # what the picture shows
    inline = json.loads(mqtt_messages(result, mask, MqttSettings(mask="base64"))[0].payload)
    assert base64.b64decode(inline["preview_jpeg_base64"]) == parts[-1]
    assert "preview_jpeg_base64" not in json.loads(mqtt_messages(result, mask, MqttSettings(mask="none"))[0].payload)


def test_bounded_queue_drops_the_oldest_and_says_so():
    dropped = []
    q = BoundedQueue(2, dropped.append)
    for i in range(4):
        q.put(Outgoing(f"t/{i}", b"", "c", True))
    assert [m.topic for m in dropped] == ["t/0", "t/1"]
    assert q.get().topic == "t/2" and q.get().topic == "t/3" and q.get() is None


# --- against Mosquitto ----------------------------------------------------------------------------
pytestmark_broker = pytest.mark.skipif(MOSQUITTO is None,
                                       reason="mosquitto not found: run scripts/ci-system-deps.sh (Debian package mosquitto)")


class Mosquitto:
    """A broker on 127.0.0.1:port with persistence in `folder`, so a restart keeps sessions."""

    def __init__(self, folder: Path, port: int, extra: str = ""):
        self.folder, self.port = folder, port
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        # user: run as whoever runs the test (as root it would switch to `mosquitto`, who cannot read
        # the test's folder)
        self.config.write_text(f"listener {port} 127.0.0.1\nuser {getpass.getuser()}\npersistence true\n"
                               f"persistence_location {folder}/\nlog_dest file {folder}/mosquitto.log\n"
                               + (extra or "allow_anonymous true\n"))
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        assert wait_until(self.listening, 10, 0.05), (self.folder / "mosquitto.log").read_text()

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


class Listener:
    """The plant's MES: a persistent-session subscriber to <prefix>/#, QoS 1, that reconnects."""

    def __init__(self, port: int, topic: str = "inspectd/#"):
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-mes", clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self.on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on_message(self, _client, _userdata, message) -> None:
        with self.lock:
            self.messages.append(message)

    def results(self) -> dict[str, dict]:
        with self.lock:
            return {json.loads(m.payload)["frame_id"]: json.loads(m.payload) for m in self.messages
                    if m.topic.endswith("/result")}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def line(tmp_path):
    """Broker, a refiner's PUB socket, the bridge (in a thread) and the MES listener."""
    port = free_port()
    broker = Mosquitto(tmp_path / "broker", port)
    broker.start()
    listener = Listener(port)
    settings = service_settings(tmp_path, mqtt={"port": port, "reconnect_min_s": 1, "reconnect_max_s": 1,
                                                "queue_max": 50})
    publisher = ResultPublisher(settings.transport.results_bind)
    metrics, stop, ready = ServiceMetrics("bridge"), threading.Event(), threading.Event()
    bridge = start_thread(run_bridge, settings, stop, metrics, ready=ready)
    assert ready.wait(10) and wait_until(lambda: metrics.registry.get_sample_value("inspectd_mqtt_connected") == 1, 10)
    time.sleep(0.5)  # the zmq subscription reaches the PUB socket
    yield broker, publisher, listener, metrics, bridge
    stop.set()
    bridge.join(timeout=10)
    assert not bridge.is_alive()
    publisher.close()
    listener.close()
    broker.stop()


def value(metrics: ServiceMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytestmark_broker
def test_every_result_arrives_with_its_mask_and_a_bad_one_is_counted(line):
    broker, publisher, listener, metrics, bridge = line
    sent = {}
    for i in range(20):
        parts, result, mask = result_message(f"cam{i % 2}", i)
        publisher.send(parts)
        sent[result["frame_id"]] = (result, mask)
        if i == 10:
            publisher.send([b"defect.cam0", b"{not json", parts[2]])  # a malformed result: counted, skipped
    assert wait_until(lambda: set(listener.results()) == set(sent), 15, 0.1), \
        sorted(set(sent) - set(listener.results()))
    got = listener.results()
    for frame_id, (result, mask) in sent.items():
        assert got[frame_id]["defects"][0]["area_px"] == result["defects"][0]["area_px"] == int(mask.sum())
    masks = [m for m in listener.messages if m.topic == "inspectd/cam1/mask"]
    assert len(masks) == 10 and (decode_image(masks[-1].payload).max(axis=2) > 0.5).sum() == sent[
        "cam1-test-0000019"][1].sum()
    assert value(metrics, "inspectd_bad_inputs_total", kind="malformed") == 1 and bridge.is_alive()
    assert wait_until(lambda: value(metrics, "inspectd_mqtt_published_total", camera="cam0") == 10 and
                      value(metrics, "inspectd_mqtt_published_total", camera="cam1") == 10, 5)  # broker's PUBACKs
    # retained: a subscriber that connects now gets each camera's last result at once
    late = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="late")
    retained = []
    late.on_connect = lambda c, *_: c.subscribe("inspectd/+/result", qos=1)
    late.on_message = lambda c, u, m: retained.append((m.topic, json.loads(m.payload)["frame_id"], m.retain))
    late.connect("127.0.0.1", broker.port)
    late.loop_start()
    try:
        assert wait_until(lambda: len(retained) == 2, 5)
        assert sorted(retained) == [("inspectd/cam0/result", "cam0-test-0000018", True),
                                    ("inspectd/cam1/result", "cam1-test-0000019", True)]
    finally:
        late.disconnect()
        late.loop_stop()


@pytestmark_broker
def test_bridge_survives_a_broker_restart_and_delivers_what_came_while_it_was_down(line):
    broker, publisher, listener, metrics, bridge = line
    before = [result_message("cam1", i) for i in range(3)]
    for parts, _, _ in before:
        publisher.send(parts)
    assert wait_until(lambda: len(listener.results()) == 3, 10)
    broker.stop()
    assert wait_until(lambda: value(metrics, "inspectd_mqtt_connected") == 0, 10)
    during = [result_message("cam1", i) for i in range(3, 6)]
    for parts, _, _ in during:
        publisher.send(parts)
    assert wait_until(lambda: value(metrics, "inspectd_results_received_total", camera="cam1") == 6, 10)
    time.sleep(1.5)  # the bridge tries (and fails) to reconnect meanwhile
    broker.start()
    assert wait_until(lambda: value(metrics, "inspectd_mqtt_connected") == 1, 15)
    after = [result_message("cam1", i) for i in range(6, 8)]
    for parts, _, _ in after:
        publisher.send(parts)
    expected = {r["frame_id"] for _, r, _ in before + during + after}
    assert wait_until(lambda: set(listener.results()) == expected, 15, 0.1), sorted(expected - set(listener.results()))
    assert bridge.is_alive() and value(metrics, "inspectd_mqtt_dropped_total") == 0
    assert value(metrics, "inspectd_mqtt_connect_failures_total", reason="connection_lost") >= 1


@pytestmark_broker
def test_overflow_of_the_queue_while_the_broker_is_down_is_counted(tmp_path):
    port = free_port()
    broker = Mosquitto(tmp_path / "broker", port)
    broker.start()
    listener = Listener(port)
    listener_ready = wait_until(lambda: listener.client.is_connected(), 5)
    broker.stop()
    settings = service_settings(tmp_path, mqtt={"port": port, "reconnect_min_s": 1, "reconnect_max_s": 1,
                                                "queue_max": 3, "max_inflight": 2, "mask": "base64"})
    publisher = ResultPublisher(settings.transport.results_bind)
    metrics, stop, ready = ServiceMetrics("bridge"), threading.Event(), threading.Event()
    bridge = start_thread(run_bridge, settings, stop, metrics, ready=ready)
    try:
        assert listener_ready and ready.wait(10)
        time.sleep(0.5)
        for i in range(8):
            publisher.send(result_message("cam1", i)[0])
        assert wait_until(lambda: value(metrics, "inspectd_results_received_total", camera="cam1") == 8, 10)
        assert wait_until(lambda: value(metrics, "inspectd_mqtt_dropped_total") >= 3, 5)  # 8 > 3 queued + 2 in flight
        broker.start()
        dropped = value(metrics, "inspectd_mqtt_dropped_total")
        assert wait_until(lambda: len(listener.results()) == 8 - dropped, 15), (dropped, sorted(listener.results()))
        assert "cam1-test-0000007" in listener.results()  # the newest result is kept
    finally:
        stop.set()
        bridge.join(timeout=10)
        publisher.close()
        listener.close()
        broker.stop()


@pytestmark_broker
def test_a_broker_refusing_the_bridge_is_counted_and_survived(tmp_path):
    port = free_port()
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "mes", "secret"], check=True, timeout=10)
    passwords.chmod(0o600)
    broker = Mosquitto(tmp_path / "broker", port, f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-secret\n")
    settings = service_settings(tmp_path, mqtt={"port": port, "reconnect_min_s": 1, "reconnect_max_s": 1,
                                                "username": "mes", "password_file": str(wrong)})
    metrics, stop = ServiceMetrics("bridge"), threading.Event()
    bridge = start_thread(run_bridge, settings, stop, metrics)
    try:
        assert wait_until(lambda: value(metrics, "inspectd_mqtt_connect_failures_total", reason="not_authorized") >= 2,
                          15), list(metrics.registry.collect())
        assert bridge.is_alive() and value(metrics, "inspectd_mqtt_connected") == 0
    finally:
        stop.set()
        bridge.join(timeout=10)
        broker.stop()
    assert not bridge.is_alive()


def test_bridge_tells_systemd_ready_and_pings_the_watchdog_even_without_a_broker(tmp_path):
    from inspectd.service.sdnotify import Notifier

    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(10)
    settings = service_settings(tmp_path, mqtt={"port": free_port()})  # nobody listens there
    stop = threading.Event()
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    bridge = start_thread(run_bridge, settings, stop, notifier=notifier)
    try:
        ready_and_watchdog_seen(server)
    finally:
        stop.set()
        bridge.join(timeout=10)
        server.close()
    assert not bridge.is_alive()
