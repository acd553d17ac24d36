"""Free loopback ports for the benches' and tests' processes."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_rng = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (Linux), or the IANA default."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_port() -> int:
    """A loopback TCP port free at this moment, chosen below the ephemeral range. A port from
    bind(("127.0.0.1", 0)) is an ephemeral one, and an outgoing connection (a metrics scrape, a
    ZeroMQ connect) may take it as its own local port before the caller binds it ("Address
    already in use"); ports below that range are only ever taken by an explicit bind."""
    low = ephemeral_range()[0]
    for _ in range(200):
        port = _rng.randrange(10000, max(10001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything below the range is taken: any free port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
