"""The two interfaces everything in ``engine.io`` implements: frame sources and frame sinks.

A source is an iterator of ``(frame, pts_seconds)`` where ``frame`` is an ``HxWx3`` uint8 RGB numpy
array; a sink consumes such frames. Both are context managers that release their resources on exit.
Implementations subclass these ABCs (or just provide the same methods: the engine only duck-types).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from types import TracebackType
from typing import TypeVar

import numpy as np
from sdv2_studio.engine.errors import EngineError

Frame = np.ndarray  # HxWx3 uint8 RGB
#: Sources (video files, streams, cameras, the test pattern): smaller frames carry no picture to restyle.
MIN_SOURCE_SIDE = 16
#: Largest source side (8K video fits): beyond it one frame alone takes gigabytes on its way to the model.
MAX_SOURCE_SIDE = 8192


def check_source_size(h: int, w: int, what: str) -> tuple[int, int]:
    """``(h, w)`` of a source's frames if within MIN_SOURCE_SIDE..MAX_SOURCE_SIDE, else EngineError naming ``what``."""
    if min(h, w) < MIN_SOURCE_SIDE:
        raise EngineError(f"{what} is {w}x{h}: too small to restyle; use a source of at least "
                          f"{MIN_SOURCE_SIDE}x{MIN_SOURCE_SIDE}")
    if max(h, w) > MAX_SOURCE_SIDE:
        raise EngineError(f"{what} is {w}x{h}: larger than {MAX_SOURCE_SIDE} pixels a side; scale it down first")
    return h, w


_C = TypeVar("_C", bound="Closing")


class Closing(ABC):
    """Something that holds a resource until ``close()``; a ``with`` block closes it."""

    @abstractmethod
    def close(self) -> None:
        """Release the resource (a source's device/file/connection; a sink's output, flushed and finished). Safe to
        call more than once."""

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FrameSource(Closing):
    """An iterator of ``(frame, pts_seconds)`` with ``fps`` and ``size`` (h, w). Iterate it once."""

    fps: float
    size: tuple[int, int]

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[Frame, float]]: ...


class FrameSink(Closing):
    """Consumes ``HxWx3`` uint8 RGB frames; ``close()`` finishes the output (flush, finalize)."""

    @abstractmethod
    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        """Write one frame; ``pts_seconds`` is its presentation time (None: evenly spaced at the sink's fps)."""
