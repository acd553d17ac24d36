"""The wire schema: round trips, and every way a message can be bad gives its own kind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inspectd.data.images import encode_png
from inspectd.geometry import Box, CroppedMask, FrameCrops
from inspectd.service.preview import make_preview
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
    (lambda p: [p[0], p[1].replace(b'"schema":3', b'"schema":4'), p[2]], "schema_version"),
    (lambda p: [p[0], p[1].replace(b'"schema":3', b'"schema":true'), p[2]], "schema_version"),
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
    assert parsed["schema"] == SCHEMA_VERSION and [r.as_list() for r in parsed["regions"]] == [[3, 4, 10, 6]]
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


# --- bounded before work, finite and in range (issue 13) ---------------------------------------
def raw_header(text: str, image_part: bytes | None = None) -> list[bytes]:
    return [text.encode(), image_part if image_part is not None else encode_png(image())]


def test_a_deeply_nested_header_is_malformed_not_a_recursion_error():
    with pytest.raises(MessageError) as info:  # the 100 kB of "[": refused for its size first
        parse_frame(raw_header("[" * 100_000), 10 * MAX)
    assert info.value.kind == "oversized"
    with pytest.raises(MessageError) as info:  # within the size limit, still far too deep for the parser
        parse_frame(raw_header("[" * 60_000), 10 * MAX)
    assert info.value.kind == "malformed" and "nest" in info.value.detail
    nested = json.dumps(frame_header(map_summary={"a": json.loads("[" * 40 + "1" + "]" * 40)}))
    with pytest.raises(MessageError, match="nest"):
        parse_frame(raw_header(nested), MAX)
    brackets_in_a_string = frame_header(model_id="m", map_summary={"note": "[" * 1000})
    parse_frame(encode_frame(brackets_in_a_string, image()), MAX)  # text is not nesting


def test_a_huge_header_is_refused_before_parsing():
    from inspectd.service.messages import MAX_HEADER_BYTES

    header = json.dumps(frame_header(map_summary={"pad": "x" * MAX_HEADER_BYTES}))
    with pytest.raises(MessageError) as info:
        parse_frame(raw_header(header), 10 * MAX)
    assert info.value.kind == "oversized" and "header" in info.value.detail


@pytest.mark.parametrize("text", ['"score":' + "1" * 401, '"score":1e400', '"score":-1e400', '"captured_at":1e999'])
def test_numbers_beyond_float_range_are_malformed(text):
    parts = tamper()
    parts[0] = parts[0].replace(b'"score":1.5', text.encode()) if "score" in text else \
        parts[0].replace(b'"captured_at":1700000000.25', text.encode())
    with pytest.raises(MessageError) as info:
        parse_frame(parts, MAX)
    assert info.value.kind == "malformed"


@pytest.mark.parametrize("over, why", [
    ({"px_per_mm": 1e-200}, "px_per_mm"), ({"px_per_mm": -12.5}, "px_per_mm"), ({"px_per_mm": 0}, "px_per_mm"),
    ({"px_per_mm": 1e200}, "px_per_mm"), ({"frame_id": ".."}, "frame_id"), ({"frame_id": "."}, "frame_id"),
    ({"camera": ".hidden"}, "camera"), ({"ack_token": 7}, "ack_token"), ({"ack_token": "a b"}, "ack_token"),
])
def test_values_out_of_range_are_refused_with_the_field_named(over, why):
    with pytest.raises(MessageError) as info:
        parse_frame(tamper(over), MAX)
    assert info.value.kind == "malformed" and why in info.value.detail


def test_png_declaring_a_huge_size_is_refused_before_decoding(monkeypatch):
    import cv2
    from test_images import png_with_header

    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded before the size check"))
    liar = png_with_header(40000, 40000)
    with pytest.raises(MessageError) as info:  # the header tells the truth about the lie
        parse_frame(tamper({"width": 40000, "height": 40000}, parts=None)[:1] + [liar], MAX)
    assert info.value.kind == "oversized"
    with pytest.raises(MessageError) as info:  # the header claims the normal size, the PNG does not
        parse_frame([tamper()[0], liar], MAX)
    assert info.value.kind == "bad_image" and "40000x40000" in info.value.detail
    with pytest.raises(MessageError) as info:  # a small lie: IHDR says another size than the header
        parse_frame([tamper()[0], png_with_header(41, 32)], MAX)
    assert info.value.kind == "wrong_size"
    with pytest.raises(MessageError) as info:  # the refiner's size is checked first of all
        parse_frame([tamper({"width": 64, "height": 64})[0], liar], MAX, expected_size=(32, 40))
    assert info.value.kind == "wrong_size"


def test_max_frame_pixels_is_a_setting(tmp_path):
    from inspectd.service.settings import Settings

    assert Settings().transport.max_frame_pixels >= 4096 * 4096
    small = Settings(transport={"max_frame_pixels": 32 * 39}).transport.max_frame_pixels
    with pytest.raises(MessageError) as info:
        parse_frame(tamper(), MAX, max_pixels=small)
    assert info.value.kind == "oversized"


@pytest.mark.parametrize("encoder", [
    lambda: __import__("cv2").imencode(".jpg", np.zeros((32, 40, 3), np.uint8))[1].tobytes(),
    lambda: __import__("cv2").imencode(".png", np.zeros((32, 40, 3), np.uint16))[1].tobytes(),
])
def test_jpeg_or_16_bit_data_labelled_png_is_a_bad_image(encoder):
    with pytest.raises(MessageError) as info:
        parse_frame([tamper()[0], encoder()], MAX)
    assert info.value.kind == "bad_image"


def test_result_values_are_bounded_too():
    parts = encode_result(result_fields(), np.zeros((16, 24), bool))  # one crop: the defect's 3x2 bbox
    huge = [parts[0], parts[1].replace(b'"image_score":1.5', b'"image_score":' + b"1" * 401), parts[2]]
    deep = [parts[0], parts[1].replace(b'"defects":[', b'"defects":' + b"[" * 50_000), parts[2]]
    rgb_mask = [parts[0], parts[1], encode_png(np.zeros((2, 3, 3), np.float32))]
    for bad, kind in ((huge, "malformed"), (deep, "malformed"), (rgb_mask, "bad_image")):
        with pytest.raises(MessageError) as info:
            parse_result(bad)
        assert info.value.kind == kind
    with pytest.raises(MessageError, match="oversized"):
        parse_result(parts, max_pixels=5)


def test_a_result_that_cannot_be_finite_json_is_refused_with_a_clear_error():
    with pytest.raises(MessageError, match="not finite"):
        encode_result(result_fields(defects=[{"area_mm2": float("inf"), "bbox": [0, 0, 1, 1]}]), np.zeros((4, 4), bool))


def test_ack_token_travels_in_frame_and_result():
    header, _ = parse_frame(encode_frame(frame_header(ack_token="ab12" * 8), image()), MAX)
    assert header["ack_token"] == "ab12" * 8
    result, _ = parse_result(encode_result(result_fields(ack_token="ab12" * 8), np.zeros((4, 4), bool)))
    assert result["ack_token"] == "ab12" * 8


# --- schema 3: the optional preview picture ------------------------------------------------------
def with_preview(kind: str = "defects", max_bytes: int = 65536) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random((160, 240, 3), np.float32)
    mask = np.zeros((160, 240), bool)
    mask[2:4, 1:4] = True
    picture = make_preview(image, kind, [Box(1, 2, 3, 2)], 128, max_bytes)
    return encode_result(result_fields(), CroppedMask.from_full(mask, [Box(1, 2, 3, 2)]), picture), mask


def test_a_preview_travels_as_the_last_part_and_is_checked_from_its_header():
    parts, mask = with_preview()
    assert len(parts) == 4 and parts[-1][:2] == b"\xff\xd8"  # topic, JSON, one crop, the JPEG
    result, decoded = parse_result(parts)
    assert result["schema"] == 3 and (decoded.full() == mask).all() and decoded.preview == parts[-1]
    assert result["preview"]["encoding"] == "jpeg" and result["preview"]["box"] == [0, 0, 36, 36]


def test_schema_2_results_without_a_preview_still_parse():
    parts = encode_result(result_fields(), np.zeros((16, 24), bool))
    v2 = [parts[0], parts[1].replace(b'"schema":3', b'"schema":2'), *parts[2:]]
    result, decoded = parse_result(v2)
    assert result["schema"] == 2 and decoded.preview is None


def preview_json(parts: list[bytes], **meta) -> list[bytes]:
    result = json.loads(parts[1])
    result["preview"] = {**result["preview"], **meta}
    return [parts[0], json.dumps(result).encode(), *parts[2:]]


@pytest.mark.parametrize("mutate, kind", [
    (lambda p: p[:-1], "malformed"),  # announced, missing
    (lambda p: [*p[:-1], encode_png(np.zeros((36, 36), bool))], "bad_image"),  # a PNG labelled jpeg
    (lambda p: [*p[:-1], p[-1][:20]], "bad_image"),  # cut short before its size
    (lambda p: preview_json(p, width=37), "bad_image"),  # not the size it says
    (lambda p: preview_json(p, box=[200, 0, 100, 10]), "malformed"),  # outside the frame
    (lambda p: preview_json(p, encoding="png"), "malformed"),
    (lambda p: preview_json(p, height=10**6), "malformed"),
    (lambda p: [*p[:-1], b"\xff\xd8" + bytes(2**20)], "oversized"),
])
def test_bad_previews_raise_their_kind(mutate, kind):
    parts, _ = with_preview()
    with pytest.raises(MessageError) as info:
        parse_result(mutate(parts))
    assert info.value.kind == kind


def crops_frame(img: np.ndarray) -> FrameCrops:
    return FrameCrops.cut(img, [Box(2, 3, 10, 8), Box(20, 10, 16, 20)])


def test_a_frame_can_travel_as_the_crops_a_tile_refiner_reads():
    img = image()
    parts = encode_frame({**frame_header(), "regions": [[4, 5, 3, 3]]}, crops_frame(img))
    assert len(parts) == 3  # header and one PNG per crop
    header, decoded = parse_frame(parts, MAX, expected_size=(32, 40))
    assert header["schema"] == 4 and header["encoding"] == "png-crops" and decoded.shape[:2] == (32, 40)
    assert [b.as_list() for b, _ in decoded.crops] == [[2, 3, 10, 8], [20, 10, 16, 20]]
    assert np.abs(decoded[3:11, 2:12] - img[3:11, 2:12]).max() <= 0.5 / 255 + 1e-6
    whole = len(b"".join(encode_frame(frame_header(), img)))
    assert len(b"".join(parts)) < whole  # the point: fewer bytes than the whole frame


def reheader(parts: list[bytes], **fields) -> list[bytes]:
    header = json.loads(parts[0])
    header.update(fields)
    return [json.dumps(header).encode(), *parts[1:]]


@pytest.mark.parametrize("mutate, kind", [
    (lambda p: reheader(p, crops=[[30, 10, 16, 20], [2, 3, 10, 8]]), "malformed"),  # outside the frame
    (lambda p: reheader(p, crops=[]), "malformed"),
    (lambda p: reheader(p, crops="all"), "malformed"),
    (lambda p: reheader(p, crops=[[0, 0, 40, 32]] * 2), "malformed"),  # more pixels than the frame
    (lambda p: p[:2], "malformed"),  # a crop's PNG missing
    (lambda p: reheader(p, crops=[[2, 3, 10, 8], [20, 10, 16, 19]]), "wrong_size"),  # PNG of another size
    (lambda p: reheader(p, schema=3), "malformed"),  # crops before schema 4
    (lambda p: [p[0], p[1], b"not a png"], "bad_image"),
])
def test_bad_crop_frames_raise_their_kind(mutate, kind):
    with pytest.raises(MessageError) as info:
        parse_frame(mutate(encode_frame(frame_header(), crops_frame(image()))), MAX)
    assert info.value.kind == kind
