"""RealSense capture (robot_bridge/realsense.py) through the real SDK: `rs.software_device()` cameras with a colour
stream, fed synthetic frames from a test thread, read by the same `Cameras` code that reads a USB camera.

Frames carry their frame number in their pixels (R = n % 256, G = n // 256), so a test can tell which frame an
image came from after crop/resize. Without Debian's libusb-1.0-0 (which the pyrealsense2 wheel loads) the SDK
tests skip with a reason naming it.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from wait_support import wait_until

from robot_bridge.backend import BackendError
from robot_bridge.realsense import CameraError, Cameras, crop_resize, import_pyrealsense
from serl_stack.config import BridgeConfig


def _sdk_missing() -> str | None:
    """Why the SDK cannot run here (the message names libusb-1.0-0 where that is what is missing), or None."""
    try:
        import_pyrealsense()
    except CameraError as e:
        return str(e)
    return None


needs_sdk = pytest.mark.skipif(_sdk_missing() is not None, reason=str(_sdk_missing()))

W, H, FPS = 64, 48, 30  # a small stream keeps the tests fast; the 4:3 shape still needs a centre crop


def encode(n: int) -> tuple[int, int, int]:
    """The RGB colour that stands for frame `n`."""
    return n % 256, (n // 256) % 256, 77


def decode(image: np.ndarray) -> int:
    """The frame number a uniform image stands for; fails unless every pixel agrees (no blending of frames)."""
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) == 1, f"image is not uniform: {colours[:4]}"
    r, g, b = (int(v) for v in colours[0])
    assert b == 77, f"blue channel {b}; expected 77 (channels swapped?)"
    return r + 256 * g


class SyntheticCamera:
    """A software RealSense with one colour stream (`fmt` bgr8 or rgb8): the real SDK, no USB."""

    def __init__(self, serial: str, fmt: str = "bgr8", width: int = W, height: int = H, fps: int = FPS) -> None:
        import pyrealsense2 as rs

        self.rs, self.serial, self.fmt, self.width, self.height = rs, serial, fmt, width, height
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, serial)
        self.device.register_info(rs.camera_info.name, "Synthetic D435")
        self.sensor = self.device.add_sensor("RGB Camera")
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
        stream.width, stream.height, stream.fps, stream.bpp = width, height, fps, 3
        stream.fmt = getattr(rs.format, fmt)
        intrinsics = rs.intrinsics()
        intrinsics.width, intrinsics.height, intrinsics.fx, intrinsics.fy = width, height, 50.0, 50.0
        intrinsics.ppx, intrinsics.ppy = width / 2, height / 2
        stream.intrinsics = intrinsics
        self.profile = self.sensor.add_video_stream(stream, True).as_video_stream_profile()
        self.fed = -1  # the last frame number fed
        self.last_fed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def feed_rgb(self, rgb: np.ndarray, number: int) -> None:
        """Inject one frame given as RGB (converted to the stream's format); its timestamp is number * 10 ms."""
        pixels = rgb[..., ::-1] if self.fmt == "bgr8" else rgb
        frame = self.rs.software_video_frame()
        frame.pixels = np.ascontiguousarray(pixels, dtype=np.uint8)  # the SDK copies the buffer here
        frame.bpp, frame.stride = 3, self.width * 3
        frame.timestamp, frame.frame_number = number * 10.0, number
        frame.domain = self.rs.timestamp_domain.hardware_clock
        frame.profile = self.profile
        self.sensor.on_video_frame(frame)
        self.fed, self.last_fed_at = number, time.monotonic()

    def feed_number(self, n: int) -> None:
        self.feed_rgb(np.broadcast_to(np.array(encode(n), np.uint8), (self.height, self.width, 3)), n)

    def run(self, rate_hz: float) -> None:
        """Feed numbered frames from a thread at `rate_hz` until `halt()`."""
        def loop() -> None:
            n = self.fed + 1
            while not self._stop.is_set():
                self.feed_number(n)
                n += 1
                time.sleep(1.0 / rate_hz)

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name=f"feed-{self.serial}", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()



@pytest.fixture
def cleanup():
    """Stops whatever a test started (cameras, feeders), even when it fails."""
    items: list = []
    yield items.append
    for item in reversed(items):
        item.halt() if isinstance(item, SyntheticCamera) else item.stop()


def cameras(serials: dict, devices: list[SyntheticCamera], size: int = 16, timeout_s: float = 0.5,
            **kwargs) -> Cameras:
    return Cameras(serials, W, H, FPS, size, timeout_s, devices=[d.device for d in devices], **kwargs)


# ------------------------------------------------------------------------------------------ crop and resize


def test_crop_is_the_centre_square_and_bgr_becomes_rgb() -> None:
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_resize(wide, 6), wide[:, 2:8])
    np.testing.assert_array_equal(crop_resize(wide, 6, bgr=True), wide[:, 2:8, ::-1])
    tall = rng.integers(0, 256, (9, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_resize(tall, 5), tall[2:7])
    out = crop_resize(wide, 6, bgr=True)
    assert out.flags.c_contiguous and out.flags.writeable and out.dtype == np.uint8


def test_crop_resize_rejects_what_is_not_an_rgb_image() -> None:
    with pytest.raises(CameraError, match=r"shape \(4, 4\).*expected \(H, W, 3\) uint8"):
        crop_resize(np.zeros((4, 4), np.uint8), 2)
    with pytest.raises(CameraError, match="float32"):
        crop_resize(np.zeros((4, 4, 3), np.float32), 2)


# ------------------------------------------------------------------------------------------ through the SDK


@needs_sdk
@pytest.mark.parametrize("fmt", ["bgr8", "rgb8"])
def test_frames_are_cropped_resized_rgb(fmt: str, cleanup) -> None:
    """SERL's 4:3 -> centre square -> shrink by 3.75, on a frame whose cropped-away margins are magenta and whose
    centre has four quadrants with every channel different: any wrong crop, scale or channel order shows."""
    width, height, size = 160, 120, 32
    quadrants = {"tl": (200, 30, 10), "tr": (10, 200, 30), "bl": (30, 10, 200), "br": (90, 140, 250)}
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:] = (255, 0, 255)
    left, half = 20, 60
    rgb[:half, left:left + half] = quadrants["tl"]
    rgb[:half, left + half:left + 2 * half] = quadrants["tr"]
    rgb[half:, left:left + half] = quadrants["bl"]
    rgb[half:, left + half:left + 2 * half] = quadrants["br"]
    cam = SyntheticCamera("100", fmt=fmt, width=width, height=height)
    feeding = threading.Event()

    def loop() -> None:
        n = 0
        while not feeding.is_set():
            cam.feed_rgb(rgb, n)
            n += 1
            time.sleep(0.02)

    feeder = threading.Thread(target=loop, daemon=True)
    feeder.start()
    try:
        cams = Cameras({"front": "100"}, width, height, FPS, size, 0.5, devices=[cam.device])
        cams.start()
        cleanup(cams)
        image, received = cams.latest()["front"]
    finally:
        feeding.set()
        feeder.join()
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert time.monotonic() - received < 0.5
    # Each output pixel averages a 2 x 3.75 input-pixel footprint: away from the middle lines it sees one colour.
    inner, edge = slice(0, 14), slice(18, 32)
    for key, (rows, cols) in {"tl": (inner, inner), "tr": (inner, edge), "bl": (edge, inner),
                              "br": (edge, edge)}.items():
        np.testing.assert_array_equal(image[rows, cols], np.broadcast_to(quadrants[key], (14, 14, 3)), err_msg=key)
    assert not np.any(np.all(image == (255, 0, 255), axis=-1)), "the magenta margins were not cropped away"


@needs_sdk
def test_frames_arrive_with_their_number_stamp_and_receive_time(cleanup) -> None:
    cam = SyntheticCamera("200")
    cam.run(rate_hz=60)
    cleanup(cam)
    cams = cameras({"wrist": 200}, [cam])  # an int serial, as YAML reads an all-digit one
    cams.start()
    cleanup(cams)
    seen = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        frame = cams.latest_frames()["wrist"]
        assert frame.image.shape == (16, 16, 3) and frame.image.dtype == np.uint8
        assert decode(frame.image) == frame.number, "the image and its frame number disagree"
        assert frame.stamp == pytest.approx(frame.number * 0.010)
        assert frame.domain == "hardware_clock"
        assert frame.received <= time.monotonic()
        seen.append(frame)
        time.sleep(0.02)
    numbers = [f.number for f in seen]
    assert numbers == sorted(numbers) and len(set(numbers)) >= 5, f"frames did not keep arriving: {numbers}"
    received = [f.received for f in seen]
    assert received == sorted(received)


@needs_sdk
def test_a_slow_reader_gets_the_newest_frame_not_a_backlog(cleanup) -> None:
    cam = SyntheticCamera("300")
    cam.feed_number(0)
    threading.Timer(0.05, cam.feed_number, args=(1,)).start()  # start() waits for a first frame
    cams = cameras({"wrist": "300"}, [cam], timeout_s=5.0)  # no frames while the reader dawdles: not frozen yet
    cams.start()
    cleanup(cams)
    assert wait_until(lambda: cams.latest_frames()["wrist"].number == 1)
    for n in range(2, 60):  # far more frames than any SDK or slot queue would keep, with nobody reading
        cam.feed_number(n)
    time.sleep(0.5)  # the slow reader: the capture thread has long taken what there was to take
    first = cams.latest_frames()["wrist"]
    assert first.number == 59, f"the reader got frame {first.number}; expected the newest, 59"
    assert decode(cams.latest()["wrist"][0]) == 59


@needs_sdk
@pytest.mark.serial  # the 0.25 s bound on noticing: `make test` runs it alone
def test_a_stream_that_stops_is_frozen_within_timeout_and_named(cleanup) -> None:
    timeout_s = 0.4
    stalled, live = SyntheticCamera("400"), SyntheticCamera("401")
    for cam in (stalled, live):
        cam.run(rate_hz=50)
        cleanup(cam)
    cams = cameras({"wrist": "400", "front": "401"}, [stalled, live], timeout_s=timeout_s)
    cams.start()
    cleanup(cams)
    assert set(cams.latest()) == {"wrist", "front"}
    stalled.halt()
    error = None
    while error is None and time.monotonic() - stalled.last_fed_at < 5.0:
        try:
            cams.latest()
        except CameraError as e:
            error, noticed = e, time.monotonic() - stalled.last_fed_at
        time.sleep(0.005)
    assert error is not None, "a stream that stopped was never reported"
    assert isinstance(error, BackendError)
    assert timeout_s <= noticed < timeout_s + 0.25, f"frozen reported {noticed:.3f} s after the last frame"
    message = str(error)
    assert "'wrist'" in message and "400" in message and "frozen" in message and "camera_timeout_s" in message
    assert "'front'" not in message and "serial 401" not in message


@needs_sdk
def test_a_serial_that_is_not_connected_names_what_is(cleanup) -> None:
    a, b = SyntheticCamera("500"), SyntheticCamera("501")
    a.run(rate_hz=50)
    cleanup(a)
    cams = cameras({"front": "500", "wrist": "999"}, [a, b])
    with pytest.raises(CameraError, match=r"camera 'wrist': no RealSense with serial 999; connected: .*500.*501"):
        cams.start()
    # The failed start closed the camera it had opened: another reader can open it again.
    again = cameras({"front": "500"}, [a])
    again.start()
    cleanup(again)
    assert decode(again.latest()["front"][0]) <= a.fed


@needs_sdk
def test_without_any_camera_the_usb_context_says_so() -> None:
    """No devices given: the real USB context is asked (none here, or none with this serial on a lab PC)."""
    with pytest.raises(CameraError, match="no RealSense with serial 000000000000; connected:"):
        Cameras({"wrist": "000000000000"}, W, H, FPS, 16, 0.5).start()


@needs_sdk
def test_a_mode_the_camera_cannot_stream_names_the_modes_it_can() -> None:
    cam = SyntheticCamera("600")
    cams = Cameras({"wrist": "600"}, 640, 480, 15, 128, 0.5, devices=[cam.device])
    with pytest.raises(CameraError, match=r"'wrist' \(serial 600\) has no colour stream 640x480@15.*64x48@30 bgr8"):
        cams.start()


@needs_sdk
def test_a_camera_that_sends_nothing_fails_start_by_name() -> None:
    cam = SyntheticCamera("700")
    cams = cameras({"wrist": "700"}, [cam], start_timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(CameraError, match=r"no frame from camera 'wrist' \(serial 700\) within 0.3 s"):
        cams.start()
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(CameraError, match="not started"):
        cams.latest()


def test_configuration_mistakes_are_named() -> None:
    with pytest.raises(CameraError, match="'front' and 'wrist' both have serial 1"):
        Cameras({"front": "1", "wrist": 1}, W, H, FPS, 16, 0.5)
    with pytest.raises(CameraError, match="timeout_s = 0; expected > 0"):
        Cameras({"front": "1"}, W, H, FPS, 16, 0)
    with pytest.raises(CameraError, match="width = 0; expected >= 1"):
        Cameras({"front": "1"}, 0, H, FPS, 16, 0.5)


@needs_sdk
def test_from_config_streams_the_configured_mode_at_the_env_size(cleanup) -> None:
    cam = SyntheticCamera("800", width=W, height=H, fps=FPS)
    cam.run(rate_hz=50)
    cleanup(cam)
    bridge = BridgeConfig(camera_serials={"side": "800"}, camera_width=W, camera_height=H, camera_fps=FPS,
                          camera_timeout_s=0.7)
    cams = Cameras.from_config(bridge, image_size=24, devices=[cam.device])
    assert cams.timeout_s == 0.7
    cams.start()
    cleanup(cams)
    image, _ = cams.latest()["side"]
    assert image.shape == (24, 24, 3)
    assert decode(image) <= cam.fed


@needs_sdk
def test_a_camera_another_reader_holds_fails_start_by_name(cleanup) -> None:
    cam = SyntheticCamera("900")
    cam.run(rate_hz=50)
    cleanup(cam)
    first = cameras({"wrist": "900"}, [cam])
    first.start()
    cleanup(first)
    with pytest.raises(CameraError, match=r"camera 'wrist' \(serial 900\) cannot start streaming"):
        cameras({"wrist": "900"}, [cam]).start()
    assert decode(first.latest()["wrist"][0]) <= cam.fed  # the first reader is unharmed
