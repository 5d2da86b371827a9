"""Frame sinks: MP4 files through PyAV, a raw callback, and spec parsing with an extension point.

``open_sink(spec, fps=...)`` handles ``*.mp4`` paths itself. Other outputs (mpegts over udp/srt,
virtual cameras, ...) plug in with :func:`register_sink`: the first registered prefix that ``spec``
starts with (case-insensitive) wins, e.g. ``register_sink("srt://", open_srt_sink)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.frames import check_frame, even_size, fit_frame
from sdv2_studio.engine.io.protocols import Frame, FrameSink

__all__ = ["CallbackSink", "FrameSink", "MP4Sink", "SinkOpener", "check_sink", "default_codec", "is_file_spec",
           "open_sink", "register_sink"]

#: Encoder time base: fine enough for any frame rate, within mpeg4's 65535 limit on the denominator.
TIME_BASE = Fraction(1, 60000)


def default_codec() -> str:
    """``libx264`` if this PyAV/FFmpeg build can encode it, else ``mpeg4`` (always built in)."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except (av.FFmpegError, ValueError):
        return "mpeg4"


def conform_frame(frame: Frame, size: tuple[int, int]) -> Frame:
    """A frame at exactly `size`: an odd last row/column is dropped, anything else is fitted (scale + crop)."""
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    if frame.shape[0] - h in (0, 1) and frame.shape[1] - w in (0, 1):
        return frame[:h, :w]
    return fit_frame(frame, (h, w))


def add_video_stream(container, codec: str, fps: float, h: int, w: int, time_base) -> av.video.stream.VideoStream:
    """A yuv420p video stream of `codec` at `fps` in `container`; EngineError when the encoder is missing."""
    try:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    except (av.FFmpegError, ValueError) as e:
        raise EngineError(f"video encoder {codec} is not available ({e}); use libx264 or mpeg4") from e
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.codec_context.time_base = time_base
    return stream


def encode_rgb(container, stream, frame: Frame | None, pts: int = 0, time_base=None, duration: int = 0) -> None:
    """Encode one RGB frame (BT.709, limited range, yuv420p) and mux its packets; ``frame`` None flushes the
    encoder. ``duration`` (ticks of ``time_base``) is given to packets that have none: the last frame's says how long
    it shows, so a file ends when its input did."""
    vf = None
    if frame is not None:
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf = vf.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        vf.pts, vf.time_base = pts, time_base
    for packet in stream.encode(vf):
        packet.duration = packet.duration or duration
        container.mux(packet)


class MP4Sink(FrameSink):
    """Writes frames to an H.264 (or MPEG-4 part 2) ``.mp4`` with PyAV.

    * ``size=(h, w)`` fixes the video size; None takes it from the first frame. Frames of another size
      are fitted (scaled to cover, centre-cropped). Odd sides are cropped by one pixel to even (yuv420p
      needs even sizes).
    * Quality: libx264 with ``crf`` (18 = visually near-lossless) and ``preset`` (veryfast, light on the
      CPU next to the model); mpeg4 with ``bitrate`` (default ~0.5 bit per pixel per frame).
    * Colours: RGB is converted with BT.709 (limited range) and the stream is tagged as such.
    * Atomic: frames go to a hidden temp file in the target folder (``.<name>.<random>.part``) which
      ``close()`` renames over ``path`` with ``os.replace``. A crash or kill therefore never leaves a
      corrupt file at ``path`` (at worst a stale ``.part`` file). Leaving a ``with`` block by an
      exception (e.g. Ctrl-C) still finishes the file, so recordings survive a stop; a sink that got
      no frames writes nothing.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        size: tuple[int, int] | None = None,
        *,
        codec: str | None = None,
        crf: int = 18,
        preset: str = "veryfast",
        bitrate: int | None = None,
    ) -> None:
        if fps <= 0:
            raise EngineError(f"output fps must be positive, not {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.codec = codec or default_codec()
        self.crf, self.preset, self.bitrate = crf, preset, bitrate
        self.size = None if size is None else even_size(*size)
        self.frames = 0
        self._last_pts = -1
        self._frame_ticks = max(1, round(1 / (self.fps * TIME_BASE)))  # one frame at ``fps``
        self._stream: av.video.stream.VideoStream | None = None
        folder = self.path.parent
        _check_output_folder(self.path)
        if not folder.is_dir():
            raise EngineError(f"output folder {folder} does not exist; create it or pick another path")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=folder)
            os.close(fd)
        except OSError as e:
            raise EngineError(f"cannot write to {folder} ({e.strerror}); pick another output folder") from e
        self._tmp: Path | None = Path(tmp)
        try:
            self._container = av.open(tmp, "w", format="mp4", options={"movflags": "+faststart"})
        except (av.FFmpegError, OSError) as e:
            self._discard()
            raise EngineError(f"cannot create {self.path} ({e}); pick another output path") from e

    def _open_stream(self, h: int, w: int) -> av.video.stream.VideoStream:
        stream = add_video_stream(self._container, self.codec, self.fps, h, w, TIME_BASE)
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709
        cc.color_range = 1  # limited ("MPEG") range
        if self.codec == "libx264":  # no B-frames: with reordering, mp4 cuts a variable-rate file's end short
            stream.options = {"crf": str(self.crf), "preset": self.preset, "bf": "0"}
        else:
            cc.bit_rate = self.bitrate or max(500_000, int(0.5 * w * h * self.fps))
        return stream

    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        """Encode one frame; ``pts_seconds`` None spaces frames evenly at ``fps``. Timestamps that do not
        increase are nudged forward (the mp4 muxer requires strictly increasing ones)."""
        if self._tmp is None:
            raise EngineError(f"{self.path} is already closed; open a new output")
        check_frame(frame)
        if self.size is None:
            self.size = even_size(*frame.shape[:2])
        h, w = self.size
        frame = conform_frame(frame, (h, w))
        t = self.frames / self.fps if pts_seconds is None else pts_seconds
        pts = max(int(round(t / TIME_BASE)), self._last_pts + 1)
        try:
            if self._stream is None:
                self._stream = self._open_stream(h, w)
            encode_rgb(self._container, self._stream, frame, pts, TIME_BASE, self._frame_ticks)
        except (av.FFmpegError, OSError) as e:
            self._discard()
            raise EngineError(f"cannot write {self.path} ({e}); check free disk space and permissions") from e
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, finish the mp4 and move it to ``path`` (nothing is written if no frames came)."""
        if self._tmp is None:
            return
        try:
            if self._stream is not None:
                encode_rgb(self._container, self._stream, None, duration=self._frame_ticks)
            self._container.close()
        except (av.FFmpegError, OSError) as e:
            self._discard()
            raise EngineError(f"cannot finish {self.path} ({e}); check free disk space") from e
        if self.frames == 0:
            self._discard()
            return
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp makes 0600; the user's file gets normal permissions
            os.replace(self._tmp, self.path)
        except OSError as e:
            self._discard()
            raise EngineError(f"cannot write {self.path} ({e.strerror}); is it open in another program?") from e
        self._tmp = None

    def _discard(self) -> None:
        """Drop the output: close the container and delete the temp file."""
        try:
            self._container.close()
        except Exception:  # already closed or broken; the temp file goes regardless
            pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


class CallbackSink(FrameSink):
    """Hands every frame to ``fn(frame, pts_seconds)``; ``on_close`` (optional) runs once on close."""

    def __init__(self, fn: Callable[[Frame, float | None], None], on_close: Callable[[], None] | None = None) -> None:
        self.fn, self._on_close = fn, on_close

    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        self.fn(frame, pts_seconds)

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


#: Opens a sink for ``spec`` at ``fps`` with an optional fixed ``size=(h, w)``.
SinkOpener = Callable[..., FrameSink]
_OPENERS: list[tuple[str, SinkOpener]] = []
_CHECKS: dict[str, Callable[[str], None]] = {}


def register_sink(prefix: str, opener: SinkOpener, check: Callable[[str], None] | None = None) -> None:
    """Make ``open_sink`` send specs starting with ``prefix`` (e.g. ``"udp://"``, ``"vcam"``) to
    ``opener(spec, fps=..., size=...)``. A prefix that ends in a letter or digit (``vcam``, ``obs-source``) matches
    the word itself and the word followed by ``:`` or ``/`` (so ``vcam.mp4`` stays a file). Registering a prefix
    again replaces its opener. ``check(spec)`` (optional) raises EngineError, before any model loads, when such an
    output cannot open here (:func:`check_sink`)."""
    prefix = prefix.lower()
    _OPENERS[:] = [(p, o) for p, o in _OPENERS if p != prefix]
    _OPENERS.append((prefix, opener))
    _CHECKS.pop(prefix, None)
    if check is not None:
        _CHECKS[prefix] = check


def _prefix(spec: str) -> str | None:
    low = spec.strip().lower()
    for prefix, _ in _OPENERS:
        if low.startswith(prefix) and (not prefix[-1].isalnum() or low[len(prefix):len(prefix) + 1] in ("", ":", "/")):
            return prefix
    return None


def _opener(spec: str) -> SinkOpener | None:
    prefix = _prefix(spec)
    return dict(_OPENERS)[prefix] if prefix is not None else None


def check_sink(spec: str) -> None:
    """EngineError (one line naming the fix) when output ``spec`` cannot open on this machine, as far as can be told
    without opening it (e.g. a missing optional package)."""
    check = _CHECKS.get(_prefix(spec) or "")
    if check is not None:
        check(spec.strip())
    elif _opener(spec.strip()) is None and not _is_mp4(spec.strip()):
        raise _unsupported(spec.strip())
    elif _is_mp4(spec.strip()):
        _check_output_folder(Path(spec.strip()).expanduser().absolute())


def _check_output_folder(path: Path) -> None:
    """The folder of output `path` exists or can be made: its nearest existing ancestor is a writable folder."""
    if path.is_dir():
        raise EngineError(f"output {path} is a folder; give a file name like {path / 'styled.mp4'}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise EngineError(f"cannot write {path}: {ancestor} is a file, not a folder; pick another output path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise EngineError(f"cannot write to {ancestor} (permission denied); pick another output folder")


def is_file_spec(spec: str) -> bool:
    """Whether ``open_sink(spec)`` writes a file (no registered output and no URL)."""
    return _opener(spec) is None and "://" not in spec


def open_sink(spec: str, *, fps: float, size: tuple[int, int] | None = None) -> FrameSink:
    """Open the output a user typed: a ``.mp4`` path, or anything registered with :func:`register_sink`."""
    spec = spec.strip()
    opener = _opener(spec)
    if opener is not None:
        return opener(spec, fps=fps, size=size)
    if _is_mp4(spec):
        return MP4Sink(spec, fps, size)
    raise _unsupported(spec)


def _is_mp4(spec: str) -> bool:
    return spec.lower().endswith(".mp4") and "://" not in spec


def _unsupported(spec: str) -> EngineError:
    kinds = ", ".join(["a .mp4 file path", *(f"{p}..." for p, _ in _OPENERS)])
    return EngineError(f"unsupported output {spec!r}: use {kinds}")


def _lazy(module: str, name: str) -> SinkOpener:
    """An opener that imports ``module`` only when such an output is opened (no import cycle, light start-up)."""

    def opener(spec: str, **kwargs) -> FrameSink:
        import importlib

        return getattr(importlib.import_module(module), name)(spec, **kwargs)

    return opener


register_sink("udp://", _lazy("sdv2_studio.engine.io.mpegts", "open_mpegts_sink"))
register_sink("srt://", _lazy("sdv2_studio.engine.io.mpegts", "open_mpegts_sink"))
register_sink("vcam", _lazy("sdv2_studio.engine.io.vcam", "open_vcam_sink"))
register_sink("spout", _lazy("sdv2_studio.engine.io.texshare", "open_texshare_sink"))
register_sink("syphon", _lazy("sdv2_studio.engine.io.texshare", "open_texshare_sink"))
register_sink("ndi", _lazy("sdv2_studio.engine.io.ndi", "open_ndi_sink"),
              check=_lazy("sdv2_studio.engine.io.ndi", "check_ndi_spec"))
register_sink("obs-source", _lazy("sdv2_studio.engine.io.shm", "open_shm_sink"))
