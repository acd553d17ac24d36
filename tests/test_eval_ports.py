"""free_port: loopback ports for the benches' processes, outside the kernel's ephemeral range."""

import socket

from inspectd.eval.ports import ephemeral_range, free_port


def test_free_ports_are_bindable_and_below_the_ephemeral_range():
    low, high = ephemeral_range()
    assert 1024 <= low < high
    ports = {free_port() for _ in range(20)}
    assert all(10000 <= p < low for p in ports) and len(ports) > 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))
