"""The pacer for live outputs: bursty engine output in, a steady frame rate out.

The engine finishes frames a chunk at a time (4 frames at once). A virtual camera, a stream shown in OBS or a
preview should instead get one frame every period, or viewers see the last frame of each burst and a stall.
:class:`OutputPacer` buffers a chunk's frames (one burst) and hands them out at the rate the engine produces them,
with a small jitter buffer, dropping stale frames instead of queueing without bound. ``engine.session.Session``
runs it in front of its outputs when ``paced=True``; its :class:`PacerStats` are in the session status.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class PacerStats:
    delivered: int = 0
    dropped: int = 0  # stale or overflowing frames, never delivered
    underruns: int = 0  # a frame was due and the buffer was empty
    level: int = 0  # frames buffered now
    capacity: int = 0  # current bound on the buffer
    input_fps: float = 0.0  # measured arrival rate (frames/s)
    output_fps: float = 0.0  # measured delivery rate over the recent outputs
    jitter: float = 0.0  # std of the recent inter-output intervals (s)
    delay: float = 0.0  # mean time a delivered frame spent in the buffer (s), recent outputs


@dataclass
class _Burst:
    t: float
    n: int


class OutputPacer:
    """Steady-rate delivery of bursty frames with a small jitter buffer (thread-safe, injectable clock).

    * ``put(frame, t_ready)``: frames whose ready times are within ``burst_gap`` of each other form one burst (a chunk).
      The buffer holds at most ``burst + 2 * depth`` frames (never more than ``max_frames``): ``depth`` frames of
      allowance for late bursts and as many for early ones. On overflow the oldest frame is dropped.
    * The output period follows the measured input rate (frames of all bursts but the first over the span of their
      arrival times; ``fps`` is the guess until two bursts arrived). A small level controller nudges it (at most
      +-``max_trim``) so that the buffer's low-water mark, measured just before each burst, sits at ``depth``: a
      16-fps engine gives a steady 16 fps and slow clock drift does not fill or drain the buffer.
    * Playback starts once the oldest frame has waited ``depth`` periods (the jitter allowance); an empty buffer when a
      frame is due is an underrun and restarts that prebuffering. A consumer that polls late gets one frame and the
      cadence restarts from then (no catch-up bursts).
    * Frames older than ``max_age`` (default: ``burst + 2 * depth`` periods) are dropped as stale when taken, and a
      consumer that comes back from a stall (late by more than ``max(1, depth)`` periods) skips ahead to the newest
      ``burst + depth`` frames.
    * ``sleep``: the blocking ``next`` waits with it instead of a condition variable (for fake clocks in tests).
    """

    def __init__(self, depth: int = 2, *, fps: float | None = None, adaptive: bool = True, max_frames: int = 32,
                 max_age: float | None = None, burst_gap: float = 0.002, gain: float = 0.05, max_trim: float = 0.1,
                 history: int = 64, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] | None = None):
        if depth < 0 or max_frames < 1:
            raise ValueError("pacer: depth must be >= 0 and max_frames >= 1")
        if fps is not None and not fps > 0:
            raise ValueError("pacer: fps must be > 0")
        self.depth, self.max_frames, self.max_age = depth, max_frames, max_age
        self.adaptive, self.burst_gap, self.gain, self.max_trim = adaptive, burst_gap, gain, max_trim
        self._fps_hint = fps
        self._clock, self._sleep = clock, sleep
        self._cond = threading.Condition()
        self._buf: collections.deque[tuple[Any, float]] = collections.deque()
        self._bursts: collections.deque[_Burst] = collections.deque(maxlen=16)
        self._out_t: collections.deque[float] = collections.deque(maxlen=history)
        self._delays: collections.deque[float] = collections.deque(maxlen=history)
        self._stats = PacerStats()
        self._playing = False
        self._due = 0.0
        self._low = float(depth)  # EMA of the buffer level just before a burst
        self._consumed = False  # a frame was delivered since the last burst (the consumer is not stalled)
        self._closed = False

    # -- rates --------------------------------------------------------------------------------------------------------

    def _input_fps(self) -> float | None:
        """Frames per second over the recent bursts; intervals > 2.5x the median (engine pauses) are left out."""
        b = list(self._bursts)
        steps = [(y.t - x.t, y.n) for x, y in zip(b, b[1:]) if y.t > x.t]
        if not steps:
            return self._fps_hint
        med = sorted(dt for dt, _ in steps)[len(steps) // 2]
        kept = [(dt, n) for dt, n in steps if dt <= 2.5 * med]
        return sum(n for _, n in kept) / sum(dt for dt, _ in kept)

    def _base_period(self) -> float | None:
        if not self.adaptive and self._fps_hint:
            return 1.0 / self._fps_hint
        fps = self._input_fps()
        return 1.0 / fps if fps else None

    def _period(self) -> float | None:
        base = self._base_period()
        if base is None:
            return None
        trim = self.gain * (self._low - self.depth)  # positive: frames pile up, play a little faster
        return base * (1.0 - max(-self.max_trim, min(self.max_trim, trim)))

    def _burst(self) -> int:
        return max((x.n for x in list(self._bursts)[-8:]), default=1)

    def _capacity(self) -> int:
        return min(self.max_frames, self._burst() + 2 * self.depth)

    def _max_age(self) -> float | None:
        if self.max_age is not None:
            return self.max_age
        base = self._base_period()
        return None if base is None else (self._burst() + 2 * self.depth) * base

    # -- producer -----------------------------------------------------------------------------------------------------

    def put(self, frame: Any, t_ready: float | None = None) -> bool:
        """Buffer one frame ready at ``t_ready`` (default: now). Returns False if an older frame had to be dropped."""
        with self._cond:
            t = self._clock() if t_ready is None else t_ready
            if self._bursts and t - self._bursts[-1].t <= self.burst_gap:
                self._bursts[-1].n += 1
            else:
                if self._bursts and self._consumed:  # low-water mark: what is left just before this burst
                    self._low += 0.25 * (len(self._buf) - self._low)
                self._consumed = False
                self._bursts.append(_Burst(t, 1))
            self._buf.append((frame, t))
            ok = True
            while len(self._buf) > self._capacity():
                self._buf.popleft()
                self._stats.dropped += 1
                ok = False
            self._cond.notify_all()
            return ok

    def put_many(self, frames: Sequence[Any], t_ready: float | None = None) -> int:
        """Buffer a chunk's frames (one burst). Returns how many frames were dropped to make room."""
        t = self._clock() if t_ready is None else t_ready
        return sum(not self.put(f, t) for f in frames)

    def close(self) -> None:
        """Wake blocked consumers; ``next`` returns what is buffered, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[Any]:
        """Everything buffered, oldest first, at once (a stream that stops: its tail is not paced)."""
        with self._cond:
            frames = [frame for frame, _ in self._buf]
            self._buf.clear()
            self._playing = False
            self._stats.delivered += len(frames)
            return frames

    # -- consumer -----------------------------------------------------------------------------------------------------

    def get(self, now: float | None = None) -> Any | None:
        """The frame due at ``now`` (default: the clock), or None if none is due yet."""
        with self._cond:
            return self._get(self._clock() if now is None else now)

    def _drop_stale(self, now: float) -> None:
        age = self._max_age()
        if age is None:
            return
        while self._buf and now - self._buf[0][1] > age:
            self._buf.popleft()
            self._stats.dropped += 1

    def _get(self, now: float) -> Any | None:
        self._drop_stale(now)
        period = self._period()
        if not self._playing:
            if not self._buf:
                return None
            if self._closed or period is None:  # no rate known yet / draining: deliver as they come
                return self._deliver(now, period or 0.0)
            if now - self._buf[0][1] < self.depth * period:
                return None
            self._playing, self._due = True, now
        if now < self._due:
            return None
        if not self._buf:
            self._stats.underruns += 1
            self._playing = False
            return None
        if period and now - self._due > max(period, self.depth * period):
            # the consumer stalled: skip ahead to the newest burst plus the jitter allowance instead of replaying
            while len(self._buf) > self._burst() + self.depth:
                self._buf.popleft()
                self._stats.dropped += 1
        return self._deliver(now, period or 0.0)

    def _deliver(self, now: float, period: float) -> Any:
        frame, t = self._buf.popleft()
        self._out_t.append(now)
        self._delays.append(now - t)
        self._stats.delivered += 1
        self._consumed = True
        self._due = now + period if now - self._due > period else self._due + period
        return frame

    def due_in(self, now: float | None = None) -> float | None:
        """Seconds until a frame may be due (0: now), or None when nothing is buffered."""
        with self._cond:
            return self._due_in(self._clock() if now is None else now)

    def _due_in(self, now: float) -> float | None:
        if not self._buf:
            return None
        period = self._period()
        if self._closed or period is None:
            return 0.0
        if not self._playing:
            return max(0.0, self._buf[0][1] + self.depth * period - now)
        return max(0.0, self._due - now)

    def next(self, timeout: float | None = None) -> Any | None:
        """Block until a frame is due and return it; None after ``timeout`` seconds or once closed and empty."""
        with self._cond:
            end = None if timeout is None else self._clock() + timeout
            while True:
                now = self._clock()
                frame = self._get(now)
                if frame is not None:
                    return frame
                if self._closed and not self._buf:
                    return None
                left = None if end is None else end - now
                if left is not None and left <= 0:
                    return None
                due = self._due_in(now)
                waits = [w for w in (due, left) if w is not None]
                dt = min(waits) if waits else None
                if self._sleep is None:
                    self._cond.wait(dt)
                else:
                    self._cond.release()
                    try:
                        self._sleep(dt if dt is not None else 0.001)
                    finally:
                        self._cond.acquire()

    # -- stats --------------------------------------------------------------------------------------------------------

    def stats(self) -> PacerStats:
        with self._cond:
            s = dataclasses.replace(self._stats, level=len(self._buf), capacity=self._capacity())
            s.input_fps = self._input_fps() or 0.0
            t = list(self._out_t)
            if len(t) >= 2 and t[-1] > t[0]:
                gaps = [b - a for a, b in zip(t, t[1:])]
                mean = sum(gaps) / len(gaps)
                s.output_fps = 1.0 / mean
                s.jitter = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
            if self._delays:
                s.delay = sum(self._delays) / len(self._delays)
            return s


__all__ = ["OutputPacer", "PacerStats"]
