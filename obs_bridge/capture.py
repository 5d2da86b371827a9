"""OBS as a frame source: a chosen source or scene, captured with ``GetSourceScreenshot``.

obs-websocket has no video stream (its maintainers recommend screenshots or SRT), so this polls JPEG
screenshots: q80 at the model resolution costs OBS one render + encode per call and ran at 20-60 calls/s on a
2-core machine without GPU (PNG is ~10x slower and never used). Polling is rate-limited to ``fps``; frames go
into a bounded drop-oldest queue (default 2 frames) so a slow consumer always gets a recent picture and memory
stays bounded. The poller has its own connection (obsws-python is not thread-safe) that reconnects with
backoff: when OBS is closed or restarted the source simply yields nothing until OBS is back.

The screenshot is requested at the source's own aspect ratio (learned from one full-size probe; OBS would squash
it to any other), large enough to cover the wanted ``size`` (``fit="crop"``) or to fit inside it (``"bars"``),
then framed to ``size`` exactly by ``engine.io.frames.fit_frame``, the one framing rule of every source.
"""

from __future__ import annotations

import base64
import collections
import logging
import math
import threading
import time
from collections.abc import Iterator

import av
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.frames import check_fit, fit_frame
from sdv2_studio.engine.io.protocols import Frame, FrameSource
from sdv2_studio.obs_bridge.client import ObsClient
from sdv2_studio.obs_bridge.errors import ObsError, ObsRequestError, ObsUnreachable
from sdv2_studio.obs_bridge.settings import ObsSettings

log = logging.getLogger(__name__)

NOT_FOUND = 600


class JpegDecoder:
    """Decodes JPEG bytes (or an obs-websocket ``data:image/jpg;base64,...`` URI) to HxWx3 uint8 RGB."""

    def __init__(self) -> None:
        self._ctx = av.CodecContext.create("mjpeg", "r")

    def decode(self, data: bytes | str) -> Frame:
        if isinstance(data, str):
            data = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data)
        frames = self._ctx.decode(av.Packet(data))
        if not frames:
            raise ValueError("the screenshot did not decode to a picture")
        return frames[0].to_ndarray(format="rgb24")


def covering_size(native: tuple[int, int], want: tuple[int, int], fit: str = "crop") -> tuple[int, int]:
    """(h, w) with ``native``'s aspect ratio that covers ``want`` (``fit="crop"``) or fits inside it (``"bars"``),
    never above ``native`` nor outside 8..4096."""
    nh, nw = native
    pick = max if check_fit(fit) == "crop" else min
    scale = min(1.0, pick(want[0] / nh, want[1] / nw))
    h = min(4096, max(8, math.ceil(nh * scale)))
    w = min(4096, max(8, math.ceil(nw * scale)))
    return h, w


class ObsCaptureSource(FrameSource):
    """Frames of the OBS source or scene ``source`` at up to ``fps`` per second (see module docstring).

    ``size=(h, w)``: frames are delivered at exactly this size (None: the source's own size), framed per ``fit``
    ("crop" to fill or "bars", engine.io.frames.fit_frame). ``quality``: JPEG
    quality 1-100 (80 is the measured sweet spot). ``queue``: frames kept for a slow consumer (drop-oldest).
    ``client``: an :class:`ObsClient` to use (default: a new one from ``settings``, owned and closed here).
    Raises EngineError at construction if OBS is unreachable or has no such source; later outages are ridden
    out (see ``connected``, ``outages``, ``last_error``).
    """

    kind = "obs"

    def __init__(self, source: str, settings: ObsSettings | None = None, *, size: tuple[int, int] | None = None,
                 fps: float = 15.0, quality: int = 80, queue: int = 2, client: ObsClient | None = None,
                 fit: str = "crop") -> None:
        if fps <= 0:
            raise EngineError(f"capture rate must be positive, not {fps}")
        if not 1 <= quality <= 100:
            raise EngineError(f"JPEG quality must be 1-100, not {quality}")
        if queue < 1:
            raise ValueError("queue must hold at least one frame")
        if client is None and settings is None:
            raise ValueError("give settings or a client")
        self.source, self.fps, self.quality, self.fit = source, float(fps), quality, check_fit(fit)
        self._own_client = client is None
        self.client = client or ObsClient(settings)  # type: ignore[arg-type]
        self.captured = 0
        self.dropped = 0
        self.outages = 0
        self.last_error: str | None = None
        self.call_times: collections.deque[float] = collections.deque(maxlen=64)  # seconds per screenshot
        self._decoder = JpegDecoder()
        self._queue: collections.deque[tuple[Frame, float]] = collections.deque(maxlen=queue)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        try:
            info = self.client.connect()
            if info.image_formats and "jpg" not in info.image_formats and "jpeg" not in info.image_formats:
                raise EngineError(f"this OBS cannot encode JPEG screenshots ({', '.join(info.image_formats)}); "
                                  "update OBS")
            self._format = "jpeg" if info.image_formats and "jpg" not in info.image_formats else "jpg"
            native = self._probe()
        except BaseException:
            if self._own_client:
                self.client.close()
            raise
        self.native_size = native
        self.size = size or native
        self._request = covering_size(native, self.size, self.fit)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"obs-capture {source}", daemon=True)
        self._thread.start()

    # -- OBS calls ----------------------------------------------------------------------------------------------------

    def _screenshot(self, size: tuple[int, int] | None, quality: int) -> Frame:
        data = {"sourceName": self.source, "imageFormat": self._format, "imageCompressionQuality": quality}
        if size is not None:
            data.update(imageWidth=size[1], imageHeight=size[0])
        reply = self.client.call("GetSourceScreenshot", data)
        return self._decoder.decode(reply["imageData"])

    def _probe(self) -> tuple[int, int]:
        try:
            frame = self._screenshot(None, 10)
        except ObsRequestError as e:
            if e.code == NOT_FOUND:
                raise EngineError(f"OBS has no source or scene named {self.source!r}: `sdv2 obs sources` lists "
                                  "them") from None
            raise
        except ValueError as e:
            raise EngineError(f"OBS sent an unreadable screenshot of {self.source!r} ({e}); is the source "
                              "visible and not empty?") from None
        return frame.shape[0], frame.shape[1]

    # -- poller -------------------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.client.connected

    def _run(self) -> None:
        period = 1.0 / self.fps
        due = time.monotonic()
        was_down = False
        while not self._stop.is_set():
            wait = due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            t = time.monotonic()
            due = max(due + period, t)  # rate limit; after a slow call do not burst
            try:
                frame = self._screenshot(self._request, self.quality)
            except ObsUnreachable as e:
                if not was_down:
                    self.outages += 1
                    was_down = True
                    log.info("OBS capture paused: %s", e)
                self.last_error = str(e)
                due = time.monotonic() + min(0.25, period * 4)
                continue
            except ObsRequestError as e:
                self.last_error = (f"OBS has no source named {self.source!r}" if e.code == NOT_FOUND else str(e))
                due = time.monotonic() + 0.5
                continue
            except (ObsError, ValueError, av.FFmpegError) as e:
                self.last_error = f"bad screenshot: {e}"
                continue
            except BaseException as e:  # a bug: hand it to the consumer instead of dying silently
                with self._cond:
                    self._fatal = e
                    self._cond.notify_all()
                return
            was_down = False
            self.last_error = None
            self.call_times.append(time.monotonic() - t)
            if frame.shape[:2] != tuple(self.size):
                frame = fit_frame(frame, self.size, self.fit)
            with self._cond:
                if len(self._queue) == self._queue.maxlen:
                    self.dropped += 1
                self._queue.append((frame, t - self._t0))
                self.captured += 1
                self._cond.notify_all()

    # -- consumer side ------------------------------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> tuple[Frame, float] | None:
        """The oldest queued ``(frame, pts)``, waiting up to ``timeout`` seconds (None: forever); None on timeout
        or after close."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._fatal or self._stop.is_set(), timeout)
            if self._fatal is not None:
                err, self._fatal = self._fatal, None
                raise EngineError(f"OBS capture failed: {type(err).__name__}: {err}") from err
            return self._queue.popleft() if self._queue else None

    def latest(self, timeout: float | None = None) -> tuple[Frame, float] | None:
        """The newest ``(frame, pts)``, discarding older queued ones (for previews)."""
        item = self.get(timeout)
        with self._cond:
            while self._queue:
                self.dropped += 1
                item = self._queue.popleft()
        return item

    @property
    def queued(self) -> int:
        return len(self._queue)

    def rate(self) -> float:
        """Screenshots per second the poller could sustain (1 / median call time), 0 before the first one."""
        times = sorted(self.call_times)
        return 1.0 / times[len(times) // 2] if times else 0.0

    def __iter__(self) -> Iterator[tuple[Frame, float]]:
        while not self._stop.is_set():
            item = self.get(timeout=0.5)
            if item is not None:
                yield item

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.client.settings.timeout + 1)
        if self._own_client:
            self.client.close()

    def __repr__(self) -> str:
        h, w = self.size
        return f"ObsCaptureSource({self.source!r}, {w}x{h}@{self.fps:g})"

