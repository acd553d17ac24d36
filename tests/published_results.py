"""Results on the wire for the subscriber tests (MQTT bridge, live view): what a refiner publishes,
made from a drawn defect mask and measured by the project's own geometry."""

from __future__ import annotations

import time

import cv2
import numpy as np
import zmq

from inspectd.geometry import measure_defects
from inspectd.service.messages import encode_result
from inspectd.service.preview import make_preview


def defect_mask(i: int, size: int = 64) -> np.ndarray:
    """An ellipse whose place and size depend on i: each result has its own outline."""
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (16 + 3 * (i % 10), 20 + 2 * (i % 12)), (6 + i % 5, 3 + i % 3), 20 * i, 0, 360, 1, -1)
    return mask > 0


def part_picture(mask: np.ndarray) -> np.ndarray:
    """A grey part with the defect in dark red: what the result's preview shows."""
    ramp = np.linspace(0.4, 0.7, mask.shape[1], dtype=np.float32)
    image = np.repeat(np.repeat(ramp[None, :, None], mask.shape[0], 0), 3, 2)
    image[mask] = (0.6, 0.1, 0.1)
    return image


def result_message(camera: str, i: int, size: int = 64, preview: bool = False) -> tuple[list[bytes], dict, np.ndarray]:
    """(zmq parts, result fields, mask) of a refiner's result for frame i of `camera`, with a
    preview picture of the whole frame (schema 3) when asked."""
    mask = defect_mask(i, size)
    now = time.time()
    result = {"frame_id": f"{camera}-test-{i:07d}", "camera": camera,
              "timestamps": {"captured": now - 2.0, "screened": now - 1.9, "refined": now - 0.01, "published": now},
              "image_score": 1.5 + 0.01 * i, "decision": "defect", "defects": measure_defects(mask),
              "refinement": {"seconds": 1.25, "iterations": 120, "device": "cpu"}, "model_id": "test-model",
              "screening_model_id": "test-model"}
    picture = make_preview(part_picture(mask), "frame", [], 256, 65536) if preview else None
    return encode_result(result, mask, picture), result, mask


class ResultPublisher:
    """A refiner's PUB socket, on `endpoint`, publishing what the tests hand it."""

    def __init__(self, endpoint: str):
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.PUB)
        self.sock.linger = 0
        self.sock.bind(endpoint)

    def send(self, parts: list[bytes]) -> None:
        self.sock.send_multipart(parts)

    def close(self) -> None:
        self.context.destroy(linger=0)
