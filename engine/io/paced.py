"""Even pacing for live outputs: a sink wrapper that turns bursts into a steady frame rate.

The engine finishes frames a chunk at a time (4 frames at once). A virtual camera or a live stream shown in OBS
should instead get one frame every ``1/fps`` seconds, or viewers see the last frame of each burst and a stall.
:class:`PacedSink` queues written frames (bounded, drop-oldest: latency stays bounded when the producer is
faster than ``fps``) and a writer thread hands them to the wrapped sink at ``fps``. When the queue runs dry it
simply waits: nothing is repeated or invented.
"""

from __future__ import annotations

import collections
import threading
import time

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.protocols import Frame, FrameSink


class PacedSink(FrameSink):
    """Writes to ``inner`` from a background thread, at most ``fps`` frames per second, evenly spaced.

    ``max_queue`` frames wait at most (the oldest are dropped beyond, counted in ``dropped``). ``write`` never
    blocks. Errors raised by ``inner`` stop the writer and are re-raised by the next ``write`` or ``close``.
    ``sent_times`` keeps the monotonic times of the last writes (for health readouts and tests).
    """

    def __init__(self, inner: FrameSink, fps: float, *, max_queue: int = 8, name: str = "paced-sink") -> None:
        if fps <= 0:
            raise EngineError(f"output fps must be positive, not {fps}")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.inner, self.fps = inner, float(fps)
        self.dropped = 0
        self.written = 0
        self.sent_times: collections.deque[float] = collections.deque(maxlen=256)
        self._queue: collections.deque[Frame] = collections.deque()
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        """Queue ``frame`` (the timestamp is ignored: the pacing defines the timing)."""
        with self._cond:
            self._raise()
            if self._closing:
                raise EngineError("the output is closed; open it again")
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(frame)
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _run(self) -> None:
        period = 1.0 / self.fps
        due = 0.0
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._queue or self._closing)
                    if not self._queue:
                        return  # closing and drained
                    now = time.monotonic()
                    if due > now and not self._closing:
                        self._cond.wait(due - now)  # a close() wakes us early and drains at once
                        if not self._queue:
                            continue
                    frame = self._queue.popleft()
                now = time.monotonic()
                self.inner.write(frame)
                self.written += 1
                self.sent_times.append(now)
                # keep the cadence through small scheduling delays; after a gap start afresh instead of bursting
                due = due + period if now - due < period else now + period
        except BaseException as e:  # re-raised to the producer
            with self._cond:
                self._error = e
                self._queue.clear()
                self._cond.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, EngineError):
                raise EngineError(str(err))
            raise EngineError(f"the output failed: {type(err).__name__}: {err}") from err

    def close(self) -> None:
        """Write what is queued (without waiting for the pace), stop the thread and close ``inner``."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        try:
            self.inner.close()
        finally:
            with self._cond:
                self._raise()
