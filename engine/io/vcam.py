"""Virtual-camera output through pyvirtualcam: styled frames as a webcam for Zoom, Discord, browsers and OBS.

Backends (pyvirtualcam): ``v4l2loopback`` (Linux, any ``/dev/videoN`` made by the v4l2loopback module),
``obs`` (Windows/macOS: the OBS Virtual Camera, one per machine), ``unitycapture`` (Windows). The OBS Virtual
Camera is single-instance: while pyvirtualcam writes to it, OBS cannot output its own virtual camera and vice
versa (the OBS bridge enforces that). pyvirtualcam is optional (``pip install pyvirtualcam``; GPL-2.0).

Specs for :func:`open_vcam_sink`: ``vcam`` or ``vcam:`` (first working backend), ``vcam:DEVICE`` (e.g.
``vcam:/dev/video4``), ``vcam/BACKEND`` or ``vcam/BACKEND:DEVICE`` (e.g. ``vcam/unitycapture``).
"""

from __future__ import annotations

import re
import sys

import numpy as np
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.frames import check_frame, fit_frame
from sdv2_studio.engine.io.protocols import Frame, FrameSink

__all__ = ["VirtualCameraSink", "open_vcam_sink", "parse_vcam_spec", "vcam_help"]

DEFAULT_SIZE = (480, 832)  # (h, w) when neither a size nor a first frame says otherwise


def vcam_help(platform: str = sys.platform) -> str:
    """What the user must install for a virtual camera on ``platform``."""
    if platform.startswith("linux"):
        return ("load the v4l2loopback kernel module (`sudo apt install v4l2loopback-dkms && sudo modprobe "
                "v4l2loopback exclusive_caps=1`)")
    if platform == "win32":
        return "install OBS Studio 26+ (OBS Virtual Camera) or Unity Capture"
    if platform == "darwin":
        return "install OBS Studio 30+ and start its virtual camera once to install the camera extension"
    return "install a virtual camera driver supported by pyvirtualcam"


def parse_vcam_spec(spec: str) -> tuple[str | None, str | None]:
    """``(backend, device)`` from ``vcam``, ``vcam:DEVICE``, ``vcam/BACKEND`` or ``vcam/BACKEND:DEVICE``."""
    m = re.fullmatch(r"vcam(?:/([A-Za-z0-9_-]+))?(?::(.*))?", spec.strip(), flags=re.IGNORECASE)
    if not m:
        raise EngineError(f"bad virtual camera output {spec!r}: use vcam, vcam:DEVICE, vcam/BACKEND or "
                          "vcam/BACKEND:DEVICE")
    return m.group(1), (m.group(2) or None)


class VirtualCameraSink(FrameSink):
    """Sends frames to a pyvirtualcam camera of fixed ``size=(h, w)`` at nominal ``fps`` (RGB input).

    Frames of another size are fitted (scaled to cover, centre-cropped). The size is fixed when the camera opens
    (from ``size``, else the first frame), as virtual cameras cannot change size while open. The sink sends
    immediately; a paced ``engine.session.Session`` spaces the frames evenly.
    """

    def __init__(self, fps: float, size: tuple[int, int] | None = None, *, backend: str | None = None,
                 device: str | None = None) -> None:
        if fps <= 0:
            raise EngineError(f"output fps must be positive, not {fps}")
        try:
            import pyvirtualcam
        except ImportError:
            raise EngineError("virtual camera output needs pyvirtualcam: pip install pyvirtualcam "
                              "(or `pip install 'streamdiffusion-studio[obs]'`)") from None
        self._pyvirtualcam = pyvirtualcam
        self.fps = float(fps)
        self.requested_backend, self.requested_device = backend, device
        self.size = size
        self.frames = 0
        self._cam = None
        self._closed = False
        if size is not None:
            self._open(size)

    def _open(self, size: tuple[int, int]) -> None:
        pvc = self._pyvirtualcam
        h, w = size
        known = pvc.camera.BACKENDS
        if self.requested_backend is not None and self.requested_backend not in known:
            raise EngineError(f"unknown virtual camera backend {self.requested_backend!r}: use "
                              f"{', '.join(sorted(known)) or 'none available on this system'}")
        try:
            self._cam = pvc.Camera(width=w, height=h, fps=self.fps, fmt=pvc.PixelFormat.RGB,
                                   backend=self.requested_backend, device=self.requested_device)
        except (RuntimeError, ValueError, OSError) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise EngineError(f"no virtual camera available ({reason}); {vcam_help()}") from None
        self.size = (h, w)

    @property
    def backend(self) -> str | None:
        """The backend in use (``obs``, ``unitycapture``, ``v4l2loopback``, ...) once open."""
        return self._cam.backend if self._cam is not None else None

    @property
    def device(self) -> str | None:
        """The device in use (``/dev/video4``, ``OBS Virtual Camera``, ...) once open."""
        return self._cam.device if self._cam is not None else None

    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        if self._closed:
            raise EngineError("the virtual camera output is closed; open it again")
        check_frame(frame)
        if self._cam is None:
            self._open(self.size or (frame.shape[0], frame.shape[1]))
        h, w = self.size  # type: ignore[misc]
        if frame.shape[:2] != (h, w):
            frame = fit_frame(frame, (h, w))
        try:
            self._cam.send(np.ascontiguousarray(frame))
        except (RuntimeError, ValueError, OSError) as e:
            raise EngineError(f"the virtual camera {self.device} stopped accepting frames ({e}); "
                              "is it still loaded?") from None
        self.frames += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._cam is not None:
            self._cam.close()


def open_vcam_sink(spec: str, *, fps: float, size: tuple[int, int] | None = None) -> VirtualCameraSink:
    """The :func:`~engine.io.sinks.register_sink` opener for ``vcam``: a :class:`VirtualCameraSink`.

    The camera opens now (at ``size``, default 832x480), so a missing driver is reported before streaming."""
    backend, device = parse_vcam_spec(spec)
    return VirtualCameraSink(fps, size or DEFAULT_SIZE, backend=backend, device=device)
