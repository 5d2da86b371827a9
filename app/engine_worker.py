"""EngineWorker: a QObject on its own QThread that adapts an `engine.session.Session` to Qt signals.

It takes intents as queued slot calls (start, stop, set controls, set outputs) and reports state, progress,
stats, errors and frames as signals. The session does the streaming (source -> engine -> outputs, live and paced:
the engine drops the oldest input when behind, the outputs and the preview get a steady frame rate); this worker
chooses the source and opens the outputs the user switched on, adding and removing them while the stream runs.
Nothing here runs on the UI thread: the model loads on the worker thread, and a short QTimer there copies the
session's newest input and styled frames into a `LatestFrame` mailbox (a busy UI sees the newest frame, never a
backlog), reports stats and failed outputs, and notices the stream ending.

While idle, `preview(request)` shows the chosen source at once: a reader thread puts its frames into the same
mailbox. The preview closes before a stream opens the source (a camera opens once) and comes back after Stop.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal, Slot
from sdv2_studio.app.frames import LatestFrame, to_qimage
from sdv2_studio.engine.api import Engine, EngineConfig, Stats
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.availability import LOW_LATENCY
from sdv2_studio.engine.io.protocols import FrameSink, FrameSource
from sdv2_studio.engine.session import Session, SessionStatus
from sdv2_studio.engine.session import describe as describe_error

IDLE, LOADING, RUNNING, STOPPING = "idle", "loading", "running", "stopping"
OUTPUT_KINDS = ("obs", "vcam", "record", "ndi", "spout", "syphon")


@dataclass(frozen=True)
class Outputs:
    obs: bool = False  # the styled source inside OBS
    vcam: bool = False  # a virtual camera
    record: bool = False  # an .mp4 file in record_dir
    record_dir: str = ""
    obs_scene: str = ""  # the scene that gets the styled source ("" = the current program scene)
    obs_fallback: str = ""  # the OBS source shown in its place when the stream stops ("" = none, just hide)
    obs_plugin_channel: str = ""  # the styled source is the OBS plugin's source on this channel ("" = media source)
    ndi: bool = False  # an NDI source (engine.io.ndi)
    spout: bool = False  # a Spout sender (Windows; engine.io.texshare)
    syphon: bool = False  # a Syphon server (macOS)

    def enabled(self) -> set[str]:
        return {k for k in OUTPUT_KINDS if getattr(self, k)}


@dataclass
class StartRequest:
    config: EngineConfig
    source: str = "test"  # "test", "camera:NAME", "obs:NAME", "obs-filter:CHANNEL", a file path or URL
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
    fps: float = 0.0  # styled frames reaching the outputs per second over the last FrameRate.WINDOW seconds
    budget: float = 0.0  # the latency budget (seconds) deadline misses are counted against


class FrameRate:
    """Frames per second from a running frame count sampled over the last WINDOW seconds of wall time: a burst of
    frames that share one timestamp still counts, and a stall shows as a falling rate (not a frozen one)."""

    WINDOW = 3.0

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, count: int) -> float:
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.WINDOW:
            self._samples.popleft()
        t0, c0 = self._samples[0]
        return (count - c0) / (now - t0) if now > t0 else 0.0


class _Aborted(Exception):
    pass


class EngineWorker(QObject):
    stateChanged = Signal(str)
    progress = Signal(str, float)
    framesReady = Signal()  # take them with take_frames() (newest only)
    statsReady = Signal(object)  # LiveStats
    errorRaised = Signal(str)
    notice = Signal(str)
    controlsApplied = Signal(object)  # the engine's Controls after a change
    outputFailed = Signal(str, str)  # kind, message

    STATS_PERIOD = 0.25
    POLL_MS = 10  # previews: how often the newest frames are looked at
    PREVIEW_FPS = 15  # idle input preview: frames shown per second at most

    def __init__(self, engine_factory=Engine, obs_service=None, bundle=None, vcam_opener=None):
        super().__init__()
        self._engine_factory = engine_factory
        self._obs = obs_service
        self._vcam_opener = vcam_opener
        self._bundle = bundle  # a preloaded ModelBundle (tests reuse one)
        self.session: Session | None = None
        self.state = IDLE
        self.mailbox = LatestFrame()
        self._abort = threading.Event()
        self._timer: QTimer | None = None
        self._shown: tuple = (None, None)  # the input and styled frames last put in the mailbox
        self._req: StartRequest | None = None
        self._outputs = Outputs()
        self._last_stats = 0.0
        self._t_start = 0.0
        self._rate = FrameRate()
        self._preview_req: StartRequest | None = None  # what the idle preview shows (and shows again after Stop)
        self._preview: tuple[FrameSource, threading.Thread, threading.Event] | None = None

    @property
    def engine(self) -> Engine | None:
        """The stream's engine while one is loading or running."""
        return self.session.engine if self.session is not None else None

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
        self._close_preview()  # the stream opens the source itself
        self._abort.clear()
        self.mailbox.clear()  # nothing of the previous run is shown in this one
        self._req, self._outputs = req, req.outputs
        self._set_state(LOADING)
        try:
            cfg = req.config
            self.session = Session(cfg, lambda size: self._open_source(req, size), self._open_outputs, live=True,
                                   paced=True, bundle=self._bundle, engine_factory=self._engine_factory)
            self.session.start(progress=self._on_progress)
            if self._abort.is_set():
                raise _Aborted()
            bundle = self.engine.bundle
            if bundle is not None and bundle.untrained:
                self.notice.emit(bundle.notice)
        except _Aborted:
            self._end_session()
            self._set_state(IDLE)
            return
        except BaseException as e:
            self._report(e)
            self._end_session()
            self._set_state(IDLE)
            return
        self.controlsApplied.emit(self.engine.controls)
        self._t_start = time.perf_counter()
        self._rate = FrameRate()
        self._shown = (None, None)
        if self._timer is None:
            self._timer = QTimer(self)
            self._timer.setInterval(self.POLL_MS)
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
        session, self.session = self.session, None
        if session is not None:
            session.stop()  # the chunks in flight still reach the outputs (a recording gets its end)
            st = session.status()
            self._report_failed_outputs(session, st)
            if st.error:
                self.errorRaised.emit(st.error)
        self._set_state(IDLE)
        if self._preview_req is not None:
            self.preview(self._preview_req)

    @Slot()
    def dispose(self) -> None:
        """Stop and release the worker-thread objects (called on the worker thread before it ends)."""
        self._preview_req = None
        self.stop()
        self._close_preview()
        if self._timer is not None:
            self._timer.stop()
            self._timer.deleteLater()
            self._timer = None

    @Slot(object)
    def set_controls(self, controls: Controls) -> None:
        """Stream with `controls` from the engine's next chunk. Idle there is no engine: a start request carries
        the controls to start with."""
        if self.engine is not None:
            try:
                self.controlsApplied.emit(self.engine.set_controls(controls))
            except EngineError as e:  # e.g. a preset naming a LoRA that is missing: refused, the stream keeps its style
                self.errorRaised.emit(f"not applied: {e}")
                self.controlsApplied.emit(self.engine.controls)

    @Slot(object)
    def set_outputs(self, outputs: Outputs) -> None:
        """Outputs switched off close, those switched on open; the stream goes on."""
        self._outputs = outputs
        session = self.session
        if self.state != RUNNING or session is None:
            return
        have = {o.name for o in session.status().outputs}
        for kind in sorted(have - outputs.enabled()):
            try:
                session.remove_sink(kind)
            except Exception as e:
                self._report(e)
        for kind in sorted(outputs.enabled() - have):
            sink = self._open_output(kind, session.source)
            if sink is not None:
                session.add_sink(kind, sink)

    @Slot(object)
    def preview(self, req: StartRequest) -> None:
        """Idle: show `req`'s source in the input preview (replacing the previous one). Errors go to errorRaised."""
        self._preview_req = req
        if self.state != IDLE:
            return  # shown again after Stop
        self._close_preview()
        try:
            size = req.config.size or req.input_size
            source = self._open_source(req, size)
        except BaseException as e:
            self._report(e)
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._read_preview, args=(source, stop), name="input-preview", daemon=True)
        self._preview = (source, thread, stop)
        thread.start()

    def _read_preview(self, source: FrameSource, stop: threading.Event) -> None:
        shown = 0.0
        try:
            for frame, _pts in source:
                if stop.is_set():
                    return
                now = time.perf_counter()
                if now - shown < 1 / self.PREVIEW_FPS:  # a preview need not convert every camera frame
                    continue
                shown = now
                if self.mailbox.put("input", to_qimage(frame)):
                    self.framesReady.emit()
        except Exception as e:  # the source failed: the stream's own start reports it properly
            if not stop.is_set():
                self.notice.emit(f"input preview stopped: {describe_error(e)}")

    def _close_preview(self) -> None:
        preview, self._preview = self._preview, None
        if preview is None:
            return
        source, thread, stop = preview
        stop.set()
        thread.join(timeout=2)  # ends at its next frame; closing a source mid-read is left for a stuck one
        source.close()
        thread.join(timeout=5)

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

    def _open_source(self, req: StartRequest, size: tuple[int, int]) -> FrameSource:
        spec = req.source.strip() or "test"
        if spec.lower() == "test":
            from sdv2_studio.engine.io.pattern import TestPatternSource

            return TestPatternSource(req.input_size, fps=req.source_fps, realtime=True)
        if spec.lower().startswith("obs:"):
            if self._obs is None:
                raise EngineError("OBS sources need the OBS bridge; install the [obs] extras")
            return self._obs.open_source(spec[4:], size, req.source_fps, req.config.fit)
        from sdv2_studio.engine.io.sources import open_source

        return open_source(spec, loop=True, realtime=True)

    def _open_outputs(self, source: FrameSource) -> dict[str, FrameSink]:
        """At start: the outputs switched on that open (the others are reported and switched off)."""
        sinks = {kind: self._open_output(kind, source) for kind in sorted(self._outputs.enabled())}
        return {kind: sink for kind, sink in sinks.items() if sink is not None}

    def _open_output(self, kind: str, source: FrameSource) -> FrameSink | None:
        fps = getattr(source, "fps", None) or (self._req.source_fps if self._req else 16.0)
        size = getattr(source, "size", None) or (self._req.input_size if self._req else (360, 640))
        try:
            if kind == "record":
                from sdv2_studio.app.settings import default_record_dir
                from sdv2_studio.engine.io.sinks import MP4Sink

                folder = Path(self._outputs.record_dir or default_record_dir()).expanduser()
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / time.strftime("styled-%Y%m%d-%H%M%S.mp4")
                sink = MP4Sink(path, fps)
                self.notice.emit(f"recording to {path}")
                return sink
            if kind in LOW_LATENCY:  # the same opener as `sdv2 run --out ndi|spout|syphon`
                from sdv2_studio.engine.io.sinks import open_sink

                return open_sink(kind, fps=fps, size=size)
            if kind == "vcam":
                if self._vcam_opener is None:
                    from sdv2_studio.app.services import open_virtual_camera

                    self._vcam_opener = open_virtual_camera
                return self._vcam_opener(size, fps)
            if self._obs is None:
                raise EngineError("the OBS output needs the OBS bridge; install the [obs] extras")
            spec = self._req.source.strip() if self._req else ""
            capture = spec[4:] if spec.lower().startswith("obs:") else None
            return self._obs.open_output(size, fps, scene=self._outputs.obs_scene, capture=capture,
                                         fallback=self._outputs.obs_fallback or None,
                                         plugin_channel=self._outputs.obs_plugin_channel or None)
        except Exception as e:
            self._output_failed(kind, str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}")
            return None

    def _output_failed(self, kind: str, message: str) -> None:
        self.outputFailed.emit(kind, message)
        self.errorRaised.emit(message)

    def _report_failed_outputs(self, session: Session, st: SessionStatus) -> None:
        for out in st.outputs:
            if out.error:  # closed by the session; the stream goes on
                session.remove_sink(out.name)
                self._output_failed(out.name, f"{out.name} output failed: {out.error}")

    def _end_session(self) -> None:
        """A start that failed or was cancelled: release what it opened."""
        session, self.session = self.session, None
        if session is not None:
            session.stop()

    @Slot()
    def _tick(self) -> None:
        session = self.session
        if session is None:
            return
        frames = (session.latest_input(), session.latest_styled())
        notify = False
        for key, frame, shown in zip(("input", "styled"), frames, self._shown):
            if frame is not None and frame is not shown:
                notify = self.mailbox.put(key, to_qimage(frame)) or notify
        self._shown = frames
        if notify:
            self.framesReady.emit()
        now = time.perf_counter()
        if now - self._last_stats < self.STATS_PERIOD:
            return
        self._last_stats = now
        if session.wait(0):  # the stream ended by itself; stop() reports a failure
            if not session.status().error:
                self.notice.emit("the source ended")
            self.stop()
            return
        st = session.status()
        self._report_failed_outputs(session, st)
        self.statsReady.emit(self._live_stats(st, now))

    def _live_stats(self, st: SessionStatus, now: float) -> LiveStats:
        device, memory = _device_memory(self.engine)
        return LiveStats(st.engine, device, memory, getattr(self.session.source, "fps", 0.0) or 0.0,
                         now - self._t_start, self.mailbox.dropped, fps=self._rate.add(now, st.frames_out),
                         budget=(self._req.config.latency_budget or 0.0) if self._req else 0.0)


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
