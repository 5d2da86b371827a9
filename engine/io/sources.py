"""Frame sources: files, network streams and cameras through PyAV, the test pattern, and spec parsing.

``open_source(spec)`` turns what the user typed into a :class:`FrameSource`::

    test | test:WxH | test:WxH@FPS | test@FPS        built-in animated pattern (default 512x512 @ 16)
    camera:NAME | /dev/videoN                       a camera (see engine.io.cameras for NAME per OS)
    obs-filter | obs-filter:CHANNEL                 frames of an OBS source with the StreamDiffusionV2 filter (shm)
    rtmp:// rtmps:// srt:// udp:// rtp:// rtsp:// tcp:// http(s)://   a network stream
    anything else                                   a video file path (file:// also accepted)

Live inputs (cameras, network streams) are read on a background thread that keeps only the newest
frame (``drop_stale``), so a slow model always works on the latest picture instead of a growing
backlog. Files are decoded on demand, as fast as the consumer pulls (or at their own speed with
``realtime=True``), and can ``loop``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import av
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.cameras import CAMERA_FORMATS, CameraInfo, camera_url, list_cameras
from sdv2_studio.engine.io.pacing import LatestOnly, Pacer
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.io.protocols import Frame, FrameSource, check_source_size

__all__ = [
    "AVSource",
    "CameraInfo",
    "FrameSource",
    "TestPatternSource",
    "camera_source",
    "list_cameras",
    "low_latency_options",
    "open_source",
]

STREAM_SCHEMES = ("rtmp", "rtmps", "srt", "udp", "rtp", "rtsp", "rtsps", "tcp", "http", "https")
SOURCE_HELP = (
    "use a video file path, test, test:WxH@FPS, camera:NAME, /dev/videoN, obs-filter:CHANNEL, or an rtmp:// srt:// "
    "udp:// rtsp:// URL"
)
_DEFAULT_FPS = 30.0  # when a stream does not say


def _scheme(url: str) -> str | None:
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", url)
    return m.group(1).lower() if m else None


def _reason(e: BaseException) -> str:
    """One short line describing an FFmpeg/OS error."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())


class PresentationClock:
    """A decoded frame's presentation time in seconds from the first frame: the container's own (``pts *
    time_base``, whatever the time base), so variable frame rates and skipped ("repeat the previous frame") slots
    keep their timing. A frame without a timestamp, or one that does not move forward (a damaged file, a timestamp
    reset), comes one ``period`` after the previous frame, and the frames after it continue from there.
    ``restart()`` continues the timeline one period after the last frame (a looping file)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.last = -period  # the previous frame's time
        self._zero: float | None = None  # the container time that maps to ``offset``
        self._offset = 0.0

    def time(self, t: float | None) -> float:
        if t is not None and self._zero is None:  # the first timestamp of a pass
            self._zero = t
        pts = None if t is None else t - self._zero + self._offset
        if pts is None or pts <= self.last:
            pts = self.last + self.period
            if t is not None:  # re-anchor: the frames after this one keep their spacing from here
                self._zero, self._offset = t, pts
        self.last = pts
        return pts

    def restart(self) -> None:
        self._zero, self._offset = None, self.last + self.period


class AVSource(FrameSource):
    """Decodes a video file, network URL or camera device with PyAV into RGB24 numpy frames.

    ``format``/``options`` go to ``av.open`` (e.g. ``format="v4l2"``, ``options={"fflags": "nobuffer"}``).
    ``timeout`` (seconds, None = wait forever) bounds both connecting and waiting for data.
    ``loop`` restarts a file at its end, with timestamps continuing to increase. ``realtime`` paces
    playback to the file's timestamps. ``drop_stale`` (default: on for cameras and network streams)
    reads on a background thread and yields only the newest frame. Timestamps are seconds from the
    first frame. Every user-fixable problem raises :class:`EngineError` with one line naming the fix.
    """

    def __init__(
        self,
        url_or_path: str | Path,
        *,
        format: str | None = None,
        options: dict[str, str] | None = None,
        loop: bool = False,
        realtime: bool = False,
        timeout: float | None = 10.0,
        drop_stale: bool | None = None,
        label: str | None = None,
    ) -> None:
        self.url = str(url_or_path)
        if format in CAMERA_FORMATS.values():
            self.kind = "camera"
        elif _scheme(self.url) not in (None, "file"):
            self.kind = "stream"
        else:
            self.kind = "file"
        self.label = label or self.url
        self.loop, self.realtime, self.timeout = loop, realtime, timeout
        self.drop_stale = self.kind != "file" if drop_stale is None else drop_stale
        self._lock = threading.Lock()
        self._latest: LatestOnly[tuple[Frame, float]] | None = None
        self._closed = False
        if self.kind == "file" and format is None and _scheme(self.url) is None and not Path(self.url).exists():
            raise EngineError(f"video file not found: {self.url}; check the path")
        try:
            self._container = av.open(self.url, format=format, options=dict(options or {}), timeout=timeout)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise EngineError(self._open_error(e)) from e
        if not self._container.streams.video:
            self._container.close()
            raise EngineError(f"{self.label} has no video stream; pick a video file or another source")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO" if self.kind == "file" else "SLICE"  # frame threads add latency
        cc = self._stream.codec_context
        self.size = (cc.height, cc.width)  # (0, 0) until the first frame for some streams
        if self.size != (0, 0):
            try:
                check_source_size(*self.size, what=self.label)
            except EngineError:
                self._container.close()
                raise
        rate = self._stream.average_rate or self._stream.guessed_rate or cc.framerate
        self.fps = float(rate) if rate else _DEFAULT_FPS

    def _open_error(self, e: BaseException) -> str:
        if self.kind == "camera":
            return (
                f"cannot open {self.label} ({_reason(e)}): check it is connected, not used by another app, "
                "and supports the requested size/fps"
            )
        if self.kind == "stream":
            if isinstance(e, av.error.ExitError):
                return (
                    f"no answer from {self.url} within {self.timeout:g} s: check the address and that "
                    "the sender is running"
                )
            return f"cannot connect to {self.url} ({_reason(e)}): check the address and that the sender is running"
        if isinstance(e, FileNotFoundError):
            return f"video file not found: {self.url}; check the path"
        if isinstance(e, PermissionError):
            return f"cannot read {self.url}: permission denied; check the file's permissions"
        return (
            f"cannot read {self.url} ({_reason(e)}): not a video FFmpeg can decode; convert it to .mp4 "
            "or pick another file"
        )

    def _lost_error(self, e: BaseException | None) -> str:
        if self.kind == "camera":
            return f"{self.label} disappeared: reconnect it or pick another source"
        if self.kind == "stream":
            if isinstance(e, av.error.ExitError):
                return f"no data from {self.url} for {self.timeout:g} s: check the sender and the network"
            return f"lost the stream {self.url} ({_reason(e) if e else 'ended'}): check the sender and the network"
        return f"cannot decode {self.url} ({_reason(e) if e else 'no frames'}): the file may be damaged; re-encode it"

    def _decode(self) -> Iterator[av.VideoFrame]:
        try:
            for frame in self._container.decode(self._stream):
                if self._closed:
                    return
                yield frame
        except (av.FFmpegError, OSError, ValueError) as e:
            if self._closed:  # closed from another thread while reading
                return
            raise EngineError(self._lost_error(e)) from e

    def _frames(self) -> Iterator[tuple[Frame, float]]:
        pacer = Pacer() if self.realtime else None
        clock = PresentationClock(1.0 / self.fps)
        while not self._closed:
            decoded = 0
            for frame in self._decode():
                pts = clock.time(frame.time)
                array = frame.to_ndarray(format="rgb24")
                if self.size == (0, 0):
                    self.size = check_source_size(*array.shape[:2], what=self.label)
                decoded += 1
                if pacer is not None:
                    pacer.wait(pts)
                yield array, pts
                if self._closed:  # closed while the consumer held the frame: touch the container no more
                    return
            if self._closed:
                return
            if self.kind == "camera":
                raise EngineError(self._lost_error(None))
            if not self.loop:
                return
            if decoded == 0:
                raise EngineError(self._lost_error(None))
            try:
                self._container.seek(0)
            except (av.FFmpegError, OSError, ValueError) as e:
                raise EngineError(f"cannot loop {self.label} ({_reason(e)}): it is not seekable") from e
            clock.restart()  # the next pass continues the timeline

    def __iter__(self) -> Iterator[tuple[Frame, float]]:
        if self._closed:
            raise EngineError(f"{self.label} is closed; open the source again")
        if not self.drop_stale:
            return self._frames()
        if self._latest is None:
            self._latest = LatestOnly(self._frames(), name=f"read {self.label}", on_exit=self._release)
        return self._latest

    @property
    def dropped(self) -> int:
        """Frames skipped because a newer one arrived before the consumer asked (``drop_stale`` only)."""
        return self._latest.dropped if self._latest is not None else 0

    def _release(self) -> None:
        with self._lock:
            if self._container is not None:
                self._container.close()
                self._container = None

    def close(self) -> None:
        self._closed = True
        if self._latest is not None:
            self._latest.close()  # its reader thread closes the container when it stops
        else:
            self._release()

    def __repr__(self) -> str:
        return f"AVSource({self.label!r}, kind={self.kind}, {self.size[1]}x{self.size[0]}@{self.fps:g})"


def camera_source(
    name: str,
    *,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    options: dict[str, str] | None = None,
    timeout: float | None = 10.0,
) -> AVSource:
    """Open camera ``name`` (``/dev/video0`` or ``0`` on Linux, the device name on Windows, index or name
    on macOS); ``size=(h, w)`` and ``fps`` request a capture mode; ``options`` adds FFmpeg device options
    (e.g. ``{"input_format": "mjpeg"}`` for HD on many USB webcams). Reads latest-frame-only."""
    if not name:
        raise EngineError("camera name is empty: use camera:NAME, e.g. camera:0")
    url, fmt, device_options = camera_url(name, size=size, fps=fps)
    options = {**device_options, **(options or {})}
    label = f"camera {url if fmt == 'v4l2' else name}"
    return AVSource(url, format=fmt, options=options, timeout=timeout, drop_stale=True, label=label)


def low_latency_options(url: str) -> dict[str, str]:
    """FFmpeg options that keep network-input latency low (no input buffering; RTSP over TCP)."""
    options = {"fflags": "nobuffer", "flags": "low_delay"}
    scheme = _scheme(url)
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = "tcp"
    elif scheme == "udp":
        options["overrun_nonfatal"] = "1"  # drop on overflow instead of failing
    return options


def _test_source(spec: str, realtime: bool) -> TestPatternSource:
    m = re.fullmatch(r"test(?::(\d+)x(\d+))?(?:@(\d+(?:\.\d+)?))?", spec, flags=re.IGNORECASE)
    if not m:
        raise EngineError(
            f"bad test source {spec!r}: use test, test:WIDTHxHEIGHT or test:WIDTHxHEIGHT@FPS, e.g. test:512x512@16"
        )
    w, h = (int(m.group(1)), int(m.group(2))) if m.group(1) else (512, 512)
    fps = float(m.group(3)) if m.group(3) else 16.0
    return TestPatternSource((h, w), fps=fps, realtime=realtime)


def _classify(spec: str) -> tuple[str, str]:
    """(kind, what to open) of a source spec: test, camera, obs-filter, stream or file; EngineError (one line) for
    an unknown scheme or a video file that is not there."""
    spec = spec.strip()
    low = spec.lower()
    if low == "test" or low.startswith(("test:", "test@")):
        return "test", spec
    if low.startswith("camera:"):
        return "camera", spec[len("camera:") :].strip()
    if low == "obs-filter" or low.startswith("obs-filter:"):
        return "obs-filter", spec
    if re.fullmatch(r"/dev/video\d+", spec):
        return "camera", spec
    scheme = _scheme(spec)
    if scheme in STREAM_SCHEMES:
        return "stream", spec
    if scheme == "file":
        spec = spec[len("file://") :]
    elif scheme is not None or not spec:
        raise EngineError(f"unsupported source {spec!r}: {SOURCE_HELP}")
    if not Path(spec).is_file():
        raise EngineError(f"no such video file: {spec}; {SOURCE_HELP}")
    return "file", spec


def check_source(spec: str) -> None:
    """EngineError (one line naming the fix) for a source that cannot open, as far as can be told without opening
    it: an unknown scheme, a video file that is not there, a malformed test source (before any model loads)."""
    kind, arg = _classify(spec)
    if kind == "test":
        _test_source(arg, realtime=False)


def open_source(
    spec: str, *, loop: bool = False, realtime: bool = False, drop_stale: bool | None = None
) -> FrameSource:
    """Open the source a user typed (see the module docstring). ``loop``/``realtime`` apply to files
    (``realtime`` also to the test pattern); ``drop_stale`` overrides the per-kind default."""
    kind, arg = _classify(spec)
    if kind == "test":
        return _test_source(arg, realtime)
    if kind == "camera":
        return camera_source(arg)
    if kind == "obs-filter":
        from sdv2_studio.engine.io.shm import open_shm_source

        return open_shm_source(arg)
    if kind == "stream":
        return AVSource(arg, options=low_latency_options(arg), drop_stale=drop_stale)
    return AVSource(arg, loop=loop, realtime=realtime, drop_stale=drop_stale)
