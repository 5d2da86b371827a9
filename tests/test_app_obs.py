"""The app's OBS service against a real headless OBS (skipped without the `obs` binary and Xvfb): status,
source list, capturing a scene, creating the styled source, and `sdv2 doctor`'s OBS check."""

from __future__ import annotations

import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

headless = pytest.importorskip("sdv2_studio.obs_bridge.headless")
if headless.obs_binary() is None:
    pytest.skip("OBS Studio is not installed (apt-get install obs-studio xvfb)", allow_module_level=True)


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    instance = headless.HeadlessObs(tmp_path_factory.mktemp("obs"))
    instance.start()
    yield instance
    instance.stop()


def test_bridge_service_talks_to_a_real_obs(obs, monkeypatch):
    from sdv2_studio.app.services import BridgeObsService
    from sdv2_studio.obs_bridge import doctor as obs_doctor
    from sdv2_studio.obs_bridge.client import ObsClient

    s = obs.settings
    monkeypatch.setenv("SDV2_OBS_HOST", s.host)
    monkeypatch.setenv("SDV2_OBS_PORT", str(s.port))
    monkeypatch.setenv("SDV2_OBS_PASSWORD", s.password)
    svc = BridgeObsService()
    assert svc.address() == (s.host, s.port)
    assert svc.status().startswith("connected: OBS")
    sources = svc.list_sources()
    assert sources
    src = svc.open_source(sources[0], (64, 64), 10)
    try:
        frame, _ = next(iter(src))
    finally:
        src.close()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    out = svc.open_output((72, 128), 10)
    try:
        for i in range(5):
            out.write(np.full((72, 128, 3), 40 * i, np.uint8))
            time.sleep(0.05)
        client = ObsClient(s)
        client.connect()
        try:
            assert ("StreamDiffusionV2", "ffmpeg_source") in client.input_names()
        finally:
            client.close()
    finally:
        out.close()
    [check] = obs_doctor.check_obs()
    assert check.status == obs_doctor.OK and "OBS" in check.detail


# -- the loop guard, the output scene picker and Stop safety (the app window with the real OBS) ----------------------

GREEN = (0, 200, 0)


@pytest.fixture
def obs_env(obs, monkeypatch):
    s = obs.settings
    monkeypatch.setenv("SDV2_OBS_HOST", s.host)
    monkeypatch.setenv("SDV2_OBS_PORT", str(s.port))
    monkeypatch.setenv("SDV2_OBS_PASSWORD", s.password)
    from sdv2_studio.obs_bridge.client import ObsClient

    client = ObsClient(s)
    client.connect()
    yield client
    client.close()


def _scene(client, name: str, items: list[str] = ()) -> None:
    """Scene `name` (re)created holding `items` (existing sources)."""
    if name in client.scene_names():
        client.call("RemoveScene", {"sceneName": name})
        time.sleep(0.2)
    client.call("CreateScene", {"sceneName": name})
    for item in items:
        client.call("CreateSceneItem", {"sceneName": name, "sourceName": item})


def _colour_input(client, name: str, rgb) -> None:
    if name not in [n for n, _ in client.input_names()]:
        r, g, b = rgb
        client.call("CreateInput", {"sceneName": "Scene", "inputName": name,
                                    "inputKind": client.info.find_kind("color_source"),
                                    "inputSettings": {"color": 0xFF000000 | (b << 16) | (g << 8) | r,
                                                      "width": 320, "height": 240}})


def _item(client, scene: str, source: str) -> dict | None:
    items = client.call("GetSceneItemList", {"sceneName": scene})["sceneItems"]
    return next((i for i in items if i["sourceName"] == source), None)


def test_loop_guard_follows_nested_scenes_and_the_app_refuses_with_a_banner(obs_env, qtbot, tmp_path):
    from sdv2_studio.app.services import BridgeObsService
    from sdv2_studio.engine.errors import EngineError
    from sdv2_studio.engine.models import tiny_bundle
    from sdv2_studio.obs_bridge.output import INPUT_NAME, attach_stream, free_udp_port
    from sdv2_studio.obs_bridge.scenes import refuse_feedback
    from test_app_window import START_TIMEOUT, make_window, start, stop

    client = obs_env
    _colour_input(client, "Cam", GREEN)
    _scene(client, "Live", ["Cam"])
    attach_stream(client, "Live", f"udp://127.0.0.1:{free_udp_port()}")
    _scene(client, "Nest", ["Live"])  # shows Live (and so the styled source) through a nested scene
    _scene(client, "Side", [INPUT_NAME])  # shows the styled source directly
    _scene(client, "Raw", ["Cam"])
    refuse_feedback("Cam", "Live", client)
    refuse_feedback("Raw", "Live", client)
    for capture, expected in (("Live", "capturing scene 'Live'"), ("Nest", "Nest > Live"),
                              ("Side", f"Side > {INPUT_NAME}"), (INPUT_NAME, "the styled source")):
        with pytest.raises(EngineError, match=expected):
            refuse_feedback(capture, "Live", client)

    w = make_window(qtbot, tmp_path, tiny_bundle(), obs=BridgeObsService(), control=False, source="obs:Nest",
                    output_obs=True, obs_scene="Live")
    try:
        qtbot.waitUntil(lambda: w.output_panel.obs_scene.findData("Live") >= 0, timeout=30_000)
        assert w.output_panel.obs_scene.currentData() == "Live"  # the saved pick, not the program scene
        qtbot.waitUntil(lambda: "feeds the output back" in w.banner.text.text(), timeout=30_000)  # before Start
        start(qtbot, w)
        qtbot.waitUntil(lambda: not w.outputs.outputs().obs, timeout=START_TIMEOUT)  # the OBS output refused
        assert "Nest > Live" in w.outputs.buttons["obs"].toolTip()
        stop(qtbot, w)
    finally:
        w.close()


def test_stop_hides_the_styled_source_and_shows_the_fallback(obs_env, qtbot, tmp_path):
    from helpers import median_rgb, wait_for
    from sdv2_studio.app.services import BridgeObsService
    from sdv2_studio.engine.models import tiny_bundle
    from sdv2_studio.obs_bridge.capture import JpegDecoder
    from sdv2_studio.obs_bridge.output import INPUT_NAME
    from test_app_window import make_window, start, stop

    client = obs_env
    _colour_input(client, "Cam", GREEN)
    _scene(client, "Show")  # the output scene, without the camera: the fallback gets added on Stop
    w = make_window(qtbot, tmp_path, tiny_bundle(), obs=BridgeObsService(), control=False, source="obs:Cam",
                    output_obs=True, obs_scene="Show")
    try:
        start(qtbot, w)
        assert wait_for(lambda: (_item(client, "Show", INPUT_NAME) or {}).get("sceneItemEnabled"), 60)
        assert _item(client, "Show", "Cam") is None
        stop(qtbot, w)
        styled, cam = _item(client, "Show", INPUT_NAME), _item(client, "Show", "Cam")
        assert styled["sceneItemEnabled"] is False  # no frozen last frame on air
        assert cam is not None and cam["sceneItemEnabled"] is True
        assert cam["sceneItemIndex"] < styled["sceneItemIndex"]  # under the styled source: the next run covers it
        shot = JpegDecoder().decode(client.call("GetSourceScreenshot", {
            "sourceName": "Show", "imageFormat": "jpg", "imageWidth": 128, "imageHeight": 72})["imageData"])
        r, g, b = median_rgb(shot)
        assert g > 150 and r < 60 and b < 60, (r, g, b)  # OBS shows the raw camera

        start(qtbot, w)  # the next run shows the styled source again, over the camera
        assert wait_for(lambda: (_item(client, "Show", INPUT_NAME) or {}).get("sceneItemEnabled"), 60)
        w.output_panel.obs_fallback.setCurrentIndex(w.output_panel.obs_fallback.findData(":hide"))
        w.output_panel.obs_fallback.activated.emit(w.output_panel.obs_fallback.currentIndex())
        assert w.settings.obs_fallback == ":hide"
        stop(qtbot, w)
        assert _item(client, "Show", INPUT_NAME)["sceneItemEnabled"] is False
    finally:
        w.close()


def test_attach_stop_hides_the_styled_source_and_shows_the_fallback(obs, obs_env):
    from helpers import wait_for
    from sdv2_studio.engine.api import EngineConfig
    from sdv2_studio.engine.models import tiny_bundle
    from sdv2_studio.obs_bridge.bridge import BridgeConfig, ObsBridge
    from sdv2_studio.obs_bridge.output import INPUT_NAME

    client = obs_env
    _colour_input(client, "Cam", GREEN)
    _scene(client, "Park")
    cfg = BridgeConfig(scene="Park", camera="test", fps=10, fallback="Cam", health_interval=0.5)
    bridge = ObsBridge(obs.settings, cfg, EngineConfig(model="tiny", size=(64, 64), queue_frames=8,
                                                       prompt_cache_dir=""), bundle=tiny_bundle())
    try:
        for _run in range(2):  # the next start shows the styled source again
            bridge.start()
            assert wait_for(lambda: (_item(client, "Park", INPUT_NAME) or {}).get("sceneItemEnabled"), 60)
            assert bridge.status()["state"] == "running"
            bridge.stop()
            assert _item(client, "Park", INPUT_NAME)["sceneItemEnabled"] is False
            assert _item(client, "Park", "Cam")["sceneItemEnabled"] is True
    finally:
        bridge.close()


def test_a_password_obs_refuses_is_not_saved(obs, monkeypatch):
    import subprocess
    import sys

    from sdv2_studio.app.services import BridgeObsService
    from sdv2_studio.engine.errors import EngineError
    from sdv2_studio.obs_bridge.settings import load_settings, settings_path

    s = obs.settings
    for var in ("SDV2_OBS_HOST", "SDV2_OBS_PORT", "SDV2_OBS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    svc = BridgeObsService()
    with pytest.raises(EngineError, match="rejected this password, so it was not saved"):
        svc.configure(s.host, s.port, "not-the-password")
    assert not settings_path().exists()
    svc.configure(s.host, s.port, s.password)
    assert load_settings().password == s.password and load_settings().port == s.port

    cli = [sys.executable, "-m", "sdv2_studio.engine.cli", "obs", "set-password"]
    r = subprocess.run(cli, input="wrong\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "rejected the password" in r.stderr
    assert load_settings().password == s.password  # the good one stays
    r = subprocess.run(cli, input=s.password + "\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OBS accepted it" in r.stdout, r.stderr


def test_av_sync_delays_the_chosen_audio_by_the_measured_latency(obs_env, qtbot, tmp_path):
    from sdv2_studio.app.services import BridgeObsService
    from sdv2_studio.engine.models import tiny_bundle
    from sdv2_studio.obs_bridge.av_sync import audio_inputs
    from test_app_window import make_window, start, stop

    client = obs_env
    _colour_input(client, "Cam", GREEN)
    if "Mic" not in [n for n, _ in client.input_names()]:
        client.call("CreateInput", {"sceneName": "Scene", "inputName": "Mic", "inputKind": "ffmpeg_source",
                                    "inputSettings": {}})
    client.call("SetInputAudioSyncOffset", {"inputName": "Mic", "inputAudioSyncOffset": 0})
    found = audio_inputs(client)
    assert "Mic" in found and "Cam" not in found and "StreamDiffusionV2" not in found

    def offset() -> int:
        return client.call("GetInputAudioSyncOffset", {"inputName": "Mic"})["inputAudioSyncOffset"]

    w = make_window(qtbot, tmp_path, tiny_bundle(), obs=BridgeObsService(), control=False, av_sync=True,
                    av_sync_inputs=["Mic"])
    try:
        qtbot.waitUntil(lambda: w.output_panel.av_inputs.count() >= 1, timeout=30_000)
        assert w.output_panel.audioInputsChecked() == ["Mic"] and w.output_panel.av_sync.isChecked()
        start(qtbot, w)
        qtbot.waitUntil(lambda: w._av_tracker.applied_ms is not None, timeout=60_000)
        qtbot.waitUntil(lambda: offset() == w._av_tracker.applied_ms, timeout=30_000)  # set in OBS, in ms
        assert offset() > 0 and f"delayed by {offset()} ms" in w.output_panel.av_latency.text()
        stop(qtbot, w)
    finally:
        w.close()
