"""Minimal sd_notify(3): tell systemd READY=1, WATCHDOG=1, STOPPING=1 and STATUS= lines.

The protocol is one datagram per message to the unix socket named in $NOTIFY_SOCKET (a path, or
an abstract socket when it starts with '@'). Without that variable every call is a no-op, so
the same code runs under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_usec = watchdog_usec(env)
        self.sock = None
        if self.address is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WatchdogSec, as sd_watchdog_enabled advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, *lines: str) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:  # systemd gone or socket full: not a reason to stop inspecting
            log.debug("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # Linux abstract namespace
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET=%r: neither a path nor an abstract socket", value)
    return None


def watchdog_usec(env) -> int | None:
    """WATCHDOG_USEC, if it is meant for this process (WATCHDOG_PID absent or ours)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec if usec > 0 else None
