"""The wire schema between capture, refiners and subscribers (documented in docs/messages.md).

Frame message (capture PUSH -> refiner PULL): [header JSON, encoded image].
Result message (refiner PUB -> subscribers), schema 3: [topic `defect.<camera>`, result JSON,
one PNG per mask crop, optional preview JPEG]; schema 2 (still parsed) has no preview; schema 1
(still parsed): [topic, result JSON, full-frame mask PNG].
A result's mask travels as crops around its defects so that a 20-megapixel frame with one
small defect gives a message of a few KiB, not a full-frame PNG.

Parsing is strict: anything unexpected raises MessageError(kind, detail), where kind is one
of MESSAGE_ERROR_KINDS and becomes the label of the bad-input counter. Pure functions only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from inspectd.data.images import DEFAULT_MAX_PIXELS, check_png, decode_image, encode_png
from inspectd.errors import BadImageError, InspectdError
from inspectd.geometry import Box, CroppedMask, FrameCrops
from inspectd.service.preview import Preview, jpeg_size

SCHEMA_VERSION = 3  # results, and frames that carry the whole frame
RESULT_SCHEMAS = (1, 2, 3)  # result versions subscribers read (1: full-frame mask PNG; 3 adds the preview part)
# frame versions refiners read: 2 adds the optional `regions`; 3 is 2 unchanged; 4 carries the
# pixels a tile refiner reads as crops (encoding "png-crops") instead of the whole frame
FRAME_SCHEMAS = (1, 2, 3, 4)
CROPS_FRAME_SCHEMA = 4
MAX_PREVIEW_BYTES = 2**20  # a result's preview JPEG (refiner.preview.max_bytes is at most this)
MAX_PREVIEW_SIDE = 4096
MAX_MASK_CROPS = 256  # defects per result; more crops are merged into one box
TOPIC_PREFIX = "defect."
MESSAGE_ERROR_KINDS = ("malformed", "oversized", "bad_image", "wrong_size", "schema_version")
# results counted as bad without a MessageError: well-formed, but not from the refiner that holds the frame
ACK_ERROR_KINDS = ("bad_ack_token",)
DECISIONS = ("defect", "ok", "error")
# ids become file names and topics: a safe alphabet, and no leading dot (".", "..", hidden files)
ID_PATTERN = re.compile(r"^(?!\.)[A-Za-z0-9_.:-]{1,128}$")
ACK_TOKEN_PATTERN = re.compile(r"^[0-9a-f]{16,128}$")
# JSON is bounded before it is parsed: its size, and its nesting (the parser recurses)
MAX_HEADER_BYTES = 64 * 2**10  # a frame header is about 500 bytes
MAX_RESULT_JSON_BYTES = 4 * 2**20  # about 10000 defects
MAX_JSON_DEPTH = 32
MAX_JSON_INT = 2**63  # larger integers are no number any reader can hold (10**400 overflows a float)
PX_PER_MM_RANGE = (1e-3, 1e5)  # 1 px per metre .. 10 nm per px: outside, mm values stop being finite

FRAME_FIELDS = {  # field -> accepted JSON types
    "schema": int, "frame_id": str, "camera": str, "captured_at": (int, float), "screened_at": (int, float),
    "score": (int, float), "threshold": (int, float), "map_summary": dict, "model_id": str,
    "width": int, "height": int, "encoding": str, "px_per_mm": (int, float, type(None)),
}
# ack_token: the capture's per-frame secret that only the genuine result echoes (it alone acks the
# frame); error: the reason of a decision "error"
OPTIONAL_FIELDS = {"ack_token": str, "error": str}
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
def encode_frame(header: dict, image: np.ndarray | FrameCrops) -> list[bytes]:
    """Header fields (without schema, size, encoding, which are filled in) + the frame: a float or
    8-bit RGB image (one PNG part, schema 3), or FrameCrops (one PNG part per crop, schema 4).
    Optional `regions`: Boxes (or [x, y, w, h] lists) in the frame's pixels."""
    regions = [r.as_list() if isinstance(r, Box) else list(r) for r in header.get("regions", [])]
    full = {**header, **({"regions": regions} if "regions" in header else {}),
            "height": int(image.shape[0]), "width": int(image.shape[1])}
    if isinstance(image, FrameCrops):
        full.update(schema=CROPS_FRAME_SCHEMA, encoding="png-crops", crops=[b.as_list() for b, _ in image.crops])
        pictures = [encode_png(pixels) for _, pixels in image.crops]
    else:
        full.update(schema=SCHEMA_VERSION, encoding="png")
        pictures = [encode_png(image)]
    check_fields(full, FRAME_FIELDS, "frame header")
    return [dumps(full), *pictures]


def parse_frame(parts: list[bytes], max_bytes: int, expected_size: tuple[int, int] | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict, np.ndarray | FrameCrops]:
    """Validate a frame message; returns (header, float RGB image, or FrameCrops of float RGB
    crops for schema 4). Sizes, regions, crops and the PNGs' own headers are checked before
    anything is decoded."""
    total = sum(len(p) for p in parts)
    if total > max_bytes:
        raise MessageError("oversized", f"frame message of {total} bytes exceeds max_message_bytes={max_bytes}")
    if len(parts) < 2:
        raise MessageError("malformed", f"frame message has {len(parts)} parts, expected a header and the image")
    header = loads(parts[0], "frame header", MAX_HEADER_BYTES)
    check_schema(header, FRAME_SCHEMAS)
    check_fields(header, FRAME_FIELDS, "frame header")
    check_px_per_mm(header["px_per_mm"])
    declared = (header["height"], header["width"])
    if declared[0] * declared[1] > max_pixels:
        raise MessageError("oversized", f"frame {header['frame_id']}: {declared[1]}x{declared[0]} exceeds "
                                        f"transport.max_frame_pixels={max_pixels}")
    header["regions"] = frame_regions(header, *declared)
    if expected_size is not None and declared != tuple(expected_size):
        raise MessageError("wrong_size", f"frame {header['frame_id']}: {declared[1]}x{declared[0]}, this refiner "
                                         f"expects {expected_size[1]}x{expected_size[0]}")
    name = f"frame {header['frame_id']}"
    boxes = frame_crops(header, *declared)
    if boxes is None:
        if len(parts) != 2:
            raise MessageError("malformed", f"frame message has {len(parts)} parts, expected 2 (header, image)")
        return header, decode_png_part(parts[1], name, declared, max_pixels, (0, 2))
    if len(parts) != 1 + len(boxes):
        raise MessageError("malformed", f"frame message has {len(parts)} parts, expected {1 + len(boxes)} "
                                        f"(header, {len(boxes)} crop(s))")
    crops = [(box, decode_png_part(data, f"{name} crop {box.as_list()}", (box.h, box.w), max_pixels, (0, 2)))
             for box, data in zip(boxes, parts[1:])]
    return header, FrameCrops(*declared, crops)


def frame_crops(header: dict, height: int, width: int) -> list[Box] | None:
    """Schema 4's crops (None: the message carries the whole frame), checked to lie inside the
    frame and to hold no more pixels than the frame."""
    encoding = header["encoding"]
    if encoding == "png":
        return None
    if encoding != "png-crops" or header["schema"] < CROPS_FRAME_SCHEMA:
        raise MessageError("malformed", f"frame encoding {encoding!r}, expected 'png' (or 'png-crops' from schema "
                                        f"{CROPS_FRAME_SCHEMA})")
    crops = header.get("crops")
    if not isinstance(crops, list) or not 1 <= len(crops) <= MAX_MASK_CROPS:
        raise MessageError("malformed", f"frame crops must be a list of 1 to {MAX_MASK_CROPS} boxes")
    boxes = [check_box(c, height, width, "frame crop") for c in crops]
    if sum(b.area for b in boxes) > height * width:
        raise MessageError("malformed", f"frame crops hold {sum(b.area for b in boxes)} pixels, more than the "
                                        f"{width}x{height} frame")
    return boxes


def frame_regions(header: dict, height: int, width: int) -> list[Box]:
    """Schema 2's optional flagged regions, checked to lie inside the frame (native pixels)."""
    regions = header.get("regions", [])
    if not isinstance(regions, list) or len(regions) > MAX_MASK_CROPS:
        raise MessageError("malformed", f"frame regions must be a list of at most {MAX_MASK_CROPS} boxes")
    return [check_box(r, height, width, "frame region") for r in regions]


# --- results ---------------------------------------------------------------------------------
@dataclass
class ResultMask(CroppedMask):
    """A result's mask as crops of the frame (.full() pastes them together) and, schema 3, the
    result's optional preview JPEG (checked from its header, never decoded here; the result's
    `preview` field says which box of the frame it shows)."""

    preview: bytes | None = None


def defect_boxes(defects: list[dict], height: int, width: int) -> list[Box]:
    """The crops a result carries: one per defect (its bbox), at most MAX_MASK_CROPS."""
    boxes = [Box(*d["bbox"]).clip(height, width) for d in defects]
    if len(boxes) > MAX_MASK_CROPS:  # a storm of tiny regions: one box around the rest
        boxes = boxes[:MAX_MASK_CROPS - 1] + [Box.union(boxes[MAX_MASK_CROPS - 1:])]
    return [b for b in boxes if b.w > 0 and b.h > 0]


def capped(mask: CroppedMask) -> CroppedMask:
    """At most MAX_MASK_CROPS crops: the rest pasted into one box around them."""
    if len(mask.crops) <= MAX_MASK_CROPS:
        return mask
    keep, rest = mask.crops[:MAX_MASK_CROPS - 1], mask.crops[MAX_MASK_CROPS - 1:]
    box = Box.union([b for b, _ in rest])
    merged = np.zeros((box.h, box.w), bool)
    for b, crop in rest:
        merged[b.relative_to(box).slices] |= crop
    return CroppedMask(mask.height, mask.width, [*keep, (box, merged)])


def encode_result(result: dict, mask: np.ndarray | CroppedMask, preview: Preview | None = None) -> list[bytes]:
    """Result fields (without schema, mask and preview, which are filled in) + the mask (a full-frame
    bool array, cropped here around the result's defects, or a CroppedMask) + an optional preview
    picture -> 2 + n_crops (+ 1) parts."""
    if not isinstance(mask, CroppedMask):
        mask = np.asarray(mask, bool)
        mask = CroppedMask.from_full(mask, defect_boxes(result.get("defects", []), *mask.shape))
    mask = capped(mask)
    full = {**result, "schema": SCHEMA_VERSION,
            "mask": {"width": mask.width, "height": mask.height, "encoding": "png-crops",
                     "crops": [b.as_list() for b, _ in mask.crops]}}
    full.pop("preview", None)
    if preview is not None:
        full["preview"] = preview.meta()
    check_fields(full, RESULT_FIELDS, "result")
    pictures = [preview.jpeg] if preview is not None else []
    return [topic_for(full["camera"]).encode(), dumps(full), *(encode_png(c) for _, c in mask.crops), *pictures]


def parse_result(parts: list[bytes], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict, ResultMask]:
    """Validate a result message (schema 1, 2 or 3); returns (result, mask with its preview)."""
    if len(parts) < 2:
        raise MessageError("malformed", f"result message has {len(parts)} parts, expected topic, JSON, mask")
    result = loads(parts[1], "result", MAX_RESULT_JSON_BYTES)
    check_schema(result, RESULT_SCHEMAS)
    check_fields(result, RESULT_FIELDS, "result")
    if parts[0] != topic_for(result["camera"]).encode():
        raise MessageError("malformed", f"topic {parts[0][:80]!r} does not match camera {result['camera']!r}")
    if result["decision"] not in DECISIONS:
        raise MessageError("malformed", f"decision {result['decision']!r}, expected one of {DECISIONS}")
    height, width = mask_size(result)
    boxes = mask_boxes(result, height, width)
    pictures = int(result["schema"] >= 3 and "preview" in result)  # before 3, an unknown field
    if len(parts) != 2 + len(boxes) + pictures:
        raise MessageError("malformed", f"result message has {len(parts)} parts, expected {2 + len(boxes) + pictures} "
                                        f"(topic, JSON, {len(boxes)} mask part(s){', preview' if pictures else ''})")
    preview = check_preview(result, parts[-1], height, width) if pictures else None
    if sum(b.area for b in boxes) > max_pixels:
        raise MessageError("oversized", f"mask of {result['frame_id']}: crops of {sum(b.area for b in boxes)} pixels "
                                        f"exceed transport.max_frame_pixels={max_pixels}")
    crops = [(box, decode_png_part(data, f"mask of {result['frame_id']}", (box.h, box.w), max_pixels, (0,))
              .max(axis=2) > 0.5) for box, data in zip(boxes, parts[2:2 + len(boxes)])]
    return result, ResultMask(height, width, crops, preview)


def check_preview(result: dict, data: bytes, height: int, width: int) -> bytes:
    """The preview part: a JPEG of exactly the declared size, at most MAX_PREVIEW_BYTES, showing a
    box inside the frame; checked from its header (a viewer's browser decodes it, so no bombs)."""
    meta = result["preview"]
    if not isinstance(meta, dict) or meta.get("encoding") != "jpeg":
        raise MessageError("malformed", "result preview must be an object with encoding \"jpeg\"")
    check_box(meta.get("box"), height, width, "preview box")
    size = (meta.get("width"), meta.get("height"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_PREVIEW_SIDE for v in size):
        raise MessageError("malformed", f"preview size {str(size)[:80]} is not two ints in 1..{MAX_PREVIEW_SIDE}")
    if len(data) > MAX_PREVIEW_BYTES:
        raise MessageError("oversized", f"preview of {result['frame_id']}: {len(data)} bytes > {MAX_PREVIEW_BYTES}")
    try:
        kind, w, h = jpeg_size(data)
    except Exception as exc:  # Pillow raises many kinds on a damaged header
        raise MessageError("bad_image", f"preview of {result['frame_id']}: not a readable JPEG ({exc})") from None
    if kind != "JPEG" or (w, h) != size:
        raise MessageError("bad_image", f"preview of {result['frame_id']}: a {kind} of {w}x{h}, the result says "
                                        f"a JPEG of {size[0]}x{size[1]}")
    return data


def mask_size(result: dict) -> tuple[int, int]:
    mask = result["mask"]
    height, width = mask.get("height"), mask.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in (height, width)):
        raise MessageError("malformed", f"result mask size {width!r}x{height!r} is not two ints in 1..65536")
    return height, width


def mask_boxes(result: dict, height: int, width: int) -> list[Box]:
    """Where the mask parts go: schema 1 has one full-frame part, schema 2 lists its crops."""
    if result["schema"] == 1:
        return [Box(0, 0, width, height)]
    encoding, crops = result["mask"].get("encoding"), result["mask"].get("crops")
    if encoding != "png-crops" or not isinstance(crops, list) or len(crops) > MAX_MASK_CROPS:
        raise MessageError("malformed", f"result mask must be png-crops with at most {MAX_MASK_CROPS} crops")
    return [check_box(c, height, width, "mask crop") for c in crops]


def check_box(value, height: int, width: int, what: str) -> Box:
    if not (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise MessageError("malformed", f"{what} {str(value)[:80]} is not [x, y, width, height] ints")
    box = Box(*value)
    if box.w < 1 or box.h < 1 or box != box.clip(height, width):
        raise MessageError("malformed", f"{what} {value} is empty or outside the {width}x{height} frame")
    return box


def decode_png_part(data: bytes, name: str, declared: tuple[int, int], max_pixels: int,
                    colour_types: tuple[int, ...]) -> np.ndarray:
    """An 8-bit PNG part of exactly the declared (H, W), checked from its header before decoding."""
    try:
        width, height = check_png(data, max_pixels, name, colour_types)
        if (height, width) != tuple(declared):
            raise MessageError("wrong_size", f"{name}: image is {width}x{height}, the message says "
                                             f"{declared[1]}x{declared[0]}")
        image = decode_image(data, name, max_pixels)
    except BadImageError as exc:
        raise MessageError("bad_image", str(exc)) from None
    if image.shape[:2] != tuple(declared):  # the decoder disagrees with the PNG's own header
        raise MessageError("bad_image", f"{name}: decodes to {image.shape[1]}x{image.shape[0]}, its header says "
                                        f"{width}x{height}")
    return image


# --- shared checks ---------------------------------------------------------------------------
def dumps(obj: dict) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:  # never publish inf/NaN: no strict reader could take it
        raise MessageError("malformed", f"a value is not finite ({exc})") from None


def loads(data: bytes, what: str, max_bytes: int) -> dict:
    """A JSON object, with its size and nesting checked before the (recursive) parser sees it."""
    if len(data) > max_bytes:
        raise MessageError("oversized", f"{what} of {len(data)} bytes exceeds {max_bytes}")
    if (depth := nesting_depth(data)) > MAX_JSON_DEPTH:
        raise MessageError("malformed", f"{what} nests {depth} levels deep, more than {MAX_JSON_DEPTH}")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=reject_constant, parse_int=bounded_int,
                         parse_float=finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError("malformed", f"{what} is not UTF-8 JSON ({str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise MessageError("malformed", f"{what} is a JSON {type(obj).__name__}, expected an object")
    return obj


def nesting_depth(data: bytes) -> int:
    """How deep [ and { nest outside strings: vectorised and linear in the size (a regex over
    strings is quadratic on an unterminated one full of escaped quotes)."""
    chars = np.frombuffer(data, np.uint8)
    if not chars.size:
        return 0
    index = np.arange(chars.size)
    backslash = chars == ord("\\")
    last_other = np.maximum.accumulate(np.where(backslash, -1, index))
    run = index - last_other  # backslashes ending at each position (0 on any other character)
    escaped = np.zeros(chars.size, bool)
    escaped[1:] = run[:-1] % 2 == 1  # an odd run of backslashes escapes the next character
    quotes = (chars == ord('"')) & ~escaped
    outside = np.cumsum(quotes) % 2 == 0  # after an even number of quotes (a closing quote counts as outside)
    opens = np.isin(chars, (ord("["), ord("{"))) & outside & ~escaped
    closes = np.isin(chars, (ord("]"), ord("}"))) & outside & ~escaped
    return int(np.cumsum(opens.astype(np.int32) - closes).max(initial=0))


def reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")  # NaN / Infinity are not JSON numbers


def bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) > MAX_JSON_INT:
        raise ValueError(f"integer {text[:20]}... is out of range")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is not finite")
    return value


def check_px_per_mm(value: float | None) -> None:
    low, high = PX_PER_MM_RANGE
    if value is not None and not low <= value <= high:
        raise MessageError("malformed", f"frame header field px_per_mm={value!r} is outside [{low}, {high}]")


def check_schema(obj: dict, accepted: tuple[int, ...]) -> None:
    version = obj.get("schema")
    if isinstance(version, bool) or version not in accepted:
        raise MessageError("schema_version", f"schema {version!r}, this build reads schema {accepted}")


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
            raise MessageError("malformed", f"{what} field {name} {obj[name][:80]!r} starts with a dot or has "
                                            "characters outside A-Z a-z 0-9 _ . : -")
    for name in ("width", "height"):
        if name in fields and fields[name] is int and not 0 < obj[name] <= 65536:
            raise MessageError("malformed", f"{what} field {name}={obj[name]} out of range")
    for name, types in OPTIONAL_FIELDS.items():
        if name in obj and not isinstance(obj[name], types):
            raise MessageError("malformed", f"{what} field {name} has type {type(obj[name]).__name__}")
    if "ack_token" in obj and not ACK_TOKEN_PATTERN.match(obj["ack_token"]):
        raise MessageError("malformed", f"{what} field ack_token is not 16 to 128 lowercase hex digits")
