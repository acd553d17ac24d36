"""The wire schema between capture, refiners and subscribers (documented in docs/messages.md).

Frame message (capture PUSH -> refiner PULL): [header JSON, encoded image].
Result message (refiner PUB -> subscribers): [topic `defect.<camera>`, result JSON, mask PNG].

Parsing is strict: anything unexpected raises MessageError(kind, detail), where kind is one
of MESSAGE_ERROR_KINDS and becomes the label of the bad-input counter. Pure functions only.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from inspectd.data.images import decode_image, encode_png
from inspectd.errors import BadImageError, InspectdError

SCHEMA_VERSION = 1
TOPIC_PREFIX = "defect."
MESSAGE_ERROR_KINDS = ("malformed", "oversized", "bad_image", "wrong_size", "schema_version")
DECISIONS = ("defect", "ok", "error")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")  # ids become file names and topics

FRAME_FIELDS = {  # field -> accepted JSON types
    "schema": int, "frame_id": str, "camera": str, "captured_at": (int, float), "screened_at": (int, float),
    "score": (int, float), "threshold": (int, float), "map_summary": dict, "model_id": str,
    "width": int, "height": int, "encoding": str, "px_per_mm": (int, float, type(None)),
}
RESULT_FIELDS = {
    "schema": int, "frame_id": str, "camera": str, "timestamps": dict, "image_score": (int, float),
    "decision": str, "defects": list, "refinement": dict, "model_id": str, "mask": dict,
}


class MessageError(InspectdError):
    """A message that cannot be used; `kind` names the counter label, `detail` says why."""

    def __init__(self, kind: str, detail: str):
        assert kind in MESSAGE_ERROR_KINDS, kind
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def topic_for(camera: str) -> str:
    return f"{TOPIC_PREFIX}{camera}"


def map_summary(score_map: np.ndarray, threshold: float) -> dict:
    """A few numbers that say where and how strongly the screening model fired."""
    flagged = np.asarray(score_map) > threshold
    summary = {"max": round(float(np.max(score_map)), 5), "mean": round(float(np.mean(score_map)), 5),
               "flagged_fraction": round(float(flagged.mean()), 6), "flagged_bbox": None}
    if flagged.any():
        ys, xs = np.nonzero(flagged)
        summary["flagged_bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                   int(ys.max() - ys.min() + 1)]
    return summary


# --- frames ----------------------------------------------------------------------------------
def encode_frame(header: dict, image: np.ndarray) -> list[bytes]:
    """Header fields (without schema, size, encoding, which are filled in) + float RGB image."""
    full = {**header, "schema": SCHEMA_VERSION, "height": int(image.shape[0]), "width": int(image.shape[1]),
            "encoding": "png"}
    check_fields(full, FRAME_FIELDS, "frame header")
    return [dumps(full), encode_png(image)]


def parse_frame(parts: list[bytes], max_bytes: int,
                expected_size: tuple[int, int] | None = None) -> tuple[dict, np.ndarray]:
    """Validate a frame message; returns (header, float RGB image)."""
    total = sum(len(p) for p in parts)
    if total > max_bytes:
        raise MessageError("oversized", f"frame message of {total} bytes exceeds max_message_bytes={max_bytes}")
    if len(parts) != 2:
        raise MessageError("malformed", f"frame message has {len(parts)} parts, expected 2 (header, image)")
    header = loads(parts[0], "frame header")
    check_schema(header)
    check_fields(header, FRAME_FIELDS, "frame header")
    if header["encoding"] != "png":
        raise MessageError("malformed", f"frame encoding {header['encoding']!r}, expected 'png'")
    try:
        image = decode_image(parts[1], f"frame {header['frame_id']}")
    except BadImageError as exc:
        raise MessageError("bad_image", str(exc)) from None
    declared = (header["height"], header["width"])
    if image.shape[:2] != declared:
        raise MessageError("wrong_size", f"frame {header['frame_id']}: image is {image.shape[1]}x{image.shape[0]}, "
                                         f"header says {declared[1]}x{declared[0]}")
    if expected_size is not None and declared != tuple(expected_size):
        raise MessageError("wrong_size", f"frame {header['frame_id']}: {declared[1]}x{declared[0]}, this refiner "
                                         f"expects {expected_size[1]}x{expected_size[0]}")
    return header, image


# --- results ---------------------------------------------------------------------------------
def encode_result(result: dict, mask: np.ndarray) -> list[bytes]:
    """Result fields (without schema and mask, which are filled in) + bool mask -> 3 parts."""
    full = {**result, "schema": SCHEMA_VERSION,
            "mask": {"width": int(mask.shape[1]), "height": int(mask.shape[0]), "encoding": "png"}}
    check_fields(full, RESULT_FIELDS, "result")
    return [topic_for(full["camera"]).encode(), dumps(full), encode_png(np.asarray(mask, bool))]


def parse_result(parts: list[bytes]) -> tuple[dict, np.ndarray]:
    """Validate a result message; returns (result, bool mask)."""
    if len(parts) != 3:
        raise MessageError("malformed", f"result message has {len(parts)} parts, expected 3 (topic, JSON, mask)")
    result = loads(parts[1], "result")
    check_schema(result)
    check_fields(result, RESULT_FIELDS, "result")
    if parts[0] != topic_for(result["camera"]).encode():
        raise MessageError("malformed", f"topic {parts[0][:80]!r} does not match camera {result['camera']!r}")
    if result["decision"] not in DECISIONS:
        raise MessageError("malformed", f"decision {result['decision']!r}, expected one of {DECISIONS}")
    try:
        mask = decode_image(parts[2], f"mask of {result['frame_id']}").max(axis=2) > 0.5
    except BadImageError as exc:
        raise MessageError("bad_image", str(exc)) from None
    if mask.shape != (result["mask"].get("height"), result["mask"].get("width")):
        raise MessageError("wrong_size", f"mask of {result['frame_id']} is {mask.shape[1]}x{mask.shape[0]}, "
                                         f"result says {result['mask']}")
    return result, mask


# --- shared checks ---------------------------------------------------------------------------
def dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def loads(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError("malformed", f"{what} is not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MessageError("malformed", f"{what} is a JSON {type(obj).__name__}, expected an object")
    return obj


def reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")  # NaN / Infinity are not JSON numbers


def check_schema(obj: dict) -> None:
    version = obj.get("schema")
    if version != SCHEMA_VERSION:
        raise MessageError("schema_version", f"schema {version!r}, this build speaks schema {SCHEMA_VERSION}")


def check_fields(obj: dict, fields: dict, what: str) -> None:
    missing = [f for f in fields if f not in obj]
    if missing:
        raise MessageError("malformed", f"{what} lacks field(s) {', '.join(missing)}")
    for name, types in fields.items():
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, types):  # bool is an int in Python
            raise MessageError("malformed", f"{what} field {name} has type {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise MessageError("malformed", f"{what} field {name} is not finite")
    for name in ("frame_id", "camera"):
        if not ID_PATTERN.match(obj[name]):
            raise MessageError("malformed", f"{what} field {name} {obj[name][:80]!r} has characters outside "
                                            "A-Z a-z 0-9 _ . : -")
    for name in ("width", "height"):
        if name in fields and fields[name] is int and not 0 < obj[name] <= 65536:
            raise MessageError("malformed", f"{what} field {name}={obj[name]} out of range")
