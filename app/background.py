"""Short background jobs (device scans, OBS queries, model status, downloads) on Qt's global thread pool.

    task = run_task(fn, *args, on_done=slot, on_error=slot, on_progress=slot)

`fn` runs on a pool thread; results, errors and progress come back as queued signals on the UI thread. When
`fn` accepts a `progress` keyword it gets a callable `progress(message, fraction)`; it raises `Cancelled` once
`task.cancel()` was called, so long jobs stop cooperatively. The long-lived engine does NOT use this: it has its
own thread (app/engine_worker.py).
"""

from __future__ import annotations

import inspect
import threading
import traceback

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot
from sdv2_studio.engine.errors import EngineError


class Cancelled(Exception):
    """Raised inside a task's progress callback after cancel()."""


class TaskSignals(QObject):
    done = Signal(object)
    failed = Signal(str)
    progress = Signal(str, float)
    finished = Signal()


class Task(QRunnable):
    def __init__(self, fn, *args, **kwargs):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.signals = TaskSignals()
        self._cancel = threading.Event()
        self.setAutoDelete(False)  # Python keeps the reference; Qt must not delete the wrapper under us

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _progress(self, message: str, fraction: float) -> None:
        if self._cancel.is_set():
            raise Cancelled()
        self.signals.progress.emit(str(message), float(fraction))

    def run(self) -> None:
        try:
            kwargs = dict(self.kwargs)
            try:
                if "progress" in inspect.signature(self.fn).parameters:
                    kwargs["progress"] = self._progress
            except (TypeError, ValueError):
                pass
            result = self.fn(*self.args, **kwargs)
        except Cancelled:
            self.signals.failed.emit("cancelled")
        except EngineError as e:
            self.signals.failed.emit(str(e))
        except Exception as e:  # a bug: keep the traceback in the log, show one line
            traceback.print_exc()
            self.signals.failed.emit(f"unexpected error: {type(e).__name__}: {e}")
        else:
            self.signals.done.emit(result)
        finally:
            self.signals.finished.emit()


_running: set[Task] = set()


class _Relay(QObject):
    """Lives on the calling (UI) thread; its bound slots make every callback run there. (A plain lambda connected
    to a signal emitted on another thread would run on that thread.)"""

    def __init__(self, task: Task, on_done, on_error, on_progress):
        super().__init__()
        self.task, self._done, self._error, self._progress = task, on_done, on_error, on_progress
        task.signals.done.connect(self.done)
        task.signals.failed.connect(self.failed)
        task.signals.progress.connect(self.progress)
        task.signals.finished.connect(self.finished)

    @staticmethod
    def _call(fn, *args) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except RuntimeError as e:  # the widget it reports to was closed meanwhile: nothing left to update
            if "already deleted" not in str(e):
                raise

    @Slot(object)
    def done(self, result) -> None:
        self._call(self._done, result)

    @Slot(str)
    def failed(self, message: str) -> None:
        self._call(self._error, message)

    @Slot(str, float)
    def progress(self, message: str, fraction: float) -> None:
        self._call(self._progress, message, fraction)

    @Slot()
    def finished(self) -> None:
        QTimer.singleShot(0, self._release)  # not from inside this object's own slot

    def _release(self) -> None:
        _running.discard(self.task)


def run_task(fn, *args, on_done=None, on_error=None, on_progress=None, **kwargs) -> Task:
    """Run `fn(*args, **kwargs)` on the thread pool; call the callbacks on this (the UI) thread."""
    task = Task(fn, *args, **kwargs)
    task.relay = _Relay(task, on_done, on_error, on_progress)
    _running.add(task)
    QThreadPool.globalInstance().start(task)
    return task


def wait_all(timeout_ms: int = 5000) -> bool:
    """Wait for running tasks (tests, shutdown)."""
    return QThreadPool.globalInstance().waitForDone(timeout_ms)
