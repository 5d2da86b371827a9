"""Frames between threads: numpy RGB -> QImage, and a one-frame mailbox that keeps only the newest frame.

The engine thread converts frames to QImage (safe off the UI thread, unlike QPixmap) and drops them into a
`LatestFrame`; it signals the UI only when the mailbox was empty, so however far behind the UI falls there is at
most one notification and one frame waiting: stale frames are dropped, never queued.
"""

from __future__ import annotations

import threading

import numpy as np
from PySide6.QtGui import QImage


def to_qimage(frame: np.ndarray) -> QImage:
    """An owned copy of an HxWx3 uint8 RGB frame."""
    frame = np.ascontiguousarray(frame)
    h, w, _ = frame.shape
    return QImage(frame.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class LatestFrame:
    """Thread-safe mailbox holding the newest item per key ("input", "styled"). `put` returns True when the consumer
    should be notified (nothing was waiting); `take` empties it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict = {}
        self.dropped = 0  # items replaced before the consumer took them

    def put(self, key: str, item) -> bool:
        with self._lock:
            notify = not self._items
            if key in self._items:
                self.dropped += 1
            self._items[key] = item
            return notify

    def clear(self) -> None:
        """Forget what is waiting and the drop count (a new run)."""
        with self._lock:
            self._items, self.dropped = {}, 0

    def take(self) -> dict:
        with self._lock:
            items, self._items = self._items, {}
            return items
