"""sd_notify over a real unix datagram socket (path and abstract), and a no-op without one."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from inspectd.service.sdnotify import Notifier


def listen(address) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


@pytest.mark.parametrize("abstract", [False, True])
def test_messages_arrive(tmp_path, abstract):
    if abstract:
        name = f"inspectd-test-{uuid.uuid4().hex}"
        server, env = listen("\0" + name), {"NOTIFY_SOCKET": "@" + name}
    else:
        path = str(tmp_path / "notify.sock")
        server, env = listen(path), {"NOTIFY_SOCKET": path}
    with server:
        notifier = Notifier(env)
        assert notifier.ready("capturing cam0") and notifier.watchdog() and notifier.status("42 frames")
        assert notifier.stopping()
        received = [server.recv(4096).decode() for _ in range(4)]
        notifier.close()
    assert received == ["READY=1\nSTATUS=capturing cam0", "WATCHDOG=1", "STATUS=42 frames", "STOPPING=1"]


def test_no_socket_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()
    assert notifier.watchdog_interval() is None


def test_vanished_socket_does_not_raise(tmp_path):
    path = tmp_path / "gone.sock"
    listen(str(path)).close()
    path.unlink()
    assert not Notifier({"NOTIFY_SOCKET": str(path)}).ready()


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None  # not ours
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval() is None
