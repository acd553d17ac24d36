"""Property tests (Hypothesis) for every parser that reads untrusted bytes (issue 13): whatever
arrives, parse_frame/parse_result raise MessageError (with a known kind) or return a valid
message; the JSON loader and the PNG header check raise only the project's error types; and the
named hostile cases of inspectd/eval/chaos.py are all refused with the kind they deserve."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspectd.data.images import check_png, decode_image, png_header
from inspectd.errors import BadImageError
from inspectd.eval.chaos import frame_cases, png_declaring, result_cases
from inspectd.service.messages import (MAX_JSON_DEPTH, MESSAGE_ERROR_KINDS, MessageError, encode_frame,
                                       encode_result, loads, parse_frame, parse_result)

MAX = 1_000_000
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD_HEADER = {"frame_id": "cam0-1-0000001", "camera": "cam0", "captured_at": 1.0, "screened_at": 1.0,
               "score": 1.5, "threshold": 1.0, "map_summary": {"max": 2.0}, "model_id": "m", "px_per_mm": 4.0,
               "ack_token": "ab" * 16}
GOOD_FRAME = encode_frame(GOOD_HEADER, np.full((16, 24, 3), 0.5, np.float32))
GOOD_RESULT = encode_result({"frame_id": "cam0-1-0000001", "camera": "cam0",
                             "timestamps": {"captured": 1.0, "screened": 1.0, "refined": 2.0, "published": 2.0},
                             "image_score": 1.5, "decision": "defect",
                             "defects": [{"area_px": 6, "bbox": [1, 2, 3, 2], "centroid": [2.0, 2.5]}],
                             "refinement": {"seconds": 0.1, "iterations": 1, "device": "cpu"}, "model_id": "m",
                             "ack_token": "ab" * 16}, np.pad(np.ones((2, 3), bool), ((2, 12), (1, 20))))
assert len(GOOD_RESULT) == 3  # topic, JSON, the defect's mask crop (schema 2)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


def refused_or_valid(parse, parts):
    """The property: a MessageError of a known kind, or a message whose numbers are all finite."""
    try:
        message, image = parse(parts)
    except MessageError as exc:
        assert exc.kind in MESSAGE_ERROR_KINDS and exc.detail
        return None
    assert all_finite(message)
    return message, image


def all_finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    return not isinstance(value, int) or abs(value) <= 2**63


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_parse_frame_takes_any_parts(parts):
    refused_or_valid(lambda p: parse_frame(p, MAX), parts)


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(GOOD_HEADER) + ["schema", "width", "height", "encoding"]),
                       json_values, max_size=6))
def test_parse_frame_takes_any_header_values(changes):
    header = {**json.loads(GOOD_FRAME[0]), **changes}
    text = json.dumps(header).encode()  # may hold NaN/Infinity: json.dumps allows them, the parser must not
    refused_or_valid(lambda p: parse_frame(p, MAX), [text, GOOD_FRAME[1]])


@FUZZ
@given(st.data())
def test_parse_frame_takes_any_mutation_of_a_good_frame(data):
    part = data.draw(st.sampled_from([0, 1]))
    raw = bytearray(GOOD_FRAME[part])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    parts = list(GOOD_FRAME)
    parts[part] = bytes(raw[: data.draw(st.integers(0, len(raw)))])
    refused_or_valid(lambda p: parse_frame(p, MAX), parts)


@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=3, max_size=3),
       st.dictionaries(st.sampled_from(["frame_id", "decision", "defects", "refinement", "mask", "timestamps",
                                        "image_score", "ack_token", "error", "schema"]), json_values, max_size=4))
def test_parse_result_takes_any_parts_and_values(parts, changes):
    refused_or_valid(parse_result, parts)
    text = json.dumps({**json.loads(GOOD_RESULT[1]), **changes}).encode()
    refused_or_valid(parse_result, [GOOD_RESULT[0], text, GOOD_RESULT[2]])


@FUZZ
@given(st.binary(max_size=2000) | st.text(alphabet="[]{}\",:0123456789.eE-\\ a", max_size=2000).map(str.encode))
def test_json_loader_raises_only_message_error(data):
    try:
        obj = loads(data, "fuzz", 4096)
    except MessageError as exc:
        assert exc.kind in ("malformed", "oversized")
        return
    assert isinstance(obj, dict) and all_finite(obj)


@FUZZ
@given(json_values)
def test_json_loader_agrees_with_json_on_shallow_valid_objects(value):
    text = json.dumps({"v": value}, allow_nan=False) if all_finite(value) else None
    if text is None:
        return
    try:
        assert loads(text.encode(), "fuzz", 10**6) == json.loads(text)
    except MessageError as exc:  # only for what the bounds refuse on purpose
        assert "nests" in exc.detail or "out of range" in exc.detail


def test_json_loader_nesting_limit_is_exact():
    ok = ("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)).encode()
    assert loads(b'{"a":' + ok + b"}", "x", 10**6)
    too_deep = b'{"a":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"
    with pytest.raises(MessageError, match="nests"):
        loads(too_deep, "x", 10**6)


@FUZZ
@given(st.binary(max_size=100), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255),
       st.integers(0, 255))
def test_png_header_check_raises_only_bad_image_error(tail, width, height, depth, colour):
    for data in (tail, b"\x89PNG\r\n\x1a\n" + tail, png_declaring(width, height, tail, depth, colour)):
        try:
            w, h = check_png(data, 4096 * 4096, "fuzz")
        except BadImageError:
            continue
        assert (w, h) == png_header(data)[:2] and 0 < w * h <= 4096 * 4096
        try:
            image = decode_image(data, "fuzz", 4096 * 4096)
        except BadImageError:
            continue
        assert image.shape == (h, w, 3)


@pytest.mark.parametrize("name", sorted(frame_cases()))
def test_every_hostile_frame_case_is_refused(name):
    case = frame_cases()[name]
    rng = np.random.default_rng(0)
    for _ in range(5):
        parts = case(list(GOOD_FRAME), rng)
        if name in ("header_bit_flips", "png_bit_flips"):  # a flip can land where it changes nothing wrong
            refused_or_valid(lambda p: parse_frame(p, MAX), parts)
            continue
        with pytest.raises(MessageError):
            parse_frame(parts, MAX, expected_size=(16, 24))


@pytest.mark.parametrize("name", sorted(result_cases()))
def test_every_hostile_result_case_is_refused_or_carries_no_token(name):
    case = result_cases()[name]
    rng = np.random.default_rng(0)
    for _ in range(5):
        parts = case(list(GOOD_RESULT), rng)
        if name.startswith("forged") or name.endswith("bit_flips"):
            parsed = refused_or_valid(parse_result, parts)
            if name.startswith("forged"):  # well-formed, but it does not echo the frame's token
                assert parsed is not None and parsed[0].get("ack_token") != "ab" * 16
            continue
        with pytest.raises(MessageError):
            parse_result(parts)


def reference_depth(data: bytes) -> int:
    """JSON nesting outside strings, one character at a time (slow, obviously right). A backslash
    escapes the next character anywhere: valid JSON has them only inside strings, and invalid
    JSON stops the parser at that backslash, before any nesting that follows it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in data.decode("latin-1"):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_string:
            in_string = ch != '"'
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


@FUZZ
@given(st.text(alphabet='[]{}"\\a,', max_size=300).map(str.encode))
def test_nesting_depth_matches_a_character_by_character_scan(data):
    from inspectd.service.messages import nesting_depth

    assert nesting_depth(data) == reference_depth(data)


def test_nesting_depth_is_linear_even_for_unterminated_escaped_strings():
    """A regex over strings took 9 s for 32 kB of \\" (every quote started a scan to the end)."""
    import time

    from inspectd.service.messages import nesting_depth

    hostile = b'"' + b'\\"' * 2_000_000  # 4 MB: the result size limit
    started = time.perf_counter()
    assert nesting_depth(hostile) == 0 and nesting_depth(b'"\\\\"[[') == 2
    assert time.perf_counter() - started < 2.0
