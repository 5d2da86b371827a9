"""EngineController: the UI thread's handle on the EngineWorker and its QThread.

Methods are intents (start, stop, set_controls, set_outputs); each reaches the worker as a queued call, so none
blocks the UI. The worker's signals are relayed through slots of this object, which lives on the UI thread, and
re-emitted here: whatever connects to the controller (including plain functions and lambdas, which Qt would
otherwise call on the emitting worker thread) runs on the UI thread.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot
from sdv2_studio.app.engine_worker import IDLE, EngineWorker, Outputs, StartRequest
from sdv2_studio.engine.config import Controls


class EngineController(QObject):
    stateChanged = Signal(str)
    progress = Signal(str, float)
    framesReady = Signal()
    statsReady = Signal(object)
    errorRaised = Signal(str)
    notice = Signal(str)
    controlsApplied = Signal(object)
    outputFailed = Signal(str, str)

    _start = Signal(object)
    _stop = Signal()
    _controls = Signal(object)
    _outputs = Signal(object)
    _dispose = Signal()
    _preview = Signal(object)

    def __init__(self, worker: EngineWorker | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.worker = w = worker or EngineWorker()
        self.state = IDLE  # as last reported by the worker (UI-thread view)
        self.thread = QThread()
        self.thread.setObjectName("engine-worker")
        w.moveToThread(self.thread)
        self._start.connect(w.start)
        self._stop.connect(w.stop)
        self._controls.connect(w.set_controls)
        self._outputs.connect(w.set_outputs)
        self._preview.connect(w.preview)
        self._dispose.connect(w.dispose, Qt.ConnectionType.BlockingQueuedConnection)
        w.stateChanged.connect(self._on_state)
        w.progress.connect(self._on_progress)
        w.framesReady.connect(self._on_frames)
        w.statsReady.connect(self._on_stats)
        w.errorRaised.connect(self._on_error)
        w.notice.connect(self._on_notice)
        w.controlsApplied.connect(self._on_controls)
        w.outputFailed.connect(self._on_output_failed)
        self.thread.start()

    # -- relays (UI thread) ------------------------------------------------------------------------------------------

    @Slot(str)
    def _on_state(self, state: str) -> None:
        self.state = state
        self.stateChanged.emit(state)

    @Slot(str, float)
    def _on_progress(self, message: str, fraction: float) -> None:
        self.progress.emit(message, fraction)

    @Slot()
    def _on_frames(self) -> None:
        self.framesReady.emit()

    @Slot(object)
    def _on_stats(self, stats) -> None:
        self.statsReady.emit(stats)

    @Slot(str)
    def _on_error(self, message: str) -> None:
        self.errorRaised.emit(message)

    @Slot(str)
    def _on_notice(self, message: str) -> None:
        self.notice.emit(message)

    @Slot(object)
    def _on_controls(self, controls) -> None:
        self.controlsApplied.emit(controls)

    @Slot(str, str)
    def _on_output_failed(self, kind: str, message: str) -> None:
        self.outputFailed.emit(kind, message)

    # -- intents -----------------------------------------------------------------------------------------------------

    @property
    def engine(self):
        return self.worker.engine

    def start(self, request: StartRequest) -> None:
        self._start.emit(request)

    def stop(self) -> None:
        self.worker.request_abort()  # a model load in progress gives up at its next step
        self._stop.emit()

    def set_controls(self, controls: Controls) -> None:
        self._controls.emit(controls)

    def set_outputs(self, outputs: Outputs) -> None:
        self._outputs.emit(outputs)

    def preview(self, request: StartRequest) -> None:
        """Show the request's source in the input preview while idle (and again after each Stop)."""
        self._preview.emit(request)

    def take_frames(self) -> dict:
        return self.worker.take_frames()

    def shutdown(self, timeout_ms: int = 15000) -> None:
        """Stop the stream (finishing outputs such as a recording) and end the worker thread. Blocks until the
        worker has stopped: only for closing the app."""
        if self.thread.isRunning():
            self.worker.request_abort()
            self._dispose.emit()  # blocking: the worker stops and frees its timer on its own thread
            self.thread.quit()
            self.thread.wait(timeout_ms)
