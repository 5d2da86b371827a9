"""The native OBS plugin (obs_bridge/plugin/), built from source and loaded by a real OBS 29 under Xvfb.

The live tests skip (with the reason) when the `obs` binary, cmake, a C compiler or libobs-dev are missing; CI
installs them (installer/setup.sh test). One OBS serves the module; every test uses its own channel names.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import median_rgb, wait_for
from sdv2_studio.engine.cli import load_bench, main
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io import shm
from sdv2_studio.engine.io.pattern import TestPatternSource, read_counter
from sdv2_studio.engine.io.shm import ALIVE_NS, ShmFrameReader, ShmFrameSink, open_shm_source, segment_name
from sdv2_studio.obs_bridge import native_plugin
from sdv2_studio.obs_bridge.client import ObsClient
from sdv2_studio.obs_bridge.headless import HeadlessObs, free_tcp_port, obs_binary
from sdv2_studio.obs_bridge.native_plugin import check_tools, install_plugin, installed_module

transport = load_bench("transport")  # `sdv2 bench transport`: the latency measurement and OBS screenshots
screenshot = transport.screenshot
SDV2 = [sys.executable, "-m", "sdv2_studio.engine.cli"]

CARD = (24, 24, 32)  # the "not running" card's background (frame-feed.c)
_names = itertools.count()
_channels: list[str] = []


def new_channel() -> str:
    _channels.append(f"p{os.getpid() % 100000}x{next(_names)}")
    return _channels[-1]


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    if obs_binary() is None:
        pytest.skip("the `obs` binary is not installed (apt-get install obs-studio xvfb)")
    try:
        check_tools()
    except EngineError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("obs-plugin")
    instance = HeadlessObs(root)
    instance.seed_config()
    t0 = time.monotonic()
    module = install_plugin(instance.config_dir / "plugins", build_dir=root / "build")
    built = time.monotonic() - t0
    instance.start()
    print(f"\nplugin built in {built:.1f} s ({module.stat().st_size // 1024} KiB); OBS up on port {instance.port}")
    yield instance
    instance.stop()
    for channel in _channels:  # an OBS that is stopped by a signal leaves its filters' segments behind
        for direction in ("cap", "sty"):
            if (leftover := shm._attach(segment_name(channel, direction))) is not None:
                leftover.close()
                shm._unlink(leftover)


@pytest.fixture
def client(obs):
    c = ObsClient(dataclasses.replace(obs.settings, timeout=30.0))  # a busy CI machine renders slowly
    c.connect()
    yield c
    c.close()


def is_card(img: np.ndarray) -> bool:
    return bool(np.abs(median_rgb(img) - CARD).max() <= 3)


def colour_input(client: ObsClient, name: str, rgb: tuple[int, int, int], size=(320, 240)) -> None:
    r, g, b = rgb
    settings = {"color": 0xFF000000 | (b << 16) | (g << 8) | r, "width": size[0], "height": size[1]}
    if name in [n for n, _ in client.input_names()]:
        client.call("SetInputSettings", {"inputName": name, "inputSettings": settings, "overlay": True})
    else:
        client.call("CreateInput", {"sceneName": "Scene", "inputName": name, "inputKind": "color_source_v3",
                                    "inputSettings": settings})


def styled_input(client: ObsClient, name: str, settings: dict) -> None:
    client.call("CreateInput", {"sceneName": "Scene", "inputName": name, "inputKind": "streamdiffusionv2_source",
                                "inputSettings": settings})


def add_filter(client: ObsClient, source: str, channel: str, mode: str) -> None:
    client.call("CreateSourceFilter", {"sourceName": source, "filterName": "StreamDiffusionV2",
                                       "filterKind": "streamdiffusionv2_filter",
                                       "filterSettings": {"channel": channel, "mode": mode}})


# -- building and loading --------------------------------------------------------------------------------------------


def test_missing_build_tools_are_named_with_their_apt_packages(monkeypatch):
    monkeypatch.setattr(native_plugin.shutil, "which", lambda name: None)
    with pytest.raises(EngineError, match="cmake is not installed: sudo apt install cmake build-essential "
                                          "pkg-config libobs-dev"):
        install_plugin()
    monkeypatch.setattr(native_plugin.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "cmake" else None)
    with pytest.raises(EngineError, match="no C compiler found: sudo apt install"):
        install_plugin()
    monkeypatch.setattr(native_plugin.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(native_plugin, "LIBOBS_HEADER", native_plugin.Path("/nonexistent/obs-module.h"))
    monkeypatch.setattr(native_plugin, "_version", lambda cmd: None)
    with pytest.raises(EngineError, match=r"OBS's development files \(libobs-dev\) are not installed: sudo apt"):
        install_plugin()


def test_cli_install_plugin_builds_into_the_users_obs_plugin_folder(tmp_path, capsys):
    try:
        check_tools()
    except EngineError as e:
        pytest.skip(str(e))
    from sdv2_studio.obs_bridge.cli import register_cli

    p = argparse.ArgumentParser(prog="sdv2")
    register_cli(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["obs", "install-plugin", "--build-dir", str(tmp_path / "build")])
    assert args.fn(args) == 0
    prefix = native_plugin.user_plugin_dir()  # $XDG_CONFIG_HOME/obs-studio/plugins (isolated by conftest)
    assert prefix.parent.parent == native_plugin.Path(os.environ["XDG_CONFIG_HOME"])
    module = installed_module(prefix)
    assert module.is_file() and (prefix / "streamdiffusionv2" / "data" / "locale" / "en-US.ini").is_file()
    assert f"installed {module}" in capsys.readouterr().out


def test_obs_loads_the_plugin_and_offers_its_source_and_filter(obs, client):
    kinds = client.call("GetInputKindList", {"unversioned": False})["inputKinds"]
    assert "streamdiffusionv2_source" in kinds
    assert "[streamdiffusionv2] loaded (frame protocol v1)" in obs.log_path.read_text(errors="replace")
    colour_input(client, "plugin-kinds", (10, 20, 30))
    add_filter(client, "plugin-kinds", new_channel(), "send")
    filters = client.call("GetSourceFilterList", {"sourceName": "plugin-kinds"})["filters"]
    assert [(f["filterName"], f["filterKind"]) for f in filters] == [("StreamDiffusionV2",
                                                                       "streamdiffusionv2_filter")]
    held = client.call("GetSourceFilter", {"sourceName": "plugin-kinds", "filterName": "StreamDiffusionV2"})
    assert held["filterSettings"]["mode"] == "send"


# -- engine -> OBS: the source ---------------------------------------------------------------------------------------


def test_engine_frames_show_in_the_source_and_the_card_replaces_them_when_the_engine_stops(client):
    channel = new_channel()
    styled_input(client, "styled-a", {"channel": channel})
    assert wait_for(lambda: is_card(screenshot(client, "styled-a"))) is not None, "no 'not running' card"
    assert screenshot(client, "styled-a").shape == (360, 640, 3)  # the card's size before any frame

    pattern = TestPatternSource((120, 160), fps=30)
    sink = ShmFrameSink(segment_name(channel, "sty"), fps=30)
    for i in (3, 4):
        sink.write(pattern.frame(i))
        shown = wait_for(lambda i=i: np.array_equal(screenshot(client, "styled-a"), pattern.frame(i)))
        assert shown is not None, f"frame {i} never showed exactly as written"

    sink.close()  # the engine stops: a clean close is seen at the next tick
    t_card = wait_for(lambda: is_card(screenshot(client, "styled-a")))
    assert t_card is not None and screenshot(client, "styled-a").shape == (120, 160, 3)  # keeps the layout

    code = textwrap.dedent(f"""
        import time
        from sdv2_studio.engine.io.pattern import TestPatternSource
        from sdv2_studio.engine.io.shm import ShmFrameSink
        sink, pattern = ShmFrameSink({segment_name(channel, 'sty')!r}, fps=30), TestPatternSource((120, 160))
        for i in range(10**9):
            sink.write(pattern.frame(i))
            time.sleep(1 / 30)
    """)
    engine = subprocess.Popen([sys.executable, "-c", code])  # an engine that will crash
    try:
        assert wait_for(lambda: not is_card(screenshot(client, "styled-a")), 120) is not None
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        t_crash = wait_for(lambda: is_card(screenshot(client, "styled-a")), 30)  # heartbeat 1 s + a busy OBS
    finally:
        engine.kill()
        engine.wait()
    assert t_crash is not None, "the source kept showing a dead engine's frame"
    print(f"\n'not running' card {t_card * 1e3:.0f} ms after the engine closed, {t_crash * 1e3:.0f} ms after it "
          f"was killed (heartbeat timeout {ALIVE_NS / 1e9:g} s)")

    with ShmFrameSink(segment_name(channel, "sty"), fps=30) as back:  # the engine comes back
        back.write(pattern.frame(9))
        assert wait_for(lambda: np.array_equal(screenshot(client, "styled-a"), pattern.frame(9))) is not None


def test_a_fallback_source_stands_in_while_no_engine_runs(client):
    colour_input(client, "plugin-fallback", (200, 60, 20), size=(200, 100))
    channel = new_channel()
    styled_input(client, "styled-b", {"channel": channel, "fallback": "plugin-fallback"})
    assert wait_for(lambda: np.abs(median_rgb(screenshot(client, "styled-b")) - (200, 60, 20)).max() <= 2) is not None
    assert screenshot(client, "styled-b").shape == (100, 200, 3)
    with ShmFrameSink(segment_name(channel, "sty")) as sink:
        sink.write(np.full((50, 60, 3), 250, np.uint8))
        assert wait_for(lambda: screenshot(client, "styled-b").shape == (50, 60, 3)) is not None


# -- OBS -> engine: the filter ---------------------------------------------------------------------------------------


def test_the_filter_sends_its_sources_frames_to_the_engine(client):
    channel = new_channel()
    colour_input(client, "plugin-camera", (224, 160, 32))
    add_filter(client, "plugin-camera", channel, "send")
    source = open_shm_source(f"obs-filter:{channel}", timeout=60)
    try:
        assert source.size == (240, 320) and source.fps == pytest.approx(30, rel=0.01)  # OBS's frame rate
        frames = iter(source)
        frame, _ = next(frames)
        assert np.abs(median_rgb(frame) - (224, 160, 32)).max() <= 1
        colour_input(client, "plugin-camera", (20, 90, 200))
        assert wait_for(lambda: np.abs(median_rgb(next(frames)[0]) - (20, 90, 200)).max() <= 1, 30) is not None
        with ShmFrameSink(segment_name(channel, "sty")) as sink:  # "send" mode: styled frames are not shown
            sink.write(np.full((24, 32, 3), 250, np.uint8))
            time.sleep(0.5)
            assert np.abs(median_rgb(screenshot(client, "plugin-camera")) - (20, 90, 200)).max() <= 1
    finally:
        source.close()


def test_replace_mode_shows_the_styled_frames_in_place_of_the_source(client):
    channel = new_channel()
    colour_input(client, "plugin-styled-camera", (30, 200, 60))
    add_filter(client, "plugin-styled-camera", channel, "replace")
    camera = (30, 200, 60)
    assert wait_for(lambda: np.abs(median_rgb(screenshot(client, "plugin-styled-camera")) - camera).max() <= 1)
    sink = ShmFrameSink(segment_name(channel, "sty"))
    styled = np.zeros((120, 160, 3), np.uint8)
    styled[:, :80], styled[:, 80:] = (250, 220, 10), (120, 10, 200)
    sink.write(styled)

    def shows_styled() -> bool:
        shot = screenshot(client, "plugin-styled-camera")
        left, right = median_rgb(shot[:, :150]), median_rgb(shot[:, 170:])
        return np.abs(left - (250, 220, 10)).max() <= 2 and np.abs(right - (120, 10, 200)).max() <= 2

    assert wait_for(shows_styled) is not None, "replace mode did not show the styled frame"
    assert screenshot(client, "plugin-styled-camera").shape == (240, 320, 3)  # scaled to the source's size
    sink.close()
    assert wait_for(lambda: np.abs(median_rgb(screenshot(client, "plugin-styled-camera")) - camera).max() <= 1)


# -- transport latency: plugin vs the UDP stream, side by side -------------------------------------------------------


def test_transport_latency_plugin_vs_udp_stream(client):
    """`sdv2 bench transport`'s measurement: frame-stamped frames through one passthrough session into a plugin
    source and a UDP Media Source side by side (goal: plugin p50 within one frame interval at 30 fps; printed, not
    asserted: this machine's timing is not the product's)."""
    result = transport.measure(client, "Scene", samples=40)
    for path in ("plugin", "udp"):
        assert result[path]["transport"]["n"] >= 40 and result[path]["end_to_end"]["n"] >= 40
        assert result[path]["transport"]["p50_ms"] < result[path]["end_to_end"]["p50_ms"]  # the engine's chunks
    assert result["plugin"]["pixel_error"] < 3 and result["udp"]["pixel_error"] < 20  # lossless up to the JPEG
    assert result["udp_over_plugin_p50"] is not None
    assert wait_for(lambda: not any(n.startswith("sdv2-bench-") for n, _ in client.input_names()), 30)  # removed

    # round trip without screenshots: engine -> plugin source -> plugin filter on it -> engine
    channel, back = new_channel(), new_channel()
    styled_input(client, "latency-shm", {"channel": channel})
    add_filter(client, "latency-shm", back, "send")
    pattern = TestPatternSource((360, 640), fps=30)
    reader = ShmFrameReader(segment_name(back, "cap"))
    round_ms, sent = [], {}
    with ShmFrameSink(segment_name(channel, "sty"), fps=30) as sink:
        t0 = time.monotonic()
        for i in itertools.count():
            if time.monotonic() - t0 > 120 or len(round_ms) >= 100:
                break
            sent[i] = time.perf_counter_ns()
            sink.write(pattern.frame(i))
            while time.monotonic() < t0 + (i + 1) / 30:
                got = reader.poll()
                if got is not None and (k := read_counter(got[0])) in sent and k > 0:
                    round_ms.append((time.perf_counter_ns() - sent[k]) / 1e6)
                    assert np.array_equal(got[0], pattern.frame(k))  # lossless both ways
                time.sleep(0.001)
    print(f"\n{transport.report(result)}\n"
          f"  plugin round trip engine -> OBS source -> OBS filter -> engine: {transport.describe(round_ms)}")
    assert len(round_ms) >= 10


def test_bench_transport_refuses_in_one_line_without_obs(capsys):
    assert main(["bench", "transport", "--port", str(free_tcp_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing answers" in err[0] and "--headless" in err[0]


def test_bench_transport_refuses_an_obs_without_the_plugin(tmp_path, capsys):
    if obs_binary() is None:
        pytest.skip("the `obs` binary is not installed (apt-get install obs-studio xvfb)")
    bare = HeadlessObs(tmp_path)
    bare.start()
    try:
        env = {**os.environ, "SDV2_OBS_PASSWORD": bare.password}
        r = subprocess.run([*SDV2, "bench", "transport", "--port", str(bare.port)], capture_output=True, text=True,
                           timeout=300, env=env)
    finally:
        bare.stop()
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "has no StreamDiffusionV2 source: run `sdv2 obs install-plugin`" in err[0]


def test_sdv2_bench_transport_headless_saves_json(obs, tmp_path):
    """The whole command: a private OBS under Xvfb with the plugin built into it, both paths, JSON saved."""
    out = tmp_path / "transport.json"
    r = subprocess.run([*SDV2, "bench", "transport", "--headless", "--samples", "15", "--json", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["plugin"]["transport"]["n"] >= 15 and result["udp"]["transport"]["n"] >= 15
    assert result["media_source_settings"]["is_local_file"] is False
    assert "UDP / plugin transport p50" in r.stdout and f"saved {out}" in r.stdout


# -- the whole engine through OBS ------------------------------------------------------------------------------------


def test_sdv2_run_styles_an_obs_source_through_the_plugin(client):
    channel = new_channel()
    camera = (40, 120, 220)
    colour_input(client, "plugin-e2e-camera", camera, size=(128, 96))
    add_filter(client, "plugin-e2e-camera", channel, "replace")
    run = subprocess.Popen([sys.executable, "-m", "sdv2_studio.engine.cli", "run", "--model", "tiny", "--size",
                            "64x64", "--source", f"obs-filter:{channel}", "--out", f"obs-source:{channel}",
                            "--frames", "100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def styled() -> bool:
        return np.abs(median_rgb(screenshot(client, "plugin-e2e-camera")) - camera).max() > 10

    try:  # start-up (imports, the tiny model) takes ~20 s on an idle 2-core machine, minutes on a busy one
        wait_for(lambda: run.poll() is not None or styled(), 420, poll=0.5)
        shown = run.poll() is None and styled()  # the engine's frames replaced the camera while it ran
        shape = screenshot(client, "plugin-e2e-camera").shape
    finally:
        run.send_signal(signal.SIGINT)  # Ctrl-C: the CLI stops and closes its output
        out = run.communicate(timeout=120)[0]
    assert shown and run.returncode == 0 and "frames in" in out, out
    assert shape == (96, 128, 3)  # the styled frames, scaled to the camera's size
    assert wait_for(lambda: np.abs(median_rgb(screenshot(client, "plugin-e2e-camera")) - camera).max() <= 1), \
        "the camera did not come back after the engine stopped"


# -- crashes on either side ------------------------------------------------------------------------------------------


def run_engine(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*SDV2, "run", "--model", "passthrough", "--frames", "100000000", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_engine(run: subprocess.Popen) -> tuple[str, str]:
    run.send_signal(signal.SIGINT)  # Ctrl-C: the CLI stops and closes its outputs
    try:
        return run.communicate(timeout=120)
    finally:
        run.kill()


def test_killing_the_real_engine_shows_the_card_and_a_new_engine_is_shown_again(client):
    """`sdv2 run` itself (passthrough) killed with SIGKILL: the source shows the "not running" card (the heartbeat
    times out after 1 s) instead of a frozen frame, and shows the next `sdv2 run` on the same channel."""
    channel = new_channel()
    styled_input(client, "styled-crash", {"channel": channel})
    out = ("--source", "test:320x240@30", "--size", "320x240", "--realtime", "--out", f"obs-source:{channel}")
    pattern = TestPatternSource((240, 320), fps=30)

    def shows_engine() -> bool:
        shot = screenshot(client, "styled-crash")
        return shot.shape == (240, 320, 3) and not is_card(shot) and \
            np.abs(shot.astype(int) - pattern.frame(read_counter(shot)).astype(int)).mean() < 1  # a test frame

    engine = run_engine(*out)
    try:
        assert wait_for(shows_engine, 300) is not None, "the engine's frames never showed"
        engine.send_signal(signal.SIGKILL)
        engine.wait(60)
        t_card = wait_for(lambda: is_card(screenshot(client, "styled-crash")), 30, poll=0.02)
    finally:
        engine.kill()
        engine.communicate()
    assert t_card is not None, "the source kept showing the killed engine's last frame"
    print(f"\n'not running' card {t_card * 1e3:.0f} ms after `sdv2 run` was killed "
          f"(heartbeat timeout {ALIVE_NS / 1e9:g} s)")
    again = run_engine(*out)  # the name the killed engine left behind is taken over
    try:
        assert wait_for(shows_engine, 300) is not None, "the restarted engine's frames never showed"
    finally:
        _, err = stop_engine(again)
    assert again.returncode == 0, err


@pytest.fixture
def own_obs(obs, tmp_path):
    """A second OBS with the plugin (built in the module's build folder), for tests that kill OBS."""
    instance = HeadlessObs(tmp_path)
    instance.seed_config()
    install_plugin(instance.config_dir / "plugins", build_dir=obs.root / "build")
    instance.start()
    yield instance
    instance.stop()


def test_killing_obs_does_not_disturb_the_engine(own_obs):
    """OBS camera -> filter -> `sdv2 run` -> OBS source: OBS is killed under a running engine and started again.
    The engine keeps running (same process, its output alive), waits for the camera and goes on when OBS is back."""
    channel, camera = new_channel(), (40, 180, 90)

    def setup(c: ObsClient) -> None:  # a killed OBS saved nothing: its inputs are made again after the restart
        colour_input(c, "crash-camera", camera)
        if not c.call("GetSourceFilterList", {"sourceName": "crash-camera"})["filters"]:
            add_filter(c, "crash-camera", channel, "send")
        if "crash-styled" not in [n for n, _ in c.input_names()]:
            styled_input(c, "crash-styled", {"channel": channel})

    def shows_camera(c: ObsClient) -> bool:
        return np.abs(median_rgb(screenshot(c, "crash-styled")) - camera).max() <= 2

    c = ObsClient(dataclasses.replace(own_obs.settings, timeout=30.0))
    c.connect()
    setup(c)
    engine = run_engine("--source", f"obs-filter:{channel}", "--out", f"obs-source:{channel}")
    styled = ShmFrameReader(segment_name(channel, "sty"))
    try:
        assert wait_for(lambda: engine.poll() is not None or shows_camera(c), 300) and engine.poll() is None, \
            "the camera never came back through the engine"
        c.close()
        own_obs.kill()  # SIGKILL: OBS's filter dies mid-frame
        t_dead = time.monotonic()
        while time.monotonic() - t_dead < 3:  # the engine's output stays alive while its input is gone
            styled.poll()
            assert engine.poll() is None and styled.state in ("alive", "waiting"), styled.state
            time.sleep(0.05)
        own_obs.start()
        c = ObsClient(dataclasses.replace(own_obs.settings, timeout=30.0))
        c.connect()
        setup(c)
        assert wait_for(lambda: engine.poll() is not None or shows_camera(c), 300) and engine.poll() is None, \
            "the engine did not go on after OBS came back"
    finally:
        c.close()
        out, err = stop_engine(engine)
    assert engine.returncode == 0 and "frames in" in out, err
    assert "Traceback" not in err and "error" not in err.lower(), err
