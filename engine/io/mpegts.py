"""Live MPEG-TS output: low-latency H.264 over UDP (or SRT) for OBS's Media Source, or any player.

``udp://127.0.0.1:PORT`` (or ``srt://HOST:PORT``) sinks encode with PyAV: libx264 ``ultrafast`` + ``zerolatency``
(no B-frames, no look-ahead, sliced threads), a keyframe every second so a receiver that starts (or restarts)
mid-stream shows a picture within a second, SPS/PPS repeated in-band, packets flushed as soon as they are muxed.
UDP is connectionless: the sink keeps sending while nobody listens, so OBS can be restarted under it.

Timestamps follow the wall clock (seconds since the first frame) unless the caller passes them, because the
receiver plays them in real time. Bursty producers go through a paced ``engine.session.Session`` (as ``sdv2 run``
and the OBS bridge do) so frames are spaced evenly.

SRT needs a PyAV/FFmpeg build with libsrt; the PyPI wheels have none, so :func:`srt_available` is checked
first and the error names the UDP alternative.
"""

from __future__ import annotations

import functools
import re
import time
from fractions import Fraction
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import av
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.frames import check_frame, even_size
from sdv2_studio.engine.io.protocols import Frame, FrameSink
from sdv2_studio.engine.io.sinks import add_video_stream, conform_frame, default_codec, encode_rgb

__all__ = ["MpegTsSink", "open_mpegts_sink", "srt_available", "stream_url"]

TIME_BASE = Fraction(1, 90000)  # MPEG-TS clock
UDP_PACKET = 1316  # 7 TS packets: fits one Ethernet/loopback datagram without IP fragmentation


@functools.lru_cache(maxsize=1)
def srt_available() -> bool:
    """True if this PyAV/FFmpeg build has the ``srt`` protocol (probed once, ~no cost when absent)."""
    try:
        av.open("srt://127.0.0.1:9?mode=caller&connect_timeout=50", timeout=0.2).close()
    except av.error.ProtocolNotFoundError:
        return False
    except (av.FFmpegError, OSError, ValueError):
        return True  # the protocol exists; nothing listens on the discard port, as expected
    return True


def stream_url(url: str) -> str:
    """``url`` with the options a low-latency sender needs (UDP datagram size; SRT caller + live mode)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if scheme == "udp":
        query.setdefault("pkt_size", str(UDP_PACKET))
    elif scheme == "srt":
        query.setdefault("mode", "caller")
        query.setdefault("transtype", "live")
        query.setdefault("pkt_size", str(UDP_PACKET))
    else:
        raise EngineError(f"unsupported stream output {url!r}: use udp://HOST:PORT or srt://HOST:PORT")
    if not parts.hostname or not parts.port:
        raise EngineError(f"stream output {url!r} needs a host and a port, e.g. udp://127.0.0.1:9750")
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), ""))


class MpegTsSink(FrameSink):
    """Encodes frames to H.264 in MPEG-TS and sends them to ``url`` (``udp://`` or ``srt://``) as they come.

    ``size=(h, w)`` fixes the picture size (default: the first frame's, cropped to even sides); other frames
    are fitted (scaled to cover, centre-cropped). ``crf`` sets the quality (libx264; loopback bandwidth is no
    concern), ``keyframe_seconds`` the keyframe interval. Without libx264 the always-built-in ``mpeg4`` encoder
    is used. ``clock`` (seconds) supplies wall-clock timestamps; tests can replace it.
    """

    #: Flush every packet to the socket at once; write the video PES length so a demuxer can hand a frame on as
    #: soon as its last byte arrived instead of waiting for the next frame to start (seen with PyAV's demuxer).
    MUX_OPTIONS = {"flush_packets": "1", "omit_video_pes_length": "0"}

    def __init__(self, url: str, fps: float, size: tuple[int, int] | None = None, *, crf: int = 21,
                 keyframe_seconds: float = 1.0, codec: str | None = None,
                 clock=time.monotonic) -> None:
        if fps <= 0:
            raise EngineError(f"output fps must be positive, not {fps}")
        self.url = stream_url(url)
        if self.url.startswith("srt:") and not srt_available():
            raise EngineError("this PyAV/FFmpeg build has no SRT support: use a udp:// output (same latency on "
                              "one machine) or install PyAV built against FFmpeg with libsrt")
        self.fps = float(fps)
        self.codec = codec or default_codec()
        self.crf, self.keyframe_seconds = crf, keyframe_seconds
        self.size = None if size is None else even_size(*size)
        self.frames = 0
        self._clock = clock
        self._t0: float | None = None
        self._last_pts = -1
        self._stream: av.video.stream.VideoStream | None = None
        self._closed = False
        try:
            self._container = av.open(self.url, "w", format="mpegts", options=dict(self.MUX_OPTIONS))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise EngineError(f"cannot open the stream output {url} ({e}); check the address") from e

    @property
    def label(self) -> str:
        return re.sub(r"\?.*$", "", self.url)

    def _open_stream(self, h: int, w: int) -> av.video.stream.VideoStream:
        stream = add_video_stream(self._container, self.codec, self.fps, h, w, TIME_BASE)
        cc = stream.codec_context
        cc.gop_size = max(1, round(self.fps * self.keyframe_seconds))
        cc.max_b_frames = 0
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709
        cc.color_range = 1  # limited range
        if self.codec == "libx264":
            stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": str(self.crf), "bf": "0"}
        else:
            cc.bit_rate = max(1_000_000, int(1.0 * w * h * self.fps))
        return stream

    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        """Encode and send one frame; ``pts_seconds`` None uses the wall clock since the first frame."""
        if self._closed:
            raise EngineError(f"the stream output {self.label} is closed; open it again")
        check_frame(frame)
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        if self.size is None:
            self.size = even_size(*frame.shape[:2])
        h, w = self.size
        frame = conform_frame(frame, (h, w))
        t = now - self._t0 if pts_seconds is None else pts_seconds
        pts = max(int(round(t / TIME_BASE)), self._last_pts + 1)
        try:
            if self._stream is None:
                self._stream = self._open_stream(h, w)
            encode_rgb(self._container, self._stream, frame, pts, TIME_BASE)
        except (av.FFmpegError, OSError) as e:
            raise EngineError(f"cannot send to {self.label} ({e}); check the address and the network") from e
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the connection (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode(None))
        except (av.FFmpegError, OSError):
            pass  # the receiver is gone; nothing to finish for a live stream
        finally:
            try:
                self._container.close()
            except (av.FFmpegError, OSError):
                pass


def open_mpegts_sink(spec: str, *, fps: float, size: tuple[int, int] | None = None) -> FrameSink:
    """The :func:`~engine.io.sinks.register_sink` opener for ``udp://`` and ``srt://``: an MPEG-TS sink."""
    return MpegTsSink(spec, fps, size)
