"""`sdv2 bench transport`: how long a frame takes from the engine into OBS, plugin vs UDP stream, in one run.

One `passthrough` session (no model: engine/passthrough.py, with the engine's usual chunking, queues and output
pacing) streams frame-stamped test frames (engine/io/pattern.py: the frame number as black/white blocks, readable
after scaling and H.264) at 30 fps to two outputs at once:

* the plugin path: `obs-source:CHANNEL` (shared memory) shown by a StreamDiffusionV2 source in OBS;
* the no-install path: the UDP MPEG-TS stream shown by an OBS Media Source (obs_bridge/output.py's settings).

OBS screenshots of both sources (GetSourceScreenshot, JPEG, taken in turn) are read back and their stamps decoded.
For each path it reports the one-way latency two ways, as p50 / p99 over the samples:

* transport: from the engine handing the frame to the output (before the shared-memory copy, or before H.264
  encoding) to OBS showing it: what the path itself costs;
* end to end: from the test source making the frame to OBS showing it (adds the engine's 4-frame chunks and the
  output pacing, the same for both paths).

A screenshot's time is the middle of its request; the numbers include up to one OBS frame of waiting for the next
render (33 ms at 30 fps), as a viewer would see. The mean pixel error of the screenshots against the frames sent
tells lossless (plugin: only the screenshot's JPEG) from encoded paths. Nothing is asserted (benchmarks are not
tests); tests/test_obs_plugin.py runs the same measurement against OBS 29 under Xvfb.

OBS: the running one (obs-websocket settings as `sdv2 obs`, --host/--port), with the plugin installed
(`sdv2 obs install-plugin`), or `--headless`: a private OBS under Xvfb with the plugin built into its own config
(Linux: obs-studio, xvfb, cmake, a compiler, libobs-dev). Inputs the bench adds are removed at the end.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource, read_counter
from sdv2_studio.engine.io.protocols import Frame, FrameSink, FrameSource

SIZE, FPS = (352, 640), 30.0  # (h, w) of the test frames (a model size: multiples of 16), their rate
PLUGIN_KIND = "streamdiffusionv2_source"
_runs = itertools.count()  # each measurement gets its own channel and OBS inputs (a removed input lingers a moment)
NO_PICTURE = 702  # GetSourceScreenshot before the source has a size


# -- reading OBS back ------------------------------------------------------------------------------------------------


def screenshot(client, source: str, fmt: str = "png") -> np.ndarray:
    """The source as OBS renders it, at its own size (png: lossless, for exact comparisons; jpg: fast)."""
    data = client.call("GetSourceScreenshot", {"sourceName": source, "imageFormat": fmt,
                                               "imageCompressionQuality": 90})["imageData"]
    with av.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))) as f:
        return next(f.decode(video=0)).to_ndarray(format="rgb24")


def stamp(client, source: str, size: tuple[int, int] = SIZE) -> int:
    """The frame number a test frame in ``source`` shows; -1 while OBS has nothing to render yet (size 0)."""
    from sdv2_studio.obs_bridge.errors import ObsRequestError

    try:
        return read_counter(screenshot(client, source, "jpg"), size)
    except ObsRequestError as e:
        if e.code == NO_PICTURE:
            return -1
        raise


def percentiles(ms: list[float]) -> dict:
    """p50 / p99 (the engine's stats rule) and the count of ``ms``."""
    s = sorted(ms)
    if not s:
        return {"p50_ms": None, "p99_ms": None, "n": 0}
    return {"p50_ms": round(statistics.median(s), 1), "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 1),
            "n": len(s)}


def describe(ms: list[float]) -> str:
    p = percentiles(ms)
    return f"p50 {p['p50_ms']:.0f} ms, p99 {p['p99_ms']:.0f} ms (n={p['n']})" if p["n"] else "no samples"


@dataclass
class PathResult:
    """One path's samples: (OBS shows it - output got it) and (OBS shows it - source made it), in ms."""

    transport_ms: list[float] = field(default_factory=list)
    end_to_end_ms: list[float] = field(default_factory=list)
    pixel_errors: list[float] = field(default_factory=list)
    first_shown: float = 0.0  # time.monotonic() when OBS first showed a test frame in this path's source

    def summary(self) -> dict:
        return {"transport": percentiles(self.transport_ms), "end_to_end": percentiles(self.end_to_end_ms),
                "pixel_error": round(statistics.median(self.pixel_errors), 2) if self.pixel_errors else None}


def read_back(client, paths: dict[str, tuple[str, dict[int, int]]], made: dict[int, int], pattern: TestPatternSource,
              *, samples: int = 60, timeout: float = 120.0, first_timeout: float = 60.0) -> dict[str, PathResult]:
    """Screenshots of each OBS source in turn until every path has ``samples`` recognised frames (or ``timeout`` s
    passed). ``paths``: name -> (OBS source, frame number -> perf_counter_ns its output got it); ``made``: frame
    number -> when the source made it. EngineError naming the path when a source shows no test frame within
    ``first_timeout`` s."""
    size = pattern.size
    results = {name: PathResult() for name in paths}
    end = time.monotonic() + first_timeout
    while not all(r.first_shown for r in results.values()):  # frames 0-2 may be a stale picture: wait for more
        for name, (source, _) in paths.items():
            if not results[name].first_shown and stamp(client, source, size) > 2:
                results[name].first_shown = time.monotonic()
        if time.monotonic() > end:
            missing = ", ".join(f"{paths[n][0]!r} ({n})" for n, r in results.items() if not r.first_shown)
            raise EngineError(f"OBS showed no test frame in {missing} within {first_timeout:g} s")
    end = time.monotonic() + timeout
    while time.monotonic() < end and min(len(r.transport_ms) for r in results.values()) < samples:
        for name, (source, written) in paths.items():
            t_call = time.perf_counter_ns()
            shot = screenshot(client, source, "jpg")
            t_shown = (t_call + time.perf_counter_ns()) / 2
            k = read_counter(shot, size)
            if k not in written or k not in made or shot.shape[:2] != size:
                continue  # not sent yet (a misread) or the source changed size
            results[name].transport_ms.append((t_shown - written[k]) / 1e6)
            results[name].end_to_end_ms.append((t_shown - made[k]) / 1e6)
            results[name].pixel_errors.append(float(np.abs(shot.astype(int) - pattern.frame(k).astype(int)).mean()))
    return results


# -- the session's ends ----------------------------------------------------------------------------------------------


class StampedSource(FrameSource):
    """Test frames at ``fps`` in real time (a camera: the session never waits for it); ``made[i]`` is when frame
    ``i`` was handed to the engine (perf_counter_ns)."""

    kind = "camera"

    def __init__(self, pattern: TestPatternSource, made: dict[int, int]) -> None:
        self.pattern, self.made = pattern, made
        self.size, self.fps = pattern.size, pattern.fps
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[tuple[Frame, float]]:
        t0 = time.monotonic()
        i = 0
        while not self._closed.is_set():
            frame = self.pattern.frame(i)
            self._closed.wait(max(0.0, t0 + i / self.fps - time.monotonic()))
            self.made[i] = time.perf_counter_ns()
            yield frame, i / self.fps
            i += 1

    def close(self) -> None:
        self._closed.set()


class TimedSink(FrameSink):
    """Passes frames to ``sink``; ``written[n]`` is when test frame ``n`` reached it (before the write)."""

    def __init__(self, sink: FrameSink, written: dict[int, int]) -> None:
        self.sink, self.written = sink, written

    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        self.written.setdefault(read_counter(frame), time.perf_counter_ns())
        self.sink.write(frame, pts_seconds)

    def close(self) -> None:
        self.sink.close()


# -- the whole measurement -------------------------------------------------------------------------------------------


def measure(client, scene: str, *, channel: str | None = None, samples: int = 60, timeout: float = 120.0,
            keep_inputs: bool = False) -> dict:
    """Both paths side by side through one passthrough session into the OBS that ``client`` talks to (which must
    have the plugin). Adds a plugin source and a Media Source to ``scene`` (removed at the end unless
    ``keep_inputs``). Returns the result dict `sdv2 bench transport` saves."""
    from sdv2_studio.engine.api import EngineConfig
    from sdv2_studio.engine.io.mpegts import MpegTsSink
    from sdv2_studio.engine.io.shm import ShmFrameSink, segment_name
    from sdv2_studio.engine.session import Session
    from sdv2_studio.obs_bridge.output import attach_stream, free_udp_port, media_source_settings

    channel = channel or f"bench{os.getpid() % 100000}x{next(_runs)}"
    plugin_input, udp_input = f"sdv2-bench-plugin-{channel}", f"sdv2-bench-udp-{channel}"
    url = f"udp://127.0.0.1:{free_udp_port()}"
    client.call("CreateInput", {"sceneName": scene, "inputName": plugin_input, "inputKind": PLUGIN_KIND,
                                "inputSettings": {"channel": channel}})
    made: dict[int, int] = {}
    written: dict[str, dict[int, int]] = {"plugin": {}, "udp": {}}
    pattern = TestPatternSource(SIZE, fps=FPS)

    def outputs(source: FrameSource) -> dict[str, FrameSink]:
        return {"plugin": TimedSink(ShmFrameSink(segment_name(channel, "sty"), fps=source.fps), written["plugin"]),
                "udp": TimedSink(MpegTsSink(url, source.fps), written["udp"])}

    session = Session(EngineConfig(model="passthrough", size=SIZE, device="cpu"),
                      lambda size: StampedSource(pattern, made), outputs, live=True, paced=True)
    try:
        session.start()  # then the Media Source joins the running stream, as after OBS or the engine restarted
        t_attach = time.monotonic()
        attach_stream(client, scene, url, name=udp_input)
        results = read_back(client, {"plugin": (plugin_input, written["plugin"]), "udp": (udp_input, written["udp"])},
                            made, pattern, samples=samples, timeout=timeout)
    finally:
        session.stop()
        if not keep_inputs:
            for name in (plugin_input, udp_input):
                client.try_call("RemoveInput", {"inputName": name})
    st = session.status()
    plugin, udp = results["plugin"].summary(), results["udp"].summary()
    p50 = plugin["transport"]["p50_ms"], udp["transport"]["p50_ms"]
    return {
        "what": f"one-way latency engine -> OBS at {FPS:g} fps, {SIZE[1]}x{SIZE[0]} test frames through the "
                "passthrough model",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "system": platform.platform()},
        "obs": client.connect().summary(),
        "fps": FPS, "size": f"{SIZE[1]}x{SIZE[0]}", "frame_interval_ms": round(1e3 / FPS, 1),
        "plugin": plugin, "udp": udp,
        "udp_over_plugin_p50": round(p50[1] / p50[0], 2) if all(p50) else None,
        "udp_first_picture_s": round(results["udp"].first_shown - t_attach, 2),  # Media Source made -> a frame
        "media_source_settings": media_source_settings(url),
        "session": {"frames_in": st.frames_in, "frames_out": st.frames_out,
                    "dropped_in": st.engine.dropped_in if st.engine else None},
        "samples": {"plugin": asdict(results["plugin"]), "udp": asdict(results["udp"])},
    }


def report(result: dict) -> str:
    lines = [f"transport latency at {result['fps']:g} fps, {result['size']}, through the passthrough model "
             f"({result['obs']}); screenshot polling, includes up to one OBS frame of waiting:"]
    for name, label in (("plugin", "plugin (shared memory)"), ("udp", "UDP MPEG-TS Media Source")):
        s = result["samples"][name]
        pe = result[name]["pixel_error"]
        lines.append(f"  {label:<26} transport {describe(s['transport_ms'])}; end to end "
                     f"{describe(s['end_to_end_ms'])}; pixel error {pe if pe is not None else '-'}")
    ratio = result["udp_over_plugin_p50"]
    lines.append(f"  the Media Source showed its first frame {result['udp_first_picture_s']:.2f} s after it was made "
                 "(joining the running stream)")
    p50, frame = result["plugin"]["transport"]["p50_ms"], result["frame_interval_ms"]
    if ratio is not None:
        lines.append(f"  UDP / plugin transport p50: {ratio:.1f}x; plugin p50 {p50:.0f} ms vs one frame interval "
                     f"{frame:.0f} ms ({'within' if p50 <= frame else 'over'})")
    return "\n".join(lines)


def _discard(headless) -> None:
    """Stop the private OBS (if any) and remove its folder."""
    if headless is not None:
        headless.stop()
        shutil.rmtree(headless.root, ignore_errors=True)


def _connect(args):
    """The OBS to measure: a private headless one (``--headless``) or the running one; refusals are one line."""
    from sdv2_studio.obs_bridge.client import ObsClient
    from sdv2_studio.obs_bridge.errors import ObsError
    from sdv2_studio.obs_bridge.headless import HeadlessObs, obs_binary

    headless = None
    try:
        if args.headless:
            if obs_binary() is None:
                raise EngineError("OBS is not installed: sudo apt install obs-studio xvfb (or run OBS with its "
                                  "WebSocket server on, install the plugin with `sdv2 obs install-plugin`, and leave "
                                  "out --headless)")
            from sdv2_studio.obs_bridge.native_plugin import install_plugin

            root = Path(tempfile.mkdtemp(prefix="sdv2-bench-obs-"))
            headless = HeadlessObs(root)
            headless.seed_config()
            print("building the plugin into a private OBS config...", flush=True)
            install_plugin(headless.config_dir / "plugins", build_dir=root / "build")
            headless.start()
            settings = headless.settings
        else:
            from sdv2_studio.obs_bridge.cli import _settings

            settings = _settings(args)
        client = ObsClient(settings, auto_reconnect=False)
        info = client.connect()
    except ObsError as e:
        _discard(headless)
        raise EngineError(f"{e}; or pass --headless to start a private OBS under Xvfb") from None
    except BaseException:
        if headless is not None:
            headless.stop()  # its folder stays: a failed plugin build's log is in it
        raise
    if info.find_kind(PLUGIN_KIND) is None:
        client.close()
        _discard(headless)
        raise EngineError(f"OBS at {settings.address} has no StreamDiffusionV2 source: run `sdv2 obs install-plugin` "
                          "and restart OBS (or pass --headless)")
    return client, headless


def main_transport(args) -> dict:
    """`sdv2 bench transport`: measure, print, save JSON (``args.out``, default bench/results/transport.json)."""
    for name in ("host", "port", "timeout"):
        setattr(args, name, getattr(args, name, None))
    client, headless = _connect(args)
    try:
        scene = client.call("GetCurrentProgramScene")["currentProgramSceneName"]
        result = measure(client, scene, samples=args.samples)
    finally:
        client.close()
        _discard(headless)
    print(report(result))
    out = Path(args.out or "bench/results/transport.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(f"saved {out}")
    return result
