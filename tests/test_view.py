"""`inspectd view`: the page model (pure), and the live page in a real browser: Debian's headless
chromium, driven by Selenium through Debian's chromedriver, sees a published defect appear with
its outline drawn on the result's preview picture. The run writes a screenshot of the page to runs/view-screenshot.png."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from inspectd.service.messages import parse_result
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.view import ViewState, result_card, run_view

from published_results import ResultPublisher, result_message
from test_service_doubles import free_port, ready_and_watchdog_seen, service_settings, wait_until

SCREENSHOT = Path(__file__).resolve().parents[1] / "runs" / "view-screenshot.png"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


# --- what the page shows ---------------------------------------------------------------------------
def test_card_outlines_the_mask_and_keeps_the_measurements():
    _, result, mask = result_message("cam1", 7)
    card = result_card(result, mask)
    assert (card["width"], card["height"]) == (64, 64) and len(card["outlines"]) == 1
    outline = np.array(card["outlines"][0])
    x, y, w, h = result["defects"][0]["bbox"]
    assert outline[:, 0].min() == x and outline[:, 0].max() == x + w - 1
    assert outline[:, 1].min() == y and outline[:, 1].max() == y + h - 1
    assert card["defects"][0]["area_px"] == int(mask.sum()) and card["refine_seconds"] == 1.25
    assert card["preview"] is None  # the result carries no picture: the page draws on grey


def test_card_carries_the_results_preview_picture():
    parts, _, _ = result_message("cam1", 7, preview=True)
    result, mask = parse_result(parts)
    card = result_card(result, mask)
    assert card["preview"]["box"] == [0, 0, 64, 64]
    assert base64.b64decode(card["preview"]["src"].split(",", 1)[1]) == parts[-1]


def test_state_keeps_the_last_n_per_camera_and_counts_the_last_minute():
    state = ViewState(last_n=3)
    for i in range(5):
        _, result, mask = result_message("cam1", i)
        state.add(result_card(result, mask), now=100.0 + i)
    _, result, mask = result_message("cam2", 9)
    state.add(result_card(result | {"decision": "ok", "defects": []}, np.zeros_like(mask)), now=30.0)
    snap = state.snapshot(now=105.0)
    assert [c["frame_id"][-2:] for c in snap["cameras"]["cam1"]] == ["04", "03", "02"]  # newest first
    assert snap["counts"]["cam1"] == {"results_per_min": 5, "defects_per_min": 5}
    assert snap["counts"]["cam2"] == {"results_per_min": 0, "defects_per_min": 0}  # 75 s ago
    json.dumps(snap, allow_nan=False)  # what /state and the events send


# --- the live page ---------------------------------------------------------------------------------
@pytest.fixture
def view(tmp_path):
    settings = service_settings(tmp_path, view={"port": free_port(), "last_n": 4})
    publisher = ResultPublisher(settings.transport.results_bind)
    metrics, stop, ready, urls = ServiceMetrics("view"), threading.Event(), threading.Event(), []
    thread = threading.Thread(target=run_view, args=(settings, stop, metrics),
                              kwargs={"ready": ready, "on_url": urls.append}, daemon=True)
    thread.start()
    assert ready.wait(15)
    time.sleep(0.5)  # the zmq subscription reaches the PUB socket
    yield urls[0], publisher, metrics, thread
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    publisher.close()


def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="chromium/chromedriver not found: run scripts/ci-system-deps.sh (Debian packages chromium, "
                           "chromium-driver)")
def test_browser_sees_a_published_defect_appear_with_its_outline(view, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    url, publisher, metrics, thread = view
    driver = browser(tmp_path)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 15)
        wait.until(seen.text_to_be_present_in_element((By.ID, "status"), "live"))
        sent = []
        for i in range(3):
            parts, result, mask = result_message("line1-cam1", i, preview=True)
            publisher.send(parts)
            sent.append((result, mask))
        result, mask = sent[-1]
        card = wait.until(seen.presence_of_element_located(
            (By.CSS_SELECTOR, f'[data-frame-id="{result["frame_id"]}"]')))
        outline = card.find_element(By.CSS_SELECTOR, "svg polygon.outline")
        points = np.array([p.split(",") for p in outline.get_attribute("points").split()], float)
        x, y, w, h = result["defects"][0]["bbox"]
        assert len(points) >= 4 and points[:, 0].min() == x and points[:, 1].max() == y + h - 1
        assert outline.size["width"] > 20  # drawn, at the card's scale
        picture = card.find_element(By.CSS_SELECTOR, "svg image.preview")  # on the part's picture
        assert picture.get_attribute("href").startswith("data:image/jpeg;base64,") and picture.size["width"] > 100
        assert driver.execute_script("return arguments[0].getBBox().width", picture) == 64  # frame pixels
        assert card.get_attribute("data-decision") == "defect"
        assert f'{result["defects"][0]["area_px"]} px' in card.text and "refined in 1.25 s" in card.text
        wait.until(lambda d: "3 results/min" in d.find_element(By.CSS_SELECTOR, "#camera-line1-cam1 .counts").text)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#camera-line1-cam1 .card")) == 3
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT))
        print(f"screenshot: {SCREENSHOT}")
    finally:
        driver.quit()
    # the browser went away: counted, and the view goes on serving
    assert wait_until(lambda: (metrics.registry.get_sample_value("inspectd_view_disconnects_total") or 0) >= 1, 20)
    assert metrics.registry.get_sample_value("inspectd_view_clients") == 0 and thread.is_alive()
    publisher.send(result_message("line1-cam1", 3)[0])
    assert wait_until(lambda: len(json.loads(urllib.request.urlopen(url + "state").read())["cameras"]["line1-cam1"])
                      == 4, 5)


def test_a_malformed_result_is_counted_and_the_view_goes_on(view):
    url, publisher, metrics, thread = view
    parts = result_message("cam1", 1)[0]
    publisher.send([parts[0], b'{"schema": 1}', parts[2]])
    publisher.send(parts)
    assert wait_until(lambda: metrics.registry.get_sample_value("inspectd_bad_inputs_total",
                                                                {"kind": "malformed"}) == 1, 5)
    snap = json.loads(urllib.request.urlopen(url + "state").read())
    assert [c["frame_id"] for c in snap["cameras"]["cam1"]] == ["cam1-test-0000001"] and thread.is_alive()


def test_view_tells_systemd_ready_and_pings_the_watchdog(tmp_path):
    import socket

    from inspectd.service.sdnotify import Notifier

    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(10)
    settings = service_settings(tmp_path, view={"port": free_port()})
    stop = threading.Event()
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    thread = threading.Thread(target=run_view, args=(settings, stop), kwargs={"notifier": notifier}, daemon=True)
    thread.start()
    try:
        ready_and_watchdog_seen(server)
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()
    assert not thread.is_alive()


def test_a_taken_port_is_one_clear_error(tmp_path):
    import socket

    from inspectd.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = service_settings(tmp_path, view={"port": taken.getsockname()[1]})
        with pytest.raises(ConfigError, match=r"view: cannot listen on 127\.0\.0\.1:\d+"):
            run_view(settings, threading.Event())
