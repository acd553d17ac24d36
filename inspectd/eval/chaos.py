"""Hostile inputs for the daemon: named generators of malformed frame and result messages.

Pure functions (no sockets): each case turns a well-formed message and a random generator into
one hostile message. The fuzz tests and `inspectd bench chaos` (inspectd/eval/chaos_bench.py)
send them to real processes and check that every one is counted and none stops the line.
The cases come from issue 13: a header of "[", PNGs declaring huge sizes, decompression bombs,
numbers out of range, ids such as "..", JPEG or 16-bit data labelled png, forged results.
"""

from __future__ import annotations

import json
import struct
import zlib
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np

Parts = list[bytes]
Case = Callable[[Parts, np.random.Generator], Parts]


# --- building blocks ---------------------------------------------------------------------------
def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, idat: bytes = b"", bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header declares any size, with `idat` (default: a few bytes) as its pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat or zlib.compress(bytes(64)))
            + png_chunk(b"IEND", b""))


@lru_cache(maxsize=2)
def png_bomb(side: int = 30000) -> bytes:
    """side x side grey zeros: under 1 MB that inflate to side**2 bytes (900 MB for 30000).

    A full flush resets the compressor, so every later block of the same 100 rows compresses to
    the same bytes: one block is compressed and repeated, which takes milliseconds, not seconds.
    """
    rows = bytes(side + 1) * 100  # filter byte + a row of zeros, 100 rows
    packer = zlib.compressobj(9)
    first = packer.compress(rows) + packer.flush(zlib.Z_FULL_FLUSH)  # with the zlib header
    block = packer.compress(rows) + packer.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(side // 100):
        checksum = zlib.adler32(rows, checksum)
    end = packer.flush()[:-4] + struct.pack(">I", checksum)  # the final block, then the real checksum
    data = first + block * (side // 100 - 1) + end
    return png_declaring(side, side, data, colour_type=0)


def with_fields(header: bytes, **fields) -> bytes:
    """A JSON object part with fields replaced (None values are written as null)."""
    return json.dumps({**json.loads(header), **fields}).encode()


def without_field(header: bytes, rng: np.random.Generator) -> bytes:
    obj = json.loads(header)
    obj.pop(list(obj)[int(rng.integers(len(obj)))])
    return json.dumps(obj).encode()


def flip_bits(data: bytes, rng: np.random.Generator, flips: int = 3) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        pos = int(rng.integers(len(out)))
        out[pos] ^= 1 << int(rng.integers(8))
    return bytes(out)


def random_bytes(rng: np.random.Generator, most: int = 2000) -> bytes:
    return rng.integers(0, 256, int(rng.integers(0, most)), dtype=np.uint8).tobytes()


def replace_number(part: bytes, field: str, text: str) -> bytes:
    """Put raw JSON number text (e.g. 10**400 or 1e400, which json.dumps cannot write) in a field."""
    obj = json.loads(part)
    obj[field] = "__NUMBER__"
    return json.dumps(obj).encode().replace(b'"__NUMBER__"', text.encode())


def image_part(shape: tuple[int, ...], dtype=np.uint8, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, np.zeros(shape, dtype))
    assert ok
    return buf.tobytes()


# --- frame messages (capture -> refiner), good = [header, PNG] ----------------------------------
def frame_cases() -> dict[str, Case]:
    def size_of(good: Parts) -> tuple[int, int]:
        header = json.loads(good[0])
        return header["height"], header["width"]

    return {
        "deep_nesting_100kB": lambda good, rng: [b"[" * 100_000, good[1]],
        "deep_nesting_60kB": lambda good, rng: [b"[" * 60_000, good[1]],
        "nested_in_field": lambda good, rng: [with_fields(good[0], map_summary=json.loads("[" * 40 + "]" * 40)),
                                              good[1]],
        "png_declaring_40000x40000": lambda good, rng: [good[0], png_declaring(40000, 40000)],
        "header_declaring_40000x40000": lambda good, rng: [with_fields(good[0], width=40000, height=40000),
                                                           png_declaring(40000, 40000)],
        "png_bomb_30000x30000": lambda good, rng: [with_fields(good[0], width=30000, height=30000), png_bomb()],
        "png_bomb_under_normal_header": lambda good, rng: [good[0], png_bomb()],
        "jpeg_labelled_png": lambda good, rng: [good[0], image_part((*size_of(good), 3), ext=".jpg")],
        "sixteen_bit_png": lambda good, rng: [good[0], image_part((*size_of(good), 3), np.uint16)],
        "png_of_other_size": lambda good, rng: [good[0], image_part((size_of(good)[0] + 1, size_of(good)[1], 3))],
        "score_10e400": lambda good, rng: [replace_number(good[0], "score", "1" + "0" * 400), good[1]],
        "score_1e400": lambda good, rng: [replace_number(good[0], "score", "1e400"), good[1]],
        "px_per_mm_1e-200": lambda good, rng: [with_fields(good[0], px_per_mm=1e-200), good[1]],
        "px_per_mm_negative": lambda good, rng: [with_fields(good[0], px_per_mm=-4.0), good[1]],
        "frame_id_dotdot": lambda good, rng: [with_fields(good[0], frame_id=".."), good[1]],
        "frame_id_path": lambda good, rng: [with_fields(good[0], frame_id="../../etc/passwd"), good[1]],
        "schema_other": lambda good, rng: [with_fields(good[0], schema=int(rng.integers(4, 99))), good[1]],
        "field_missing": lambda good, rng: [without_field(good[0], rng), good[1]],
        "field_wrong_type": lambda good, rng: [with_fields(good[0], **{str(rng.choice(
            ["score", "width", "camera", "captured_at", "map_summary"])): ["x"]}), good[1]],
        "header_bit_flips": lambda good, rng: [flip_bits(good[0], rng), good[1]],
        "png_bit_flips": lambda good, rng: [good[0], flip_bits(good[1], rng)],
        "png_truncated": lambda good, rng: [good[0], good[1][: int(rng.integers(1, len(good[1])))]],
        "random_bytes": lambda good, rng: [random_bytes(rng), random_bytes(rng)],
        "parts_count": lambda good, rng: good[: int(rng.integers(0, 2))] or [b""],
        "extra_part": lambda good, rng: good + [random_bytes(rng, 50)],
        "not_an_object": lambda good, rng: [b"[1, 2, 3]", good[1]],
        "not_utf8": lambda good, rng: [b"\xff\xfe" + good[0], good[1]],
        "nan": lambda good, rng: [good[0].replace(b'"score":', b'"score":NaN,"x":', 1), good[1]],
    }


# --- result messages (refiner -> subscribers), good = [topic, JSON, one mask crop PNG] ----------
def result_cases() -> dict[str, Case]:
    def mask_size(good: Parts) -> tuple[int, int]:
        mask = json.loads(good[1])["mask"]
        return mask["height"], mask["width"]

    return {
        "forged_without_token": lambda good, rng: [good[0], without_key(good[1], "ack_token"), good[2]],
        "forged_guessed_token": lambda good, rng: [good[0], with_fields(good[1], ack_token=rng.bytes(16).hex()),
                                                   good[2]],
        "deep_nesting": lambda good, rng: [good[0], b"[" * 100_000, good[2]],
        "score_10e400": lambda good, rng: [good[0], replace_number(good[1], "image_score", "1" + "0" * 400), good[2]],
        "mask_declaring_40000x40000": lambda good, rng: [good[0], good[1], png_declaring(40000, 40000,
                                                                                         colour_type=0)],
        "mask_bomb": lambda good, rng: [good[0], with_fields(good[1], mask={"width": 30000, "height": 30000,
                                                                           "encoding": "png"}), png_bomb()],
        "mask_rgb": lambda good, rng: [good[0], good[1], image_part((*mask_size(good), 3))],
        "mask_16_bit": lambda good, rng: [good[0], good[1], image_part(mask_size(good), np.uint16)],
        "mask_jpeg": lambda good, rng: [good[0], good[1], image_part(mask_size(good), ext=".jpg")],
        "frame_id_dotdot": lambda good, rng: [good[0], with_fields(good[1], frame_id=".."), good[2]],
        "decision_unknown": lambda good, rng: [good[0], with_fields(good[1], decision="maybe"), good[2]],
        "field_missing": lambda good, rng: [good[0], without_field(good[1], rng), good[2]],
        "json_bit_flips": lambda good, rng: [good[0], flip_bits(good[1], rng), good[2]],
        "mask_bit_flips": lambda good, rng: [good[0], good[1], flip_bits(good[2], rng)],
        "random_bytes": lambda good, rng: [good[0], random_bytes(rng), random_bytes(rng)],
        "parts_count": lambda good, rng: good[:2],
    }


def without_key(part: bytes, key: str) -> bytes:
    obj = json.loads(part)
    obj.pop(key, None)
    return json.dumps(obj).encode()
