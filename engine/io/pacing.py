"""Timing helpers for sources: real-time playback of files and latest-frame-only reading of live inputs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Pacer:
    """Sleeps so that items with timestamps ``pts`` come out at wall-clock speed.

    If the consumer falls more than ``max_lag`` seconds behind, the clock is re-anchored instead of
    bursting frames to catch up.
    """

    def __init__(self, max_lag: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_lag = max_lag
        self._clock = clock
        self._anchor: tuple[float, float] | None = None  # (wall time, pts) of the reference frame

    def wait(self, pts: float) -> None:
        now = self._clock()
        if self._anchor is None:
            self._anchor = (now, pts)
            return
        due = self._anchor[0] + (pts - self._anchor[1])
        if due > now:
            time.sleep(due - now)
        elif now - due > self.max_lag or pts < self._anchor[1]:  # fell behind, or timestamps jumped back
            self._anchor = (now, pts)


class LatestOnly(Generic[T]):
    """Runs ``items`` on a daemon thread and hands out only the newest item; older ones are dropped.

    For live inputs (cameras, network streams): when the consumer (the model) is slower than the
    input, it always gets the most recent frame instead of an ever older backlog. The buffer holds a
    single item, so memory is bounded. Exceptions raised by ``items`` are re-raised to the consumer.
    ``on_exit`` runs on the reader thread when it stops (e.g. to close the container it reads from).
    """

    def __init__(self, items: Iterator[T], name: str = "latest-frame", on_exit: Callable[[], None] | None = None):
        self.dropped = 0
        self._items = items
        self._on_exit = on_exit
        self._cond = threading.Condition()
        self._item: T | None = None
        self._has_item = False
        self._done = False
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                with self._cond:
                    if self._stop:
                        break
                    self.dropped += self._has_item
                    self._item, self._has_item = item, True
                    self._cond.notify_all()
        except BaseException as e:  # handed to the consumer thread
            with self._cond:
                self._error = e
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
            if self._on_exit is not None:
                self._on_exit()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        with self._cond:
            while not self._has_item and not self._done:
                self._cond.wait()
            if self._has_item:
                item, self._item, self._has_item = self._item, None, False
                return item  # type: ignore[return-value]
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration

    def close(self, timeout: float = 2.0) -> None:
        """Ask the reader to stop and wait up to ``timeout`` s (a blocked read ends at its own timeout)."""
        with self._cond:
            self._stop = True
            self._item, self._has_item = None, False
        self._thread.join(timeout)
