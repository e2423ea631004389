"""RealSense capture for the real robot's image observations.

Owns: `Cameras` (one capture thread per configured camera serial, the newest frame of each, its centre square
cropped and resized to `env.image_size` as RGB uint8), `CameraFrame` (one processed frame with its device
timestamp and the local monotonic time it was received), `CameraError` (a camera that is missing, frozen, or
cannot stream the configured mode: the message names the camera and its serial) and `import_pyrealsense`.

Why the sensor API and not `rs.pipeline`: a pipeline finds devices only through a context, and the SDK's software
devices (what the tests drive with synthetic frames) never appear in a context's device list in this SDK
version, so tests through a pipeline would test something other than what runs. Opening the sensor that offers
the colour stream also covers cameras whose colour comes from the depth module (D405), which
`first_color_sensor()` misses. Frames go from the SDK into a `frame_queue` of capacity 1 (the SDK drops the older
frame, so a slow reader never gets a backlog) and our thread turns the newest one into a `CameraFrame` slot:
the SDK's own dispatch thread never takes the GIL, and `latest()` costs a dict copy, not a resize.

`pyrealsense2` is imported only when cameras start: its wheel loads Debian's `libusb-1.0-0` at import time,
and the sim path must run without either.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robot_bridge.backend import BackendError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from serl_stack.config import BridgeConfig

# How often a capture thread wakes without a frame to see whether it was stopped (s).
_POLL_S = 0.1
# The colour formats we take, best first: rgb8 needs no channel swap; the SDK converts either from the sensor's
# YUYV, so a real D4xx offers both.
_FORMATS = ("rgb8", "bgr8")


class CameraError(BackendError):
    """A RealSense camera is missing, frozen, or cannot stream the configured mode; the message names it."""


def import_pyrealsense() -> Any:
    """The `pyrealsense2` module, or `CameraError` saying what to install: the Python package, or Debian's
    `libusb-1.0-0` that its wheel loads at import."""
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        if "libusb" in str(e):
            raise CameraError(f"pyrealsense2 cannot load ({e}): install Debian's libusb-1.0-0 "
                              "(`apt-get install -y libusb-1.0-0` as root, or `make system-deps`)") from e
        raise CameraError(f"pyrealsense2 is not installed ({e}): `pip install 'serl_stack[real]'`") from e
    return rs


@dataclass(frozen=True)
class CameraFrame:
    """One processed frame: `image` (size, size, 3) uint8 RGB; `stamp` the camera's timestamp (s, in the clock
    `domain` the SDK reports: hardware, system or global time); `number` the camera's frame counter;
    `received` when this process took it from the SDK, on `time.monotonic()` (the clock `Backend.now()` and
    every staleness check use)."""

    image: np.ndarray
    stamp: float
    domain: str
    number: int
    received: float


def crop_resize(image: np.ndarray, size: int, bgr: bool = False) -> np.ndarray:
    """The centre square of an (H, W, 3) uint8 image resized to (size, size, 3) uint8 RGB (SERL: 640x480 ->
    480x480 -> 128x128). `bgr`: the input's channels are B, G, R."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise CameraError(f"frame of shape {image.shape} dtype {image.dtype}; expected (H, W, 3) uint8")
    from PIL import Image  # Pillow comes with imageio; imported here so the module loads without it.

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top:top + side, left:left + side]
    if side != size:
        # Bilinear with Pillow's support scaled to the shrink factor: each output pixel averages its whole
        # footprint (like an area filter), so a 3.75x shrink does not alias fine texture into noise.
        square = np.asarray(Image.fromarray(np.ascontiguousarray(square)).resize((size, size),
                                                                                 Image.Resampling.BILINEAR))
    if bgr:
        square = square[..., ::-1]
    return np.array(square, dtype=np.uint8, order="C")  # own the pixels: the SDK recycles its frame buffers


class _Camera:
    """One configured camera: its opened sensor, the SDK's 1-frame queue, the capture thread and the slot."""

    def __init__(self, name: str, serial: str, device: Any, sensor: Any, profile: Any, size: int, rs: Any) -> None:
        self.name, self.serial, self.device, self.sensor, self.profile = name, serial, device, sensor, profile
        self.size = size
        self.bgr = profile.format() == rs.format.bgr8
        self.queue = rs.frame_queue(1)
        self.lock = threading.Lock()
        self.frame: CameraFrame | None = None
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"realsense-{name}", daemon=True)

    def start(self) -> None:
        try:
            self.sensor.open(self.profile)
            self.sensor.start(self.queue)
        except RuntimeError as e:  # e.g. another process streams from it: the SDK says "Device or resource busy"
            raise CameraError(f"camera {self.name!r} (serial {self.serial}) cannot start streaming: {e}") from e
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                ok, frame = self.queue.try_wait_for_frame(int(_POLL_S * 1000))
                if not ok:
                    continue
                received = time.monotonic()
                image = crop_resize(np.asanyarray(frame.get_data()), self.size, bgr=self.bgr)
                out = CameraFrame(image=image, stamp=frame.get_timestamp() / 1000.0,
                                  domain=str(frame.get_frame_timestamp_domain()).rpartition(".")[2],
                                  number=int(frame.get_frame_number()), received=received)
                del frame  # hand the buffer back to the SDK's pool now, not at the next frame
                with self.lock:
                    self.frame = out
        except Exception as e:  # kept for latest() to raise in the caller's thread; this thread just ends
            self.error = e

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5 * _POLL_S + 1.0)
        # Each step may fail on a device that vanished (USB unplugged); the others must still run.
        for step in (self.sensor.stop, self.sensor.close):
            with contextlib.suppress(RuntimeError):  # pyrealsense2 raises RuntimeError for every SDK error
                step()


class Cameras:
    """The configured RealSense cameras, each streaming colour at `width` x `height` @ `fps` on its own thread.

    `serials`: image name (obs["images"][name]) -> serial number. `devices`: the devices to pick serials from;
    None means every RealSense on this machine (`rs.context().query_devices()`); tests pass SDK software
    devices. `timeout_s`: a camera whose newest frame is older than this is frozen. `start_timeout_s`: how long
    `start()` waits for every camera's first frame (a real camera takes about a second to start streaming)."""

    def __init__(self, serials: Mapping[str, object], width: int, height: int, fps: int, size: int,
                 timeout_s: float, *, devices: Sequence[Any] | None = None, start_timeout_s: float = 5.0) -> None:
        for field, value in (("width", width), ("height", height), ("fps", fps), ("size", size)):
            if int(value) < 1:
                raise CameraError(f"camera {field} = {value}; expected >= 1")
        if timeout_s <= 0:
            raise CameraError(f"camera timeout_s = {timeout_s}; expected > 0")
        # YAML reads an all-digit serial as an int; the SDK reports strings.
        self.serials = {str(name): str(serial) for name, serial in serials.items()}
        seen: dict[str, str] = {}
        for name, serial in self.serials.items():
            if serial in seen:
                raise CameraError(f"cameras {seen[serial]!r} and {name!r} both have serial {serial}; "
                                  "expected one serial per camera")
            seen[serial] = name
        self.width, self.height, self.fps, self.size = int(width), int(height), int(fps), int(size)
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self._devices = devices
        self._cameras: list[_Camera] = []

    @classmethod
    def from_config(cls, bridge: BridgeConfig, image_size: int, **kwargs: Any) -> Cameras:
        """The cameras `bridge.camera_*` configures, resized to `env.image_size`."""
        return cls(bridge.camera_serials, bridge.camera_width, bridge.camera_height, bridge.camera_fps,
                   image_size, bridge.camera_timeout_s, **kwargs)

    def start(self) -> None:
        """Open every camera and wait for each one's first frame; `CameraError` naming a camera whose serial is
        not connected (listing those that are), that cannot stream the configured mode (listing those it can),
        or that sent nothing within `start_timeout_s`. On error, whatever was opened is closed again."""
        if self._cameras:
            raise CameraError("cameras already started; call stop() first")
        rs = import_pyrealsense()
        devices = list(rs.context().query_devices() if self._devices is None else self._devices)
        by_serial = {_info(d, rs.camera_info.serial_number): d for d in devices}
        try:
            for name, serial in self.serials.items():
                if serial not in by_serial:
                    connected = [f"{s} ({_info(d, rs.camera_info.name)})" for s, d in by_serial.items()]
                    raise CameraError(f"camera {name!r}: no RealSense with serial {serial}; connected: {connected} "
                                      "(bridge.camera_serials)")
                device = by_serial[serial]
                sensor, profile = self._find_stream(name, serial, device, rs)
                camera = _Camera(name, serial, device, sensor, profile, self.size, rs)
                self._cameras.append(camera)
                camera.start()
            self._wait_first_frames()
        except BaseException:
            self.stop()
            raise

    def _find_stream(self, name: str, serial: str, device: Any, rs: Any) -> tuple[Any, Any]:
        """The sensor and colour profile of `device` at the configured size, rate and an RGB/BGR format."""
        offered: list[tuple[int, Any, Any]] = []
        modes: set[str] = set()
        for sensor in device.query_sensors():
            for profile in sensor.get_stream_profiles():
                if profile.stream_type() != rs.stream.color or not profile.is_video_stream_profile():
                    continue
                video = profile.as_video_stream_profile()
                fmt = str(profile.format()).rpartition(".")[2]
                modes.add(f"{video.width()}x{video.height()}@{profile.fps()} {fmt}")
                if (video.width(), video.height(), profile.fps()) == (self.width, self.height, self.fps) \
                        and fmt in _FORMATS:
                    offered.append((_FORMATS.index(fmt), sensor, profile))
        if not offered:
            raise CameraError(f"camera {name!r} (serial {serial}) has no colour stream {self.width}x{self.height}"
                              f"@{self.fps} in {'/'.join(_FORMATS)}; it offers {sorted(modes)} "
                              "(bridge.camera_width, camera_height, camera_fps)")
        _, sensor, profile = min(offered, key=lambda o: o[0])
        return sensor, profile

    def _wait_first_frames(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            self._raise_thread_errors()
            waiting = [c for c in self._cameras if c.frame is None]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(f"{c.name!r} (serial {c.serial})" for c in waiting)
                raise CameraError(f"no frame from camera {names} within {self.start_timeout_s:g} s of starting; "
                                  "check its USB 3 link and that no other process holds it")
            time.sleep(0.01)

    def _raise_thread_errors(self) -> None:
        for c in self._cameras:
            if c.error is not None:
                raise CameraError(f"camera {c.name!r} (serial {c.serial}) capture failed: {c.error}") from c.error

    def latest_frames(self) -> dict[str, CameraFrame]:
        """Each camera's newest frame, without blocking; `CameraError` naming a camera whose newest frame is
        older than `timeout_s` (frozen: unplugged, a USB error, a stalled driver) or whose capture failed."""
        if not self._cameras:
            raise CameraError("cameras not started; call start() first")
        self._raise_thread_errors()
        now = time.monotonic()
        out = {}
        for c in self._cameras:
            with c.lock:
                frame = c.frame
            assert frame is not None  # start() returned only once every camera had a frame
            age = now - frame.received
            if age > self.timeout_s:
                raise CameraError(f"camera {c.name!r} (serial {c.serial}) is frozen: its newest frame is "
                                  f"{age:.3f} s old; expected < {self.timeout_s:g} s (bridge.camera_timeout_s)")
            out[c.name] = frame
        return out

    def latest(self) -> dict[str, tuple[np.ndarray, float]]:
        """Each camera's newest image (size, size, 3) uint8 RGB and when it was received (`time.monotonic()`);
        errors as `latest_frames`."""
        return {name: (f.image, f.received) for name, f in self.latest_frames().items()}

    def stop(self) -> None:
        """Stop every capture thread and close the sensors; safe to call twice."""
        cameras, self._cameras = self._cameras, []
        for c in cameras:
            c.stop()

    def __enter__(self) -> Cameras:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _info(device: Any, field: Any) -> str:
    """A camera_info value of `device`, or '?' where the device does not report it."""
    return device.get_info(field) if device.supports(field) else "?"
