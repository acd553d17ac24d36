"""Native frames through the real processes: capture screens them downscaled and sends them with
their flagged regions in native pixels; results come back as mask crops in native pixels."""

import threading

import cv2
import numpy as np

from inspectd.deploy import ChainSettings
from inspectd.deploy.native import downscale
from inspectd.service.capture import Frame
from inspectd.service.capture_process import Screening, run_capture
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.refiner_process import run_refiner
from inspectd.service.watch import results
from test_service_doubles import ColourAxisScreenerDouble, ThresholdRefinerDouble, service_settings, start_thread, \
    wait_until

NATIVE = (600, 808)  # odd-ish, not square: the maps must not assume either


def frames(n: int, huge_at: int):
    """Plain native frames, every other one with a small tinted patch; one frame far too large."""
    for i in range(n):
        shape = (2000, 2000, 3) if i == huge_at else (*NATIVE, 3)
        image = np.empty(shape, np.float32)
        image[:] = (0.5, 0.45, 0.4)  # on the double's normal colour axis
        if i % 2:
            image[301:333, 517:561] = (1.0, 0.1, 0.6)
        yield Frame(f"testcam-native-{i:04d}", "testcam", 1.0 + i, image)


def test_native_frames_keep_native_coordinates_and_a_huge_frame_is_counted(tmp_path):
    settings = service_settings(tmp_path, transport={"max_message_bytes": 4_000_000,
                                                     "max_frame_pixels": NATIVE[0] * NATIVE[1]})
    double = ColourAxisScreenerDouble()
    # the capture screens at 64 px, as a screening bundle would; the chain gives the regions' rule
    screening = Screening(screen=lambda f: double(downscale(f, 64)), threshold=double.threshold,
                          model_id=double.model_id,
                          chain=ChainSettings(screen_threshold=double.threshold, pixel_threshold=double.threshold))
    stop = threading.Event()
    capture_metrics = ServiceMetrics("capture")
    start_thread(run_refiner, settings, ThresholdRefinerDouble(), stop)
    got, ready = [], threading.Event()
    start_thread(lambda: got.extend(results(settings, stop, camera="testcam", ready=ready)))
    assert ready.wait(10)
    summary = run_capture(settings, screening.screen, stop, threshold=screening.threshold, metrics=capture_metrics,
                          frames=iter(frames(7, huge_at=3)), chain=screening.chain)
    try:
        assert summary["unacked"] == 0
        assert capture_metrics.drops.labels("frame_too_large")._value.get() == 1
        assert wait_until(lambda: len(got) == 2, 10), [r["frame_id"] for r, _ in got]  # 1 and 5 (3: huge)
        for result, mask in got:
            assert (mask.height, mask.width) == NATIVE
            assert result["defects"][0]["bbox"] == [517, 301, 44, 32]  # native pixels, exactly
            assert mask.full()[301:333, 517:561].all() and mask.area_px == 32 * 44
    finally:
        stop.set()


def test_results_carry_a_preview_of_their_defects_when_the_line_asks(tmp_path):
    settings = service_settings(tmp_path, transport={"max_message_bytes": 4_000_000},
                                refiner={"preview": {"kind": "defects", "max_side": 64, "max_bytes": 8192}})
    double = ColourAxisScreenerDouble()
    screening = Screening(screen=lambda f: double(downscale(f, 64)), threshold=double.threshold,
                          model_id=double.model_id,
                          chain=ChainSettings(screen_threshold=double.threshold, pixel_threshold=double.threshold))
    stop = threading.Event()
    start_thread(run_refiner, settings, ThresholdRefinerDouble(), stop)
    got, ready = [], threading.Event()
    start_thread(lambda: got.extend(results(settings, stop, camera="testcam", ready=ready)))
    assert ready.wait(10)
    run_capture(settings, screening.screen, stop, threshold=screening.threshold, metrics=ServiceMetrics("capture"),
                frames=iter(frames(2, huge_at=-1)), chain=screening.chain)
    try:
        assert wait_until(lambda: len(got) == 1, 10)
        result, mask = got[0]
        x, y, w, h = result["preview"]["box"]
        assert x < 517 and y < 301 and x + w > 561 and y + h > 333  # the defect with context around it
        assert len(mask.preview) <= 8192 and max(result["preview"]["width"], result["preview"]["height"]) == 64
        bgr = cv2.imdecode(np.frombuffer(mask.preview, np.uint8), cv2.IMREAD_COLOR)
        centre = bgr[bgr.shape[0] // 2 - 2: bgr.shape[0] // 2 + 2, bgr.shape[1] // 2 - 2: bgr.shape[1] // 2 + 2]
        assert centre[..., 2].mean() > 200 and centre[..., 1].mean() < 80  # the magenta patch, in RGB order
    finally:
        stop.set()


def jpeg_frames(n: int):
    """Native frames as a folder camera delivers them (JPEG bytes, still encoded); every other one
    with the tinted patch, on JPEG's 16-pixel colour blocks (its edges ring less)."""
    from inspectd.data.images import EncodedImage

    for i in range(n):
        image = np.empty((*NATIVE, 3), np.uint8)
        image[:] = (128, 115, 102)
        if i % 2:
            image[288:336, 512:560] = (255, 25, 153)
        data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()
        yield Frame(f"testcam-jpeg-{i:04d}", "testcam", 1.0 + i, None, encoded=EncodedImage(data, f"{i}.jpg"))


def test_encoded_frames_are_screened_small_and_only_flagged_ones_decoded_in_full(tmp_path):
    settings = service_settings(tmp_path, transport={"max_message_bytes": 4_000_000})
    double = ColourAxisScreenerDouble()
    seen_sizes, sent = [], []

    def screen(image):
        seen_sizes.append(image.shape)
        return double(image)

    chain = ChainSettings(screen_threshold=double.threshold, pixel_threshold=double.threshold)
    stop = threading.Event()
    start_thread(run_refiner, settings, ThresholdRefinerDouble(), stop)
    got, ready = [], threading.Event()
    start_thread(lambda: got.extend(results(settings, stop, camera="testcam", ready=ready)))
    assert ready.wait(10)
    summary = run_capture(settings, screen, stop, threshold=double.threshold, frames=iter(jpeg_frames(4)),
                          chain=chain, image_size=64, on_frame=lambda f, flagged: sent.append((f, flagged)))
    try:
        assert summary["unacked"] == 0 and seen_sizes == [(64, 64, 3)] * 4
        # the native pixels exist only for the flagged frames, and as 8 bit
        assert [f.image is not None for f, _ in sent] == [flagged for _, flagged in sent] == [False, True] * 2
        assert all(f.image.dtype == np.uint8 and f.image.shape == (*NATIVE, 3) for f, flagged in sent if flagged)
        assert wait_until(lambda: len(got) == 2, 10)
        for result, mask in got:
            assert (mask.height, mask.width) == NATIVE
            # refined on the native frame: to JPEG's ringing (a pixel or two); a screening pixel is 12
            bbox = result["defects"][0]["bbox"]
            assert np.abs(np.subtract(bbox, [512, 288, 48, 48])).max() <= 2, bbox
    finally:
        stop.set()
