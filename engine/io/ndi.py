"""NDI output: the styled video as an NDI source on the local network, through ``cyndilib``.

OBS receives it with the DistroAV plugin (add an "NDI Source", pick "HOST (StreamDiffusionV2)"); vMix, Resolume
and NDI Studio Monitor do too. Optional: ``pip install 'streamdiffusion-studio[ndi]'`` installs cyndilib (MIT), whose
wheels bundle the NDI runtime library (NDI SDK license, ``cyndilib/wrapper/bin/libndi_licenses.txt``).

Specs: ``ndi`` / ``ndi:NAME`` (default name ``StreamDiffusionV2``); receivers list it as ``HOST (NAME)``.

Frames: RGB uint8 ``HxWx3`` is sent as BGRX (NDI's 4-byte layout without alpha) at the sink's fps as frame rate;
NDI compresses it for the network (SpeedHQ), so a receiver sees the colours within a few 8-bit levels. ``write``
never waits for the network: it leaves the frame in a one-frame mailbox and a sender thread converts and sends the
newest one (NDI's own clocking is off: the session's output pacer sets the rate). A frame replaced in the mailbox
before the thread took it is counted in ``dropped``; with no receiver NDI sends nothing and costs only the
conversion.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

import numpy as np
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.availability import ndi_availability
from sdv2_studio.engine.io.frames import check_frame, fit_frame
from sdv2_studio.engine.io.protocols import Frame, FrameSink

__all__ = ["DEFAULT_NAME", "NdiSink", "check_ndi_spec", "open_ndi_sink", "parse_ndi_spec", "rgb_to_bgrx"]

DEFAULT_NAME = "StreamDiffusionV2"


def parse_ndi_spec(spec: str) -> str:
    """The sender name of ``ndi`` / ``ndi:NAME``: 1-63 printable characters, without ``( ) \\``."""
    m = re.fullmatch(r"ndi(?::(.*))?", spec.strip(), flags=re.IGNORECASE | re.DOTALL)
    if not m:
        raise EngineError(f"bad NDI output {spec!r}: use ndi or ndi:NAME")
    name = (m.group(1) or "").strip() or DEFAULT_NAME
    if len(name) > 63 or not name.isprintable() or any(c in name for c in "()\\"):
        raise EngineError(f"bad NDI name {name!r}: use up to 63 printable characters without ( ) or \\, "
                          "e.g. ndi:Studio")
    return name


def rgb_to_bgrx(frame: Frame, out: np.ndarray | None = None) -> np.ndarray:
    """An ``HxWx4`` BGRX copy of RGB ``frame`` (X = 255), into ``out`` when given."""
    h, w = frame.shape[:2]
    if out is None:
        out = np.empty((h, w, 4), np.uint8)
    out[..., :3] = frame[..., ::-1]
    out[..., 3] = 255
    return out


def _load_cyndilib():
    status = ndi_availability()  # missing, or its runtime does not load: one line naming the fix
    if not status.ok:
        raise EngineError(status.describe())
    import cyndilib

    return cyndilib


class NdiSink(FrameSink):
    """Sends frames as the NDI source ``name`` at ``fps`` (see module docstring). The picture size is fixed by
    ``size=(h, w)`` or the first frame; frames of another size are fitted (scaled to cover, centre-cropped)."""

    def __init__(self, name: str = DEFAULT_NAME, fps: float = 30.0, size: tuple[int, int] | None = None) -> None:
        if not fps > 0:
            raise EngineError(f"output fps must be positive, not {fps}")
        self._ndi = _load_cyndilib()
        self.name, self.fps, self.size = name, float(fps), size
        self.frames = self.dropped = 0  # frames sent; frames replaced in the mailbox before they were sent
        self._pending: Frame | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._wake = threading.Condition()
        self._sender = None
        self._thread = threading.Thread(target=self._run, name=f"ndi {name}", daemon=True)
        self._thread.start()

    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        """Hand ``frame`` to the sender thread and return at once (``pts_seconds`` is not used)."""
        if self._closed:
            raise EngineError(f"the NDI output {self.name!r} is closed; open it again")
        if self._error is not None:
            raise EngineError(f"the NDI output {self.name!r} failed: {self._error}")
        check_frame(frame)
        with self._wake:
            if self._pending is not None:
                self.dropped += 1
            self._pending = frame
            self._wake.notify()

    def _open(self, h: int, w: int) -> None:
        nd = self._ndi
        vf = nd.VideoSendFrame()
        vf.set_resolution(w, h)
        vf.set_frame_rate(Fraction(self.fps).limit_denominator(1001))
        vf.set_fourcc(nd.FourCC.BGRX)
        sender = nd.Sender(self.name, clock_video=False, clock_audio=False)
        sender.set_video_frame(vf)
        sender.open()
        self._sender = sender

    def _run(self) -> None:
        buf = None
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._pending is None:  # closed and nothing left to send
                    return
                frame, self._pending = self._pending, None
            try:
                if self._sender is None:
                    self.size = self.size or frame.shape[:2]
                    self._open(*self.size)
                    buf = np.empty((*self.size, 4), np.uint8)
                if frame.shape[:2] != self.size:
                    frame = fit_frame(frame, self.size)
                rgb_to_bgrx(frame, buf)
                self._sender.write_video_async(buf.reshape(-1))  # cyndilib copies it into its own send buffer
                self.frames += 1
            except Exception as e:  # reported by the next write(): the session closes this output
                self._error = e
                return

    def close(self) -> None:
        """Send what is in the mailbox, stop the thread and the NDI sender. Safe to call twice."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._thread.join()
        if self._sender is not None:
            self._sender.close()
            self._sender = None


def check_ndi_spec(spec: str) -> None:
    """EngineError (one line) when ``spec`` is malformed or cyndilib is missing: checked before the model loads."""
    parse_ndi_spec(spec)
    _load_cyndilib()


def open_ndi_sink(spec: str, *, fps: float, size: tuple[int, int] | None = None) -> NdiSink:
    """The :func:`~engine.io.sinks.register_sink` opener for ``ndi[:NAME]``."""
    return NdiSink(parse_ndi_spec(spec), fps, size)
