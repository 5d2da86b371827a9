"""AppControl: the running app as the target of the local control API (`obs_bridge.control.ControlServer`), so the
OBS script, `sdv2 obs app ...` and any other client drive the app exactly as they drive `sdv2 obs attach`.

The server answers on its own threads; every call is handed to the UI thread (a queued signal) and waited for
with a bound, so the widgets, the preset library and the engine controller are only touched there. A UI thread
that does not answer within CALL_TIMEOUT gives the client one line instead of an endless wait. States are
reported with the engine session's names (stopped, starting, running, stopping), as attach reports them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal, Slot
from sdv2_studio.app.engine_worker import IDLE, LOADING, RUNNING, STOPPING
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.presets import find_preset
from sdv2_studio.obs_bridge.control_client import STOP_TIMEOUT  # POST /stop waits as long as the client

SESSION_STATE = {IDLE: "stopped", LOADING: "starting", RUNNING: "running", STOPPING: "stopping"}
CALL_TIMEOUT = 10.0  # seconds a request waits for the UI thread


class _Call:
    def __init__(self, fn: Callable[[], object]):
        self.fn, self.done = fn, threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


class AppControl(QObject):
    """Implements `obs_bridge.control.ControlTarget` over a MainWindow (created on the UI thread)."""

    _call = Signal(object)

    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self._idle = threading.Event()
        self._idle.set()
        self._call.connect(self._run)
        window.controller.stateChanged.connect(self._on_state)

    @Slot(object)
    def _run(self, call: _Call) -> None:
        try:
            call.result = call.fn()
        except BaseException as e:
            call.error = e
        call.done.set()

    def _on_state(self, state: str) -> None:
        (self._idle.set if state == IDLE else self._idle.clear)()

    def _ui(self, fn: Callable[[], object]):
        """Run `fn` on the UI thread and return its result (raising what it raised)."""
        if threading.current_thread() is threading.main_thread():
            return fn()
        call = _Call(fn)
        self._call.emit(call)
        if not call.done.wait(CALL_TIMEOUT):
            raise EngineError("the app did not answer in time (busy or showing a dialog); try again")
        if call.error is not None:
            raise call.error
        return call.result

    # -- ControlTarget ---------------------------------------------------------------------------------------------

    def status(self) -> dict:
        return self._ui(self.window.control_status)

    def preset_names(self) -> list[str]:
        return self._ui(lambda: [p.id for p in self.window.library.presets])

    def apply_preset(self, name: str) -> Controls:
        def apply() -> Controls:
            preset = find_preset(self.window.library.presets, name)
            self.window.presets.activate(preset)
            return preset.controls

        return self._ui(apply)

    def set_steps(self, steps: int) -> Controls:
        return self._edit(lambda c: dataclasses.replace(c, steps=steps))  # Controls checks the range

    def set_prompts(self, pairs) -> Controls:
        return self._edit(lambda c: c.with_prompts(pairs))  # a prompt or a weighted blend, checked by Controls

    def _edit(self, change: Callable[[Controls], Controls]) -> Controls:
        """The Style tab's controls changed by `change`, shown there and streamed (as an edit in the tab)."""
        def apply() -> Controls:
            controls = change(self.window.editor.controls())
            self.window.editor.setControls(controls)
            self.window.editor.setModified(True)
            self.window.presets.applyControls.emit(controls)
            return controls

        return self._ui(apply)

    def start(self, wait: bool = True) -> None:
        self._ui(lambda: self.window.toggle_stream(confirm=False) if self.window.controller.state == IDLE else None)

    def stop(self) -> None:
        def begin() -> str:
            state = self.window.controller.state
            if state in (RUNNING, LOADING):
                self.window.controller.stop()
            return state

        if self._ui(begin) != IDLE and not self._idle.wait(STOP_TIMEOUT):
            raise EngineError("the stream did not stop in time; see the app's messages")
