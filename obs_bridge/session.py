"""One live stream the bridge (and its control API) can start, stop and restyle: source -> engine -> sinks.

``StreamSession`` owns the :class:`~engine.api.Engine`. Two threads move frames: the input pump pushes source
frames without blocking (the engine drops the oldest when behind, so latency stays bounded) and the output pump
pulls styled frames and writes them to every sink (live sinks pace themselves, see ``engine.io.paced``). Only
the newest styled frame is kept for previews. The model is loaded once and reused across stop/start.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.protocols import Frame, FrameSink, FrameSource
from sdv2_studio.engine.models import ModelBundle
from sdv2_studio.obs_bridge.preset_book import PresetBook

log = logging.getLogger(__name__)

SourceFactory = Callable[[tuple[int, int]], FrameSource]  # the model size (h, w) -> an open source
SinkFactory = Callable[[FrameSource], list[FrameSink]]  # the open source (size, fps known) -> open sinks

STOPPED, STARTING, RUNNING, STOPPING, ERROR = "stopped", "starting", "running", "stopping", "error"


def describe(e: BaseException) -> str:
    """One line for the user: an EngineError's own text, else the exception type and message."""
    return str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"


class StreamSession:
    """Source -> engine -> sinks, with start/stop/status/presets for the control API (see module docstring).

    ``open_source(model_size)`` and ``open_sinks(source)`` are called at every start. ``presets`` names the styles
    :meth:`apply_preset` knows. ``bundle`` skips loading the model (tests, or a model the app already loaded).
    ``status_extra`` callables add sections to :meth:`status` (e.g. OBS health).
    """

    def __init__(self, config: EngineConfig, open_source: SourceFactory, open_sinks: SinkFactory,
                 presets: PresetBook | None = None, *, bundle: ModelBundle | None = None) -> None:
        self.config = config
        self.presets = presets or PresetBook({})
        self.status_extra: dict[str, Callable[[], object]] = {}
        self.state = STOPPED
        self.error: str | None = None
        self.progress = ""
        self.preset: str | None = None
        self.frames_out = 0
        self.engine: Engine | None = None
        self.source: FrameSource | None = None
        self.sinks: list[FrameSink] = []
        self._open_source, self._open_sinks = open_source, open_sinks
        self._bundle = bundle
        self._lock = threading.RLock()
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self._latest: Frame | None = None
        self._last_out: float | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self, wait: bool = True) -> None:
        """Load the model (first time), open source and sinks, start pumping. No-op if already running.

        ``wait=False`` returns at once (state ``starting``; failures land in ``state``/``error``)."""
        with self._lock:
            if self.state in (STARTING, RUNNING, STOPPING):
                return
            self.state, self.error, self.progress = STARTING, None, "starting"
        if wait:
            self._start(raise_errors=True)
        else:
            threading.Thread(target=self._start, args=(False,), name="sdv2-session-start", daemon=True).start()

    def _start(self, raise_errors: bool) -> None:
        try:
            engine = Engine(dataclasses.replace(self.config), self._bundle)

            def progress(msg: str, frac: float) -> None:
                self.progress = f"{msg} ({frac:.0%})"

            engine.start(progress)
            self._bundle = engine.bundle
            self.engine = engine
            self.source = self._open_source(engine.size)
            self.sinks = list(self._open_sinks(self.source))
            self._halt.clear()
            self._threads = [
                threading.Thread(target=self._pump_in, name="sdv2-session-in", daemon=True),
                threading.Thread(target=self._pump_out, name="sdv2-session-out", daemon=True),
            ]
            for t in self._threads:
                t.start()
            with self._lock:
                self.state, self.progress = RUNNING, "running"
        except BaseException as e:
            self._teardown()
            with self._lock:
                self.state, self.error, self.progress = ERROR, describe(e), ""
            if raise_errors:
                raise
            log.warning("stream failed to start: %s", self.error)

    def _pump_in(self) -> None:
        try:
            assert self.source is not None and self.engine is not None
            for frame, _pts in self.source:
                if self._halt.is_set():
                    break
                self.engine.push(frame, block=False)
        except BaseException as e:
            self._fail(e)

    def _pump_out(self) -> None:
        try:
            assert self.engine is not None
            while not self._halt.is_set():
                frame = self.engine.pull(timeout=0.1)
                if frame is None:
                    continue
                self._latest, self._last_out = frame, time.monotonic()
                self.frames_out += 1
                for sink in self.sinks:
                    sink.write(frame)
        except BaseException as e:
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if self._halt.is_set():
            return  # stopping anyway; errors from closing resources are expected
        with self._lock:
            self.state, self.error = ERROR, describe(e)
        log.warning("stream stopped: %s", self.error)
        threading.Thread(target=self._teardown, name="sdv2-session-teardown", daemon=True).start()

    def _teardown(self) -> None:
        self._halt.set()
        source, self.source = self.source, None
        if source is not None:
            try:
                source.close()
            except Exception as e:  # closing must go on for the other resources
                log.warning("closing the source: %s", describe(e))
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join(timeout=10)
        self._threads = []
        engine, self.engine = self.engine, None
        if engine is not None:
            try:
                engine.stop(timeout=5)
            except EngineError as e:
                log.warning("stopping the engine: %s", e)
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as e:  # one broken output must not keep others open
                log.warning("closing an output: %s", describe(e))

    def stop(self) -> None:
        """Stop pumping, stop the engine and close source and sinks. Safe to call in any state."""
        with self._lock:
            if self.state in (STOPPED, STOPPING):
                return
            failed = self.state == ERROR
            self.state = STOPPING
        self._teardown()
        with self._lock:
            self.state = ERROR if failed else STOPPED
            self.progress = ""

    def __enter__(self) -> StreamSession:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- controls -----------------------------------------------------------------------------------------------------

    def preset_names(self) -> list[str]:
        return self.presets.names()

    def set_controls(self, **changes) -> dict:
        """Validate and apply (at the next chunk) Controls changes; also kept for the next start."""
        with self._lock:
            engine = self.engine
            controls = engine.set_controls(**changes) if engine is not None else \
                dataclasses.replace(self.config.controls, **changes).validated()
            self.config.controls = controls
            return dataclasses.asdict(controls)

    def apply_preset(self, name: str) -> dict:
        controls = self.set_controls(**self.presets.controls(name))
        self.preset = name
        return controls

    def set_steps(self, steps: int) -> dict:
        return self.set_controls(steps=int(steps))

    # -- readouts -----------------------------------------------------------------------------------------------------

    def latest(self) -> Frame | None:
        """The newest styled frame (previews)."""
        return self._latest

    def status(self) -> dict:
        """Everything a status line or the OBS script shows, JSON-serialisable."""
        engine, source = self.engine, self.source
        out: dict = {
            "state": self.state,
            "error": self.error,
            "progress": self.progress,
            "preset": self.preset,
            "controls": dataclasses.asdict(self.config.controls),
            "frames_out": self.frames_out,
            "seconds_since_output": None if self._last_out is None else round(time.monotonic() - self._last_out, 3),
            "source": repr(source) if source is not None else None,
            "sinks": [{"sink": type(s).__name__, "written": getattr(s, "written", None),
                       "dropped": getattr(s, "dropped", None), "queued": getattr(s, "queued", None)}
                      for s in self.sinks],
        }
        if engine is not None:
            out["engine"] = dataclasses.asdict(engine.stats())
        for name, fn in list(self.status_extra.items()):
            try:
                out[name] = fn()
            except Exception as e:  # a status section must not break the whole readout
                out[name] = {"error": describe(e)}
        return out
