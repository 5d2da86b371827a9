"""A built-in animated test source: deterministic moving shapes, no files or devices needed."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pacing import Pacer
from sdv2_studio.engine.io.protocols import Frame, FrameSource, check_source_size

COUNTER_BITS = 16


class TestPatternSource(FrameSource):
    """Animated test card: a scrolling colour gradient, a bouncing ball, a square on a Lissajous path,
    a scrolling "ticker" of text-like bars, and the frame number as 16 binary blocks in the top-left.

    Frame ``i`` depends only on ``(i, size, fps, seed)``, so every run gives the same frames (see
    :meth:`frame` and :func:`read_counter`). Finite with ``frames=`` or ``seconds=``, endless otherwise.
    ``realtime=True`` paces the frames to ``fps``.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        size: tuple[int, int] = (512, 512),
        fps: float = 16,
        seconds: float | None = None,
        frames: int | None = None,
        *,
        seed: int = 0,
        realtime: bool = False,
    ) -> None:
        h, w = check_source_size(*size, what="the test source")
        if fps <= 0:
            raise EngineError(f"test source fps must be positive, not {fps}")
        if frames is not None and seconds is not None:
            raise EngineError("test source: give frames or seconds, not both")
        self.size, self.fps, self.realtime = (h, w), float(fps), realtime
        self.frames = frames if seconds is None else max(1, round(seconds * fps))
        self._closed = False
        rng = np.random.default_rng(seed)
        self._phase = rng.uniform(0, 2 * math.pi, size=8)
        self._speed = rng.uniform(0.6, 1.0, size=4)
        self._bg = self._gradient(h, w, self._phase[:3])
        self._ball_r = max(3, min(h, w) // 10)
        self._ball, self._ball_mask = self._ball_sprite(self._ball_r, rng)
        self._square = max(4, min(h, w) // 6)
        self._bar_h = max(4, h // 8)
        self._bars = self._ticker(self._bar_h, w, rng)
        self._block = max(2, min(h, w) // 64)

    @staticmethod
    def _gradient(h: int, w: int, phase: np.ndarray) -> np.ndarray:
        """``h x 2w`` background, periodic in x with period w, so any w-wide window scrolls seamlessly."""
        x = np.arange(2 * w, dtype=np.float32)[None, :] * (2 * math.pi / w)
        y = np.arange(h, dtype=np.float32)[:, None] * (2 * math.pi / h)
        r = np.broadcast_to(np.cos(x + phase[0]), (h, 2 * w))
        g = np.broadcast_to(np.cos(0.5 * y + phase[1]), (h, 2 * w))
        b = np.cos(x + y + phase[2])
        return (128 + 80 * np.stack([r, g, b], axis=-1)).astype(np.uint8)

    @staticmethod
    def _ball_sprite(r: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
        d = np.sqrt(xx**2 + yy**2) / r
        light = np.sqrt((xx + 0.4 * r) ** 2 + (yy + 0.4 * r) ** 2) / (1.6 * r)  # highlight top-left
        colour = rng.uniform(120, 255, size=3).astype(np.float32)
        ball = np.clip(colour * (1.1 - 0.7 * light[..., None]), 0, 255).astype(np.uint8)
        return ball, d <= 1.0

    @staticmethod
    def _ticker(bh: int, w: int, rng: np.random.Generator) -> np.ndarray:
        """Two "lines of text" (dark bars of random word lengths on a light strip), ``bh x 2w``, period w."""
        strip = np.full((bh, w, 3), 235, np.uint8)
        unit = max(2, w // 128)
        for top, bottom in ((bh // 6, bh // 2 - bh // 12), (bh // 2 + bh // 12, bh - bh // 6)):
            x = unit
            while x < w - unit:
                word = int(rng.integers(2, 10)) * unit
                strip[top:bottom, x : min(x + word, w - unit)] = (30, 30, 60)
                x += word + 2 * unit
        return np.concatenate([strip, strip], axis=1)

    @staticmethod
    def _bounce(t: float, lo: int, hi: int) -> int:
        """Triangle wave between lo and hi; ``t`` in units of one full crossing."""
        u = t % 2.0
        return int(round(lo + (hi - lo) * (u if u < 1 else 2 - u)))

    def frame(self, i: int) -> Frame:
        """Render frame number ``i`` (random access; the iterator yields ``frame(0), frame(1), ...``)."""
        h, w = self.size
        t = i / self.fps
        off = int(t * w / 4) % w  # background scrolls a quarter width per second
        out = self._bg[:, off : off + w].copy()

        toff = int(t * w / 2) % w  # ticker scrolls half a width per second
        y0 = h - self._bar_h - max(1, h // 32)
        out[y0 : y0 + self._bar_h] = self._bars[:, toff : toff + w]

        s = self._square
        cx = w / 2 + (w / 2 - s) * math.sin(2 * math.pi * 0.13 * t + self._phase[3])
        cy = h / 2 + (h / 2 - s) * math.sin(2 * math.pi * 0.21 * t + self._phase[4])
        x0, y0 = int(cx - s / 2), int(cy - s / 2)
        hue = 2 * math.pi * 0.25 * t
        out[y0 : y0 + s, x0 : x0 + s] = [int(128 + 120 * math.cos(hue + k * 2.094)) for k in range(3)]

        r = self._ball_r
        bx = self._bounce(self._speed[0] * t + self._phase[5], r, w - 1 - r)
        by = self._bounce(self._speed[1] * 1.3 * t + self._phase[6], r, h - 1 - r)
        region = out[by - r : by + r + 1, bx - r : bx + r + 1]
        region[self._ball_mask] = self._ball[self._ball_mask]

        b = self._block
        out[b : 4 * b, b : b * (COUNTER_BITS + 3)] = 0
        for bit in range(COUNTER_BITS):
            if (i >> bit) & 1:
                x = b * (2 + bit)
                out[2 * b - b // 2 : 3 * b + b // 2, x : x + b] = 255
        return out

    def __iter__(self) -> Iterator[tuple[Frame, float]]:
        pacer = Pacer() if self.realtime else None
        indices = range(self.frames) if self.frames is not None else itertools.count()
        for i in indices:
            if self._closed:
                return
            pts = i / self.fps
            if pacer is not None:
                pacer.wait(pts)
            yield self.frame(i), pts

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        h, w = self.size
        return f"TestPatternSource({w}x{h}@{self.fps:g}, frames={self.frames})"


def read_counter(frame: np.ndarray, size: tuple[int, int] | None = None) -> int:
    """Decode the frame number a :class:`TestPatternSource` drew into ``frame`` (robust to lossy coding).

    ``size`` is the pattern's original ``(h, w)`` if the frame has since been resized (default: its own).
    """
    h, w = frame.shape[:2]
    ph, pw = size or (h, w)
    b = max(2, min(ph, pw) // 64)
    sy, sx = h / ph, w / pw
    value = 0
    for bit in range(COUNTER_BITS):
        x = b * (2 + bit) + b / 2
        if x >= pw:
            break
        patch = frame[int(2.5 * b * sy), int(x * sx)]
        if patch.mean() > 128:
            value |= 1 << bit
    return value
