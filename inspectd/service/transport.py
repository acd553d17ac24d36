"""ZeroMQ sockets for the daemon (patterns from the zguide).

- capture binds PUSH for flagged frames; refiners connect PULL, so several share the load;
- each refiner binds PUB for results on topic `defect.<camera>`; capture, `inspectd watch` and
  the line's PLC/MES connect SUB. Capture treats a result seen there as the ack of its frame.

Every socket gets a high-water mark, linger 0 (shutdown never hangs on a dead peer) and a zmq
message-size cap. With CURVE keys configured, every socket is encrypted, the binding side is the
CURVE server and a ThreadAuthenticator admits only clients whose public certificates are in the
authorized_clients folder: an unknown client never completes the handshake, so it gets nothing.
"""

from __future__ import annotations

import collections
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from inspectd.errors import ConfigError
from inspectd.service.settings import CurveSettings, TransportSettings

log = logging.getLogger(__name__)
# zmq drops (and disconnects the sender of) any single part above this multiple of
# max_message_bytes; between 1x and this, parse_frame rejects the message and counts it
ZMQ_SIZE_CAP_FACTOR = 2
# kernel socket buffers on the frame path: without a cap, TCP autotuning lets a refiner that is
# busy (or whose link is down) hold dozens of frames in its buffers while the others idle
FRAME_SOCKET_BUFFER_BYTES = 8 * 1024


class Transport:
    """One zmq context per process, with its authenticator when CURVE is on."""

    def __init__(self, settings: TransportSettings):
        self.settings = settings
        self.context = zmq.Context()
        self.authenticator: ThreadAuthenticator | None = None
        self.keys = load_curve_keys(settings.curve) if settings.curve.enabled else None
        if self.keys is not None:
            self.authenticator = start_authenticator(self.context, settings.curve.authorized_clients)

    def socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = self.settings.hwm
        sock.setsockopt(zmq.MAXMSGSIZE, ZMQ_SIZE_CAP_FACTOR * self.settings.max_message_bytes)
        return sock

    def bind(self, kind: int, endpoint: str, configure: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
        sock = self.socket(kind)
        if configure is not None:
            configure(sock)
        if self.keys is not None:
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = self.keys["public"], self.keys["secret"]
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise ConfigError(f"cannot bind {endpoint}: {exc}") from None
        return sock

    def connect(self, kind: int, endpoints: list[str], wait_s: float = 0.0, subscribe: str | None = None,
                configure: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
        """Connect to every endpoint; with wait_s, wait up to that long for all handshakes."""
        sock = self.socket(kind)
        if configure is not None:
            configure(sock)
        if self.keys is not None:
            sock.curve_publickey, sock.curve_secretkey = self.keys["public"], self.keys["secret"]
            sock.curve_serverkey = self.keys["server"]
        if subscribe is not None:
            sock.setsockopt_string(zmq.SUBSCRIBE, subscribe)  # before connecting: sent with the handshake
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) if wait_s else None
        for endpoint in endpoints:
            sock.connect(endpoint)
        if monitor is not None:
            connected = count_events(monitor, len(endpoints), wait_s)
            if connected < len(endpoints):
                log.warning("connected to %d of %d endpoint(s) after %.1f s; zmq keeps retrying",
                            connected, len(endpoints), wait_s)
            sock.disable_monitor()
            monitor.close()
        return sock

    # the four sockets of the daemon
    def frames_push(self) -> zmq.Socket:
        sock = self.bind(zmq.PUSH, self.settings.frames_bind, self.frame_path_options)
        sock.immediate = True  # queue only to connected refiners, so a frame never waits in a dead pipe
        return sock

    def frames_pull(self) -> zmq.Socket:
        return self.connect(zmq.PULL, self.settings.frames_connect, configure=self.frame_path_options)

    def frame_path_options(self, sock: zmq.Socket) -> None:
        """Few frames in flight per refiner (set before bind/connect).

        PUSH deals frames round-robin to every refiner whose queue has room. With one frame
        queued per side and small kernel buffers, a busy refiner holds about five frames (the
        one it refines included: queues, zmq's encoder/decoder, the kernel); the rest stay in the
        capture's spool, where any refiner that frees up takes them. A refiner whose link dies
        fills its queue and gets nothing more; what it held is resent after spool.ack_timeout_s.

        No ZMTP heartbeats here: while a refiner refines, its full queue stops zmq reading its
        connection, pings included, so heartbeats shorter than a refinement cut healthy refiners
        off (measured: the frames they held dropped with the connection, resent only after the
        ack timeout). Liveness belongs to the application layer.
        """
        sock.sndhwm = sock.rcvhwm = self.settings.frames_hwm
        sock.sndbuf = sock.rcvbuf = FRAME_SOCKET_BUFFER_BYTES

    def results_pub(self) -> zmq.Socket:
        return self.bind(zmq.PUB, self.settings.results_bind)

    def results_sub(self, topic: str = "defect.", wait_s: float = 0.0) -> zmq.Socket:
        return self.connect(zmq.SUB, self.settings.results_connect, wait_s, subscribe=topic)

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.destroy(linger=0)


def count_events(monitor: zmq.Socket, wanted: int, timeout_s: float) -> int:
    """How many monitor events arrive (up to `wanted`) within timeout_s."""
    seen, deadline = 0, time.monotonic() + timeout_s
    while seen < wanted and (left := deadline - time.monotonic()) > 0:
        if monitor.poll(int(left * 1000) + 1):
            recv_monitor_message(monitor)
            seen += 1
    return seen


# --- CURVE -----------------------------------------------------------------------------------
def make_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write `<name>.key` (public, share it) and `<name>.key_secret` (keep it); returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_curve_keys(curve: CurveSettings) -> dict[str, bytes]:
    public, secret = read_certificate(curve.secret_key, need_secret=True)
    server, _ = read_certificate(curve.server_public_key, need_secret=False)
    if not Path(curve.authorized_clients).is_dir():
        raise ConfigError(f"transport.curve.authorized_clients {curve.authorized_clients}: not a folder of "
                          "public certificates")
    return {"public": public, "secret": secret, "server": server}


def read_certificate(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CURVE certificate {path}: cannot load ({exc})") from None
    if need_secret and not secret:
        raise ConfigError(f"CURVE certificate {path}: has no secret key (use the .key_secret file)")
    return public, secret


def start_authenticator(context: zmq.Context, authorized_clients: Path) -> ThreadAuthenticator:
    auth = ThreadAuthenticator(context, log=logging.getLogger("inspectd.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized_clients))
    return auth


HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
FIRST_HANDSHAKE_RETRY_S = 0.5


class Reconnector:
    """Connects a socket again after its peer connection ends, and backs off from failed handshakes.

    libzmq reconnects by itself after a network error, but not after a protocol error, and a
    part above ZMQ_MAXMSGSIZE is one: without this, one oversized message would cut a refiner
    off from that capture process for good. A peer whose handshake fails (a wrong or unknown
    CURVE key) is another matter: retrying at once would try again many times a second, so
    that endpoint is disconnected and tried again after 0.5 s, 1 s, 2 s ... up to
    backoff_max_s, until a handshake succeeds. Every failed handshake goes to
    `on_handshake_failure(endpoint)` (a metric). With reconnect=False (a bound socket, whose
    clients do the connecting) failures are only reported.
    """

    def __init__(self, sock: zmq.Socket, backoff_max_s: float = 30.0,
                 on_handshake_failure: Callable[[str], None] | None = None, reconnect: bool = True):
        self.sock, self.backoff_max_s, self.reconnect = sock, backoff_max_s, reconnect
        self.on_handshake_failure = on_handshake_failure or (lambda endpoint: None)
        # a fresh inproc address: the socket's default one may still be held by an earlier monitor
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
                                               | HANDSHAKE_FAILED, addr=f"inproc://reconnector-{uuid.uuid4().hex}")
        self.failures: dict[str, int] = {}  # endpoint -> failed handshakes in a row
        self.retry_at: dict[str, float] = {}  # endpoint -> when to connect it again

    def check(self, now: float | None = None) -> list[str]:
        """Handle the events since the last check; returns the endpoints reconnected after a disconnect."""
        now = time.monotonic() if now is None else now
        reconnected = []
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            endpoint, kind = event["endpoint"].decode(), event["event"]
            if kind & HANDSHAKE_FAILED:
                self.handshake_failed(endpoint, now)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.failures.pop(endpoint, None)
            elif kind == zmq.EVENT_DISCONNECTED and self.reconnect and endpoint not in self.retry_at:
                self.connect_again(endpoint)
                log.warning("connection to %s ended; reconnecting", endpoint)
                reconnected.append(endpoint)
        for endpoint, at in list(self.retry_at.items()):
            if now >= at:
                del self.retry_at[endpoint]
                self.sock.connect(endpoint)
        return reconnected

    def handshake_failed(self, endpoint: str, now: float) -> None:
        self.on_handshake_failure(endpoint)
        if not self.reconnect:
            log.debug("a client's handshake on %s failed", endpoint)
            return
        failures = self.failures[endpoint] = self.failures.get(endpoint, 0) + 1
        delay = min(FIRST_HANDSHAKE_RETRY_S * 2 ** (failures - 1), self.backoff_max_s)
        self.disconnect(endpoint)  # stop libzmq's own fast retries ...
        self.retry_at[endpoint] = now + delay  # ... and try again later
        log.warning("handshake with %s failed (%d in a row; a wrong CURVE key?); next try in %.1f s", endpoint,
                    failures, delay)

    def connect_again(self, endpoint: str) -> None:
        self.disconnect(endpoint)  # drop the dead (or retrying) connection ...
        self.sock.connect(endpoint)  # ... and start a fresh one

    def disconnect(self, endpoint: str) -> None:
        try:
            self.sock.disconnect(endpoint)
        except zmq.ZMQError:
            pass

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close()


# --- subscriber helper -----------------------------------------------------------------------
class Deduplicator:
    """Remembers the last `capacity` frame ids, because resends can publish a result twice."""

    def __init__(self, capacity: int = 10000):
        self.capacity = capacity
        self.order: collections.deque[str] = collections.deque()
        self.seen: set[str] = set()

    def first_time(self, frame_id: str) -> bool:
        if frame_id in self.seen:
            return False
        self.seen.add(frame_id)
        self.order.append(frame_id)
        if len(self.order) > self.capacity:
            self.seen.discard(self.order.popleft())
        return True


def recv_multipart_nowait(sock: zmq.Socket) -> list[bytes] | None:
    try:
        return sock.recv_multipart(flags=zmq.NOBLOCK)
    except zmq.Again:
        return None


def send_multipart_nowait(sock: zmq.Socket, parts: list[bytes]) -> bool:
    """False when no peer can take the message now (none connected, or all at their HWM)."""
    try:
        sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        return True
    except zmq.Again:
        return False
