"""The on-disk spool: durable, bounded, survives restarts, resends after the ack timeout."""

from __future__ import annotations

import pytest

from inspectd.service.spool import Spool, read_entry

PARTS = [b'{"frame_id": "f"}', b"\x89PNG" + bytes(200)]


def make(tmp_path, drops=None, **over) -> Spool:
    args = {"max_frames": 10, "max_bytes": 1_000_000, "ack_timeout_s": 5.0, "full_policy": "drop_oldest"}
    args.update(over)
    return Spool(tmp_path / "spool", on_drop=lambda reason, fid: drops.append((reason, fid)) if drops is not None
                 else None, **args)


def test_put_load_ack(tmp_path):
    spool = make(tmp_path)
    assert spool.put("f1", PARTS) and len(spool) == 1 and spool.bytes == sum(map(len, PARTS))
    assert spool.load("f1") == PARTS
    assert spool.ack("f1") and not spool.ack("f1") and len(spool) == 0 and spool.bytes == 0
    assert list((tmp_path / "spool").iterdir()) == []


def test_due_new_then_after_timeout(tmp_path):
    spool = make(tmp_path)
    spool.put("f1", PARTS)
    spool.put("f2", PARTS)
    assert spool.due_for_resend(100.0) == ["f1", "f2"]  # never sent: due now
    spool.mark_sent("f1", 100.0)
    spool.mark_sent("f2", 103.0)
    assert spool.due_for_resend(104.0) == []
    assert spool.due_for_resend(105.0) == ["f1"]
    assert spool.due_for_resend(108.0) == ["f1", "f2"] and spool.attempts("f1") == 1


def test_resend_timeout_doubles_per_attempt_up_to_a_cap(tmp_path):
    spool = make(tmp_path)  # ack_timeout_s 5
    spool.put("f", PARTS)
    now = 0.0
    waits = []
    for _ in range(6):
        spool.mark_sent("f", now)
        wait = next(t for t in range(1, 100) if spool.due_for_resend(now + t))
        waits.append(wait)
        now += wait
    assert waits == [5, 10, 20, 40, 40, 40]


def test_survives_restart_in_order_and_resends_everything(tmp_path):
    spool = make(tmp_path)
    for i in range(5):
        spool.put(f"cam0-x-{i}", [PARTS[0], bytes([i]) * 10])
        spool.mark_sent(f"cam0-x-{i}", 100.0)
    spool.ack("cam0-x-2")
    reopened = make(tmp_path)
    assert reopened.due_for_resend(100.0) == ["cam0-x-0", "cam0-x-1", "cam0-x-3", "cam0-x-4"]
    assert reopened.load("cam0-x-4") == [PARTS[0], bytes([4]) * 10] and reopened.bytes == spool.bytes
    reopened.put("cam0-y-0", PARTS)  # new entries still sort after the reloaded ones
    assert make(tmp_path).due_for_resend(0.0)[-1] == "cam0-y-0"


def test_crash_leftovers_are_cleaned(tmp_path):
    spool = make(tmp_path)
    spool.put("good", PARTS)
    folder = tmp_path / "spool"
    (folder / "00000000000000000001_half.frame.tmp").write_bytes(b"ISPL1\x02")  # died before the rename
    (folder / "00000000000000000002_torn.frame").write_bytes(b"ISPL1\x02\x00\x00\x00\x09")  # damaged entry
    drops = []
    reopened = make(tmp_path, drops)
    assert list(reopened.entries) == ["good"] and drops == [("spool_corrupt", "torn")]
    assert sorted(p.name for p in folder.iterdir()) == [reopened.entries["good"].path.name]


def test_drop_oldest_when_full_by_count(tmp_path):
    drops = []
    spool = make(tmp_path, drops, max_frames=3)
    for i in range(5):
        assert spool.put(f"f{i}", PARTS)
    assert list(spool.entries) == ["f2", "f3", "f4"]
    assert drops == [("spool_full_dropped_oldest", "f0"), ("spool_full_dropped_oldest", "f1")]


def test_reject_new_when_full_by_bytes(tmp_path, caplog):
    drops = []
    size = sum(map(len, PARTS))
    spool = make(tmp_path, drops, max_bytes=2 * size + 10, full_policy="reject_new")
    assert spool.put("f0", PARTS) and spool.put("f1", PARTS)
    assert not spool.put("f2", PARTS)
    assert list(spool.entries) == ["f0", "f1"] and drops == [("spool_full", "f2")]
    assert "spool_full" in caplog.text and "reject_new" in caplog.text  # logged, not silent


def test_entry_larger_than_the_spool_is_refused(tmp_path):
    drops = []
    spool = make(tmp_path, drops, max_bytes=100)
    assert not spool.put("big", [bytes(101)]) and drops == [("spool_entry_too_large", "big")]


def test_bad_policy_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="full_policy"):
        make(tmp_path, full_policy="shrug")


def test_entry_format_round_trip(tmp_path):
    spool = make(tmp_path)
    spool.put("f", [b"", b"a", bytes(range(256))])
    assert read_entry(spool.entries["f"].path) == [b"", b"a", bytes(range(256))]


def test_oldest_age_follows_the_oldest_waiting_frame_across_a_restart(tmp_path):
    import os
    import time

    spool = make(tmp_path)
    assert spool.oldest_age(time.time()) == 0.0  # nothing waits
    spool.put("f1", PARTS)
    spool.put("f2", PARTS)
    now = time.time()
    assert 100.0 <= spool.oldest_age(now + 100.0) < 101.0
    spool.ack("f1")
    first = next(iter(spool.entries.values()))
    os.utime(first.path, (now - 600, now - 600))  # as if spooled ten minutes before a restart
    assert 600.0 <= make(tmp_path).oldest_age(now) < 601.0
