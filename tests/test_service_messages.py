"""The wire schema: round trips, and every way a message can be bad gives its own kind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inspectd.data.images import encode_png
from inspectd.service.messages import (SCHEMA_VERSION, MessageError, encode_frame, encode_result, map_summary,
                                       parse_frame, parse_result)

MAX = 1_000_000


def frame_header(**over) -> dict:
    header = {"frame_id": "cam0-1-0000001", "camera": "cam0", "captured_at": 1700000000.25,
              "screened_at": 1700000000.3, "score": 1.5, "threshold": 1.0,
              "map_summary": {"max": 2.0, "mean": 0.1, "flagged_fraction": 0.01, "flagged_bbox": [1, 2, 3, 4]},
              "model_id": "patchcore-abc", "px_per_mm": None}
    return {**header, **over}


def image(h=32, w=40) -> np.ndarray:
    return np.random.default_rng(0).random((h, w, 3)).astype(np.float32)


def test_frame_round_trip():
    img = image()
    header, decoded = parse_frame(encode_frame(frame_header(), img), MAX, expected_size=(32, 40))
    assert header["schema"] == SCHEMA_VERSION and header["width"] == 40 and header["height"] == 32
    assert np.abs(decoded - img).max() <= 0.5 / 255 + 1e-6  # PNG keeps 8 bits exactly


def test_map_summary():
    scores = np.zeros((10, 20), np.float32)
    scores[2:5, 3:9] = 3.0
    s = map_summary(scores, 1.0)
    assert s["max"] == 3.0 and s["flagged_fraction"] == pytest.approx(18 / 200) and s["flagged_bbox"] == [3, 2, 6, 3]
    assert map_summary(np.zeros((4, 4)), 1.0)["flagged_bbox"] is None


def tamper(header_over=None, parts=None):
    good = encode_frame(frame_header(), image())
    if header_over is not None:
        header = json.loads(good[0])
        header.update(header_over)
        good[0] = json.dumps(header).encode()
    return parts if parts is not None else good


@pytest.mark.parametrize("parts, kind", [
    (tamper(parts=[b"only one part"]), "malformed"),
    (tamper(parts=[b"{not json", encode_png(image())]), "malformed"),
    (tamper(parts=[b"[1, 2]", encode_png(image())]), "malformed"),
    (tamper(parts=[b"\xff\xfe", encode_png(image())]), "malformed"),
    (tamper({"score": "high"}), "malformed"),
    (tamper({"score": True}), "malformed"),
    (tamper({"frame_id": "../../etc/passwd"}), "malformed"),
    (tamper({"encoding": "jpeg"}), "malformed"),
    (tamper({"width": -1}), "malformed"),
    (tamper({"schema": 99}), "schema_version"),
    (tamper(parts=[json.dumps({"frame_id": "x"}).encode(), b""]), "schema_version"),
    (tamper(parts=[encode_frame(frame_header(), image())[0], b"\x89PNG\r\n\x1a\n garbage"]), "bad_image"),
    (tamper({"width": 41}), "wrong_size"),
    (tamper(parts=[b"x" * (MAX + 1), b""]), "oversized"),
])
def test_bad_frames_raise_their_kind(parts, kind):
    with pytest.raises(MessageError) as info:
        parse_frame(parts, MAX)
    assert info.value.kind == kind and info.value.detail


def test_nan_is_not_json():
    parts = tamper()
    parts[0] = parts[0].replace(b'"score":1.5', b'"score":NaN')
    with pytest.raises(MessageError, match="malformed"):
        parse_frame(parts, MAX)


def test_refiner_expected_size_is_enforced():
    with pytest.raises(MessageError) as info:
        parse_frame(encode_frame(frame_header(), image()), MAX, expected_size=(64, 64))
    assert info.value.kind == "wrong_size"


def result_fields(**over) -> dict:
    result = {"frame_id": "cam0-1-0000001", "camera": "cam0",
              "timestamps": {"captured": 1.0, "screened": 1.1, "refined": 2.0, "published": 2.01},
              "image_score": 1.5, "decision": "defect",
              "defects": [{"area_px": 6, "bbox": [1, 2, 3, 2], "centroid": [2.0, 2.5]}],
              "refinement": {"seconds": 0.9, "iterations": 120, "device": "cpu"}, "model_id": "m"}
    return {**result, **over}


def test_result_round_trip_and_topic():
    mask = np.zeros((16, 24), bool)
    mask[2:4, 1:4] = True
    parts = encode_result(result_fields(), mask)
    assert parts[0] == b"defect.cam0" and len(parts) == 3  # topic, JSON, one crop per defect
    result, decoded = parse_result(parts)
    assert result["defects"][0]["area_px"] == 6 and (decoded.full() == mask).all()
    assert result["mask"] == {"width": 24, "height": 16, "encoding": "png-crops", "crops": [[1, 2, 3, 2]]}
    assert decoded.crops[0][1].shape == (2, 3)


def test_result_of_a_large_frame_stays_small():
    """Schema 2 carries crops: one small defect on a 5 MP frame is a message of a few KiB."""
    mask = np.zeros((2048, 2448), bool)
    mask[1000:1030, 2000:2012] = True
    defect = {"area_px": 360, "bbox": [2000, 1000, 12, 30], "centroid": [2005.5, 1014.5]}
    parts = encode_result(result_fields(defects=[defect]), mask)
    assert sum(len(p) for p in parts) < 2048
    _, decoded = parse_result(parts)
    assert (decoded.height, decoded.width) == (2048, 2448) and decoded.area_px == 360


def test_no_defect_result_has_no_mask_part():
    parts = encode_result(result_fields(decision="ok", defects=[]), np.zeros((16, 24), bool))
    result, decoded = parse_result(parts)
    assert len(parts) == 2 and decoded.crops == [] and not decoded.full().any()


def test_schema_1_results_still_parse():
    """Subscribers read both versions: schema 1 sent the whole mask as one PNG."""
    mask = np.zeros((16, 24), bool)
    mask[2:4, 1:4] = True
    v1 = {**result_fields(), "schema": 1, "mask": {"width": 24, "height": 16, "encoding": "png"}}
    parts = [b"defect.cam0", json.dumps(v1).encode(), encode_png(mask)]
    result, decoded = parse_result(parts)
    assert result["schema"] == 1 and (decoded.full() == mask).all()


def crop_json(p: list[bytes], crops) -> list[bytes]:
    result = json.loads(p[1])
    result["mask"]["crops"] = crops
    return [p[0], json.dumps(result).encode(), *p[2:]]


@pytest.mark.parametrize("mutate, kind", [
    (lambda p: p[:1], "malformed"),
    (lambda p: p[:2], "malformed"),  # a crop listed but its part missing
    (lambda p: [b"defect.other", p[1], p[2]], "malformed"),
    (lambda p: [p[0], p[1].replace(b'"decision":"defect"', b'"decision":"maybe"'), p[2]], "malformed"),
    (lambda p: [p[0], p[1].replace(b'"schema":2', b'"schema":3'), p[2]], "schema_version"),
    (lambda p: [p[0], p[1].replace(b'"schema":2', b'"schema":true'), p[2]], "schema_version"),
    (lambda p: [p[0], p[1], b"not a png"], "bad_image"),
    (lambda p: [p[0], p[1], encode_png(np.zeros((5, 5), bool))], "wrong_size"),
    (lambda p: crop_json(p, [[20, 2, 8, 2]]), "malformed"),  # crop outside the frame
    (lambda p: crop_json(p, [[1, 2, 0, 2]]), "malformed"),  # empty crop
    (lambda p: crop_json(p, [[1, 2, 3]]), "malformed"),
    (lambda p: crop_json(p, "everything"), "malformed"),
])
def test_bad_results_raise_their_kind(mutate, kind):
    parts = mutate(encode_result(result_fields(), np.zeros((16, 24), bool)))
    with pytest.raises(MessageError) as info:
        parse_result(parts)
    assert info.value.kind == kind


def test_frame_regions_travel_in_native_pixels():
    header = {**frame_header(), "regions": [[3, 4, 10, 6]]}
    parsed, _ = parse_frame(encode_frame(header, image()), MAX)
    assert parsed["schema"] == 2 and [r.as_list() for r in parsed["regions"]] == [[3, 4, 10, 6]]
    for bad in ([[35, 4, 10, 6]], [[0, 0, 0, 1]], "all", [[1, 2]]):
        parts = encode_frame(frame_header(), image())
        parts[0] = parts[0].replace(b'"schema"', b'"regions":' + json.dumps(bad).encode() + b',"schema"')
        with pytest.raises(MessageError, match="malformed"):
            parse_frame(parts, MAX)


def test_a_storm_of_defects_is_capped_to_the_crop_limit():
    from inspectd.service.messages import MAX_MASK_CROPS, ResultMask
    from inspectd.geometry import Box

    crops = [(Box(2 * i % 600, 2 * (i // 300), 1, 1), np.ones((1, 1), bool)) for i in range(MAX_MASK_CROPS + 40)]
    mask = ResultMask(10, 600, crops)
    result, decoded = parse_result(encode_result(result_fields(defects=[]), mask))
    assert len(decoded.crops) == MAX_MASK_CROPS and (decoded.full() == mask.full()).all()


def test_a_frame_larger_than_the_pixel_limit_is_refused_before_decoding():
    parts = encode_frame(frame_header(), image())
    parts[1] = b"never decoded"  # the size check comes first, so a bomb costs nothing
    with pytest.raises(MessageError) as info:
        parse_frame(parts, MAX, max_pixels=40 * 32 - 1)
    assert info.value.kind == "oversized" and "max_frame_pixels" in info.value.detail
