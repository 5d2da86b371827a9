"""The styled source stays out of OBS's audio mixer, in a real OBS 29 under Xvfb: the OBS script sets the media
source's private setting ``mixer_hidden`` (read back from the scene collection OBS saves), and the native plugin's
source has no audio at all (obs-websocket says so). Skipped without the `obs` binary and Xvfb; the plugin part also
without its build tools."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import wait_for

headless = pytest.importorskip("sdv2_studio.obs_bridge.headless")
if headless.obs_binary() is None:
    pytest.skip("OBS Studio is not installed (apt-get install obs-studio xvfb)", allow_module_level=True)

from sdv2_studio.engine.errors import EngineError  # noqa: E402
from sdv2_studio.obs_bridge.client import ObsClient  # noqa: E402
from sdv2_studio.obs_bridge.errors import ObsRequestError  # noqa: E402
from sdv2_studio.obs_bridge.native_plugin import attach_plugin_source, check_tools, install_plugin  # noqa: E402
from sdv2_studio.obs_bridge.obs_script import MIXER_HIDDEN, WATCH_SECONDS  # noqa: E402
from sdv2_studio.obs_bridge.output import INPUT_NAME, attach_stream, free_udp_port  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "obs_bridge" / "obs_script.py"


def saved_private_settings(obs: headless.HeadlessObs) -> dict[str, dict]:
    """Each source's private settings as OBS saved them in the scene collection."""
    data = json.loads((obs.config_dir / "basic" / "scenes" / f"{headless.COLLECTION}.json").read_text())
    return {s["name"]: s.get("private_settings", {}) for s in data["sources"]}


def save_and_read(obs: headless.HeadlessObs, client: ObsClient, marker: str) -> dict[str, dict]:
    """Make OBS save its scene collection (it does when sources change: a new input here), then read it back."""
    client.call("CreateInput", {"sceneName": "Scene", "inputName": marker, "inputKind": "ffmpeg_source",
                                "inputSettings": {}})
    saved: dict = {}

    def has_marker() -> bool:
        saved.update(saved_private_settings(obs))
        return marker in saved

    assert wait_for(has_marker, 30), f"OBS did not save its scene collection; log:\n{obs.log_tail()}"
    return saved


def test_the_script_keeps_a_new_styled_media_source_out_of_the_mixer(tmp_path):
    obs = headless.HeadlessObs(tmp_path / "obs", scripts=[(SCRIPT, {})])
    try:
        obs.start()
        client = ObsClient(obs.settings)
        client.connect()
        try:
            attach_stream(client, "Scene", f"udp://127.0.0.1:{free_udp_port()}")
            assert "inputVolumeMul" in client.call("GetInputVolume", {"inputName": INPUT_NAME})  # it has audio
            saved = save_and_read(obs, client, "Other media")
        finally:
            client.close()
        assert saved[INPUT_NAME].get(MIXER_HIDDEN) is True, f"not hidden; OBS log:\n{obs.log_tail()}"
        assert not saved["Other media"].get(MIXER_HIDDEN)  # the user's own media sources keep their strips
    finally:
        obs.stop()


def test_the_script_takes_an_existing_styled_source_out_of_the_mixer(tmp_path):
    """A styled media source saved before the script was loaded (OBS creates it before scripts run)."""
    obs = headless.HeadlessObs(tmp_path / "obs", scripts=[(SCRIPT, {})])
    obs.seed_config()
    path = obs.config_dir / "basic" / "scenes" / f"{headless.COLLECTION}.json"
    data = json.loads(path.read_text())
    data["sources"].append({"id": "ffmpeg_source", "versioned_id": "ffmpeg_source", "name": INPUT_NAME,
                            "settings": {"is_local_file": False, "input": f"udp://127.0.0.1:{free_udp_port()}",
                                         "input_format": "mpegts"}})
    scene = next(s for s in data["sources"] if s["name"] == "Scene")
    scene["settings"]["items"] = [{"name": INPUT_NAME, "id": 1, "visible": True}]
    scene["settings"]["id_counter"] = 1
    path.write_text(json.dumps(data))
    try:
        obs.start()
        client = ObsClient(obs.settings)
        client.connect()
        try:
            assert INPUT_NAME in [n for n, _ in client.input_names()]
            time.sleep(WATCH_SECONDS * 2)  # the script's ticks
            saved = save_and_read(obs, client, "Later media")
        finally:
            client.close()
        assert saved[INPUT_NAME].get(MIXER_HIDDEN) is True, f"not hidden; OBS log:\n{obs.log_tail()}"
    finally:
        obs.stop()


def test_the_plugin_source_has_no_audio_so_no_mixer_strip(tmp_path):
    try:
        check_tools()
    except EngineError as e:
        pytest.skip(str(e))
    obs = headless.HeadlessObs(tmp_path / "obs")
    obs.seed_config()
    install_plugin(obs.config_dir / "plugins", build_dir=tmp_path / "build")
    try:
        obs.start()
        client = ObsClient(obs.settings)
        client.connect()
        try:
            attach_plugin_source(client, "Scene", "mixer")
            assert wait_for(lambda: INPUT_NAME in [n for n, _ in client.input_names()], 30)
            with pytest.raises(ObsRequestError, match="does not support audio"):
                client.call("GetInputVolume", {"inputName": INPUT_NAME})
            assert client.call("GetInputSettings", {"inputName": INPUT_NAME})["inputKind"] == \
                "streamdiffusionv2_source"
        finally:
            client.close()
    finally:
        obs.stop()
