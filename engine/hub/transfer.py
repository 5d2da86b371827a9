"""Progress and stopping for huggingface_hub's `snapshot_download`: byte counts from its progress bars become
throttled `progress(message, fraction)` calls; Ctrl-C, or an exception from the `progress` callback, stops every
running file transfer at its next chunk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sdv2_studio.engine.hub.catalogue import format_size

Progress = Callable[[str, float], None]  # (message, fraction done 0..1), as in engine.models
_BYTES_BAR = "huggingface_hub.snapshot_download"  # the name of snapshot_download's bar of bytes written to disk

class _Stopped(Exception):
    """Raised in a file transfer after a stop: `download()` raises the exception that caused the stop instead."""


class Transfer:
    """Byte counts from huggingface_hub's progress bars become throttled `progress(message, fraction)` calls
    (fraction = bytes done / bytes to download, never decreasing); a stop (an exception from `progress`, Ctrl-C)
    ends every running file transfer at its next chunk."""

    interval = 0.1  # seconds between two byte-count messages

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.total = self.done = self.item_done = self.item_total = 0
        self.label = ""
        self.last = self.shown = 0.0
        self.error: BaseException | None = None
        self.lock = threading.RLock()

    def say(self, message: str, fraction: float | None = None) -> None:
        if self.progress is None:
            return
        with self.lock:
            if fraction is None and self.total > 0:
                fraction = min(1.0, max(0.0, (self.done + self.item_done) / self.total))
            self.shown = max(self.shown, fraction or 0.0)
            self.progress(message, self.shown)

    def start(self, label: str, size: int) -> None:
        self.label, self.item_total, self.item_done, self.last = label, size, 0, 0.0
        self.say(f"downloading {label} ({format_size(size)})")

    def add(self, n: int | float | None) -> None:
        with self.lock:
            if self.error is not None:
                raise _Stopped
            self.item_done += int(n or 0)
            now = time.monotonic()
            if now - self.last < self.interval:
                return
            self.last = now
            try:
                self.say(f"downloading {self.label}: {format_size(max(self.item_done, 0))} of "
                         f"{format_size(self.item_total)}")
            except BaseException as e:
                self.stop(e)
                raise

    def finish(self) -> None:
        self.done += self.item_total
        self.item_done = 0

    def stop(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error

    def bar_class(self, tqdm: type) -> type:
        transfer = self

        class Bar(tqdm):
            """huggingface_hub's progress bar, silent: what snapshot_download writes is counted by the transfer."""

            def __init__(self, *args, **kwargs):
                self.counts_bytes = kwargs.get("name") == _BYTES_BAR
                super().__init__(*args, **{**kwargs, "disable": True})

            def update(self, n: int | float | None = 1) -> None:
                if self.counts_bytes:
                    transfer.add(n)
                elif transfer.error is not None:
                    raise _Stopped

        return Bar

    def run(self, fn: Callable, *args, **kwargs) -> None:
        """`fn(*args, **kwargs)` on a thread, so that Ctrl-C here stops the transfers instead of waiting for
        huggingface_hub's thread pool to finish them. Exceptions come back here; a stop raises its cause."""
        failed: list[BaseException] = []
        done = threading.Event()  # not Thread.join: a Ctrl-C inside join() can make a later join() return early

        def work() -> None:
            try:
                fn(*args, **kwargs)
            except BaseException as e:
                failed.append(e)
            finally:
                done.set()

        threading.Thread(target=work, name="sdv2-download", daemon=True).start()
        try:
            while not done.wait(0.1):
                pass
        except BaseException as e:
            self.stop(e)
            done.wait()
        if self.error is not None:
            raise self.error
        if failed:
            raise failed[0]
