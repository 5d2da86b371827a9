"""One stream: source -> Engine -> outputs (Qt-free). The CLI, the OBS bridge and the desktop app all run this.

    session = Session(EngineConfig(model="tiny"), open_source=lambda size: open_source("clip.mp4"),
                      open_sinks=lambda source: {"out": MP4Sink("styled.mp4", source.fps)})
    session.start(progress=lambda msg, frac: ...)   # load the model (once per Session), open source and outputs
    session.add_sink("cam", open_sink("vcam", fps=session.source.fps))   # outputs come and go while running
    session.remove_sink("cam")                      # closes it
    session.latest_input(), session.latest_styled() # previews: the newest frames, None until there is one
    session.status()                                # state, error, progress, frames in/out, outputs, engine stats
    session.wait()                                  # until the source ends (files) or the stream fails
    session.stop()                                  # stop reading; what was pushed still comes out; outputs close

Two threads move frames. The input pump reads the source and pushes into the engine: files and the test source are
lossless (pushes wait, every frame comes out), live sources (cameras, network streams) never wait and the engine
drops the oldest frames when behind, so latency stays bounded (``live`` overrides the choice by source kind). The
output pump pulls styled frames and writes each to every output with its input frame's presentation time (the
source's ``pts``, carried through the engine), so a file keeps its input's timing. With ``paced=True`` (live outputs:
a virtual camera, OBS, a preview) frames go through one :class:`~engine.io.paced.OutputPacer` first, which turns the
engine's 4-frame bursts into a steady rate, and the outputs stamp them with the wall clock. An output that raises is
closed and reported in the status; the others go on.

When the source ends or fails, or on ``stop()``, the engine finishes the frames pushed so far (a live stream that is
stopped drops those still waiting and finishes the chunks in flight) and the outputs get them before they close. A
source failing mid-stream leaves the session in state ``error`` with the reason; what was made is kept. An engine
failure ends the stream at once. The model is loaded once and reused by later starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sdv2_studio.engine.api import Engine, EngineConfig, Stats
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.paced import OutputPacer, PacerStats
from sdv2_studio.engine.io.protocols import Frame, FrameSink, FrameSource
from sdv2_studio.engine.models import ModelBundle, Progress

log = logging.getLogger(__name__)

SourceFactory = Callable[[tuple[int, int]], FrameSource]  # the model size (h, w) -> an open source
SinkFactory = Callable[[FrameSource], dict[str, FrameSink]]  # the open source (size, fps known) -> named outputs

STOPPED, STARTING, RUNNING, STOPPING, ERROR = "stopped", "starting", "running", "stopping", "error"
LIVE_KINDS = ("camera", "stream")  # source kinds that never wait for the engine


def describe(e: BaseException) -> str:
    """One line for the user: an EngineError's own text, else the exception type and message."""
    return str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"


@dataclass
class OutputStatus:
    name: str
    kind: str  # the sink's class name
    written: int = 0
    error: str | None = None  # why it was closed (it is no longer written)


@dataclass
class SessionStatus:
    state: str = STOPPED
    error: str | None = None
    failed: str | None = None  # what failed: "start", "engine" or "source" (then what was made was kept)
    progress: str = ""  # while starting: "loading the DiT (40%)"
    frames_in: int = 0  # source frames pushed into the engine (this run)
    frames_out: int = 0  # styled frames handed to the outputs (this run)
    total: int | None = None  # frames the source gives (a file, a frame limit), if known
    live: bool = False  # the engine drops input frames when behind (else every frame comes out)
    source: str | None = None
    seconds_since_output: float | None = None
    outputs: list[OutputStatus] = field(default_factory=list)
    engine: Stats | None = None  # the running (or last) engine's stats
    pacer: PacerStats | None = None  # paced sessions


class _Cancelled(Exception):
    pass


class Session:
    """Source -> engine -> outputs with start/stop/status (see the module docstring). Thread-safe.

    ``open_source(model_size)`` and ``open_sinks(source)`` are called at every start. ``frames``/``seconds`` stop
    reading after that many source frames / that much source time. ``bundle`` skips loading the model (tests, or a
    model already loaded); ``engine_factory(config, bundle)`` makes the engine (default :class:`Engine`).
    ``engine`` is the current (or next) run's engine: ``session.engine.set_controls(...)`` works in any state.
    """

    def __init__(self, config: EngineConfig, open_source: SourceFactory, open_sinks: SinkFactory | None = None, *,
                 live: bool | None = None, paced: bool = False, frames: int | None = None,
                 seconds: float | None = None, bundle: ModelBundle | None = None,
                 engine_factory: Callable[[EngineConfig, ModelBundle | None], Engine] = Engine) -> None:
        if frames is not None and frames < 1 or seconds is not None and not seconds > 0:
            raise EngineError(f"frame and time limits must be positive, not frames={frames}, seconds={seconds}")
        self.engine = engine_factory(config, bundle)
        self.source: FrameSource | None = None
        self.live, self.paced, self.frames, self.seconds = live, paced, frames, seconds
        self._open_source, self._open_sinks, self._factory = open_source, open_sinks, engine_factory
        self._lock = threading.Lock()  # state and counters
        self._deliver_lock = threading.Lock()  # one frame's writes vs. adding and removing outputs
        self._state, self._error, self._failed, self._progress = STOPPED, None, None, ""
        self._outputs: dict[str, OutputStatus] = {}
        self._sinks: dict[str, FrameSink] = {}
        self._open = False  # outputs may be added
        self._pacer: OutputPacer | None = None
        self._halt, self._cancel, self._ended = threading.Event(), threading.Event(), threading.Event()
        self._ended.set()
        self._pump_in_thread: threading.Thread | None = None
        self._failure: BaseException | None = None  # the engine or a push failed: ends the stream
        self._source_error: BaseException | None = None
        self._latest_in: Frame | None = None
        self._latest_out: Frame | None = None
        self._last_out: float | None = None
        self._frames_in = self._frames_out = 0
        self._total: int | None = None
        self._live = False

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    def start(self, wait: bool = True, progress: Progress | None = None) -> None:
        """Load the model (first time), open source and outputs, start the pumps. No-op while active.

        ``progress(message, fraction)`` follows the model load. ``wait=False`` returns at once (state ``starting``;
        a failure lands in the status); with ``wait=True`` a failure is raised as well."""
        with self._lock:
            if self._state in (STARTING, RUNNING, STOPPING):
                return
            self._state, self._error, self._failed, self._progress = STARTING, None, None, "starting"
            self._cancel.clear()
            self._ended.clear()
        if wait:
            self._start(progress, raise_errors=True)
        else:
            threading.Thread(target=self._start, args=(progress, False), name="sdv2-session-start",
                             daemon=True).start()

    def _start(self, progress: Progress | None, raise_errors: bool) -> None:
        def report(message: str, fraction: float) -> None:
            if self._cancel.is_set():
                raise _Cancelled()
            self._progress = f"{message} ({fraction:.0%})"
            if progress is not None:
                progress(message, fraction)

        self.source = self._pump_in_thread = None
        with self._deliver_lock:
            self._outputs = {}  # the last run's, until this one's open
        try:
            if self.engine.pipeline is not None:  # it ran before: a fresh engine, same model and controls
                old = self.engine
                self.engine = self._factory(dataclasses.replace(old.config), old.bundle)
            engine = self.engine
            engine.start(report)
            self._progress = "opening the source"
            source = self.source = self._open_source(engine.size)
            live = self.live if self.live is not None else getattr(source, "kind", "test") in LIVE_KINDS
            engine.config.lossless = not live  # read by the engine at every push and result
            limit = self.frames or (round(self.seconds * source.fps) if self.seconds else None)
            sinks = dict(self._open_sinks(source)) if self._open_sinks is not None else {}
            with self._deliver_lock:
                self._sinks, self._open = sinks, True
                self._outputs = {name: OutputStatus(name, type(s).__name__) for name, s in sinks.items()}
            with self._lock:
                self._live, self._total = live, limit or getattr(source, "frames", None) or None
                self._frames_in = self._frames_out = 0
                self._latest_in = self._latest_out = self._last_out = None
                self._failure = self._source_error = None
            self._pacer = OutputPacer(2, fps=engine.config.target_fps or source.fps,
                                      max_frames=engine.config.queue_frames) if self.paced else None
            self._halt.clear()
            frames = timed_frames(source, self.frames, self.seconds)
            self._pump_in_thread = threading.Thread(target=self._pump_in, args=(engine, frames, live),
                                                    name="sdv2-session-in", daemon=True)
            pump_out = threading.Thread(target=self._pump_out, args=(engine, self._pacer), name="sdv2-session-out",
                                        daemon=True)
            with self._lock:
                if self._cancel.is_set():
                    raise _Cancelled()
                self._state, self._progress = RUNNING, "running"
            self._pump_in_thread.start()
            pump_out.start()
        except BaseException as e:
            self._close_all()
            cancelled = self._cancel.is_set()
            with self._lock:
                self._state = STOPPED if cancelled else ERROR
                self._error, self._failed = (None, None) if cancelled else (describe(e), "start")
                self._progress = ""
            self._ended.set()
            if cancelled:
                return
            if raise_errors:
                raise
            log.warning("the stream failed to start: %s", self._error)

    def stop(self) -> None:
        """Stop reading the source; the engine finishes what it has (see the module docstring), the outputs get it
        and close. Returns when all is closed (also when another thread is stopping it). Safe in any state; a start
        in progress gives up at its next step, and this returns at once."""
        with self._lock:
            if self._state == STARTING:
                self._cancel.set()
                self._state = STOPPING
                return
            if self._state not in (RUNNING, STOPPING):
                return
            first, self._state = self._state == RUNNING, STOPPING
        if first:
            self._halt.set()
            pump = self._pump_in_thread
            if pump is not None:
                pump.join(2.0)
                if pump.is_alive() and self.source is not None:  # a read that does not return: closing ends it
                    _close_quietly(self.source, "the source")
        self._ended.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the stream is over (the source ended, it failed or it was stopped); False on timeout."""
        return self._ended.wait(timeout)

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the pumps ----------------------------------------------------------------------------------------------------

    def _pump_in(self, engine: Engine, frames, live: bool) -> None:
        try:
            while not self._halt.is_set():
                try:
                    frame, pts = next(frames)
                except StopIteration:
                    break
                except Exception as e:  # the source failed: keep what was made
                    if not self._halt.is_set():  # (closing it to stop may break a read: not a failure)
                        self._source_error = e
                        log.warning("the source stopped: %s", describe(e))
                    break
                engine.push(frame, block=not live, pts=pts)
                with self._lock:
                    self._latest_in = frame
                    self._frames_in += 1
        except BaseException as e:  # the engine failed (the output pump sees it too) or refused the frame
            self._failure = self._failure or e
        finally:  # the engine flushes what was pushed (a live stream that is stopped: what it started), then ends
            engine.finish(drop_waiting=live and self._halt.is_set())

    def _pump_out(self, engine: Engine, pacer: OutputPacer | None) -> None:
        try:
            while not engine.done():
                if pacer is not None and self._halt.is_set():  # stopping: what is left goes out at once
                    for frame in pacer.drain():
                        self._deliver(frame)
                    pacer = None
                due = pacer.due_in() if pacer is not None else None
                burst = _pull_burst(engine, 0.05 if due is None else min(due, 0.05))
                if pacer is None:  # files: each styled frame keeps its input frame's presentation time
                    for frame, pts in burst:
                        self._deliver(frame, pts)
                    continue
                if burst:  # live outputs: the pacer spaces them, the sinks stamp them with the wall clock
                    pacer.put_many([frame for frame, _ in burst])
                while (frame := pacer.get()) is not None:
                    self._deliver(frame)
            if pacer is not None:  # the end of the source: the tail, still paced
                pacer.close()
                while (frame := pacer.next()) is not None:
                    self._deliver(frame)
        except BaseException as e:
            self._failure = self._failure or e
        finally:
            self._halt.set()
            self._close_all()
            with self._lock:
                failure, self._failed = self._failure, "engine" if self._failure else None
                if failure is None and self._source_error is not None:
                    failure = EngineError(f"the source stopped mid-stream: {describe(self._source_error)}")
                    self._failed = "source"
                self._state, self._progress = (ERROR if failure else STOPPED), ""
                self._error = describe(failure) if failure else None
            if failure is not None:
                log.warning("the stream stopped: %s", self._error)
            self._ended.set()

    def _deliver(self, frame: Frame, pts: float | None = None) -> None:
        with self._deliver_lock:
            for name, sink in list(self._sinks.items()):
                try:
                    sink.write(frame, pts)
                    self._outputs[name].written += 1
                except Exception as e:  # this output is closed, the others go on
                    del self._sinks[name]
                    self._outputs[name].error = describe(e)
                    log.warning("output %s failed and was closed: %s", name, describe(e))
                    _close_quietly(sink, name)
            with self._lock:
                self._latest_out, self._last_out = frame, time.monotonic()
                self._frames_out += 1

    def _close_all(self) -> None:
        """Stop the input pump, close the source, stop the engine, close the outputs (each even if one fails)."""
        self._halt.set()
        pump, source = self._pump_in_thread, self.source
        if pump is not None and pump is not threading.current_thread():
            pump.join(2.0)  # a read in progress: a frame period; a blocked one ends when the source closes
        if source is not None:
            _close_quietly(source, "the source")
        if pump is not None and pump is not threading.current_thread():
            pump.join(10.0)
        try:
            self.engine.stop(timeout=10.0)
        except BaseException as e:
            self._failure = self._failure or e
        with self._deliver_lock:
            sinks, self._sinks, self._open = self._sinks, {}, False
            for name, sink in sinks.items():
                if (error := _close_quietly(sink, name)) is not None:
                    self._outputs[name].error = error

    # -- outputs ------------------------------------------------------------------------------------------------------

    def add_sink(self, name: str, sink: FrameSink) -> None:
        """Write every styled frame from now on to ``sink`` as well (an output of that name is closed first)."""
        with self._deliver_lock:
            if not self._open:
                _close_quietly(sink, name)
                raise EngineError("the stream is not running; start it before adding outputs")
            old = self._sinks.pop(name, None)
            if old is not None:
                _close_quietly(old, name)
            self._sinks[name] = sink
            self._outputs[name] = OutputStatus(name, type(sink).__name__)

    def remove_sink(self, name: str) -> None:
        """Stop writing to the output ``name`` and close it (a close failure is raised; it is removed anyway)."""
        with self._deliver_lock:
            sink = self._sinks.pop(name, None)
            self._outputs.pop(name, None)
        if sink is not None:
            sink.close()

    # -- readouts -----------------------------------------------------------------------------------------------------

    def latest_input(self) -> Frame | None:
        """The newest source frame pushed into the engine (previews)."""
        return self._latest_in

    def latest_styled(self) -> Frame | None:
        """The newest styled frame handed to the outputs (previews; paced like them)."""
        return self._latest_out

    def status(self) -> SessionStatus:
        engine, source, pacer = self.engine, self.source, self._pacer
        with self._lock:
            st = SessionStatus(state=self._state, error=self._error, failed=self._failed, progress=self._progress,
                               frames_in=self._frames_in, frames_out=self._frames_out, total=self._total,
                               live=self._live, source=repr(source) if source is not None else None,
                               seconds_since_output=None if self._last_out is None else
                               round(time.monotonic() - self._last_out, 3))
        with self._deliver_lock:
            st.outputs = [dataclasses.replace(o) for o in self._outputs.values()]
        st.engine = engine.stats() if engine.pipeline is not None else None
        st.pacer = pacer.stats() if pacer is not None else None
        return st


def _pull_burst(engine: Engine, timeout: float) -> list[tuple[Frame, float | None]]:
    """The styled frames ready now with their presentation times (waiting up to ``timeout`` for the first): a
    chunk's frames arrive together."""
    burst = []
    got = engine.pull_timed(timeout)
    while got is not None:
        burst.append(got)
        got = engine.pull_timed(0)
    return burst


def timed_frames(source: FrameSource, frames: int | None = None, seconds: float | None = None):
    """The source's ``(frame, pts)`` items, the first ``frames`` of them and those before ``seconds`` of source
    time (its presentation times: a variable-frame-rate file is cut at the right moment, not after N frames)."""
    items = iter(source) if frames is None else itertools.islice(source, frames)
    if seconds is None:
        return items
    return itertools.takewhile(lambda item: item[1] < seconds - 1e-9, items)


def _close_quietly(thing: FrameSink | FrameSource, name: str) -> str | None:
    """Close, logging (and returning) a failure instead of raising: closing must go on for the rest."""
    try:
        thing.close()
    except Exception as e:
        log.warning("closing %s: %s", name, describe(e))
        return describe(e)
    return None
