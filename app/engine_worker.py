"""EngineWorker: a QObject living on its own QThread that owns the Engine, the source and the outputs.

It takes intents as queued slot calls (start, stop, set controls, set outputs) and reports state, progress,
stats, errors and frames as signals. Nothing here runs on the UI thread: model loading, reading the source,
pushing to and pulling from the engine, converting frames and writing outputs all happen on the worker thread
(the Engine itself computes on its own thread). Frames reach the UI through a `LatestFrame` mailbox, so a busy
UI sees the newest frame and never a backlog.

The pump is a zero-interval QTimer on the worker thread: each tick reads one source frame (paced by the source),
pushes it (drop-oldest when the engine is behind), collects finished styled frames into a short buffer and
releases one per tick to the preview and the outputs, so the chunked engine output (4 frames at a time) plays
back at the source's rate. Between ticks the thread's event loop delivers the next intent, so Stop and preset
switches are handled within one source frame.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal, Slot
from sdv2_studio.app.frames import LatestFrame, to_qimage
from sdv2_studio.engine.api import Engine, EngineConfig, Stats
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.protocols import FrameSink, FrameSource

IDLE, LOADING, RUNNING, STOPPING = "idle", "loading", "running", "stopping"
OUTPUT_KINDS = ("obs", "vcam", "record")


@dataclass(frozen=True)
class Outputs:
    obs: bool = False  # the styled source inside OBS
    vcam: bool = False  # a virtual camera
    record: bool = False  # an .mp4 file in record_dir
    record_dir: str = ""

    def enabled(self) -> set[str]:
        return {k for k in OUTPUT_KINDS if getattr(self, k)}


@dataclass
class StartRequest:
    config: EngineConfig
    source: str = "test"  # "test", "camera:NAME", "obs:NAME", a file path or URL
    source_fps: float = 16.0
    input_size: tuple[int, int] = (360, 640)  # (h, w) of the test source
    outputs: Outputs = field(default_factory=Outputs)


@dataclass
class LiveStats:
    stats: Stats
    device: str = ""  # "CPU" or the GPU name
    memory: str = ""  # "VRAM 3.1 / 24.0 GB" or "RAM 1.2 GB"
    source_fps: float = 0.0
    elapsed: float = 0.0
    preview_dropped: int = 0


class _Aborted(Exception):
    pass


class EngineWorker(QObject):
    stateChanged = Signal(str)
    progress = Signal(str, float)
    framesReady = Signal()  # take them with take_frames() (newest only)
    statsReady = Signal(object)  # LiveStats
    errorRaised = Signal(str)
    notice = Signal(str)
    controlsApplied = Signal(object)  # engine.pipeline.Controls, validated
    outputFailed = Signal(str, str)  # kind, message

    STATS_PERIOD = 0.25

    def __init__(self, engine_factory=Engine, obs_service=None, bundle=None, vcam_opener=None):
        super().__init__()
        self._engine_factory = engine_factory
        self._obs = obs_service
        self._vcam_opener = vcam_opener
        self._bundle = bundle  # a preloaded ModelBundle (tests reuse one)
        self.engine: Engine | None = None
        self.state = IDLE
        self.mailbox = LatestFrame()
        self._abort = threading.Event()
        self._timer: QTimer | None = None
        self._source: FrameSource | None = None
        self._frames = None
        self._sinks: dict[str, FrameSink] = {}
        self._styled: collections.deque = collections.deque(maxlen=8)
        self._req: StartRequest | None = None
        self._pending: dict = {}
        self._outputs = Outputs()
        self._last_stats = 0.0
        self._t_start = 0.0

    # -- called from the UI thread (thread-safe) -------------------------------------------------------------------

    def request_abort(self) -> None:
        """Make a model load in progress give up at its next progress report."""
        self._abort.set()

    def take_frames(self) -> dict:
        return self.mailbox.take()

    # -- slots (worker thread) ---------------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.state = state
        self.stateChanged.emit(state)

    @Slot(object)
    def start(self, req: StartRequest) -> None:
        if self.state != IDLE:
            return
        self._abort.clear()
        self._req = req
        self._set_state(LOADING)
        try:
            cfg = req.config
            if self._pending:
                cfg.controls = dataclasses.replace(cfg.controls, **self._pending).validated()
                self._pending = {}
            self.engine = self._engine_factory(cfg, self._bundle) if self._bundle else self._engine_factory(cfg)
            self.engine.start(progress=self._on_progress)
            if self._abort.is_set():
                raise _Aborted()
            bundle = self.engine.bundle
            if bundle is not None and bundle.untrained:
                self.notice.emit(bundle.notice)
            self.progress.emit("opening the source", 1.0)
            self._source = self._open_source(req)
            self._frames = iter(self._source)
            self._open_outputs(req.outputs)
        except _Aborted:
            self._teardown()
            self._set_state(IDLE)
            return
        except BaseException as e:
            self._report(e)
            self._teardown()
            self._set_state(IDLE)
            return
        self.controlsApplied.emit(self.engine.controls)
        self._t_start = time.perf_counter()
        self._styled.clear()
        if self._timer is None:
            self._timer = QTimer(self)
            self._timer.setInterval(0)
            self._timer.timeout.connect(self._tick)
        self._timer.start()
        self._set_state(RUNNING)

    @Slot()
    def stop(self) -> None:
        if self.state not in (RUNNING, LOADING):
            return
        self._set_state(STOPPING)
        if self._timer is not None:
            self._timer.stop()
        try:
            self._teardown(flush=True)
        except BaseException as e:
            self._report(e)
        self._set_state(IDLE)

    @Slot()
    def dispose(self) -> None:
        """Stop and release the worker-thread objects (called on the worker thread before it ends)."""
        self.stop()
        if self._timer is not None:
            self._timer.stop()
            self._timer.deleteLater()
            self._timer = None

    @Slot(dict)
    def set_controls(self, changes: dict) -> None:
        try:
            if self.engine is not None and self.state == RUNNING:
                controls = self.engine.set_controls(**changes)
            else:
                from sdv2_studio.engine.pipeline import Controls

                base = self._req.config.controls if self._req else Controls()
                controls = dataclasses.replace(base, **{**self._pending, **changes}).validated()
                self._pending.update(changes)
            self.controlsApplied.emit(controls)
        except BaseException as e:
            self._report(e)

    @Slot(object)
    def set_outputs(self, outputs: Outputs) -> None:
        self._outputs = outputs
        if self.state == RUNNING and self._req is not None:
            self._open_outputs(outputs)

    # -- internals ---------------------------------------------------------------------------------------------------

    def _on_progress(self, message: str, fraction: float) -> None:
        if self._abort.is_set():
            raise _Aborted()
        self.progress.emit(message, fraction)

    def _report(self, e: BaseException) -> None:
        if isinstance(e, EngineError):
            self.errorRaised.emit(str(e))
        elif isinstance(e, MemoryError) or "out of memory" in str(e).lower():
            self.errorRaised.emit("out of memory: lower the resolution or the steps, turn Stream-Batch off, or "
                                  "close other apps using the GPU")
        else:
            traceback.print_exception(e, file=sys.stderr)
            self.errorRaised.emit(f"unexpected error ({type(e).__name__}: {e}); details are in the log")

    def _open_source(self, req: StartRequest) -> FrameSource:
        spec = req.source.strip() or "test"
        if spec.lower() == "test":
            from sdv2_studio.engine.io.pattern import TestPatternSource

            return TestPatternSource(req.input_size, fps=req.source_fps, realtime=True)
        if spec.lower().startswith("obs:"):
            if self._obs is None:
                raise EngineError("OBS sources need the OBS bridge; install the [obs] extras")
            return self._obs.open_source(spec[4:], self.engine.size, req.source_fps)
        from sdv2_studio.engine.io.sources import open_source

        return open_source(spec, loop=True, realtime=True)

    def _open_outputs(self, outputs: Outputs) -> None:
        """Open outputs that were switched on, close those switched off."""
        self._outputs = outputs
        want = outputs.enabled()
        for kind in list(self._sinks):
            if kind not in want:
                self._close_sink(kind)
        fps = getattr(self._source, "fps", None) or (self._req.source_fps if self._req else 16.0)
        size = getattr(self._source, "size", None) or (self._req.input_size if self._req else (360, 640))
        for kind in sorted(want - set(self._sinks)):
            try:
                if kind == "record":
                    from sdv2_studio.app.settings import default_record_dir
                    from sdv2_studio.engine.io.sinks import MP4Sink

                    folder = Path(outputs.record_dir or default_record_dir()).expanduser()
                    folder.mkdir(parents=True, exist_ok=True)
                    path = folder / time.strftime("styled-%Y%m%d-%H%M%S.mp4")
                    self._sinks[kind] = MP4Sink(path, fps)
                    self.notice.emit(f"recording to {path}")
                elif kind == "vcam":
                    if self._vcam_opener is None:
                        from sdv2_studio.app.services import open_virtual_camera

                        self._vcam_opener = open_virtual_camera
                    self._sinks[kind] = self._vcam_opener(size, fps)
                else:
                    if self._obs is None:
                        raise EngineError("the OBS output needs the OBS bridge; install the [obs] extras")
                    self._sinks[kind] = self._obs.open_output(size, fps)
            except BaseException as e:
                msg = str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
                self.outputFailed.emit(kind, msg)
                self.errorRaised.emit(msg)

    def _close_sink(self, kind: str) -> None:
        sink = self._sinks.pop(kind, None)
        if sink is None:
            return
        try:
            sink.close()
        except BaseException as e:
            self._report(e)

    def _teardown(self, flush: bool = False) -> None:
        if self._source is not None:
            try:
                self._source.close()
            except Exception:
                pass
        self._source = self._frames = None
        engine, self.engine = self.engine, None
        error = None
        if engine is not None:
            try:
                engine.stop(timeout=10.0)
                if flush:
                    while (frame := engine.pull(0)) is not None:
                        self._write_outputs(frame)
            except BaseException as e:
                error = e
        for kind in list(self._sinks):
            self._close_sink(kind)
        if error is not None:
            raise error

    @Slot()
    def _tick(self) -> None:
        try:
            try:
                frame, _pts = next(self._frames)
            except StopIteration:
                self.notice.emit("the source ended")
                self.stop()
                return
            engine = self.engine
            engine.push(frame, block=False)
            notify = self.mailbox.put("input", to_qimage(frame))
            while (out := engine.pull(0)) is not None:
                self._styled.append(out)
            if self._styled:
                styled = self._styled.popleft()
                self._write_outputs(styled)
                notify = self.mailbox.put("styled", to_qimage(styled)) or notify
            if notify:
                self.framesReady.emit()
            now = time.perf_counter()
            if now - self._last_stats >= self.STATS_PERIOD:
                self._last_stats = now
                self.statsReady.emit(self._live_stats(now))
        except BaseException as e:
            self._report(e)
            self.stop()

    def _write_outputs(self, frame: np.ndarray) -> None:
        for kind in list(self._sinks):
            try:
                self._sinks[kind].write(frame)
            except BaseException as e:
                self._sinks.pop(kind, None)
                msg = str(e) if isinstance(e, EngineError) else f"{kind} output failed: {type(e).__name__}: {e}"
                self.outputFailed.emit(kind, msg)
                self.errorRaised.emit(msg)

    def _live_stats(self, now: float) -> LiveStats:
        engine = self.engine
        device, memory = _device_memory(engine)
        return LiveStats(engine.stats(), device, memory, getattr(self._source, "fps", 0.0) or 0.0,
                         now - self._t_start, self.mailbox.dropped)


def _device_memory(engine: Engine) -> tuple[str, str]:
    device = getattr(engine.pipeline, "device", None)
    if device is not None and device.type == "cuda":
        import torch

        idx = device.index or 0
        total = torch.cuda.get_device_properties(idx).total_memory
        used = torch.cuda.memory_reserved(idx)
        return torch.cuda.get_device_name(idx), f"VRAM {used / 1024**3:.1f} / {total / 1024**3:.1f} GB"
    rss = _rss()
    return "CPU", (f"RAM {rss / 1024**3:.1f} GB" if rss else "")


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0
