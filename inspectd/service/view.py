"""`inspectd view`: a small live web page of the published results, for people beside the line.

One process subscribes to the results (like `inspectd watch`, CURVE when configured) and serves
a page over HTTP (Starlette + uvicorn; 127.0.0.1 unless view.host says otherwise):

    GET /         the page: per camera the last view.last_n results, newest first, each with the
                  defect outlines drawn on the result's preview picture (refiner.preview; grey
                  without one), its measurements, decision, scores
                  and refinement time, and results/defects per minute (plain HTML + JS, no build step)
    GET /events   server-sent events: `snapshot` on connect, then `result` per result and
                  `counts` every few seconds
    GET /state    the same snapshot as JSON

The subscriber thread hands each result to the event loop of every connected browser through a
small bounded queue; a browser that goes away or falls behind is dropped and counted
(inspectd_view_disconnects_total), the page reconnects by itself (EventSource).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from inspectd.errors import ConfigError
from inspectd.service.masks import frame_size, mask_outlines
from inspectd.service.messages import MESSAGE_ERROR_KINDS
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.sdnotify import Notifier
from inspectd.service.settings import Settings
from inspectd.service.watch import results

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("view.html")
CLIENT_QUEUE = 64  # events a browser may lag behind before it is dropped (it reconnects)
COUNTS_EVERY_S = 5.0
PROGRESS_EVERY_S = 60.0  # a progress line in the log at most this often
DEFECT_FIELDS = ("area_px", "area_mm2", "bbox", "centroid", "orientation_deg", "major_axis_px", "minor_axis_px",
                 "major_axis_mm", "minor_axis_mm", "mean_score", "max_score")


# --- pure: what the page shows of a result --------------------------------------------------------
def result_card(result: dict, mask: np.ndarray) -> dict:
    """The fields the page draws for one result (outlines in frame pixels)."""
    width, height = frame_size(result, mask)
    return {
        "frame_id": result["frame_id"], "camera": result["camera"], "decision": result["decision"],
        "image_score": result["image_score"], "error": result.get("error"),
        "refine_seconds": result["refinement"].get("seconds"), "iterations": result["refinement"].get("iterations"),
        "device": result["refinement"].get("device"), "published": result["timestamps"].get("published"),
        "captured": result["timestamps"].get("captured"), "model_id": result["model_id"],
        "width": width, "height": height, "outlines": mask_outlines(result, mask),
        "defects": [{k: d[k] for k in DEFECT_FIELDS if k in d} for d in result["defects"]],
        "preview": preview_picture(result, mask),
    }


def preview_picture(result: dict, mask) -> dict | None:
    """The result's preview JPEG (schema 3, checked by parse_result) as a data URL and the frame
    box it shows; None when the result has none (the page then draws the outlines on grey)."""
    jpeg = getattr(mask, "preview", None)
    if jpeg is None or "preview" not in result:
        return None
    return {"src": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode(), "box": result["preview"]["box"]}


class ViewState:
    """The last N cards per camera and the arrival times for the counts; thread-safe."""

    def __init__(self, last_n: int):
        self.last_n = last_n
        self.cards: dict[str, collections.deque] = {}
        self.arrivals: dict[str, collections.deque] = {}  # (time, defect count) of the last minute or so
        self.lock = threading.Lock()

    def add(self, card: dict, now: float) -> None:
        with self.lock:
            self.cards.setdefault(card["camera"], collections.deque(maxlen=self.last_n)).appendleft(card)
            arrivals = self.arrivals.setdefault(card["camera"], collections.deque())
            arrivals.append((now, len(card["defects"]) if card["decision"] == "defect" else 0))
            while arrivals and now - arrivals[0][0] > 60.0:
                arrivals.popleft()

    def counts(self, now: float) -> dict:
        with self.lock:
            return {camera: {"results_per_min": sum(1 for t, _ in a if now - t <= 60.0),
                             "defects_per_min": sum(n for t, n in a if now - t <= 60.0)}
                    for camera, a in self.arrivals.items()}

    def snapshot(self, now: float) -> dict:
        with self.lock:
            cards = {camera: list(deque) for camera, deque in sorted(self.cards.items())}
        return {"cameras": cards, "counts": self.counts(now), "last_n": self.last_n}


# --- browsers --------------------------------------------------------------------------------------
class Client:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue(CLIENT_QUEUE)
        self.dropped = False

    def offer(self, event: str) -> None:  # on the client's event loop
        if self.queue.full():
            self.dropped = True  # too slow: end its stream; the page reconnects and gets a snapshot
        else:
            self.queue.put_nowait(event)


class Hub:
    """Fans events out from the subscriber thread to every connected browser."""

    def __init__(self, state: ViewState, metrics: ServiceMetrics):
        self.state, self.metrics = state, metrics
        self.clients: set[Client] = set()
        self.lock = threading.Lock()

    def publish(self, name: str, data: dict) -> None:
        event = sse(name, data)
        with self.lock:
            clients = list(self.clients)
        for client in clients:
            try:
                client.loop.call_soon_threadsafe(client.offer, event)
            except RuntimeError:  # its loop is closed: the server is stopping
                pass

    def add(self, client: Client) -> None:
        with self.lock:
            self.clients.add(client)
            self.metrics.view_clients.set(len(self.clients))

    def remove(self, client: Client) -> None:
        with self.lock:
            self.clients.discard(client)
            self.metrics.view_clients.set(len(self.clients))
        self.metrics.view_disconnects.inc()


def sse(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n"


def make_app(hub: Hub) -> Starlette:
    async def page(_request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    async def state(_request: Request) -> JSONResponse:
        return JSONResponse(hub.state.snapshot(time.time()))

    async def events(request: Request) -> StreamingResponse:
        client = Client(asyncio.get_running_loop())
        hub.add(client)
        log.info("view: browser %s connected", request.client.host if request.client else "?")
        return StreamingResponse(stream(client), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream(client: Client):
        try:
            yield sse("snapshot", hub.state.snapshot(time.time()))
            last_counts = time.monotonic()
            while not client.dropped:
                try:
                    yield await asyncio.wait_for(client.queue.get(), timeout=COUNTS_EVERY_S)
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"  # also how a closed connection is noticed
                if time.monotonic() - last_counts >= COUNTS_EVERY_S:
                    yield sse("counts", hub.state.counts(time.time()))
                    last_counts = time.monotonic()
        finally:  # the browser went away (or fell behind): count it, forget it
            hub.remove(client)
            log.info("view: browser disconnected")

    return Starlette(routes=[Route("/", page), Route("/events", events), Route("/state", state)])


# --- the process ---------------------------------------------------------------------------------
def subscribe(settings: Settings, stop: threading.Event, hub: Hub, metrics: ServiceMetrics, tick,
              ready: threading.Event) -> None:
    """The subscriber thread: every result into the state and out to the browsers."""
    seen, last_progress = 0, time.monotonic()
    for result, mask in results(settings, stop, ready=ready, tick=tick,
                                on_bad=lambda kind: metrics.bad_inputs.labels(kind).inc()):
        metrics.results_received.labels(result["camera"]).inc()
        card = result_card(result, mask)
        hub.state.add(card, time.time())
        hub.publish("result", {"card": card, "counts": hub.state.counts(time.time())})
        seen += 1
        if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
            log.info("view: %d result(s) so far, %d browser(s) watching", seen, len(hub.clients))
            last_progress = time.monotonic()


def view_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def run_view(settings: Settings, stop_event: threading.Event, metrics: ServiceMetrics | None = None,
             notifier: Notifier | None = None, ready: threading.Event | None = None,
             on_url=lambda url: None) -> None:
    """Serve the page until stop_event (or SIGTERM/SIGINT when run on the main thread)."""
    metrics = metrics or ServiceMetrics("view")
    notifier = notifier or Notifier()
    metrics.init_series(None, (), MESSAGE_ERROR_KINDS)
    hub = Hub(ViewState(settings.view.last_n), metrics)
    server = uvicorn.Server(uvicorn.Config(make_app(hub), host=settings.view.host, port=settings.view.port,
                                           log_level="warning", lifespan="off", access_log=False))
    subscribed = threading.Event()
    watchdog, last_ping = notifier.watchdog_interval(), [0.0]

    def tick() -> None:  # every 100 ms from the subscriber loop
        if server.should_exit:
            stop_event.set()  # uvicorn took SIGTERM/SIGINT
        if watchdog and time.monotonic() - last_ping[0] >= watchdog:
            notifier.watchdog()
            last_ping[0] = time.monotonic()

    subscriber = threading.Thread(target=subscribe, name="view-subscriber", daemon=True,
                                  args=(settings, stop_event, hub, metrics, tick, subscribed))
    announcer = threading.Thread(target=announce, name="view-announce", daemon=True,
                                 args=(server, subscribed, stop_event, notifier, ready, on_url))
    serving = settings.metrics.port is not None
    if serving:
        metrics.serve(settings.metrics.host, settings.metrics.port)
    metrics.up.labels("view").set(1)
    subscriber.start()
    announcer.start()
    try:
        try:
            server.run()
        except SystemExit:  # uvicorn exits when it cannot listen; it has logged why
            raise ConfigError(f"view: cannot listen on {settings.view.host}:{settings.view.port} (port taken, or "
                              "not an address of this host; set view.host / view.port)") from None
    finally:
        stop_event.set()
        notifier.stopping()
        subscriber.join(timeout=5)
        metrics.up.labels("view").set(0)
        if serving:
            metrics.stop()
        log.info("view stopped")


def announce(server: uvicorn.Server, subscribed: threading.Event, stop: threading.Event, notifier: Notifier,
             ready: threading.Event | None, on_url) -> None:
    """Once the HTTP socket listens and the subscriber is connected: log the URL, READY=1; then
    wait for stop_event and ask uvicorn to exit."""
    while not (server.started and subscribed.is_set()) and not stop.wait(0.05):
        pass
    if server.started:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        url = view_url(host, port)
        log.info("view on %s", url)
        on_url(url)
        notifier.ready(f"serving the live view on {url}")
        if ready is not None:
            ready.set()
    stop.wait()
    server.should_exit = True
