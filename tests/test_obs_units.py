"""OBS bridge pieces that need no OBS: settings and the keyring, connection errors and backoff, presets, scene
mapping, health, screenshot decoding and sizing, output settings."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import stat
from fractions import Fraction

import av
import numpy as np
import pytest
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.presets import Preset
from sdv2_studio.obs_bridge import settings as settings_mod
from sdv2_studio.obs_bridge.capture import JpegDecoder, covering_size
from sdv2_studio.obs_bridge.client import Backoff, ObsClient, ObsInfo
from sdv2_studio.obs_bridge.errors import ObsError, ObsUnreachable
from sdv2_studio.obs_bridge.headless import free_tcp_port
from sdv2_studio.obs_bridge.health import ObsHealth
from sdv2_studio.obs_bridge.output import attach_camera, check_vcam_backend, media_source_settings
from sdv2_studio.obs_bridge.preset_book import PresetBook
from sdv2_studio.obs_bridge.scenes import ScenePresets, parse_scene_map
from sdv2_studio.obs_bridge.settings import ObsSettings, load_settings, save_settings

keyring = pytest.importorskip("keyring", reason="keyring is optional; its tests need it installed")
from keyring.backend import KeyringBackend  # noqa: E402
from keyring.backends import fail  # noqa: E402


class MemoryKeyring(KeyringBackend):
    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.store.get((service, username))

    def set_password(self, service, username, password):
        self.store[(service, username)] = password

    def delete_password(self, service, username):
        self.store.pop((service, username), None)


@pytest.fixture
def memory_keyring():
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


@pytest.fixture
def no_keyring_backend():
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


# -- settings ----------------------------------------------------------------------------------------------------------


def test_defaults_env_and_file(tmp_path, no_keyring_backend):
    path = tmp_path / "obs.json"
    assert load_settings(path, env={}) == ObsSettings("127.0.0.1", 4455, "")
    path.write_text(json.dumps({"host": "10.0.0.5", "port": 4460}))
    s = load_settings(path, env={"SDV2_OBS_PORT": "4470", "SDV2_OBS_PASSWORD": "from-env"})
    assert (s.host, s.port, s.password) == ("10.0.0.5", 4470, "from-env")
    with pytest.raises(EngineError, match="OBS port 'x' from \\$SDV2_OBS_PORT is not a number"):
        load_settings(path, env={"SDV2_OBS_PORT": "x"})
    path.write_text("{broken")
    with pytest.raises(EngineError, match="fix or delete the file"):
        load_settings(path, env={})


def test_password_goes_to_the_keyring_not_the_file(tmp_path, memory_keyring):
    path = tmp_path / "obs.json"
    assert save_settings(ObsSettings("127.0.0.1", 4455, "s3cret"), path) == "keyring"
    assert "s3cret" not in path.read_text()
    assert memory_keyring.store == {("streamdiffusion-studio-obs", "127.0.0.1:4455"): "s3cret"}
    assert load_settings(path, env={}).password == "s3cret"
    assert load_settings(path, env={}, use_keyring=False).password == ""


def test_without_a_keyring_the_password_falls_back_to_a_private_file(tmp_path, no_keyring_backend, monkeypatch):
    path = tmp_path / "cfg" / "obs.json"
    assert save_settings(ObsSettings("127.0.0.1", 4455, "s3cret"), path) == "file"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_settings(path, env={}).password == "s3cret"
    monkeypatch.setattr(settings_mod, "_keyring", lambda: None)  # keyring not installed at all
    assert save_settings(ObsSettings("127.0.0.1", 4455, "other"), path) == "file"
    assert load_settings(path, env={}).password == "other"


def test_the_password_is_never_shown_or_logged(caplog):
    s = ObsSettings("127.0.0.1", free_tcp_port(), "hunter2-secret", timeout=1)
    assert "hunter2" not in repr(s)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ObsUnreachable) as err:
        ObsClient(s).connect()
    assert "hunter2" not in str(err.value) and "hunter2" not in caplog.text
    assert "Traceback" not in caplog.text  # obsws-python's own error logging is silenced


# -- connection --------------------------------------------------------------------------------------------------------


def test_backoff_doubles_to_a_cap_and_resets():
    b = Backoff(0.25, 2.0)
    assert [b.next_delay() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    b.reset()
    assert b.next_delay() == 0.25


def test_calls_while_obs_is_away_fail_fast_and_respect_the_backoff():
    now = [100.0]
    client = ObsClient(ObsSettings(port=free_tcp_port(), password="x", timeout=1), backoff=Backoff(1.0, 4.0),
                       clock=lambda: now[0])
    with pytest.raises(ObsUnreachable, match="connection refused"):
        client.call("GetStats")
    with pytest.raises(ObsUnreachable, match="retrying in 1.0 s"):
        client.call("GetStats")  # within the backoff: no connection attempt at all (said so, not timed)
    now[0] += 1.01
    with pytest.raises(ObsUnreachable, match="connection refused"):
        client.call("GetStats")
    with pytest.raises(ObsUnreachable, match="retrying in 2.0 s"):  # doubled
        client.call("GetStats")
    assert client.try_call("GetStats") is None


def test_unreachable_host_names_the_fix():
    with pytest.raises(ObsUnreachable, match="unknown host 'no-such-host.invalid'"):
        ObsClient(ObsSettings(host="no-such-host.invalid", port=4455, timeout=1)).connect()


def test_input_kinds_match_with_or_without_version_suffix():
    info = ObsInfo("29.0.2", "5.1.0", 1, "debian", ("jpg",), frozenset(), ("color_source_v3", "ffmpeg_source",
                                                                          "macos-avcapture"))
    assert info.find_kind("color_source") == "color_source_v3"
    assert info.find_kind("macos-avcapture") == "macos-avcapture"
    assert info.find_kind("dshow_input", "ffmpeg_source") == "ffmpeg_source"
    assert info.find_kind("color_source_v") is None


# -- output, presets, scenes, health -----------------------------------------------------------------------------------


def test_media_source_settings_are_the_low_latency_ones():
    s = media_source_settings("udp://127.0.0.1:9750?pkt_size=1316")
    assert s["input"].startswith("udp://127.0.0.1:9750?") and "pkt_size" not in s["input"]
    assert (s["is_local_file"], s["input_format"], s["buffering_mb"]) == (False, "mpegts", 0)
    assert media_source_settings("srt://127.0.0.1:9000")["input"].startswith("srt://127.0.0.1:9000?mode=listener")
    with pytest.raises(ObsError, match="use udp://HOST:PORT"):
        media_source_settings("rtmp://x/y")


def test_obs_virtual_camera_is_never_used_twice():
    with pytest.raises(ObsError, match="cannot show the OBS Virtual Camera inside OBS"):
        attach_camera(None, "Scene", "OBS Virtual Camera", backend="obs")  # type: ignore[arg-type]

    class VcamOn:
        def call(self, request, data=None):
            assert request == "GetVirtualCamStatus"
            return {"outputActive": True}

    with pytest.raises(ObsError, match="already outputting its virtual camera"):
        check_vcam_backend(VcamOn(), "obs")  # type: ignore[arg-type]
    check_vcam_backend(VcamOn(), "unitycapture")  # another device: fine  # type: ignore[arg-type]


def test_preset_book_validates_early(tmp_path):
    book = PresetBook({"a": {"prompt": "x", "steps": 1, "transition": 3}})
    assert book.controls("a") == {"prompt": "x", "steps": 1, "transition_chunks": 3} and "a" in book
    with pytest.raises(EngineError, match="unknown setting 'colour'"):
        PresetBook({"a": {"colour": 1}})
    with pytest.raises(EngineError, match="steps"):
        PresetBook({"a": {"steps": 7}})
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"ink": {"prompt": "ink"}}))
    assert PresetBook.load(path).names() == ["ink"]
    path.write_text("[1, 2]")
    with pytest.raises(EngineError, match="must map preset names"):
        PresetBook.load(path)


def test_preset_book_reads_the_engine_preset_library(tmp_path):
    p = Preset(id="ink-wash", name="Ink Wash", controls=Controls(prompt="ink wash painting", steps=3, noise_scale=0.6))
    book = PresetBook.from_presets([p])
    assert book.names() == ["ink-wash"] and book.controls("ink-wash") == dataclasses.asdict(p.controls)
    library, problems = PresetBook.from_library()
    assert problems == [] and all(isinstance(library.controls(n), dict) for n in library.names())


def test_scene_map_applies_mapped_presets_and_keeps_errors_out_of_the_event_thread():
    assert parse_scene_map("Intro=anime, Game = ink") == {"Intro": "anime", "Game": "ink"}
    with pytest.raises(EngineError, match="SCENE=PRESET"):
        parse_scene_map("Intro")
    applied = []

    def apply(name):
        if name == "missing":
            raise EngineError("unknown preset 'missing'")
        applied.append(name)

    scenes = ScenePresets({"Intro": "anime", "Broken": "missing"}, apply)
    scenes.on_scene_changed({"scene_name": "Intro"})
    scenes.on_scene_changed({"scene_name": "Unmapped"})
    scenes.on_scene_changed({"scene_name": "Broken"})
    assert applied == ["anime"] and scenes.current_scene == "Broken"
    assert "unknown preset 'missing'" in scenes.last_error


def test_health_warnings():
    ok = ObsHealth.from_stats({"activeFps": 30.0, "averageFrameRenderTime": 4.0, "renderSkippedFrames": 1,
                               "renderTotalFrames": 1000, "outputSkippedFrames": 0, "outputTotalFrames": 0})
    assert ok.warnings(30) == []
    bad = ObsHealth.from_stats({"activeFps": 21.0, "renderSkippedFrames": 100, "renderTotalFrames": 1000,
                                "outputSkippedFrames": 90, "outputTotalFrames": 900})
    text = " ".join(bad.warnings(30))
    assert "21.0 fps instead of 30" in text and "10% of rendered" in text and "10% of encoded" in text


# -- screenshots -------------------------------------------------------------------------------------------------------


def jpeg(frame: np.ndarray) -> bytes:
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = frame.shape[1], frame.shape[0], "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuvj420p")
    return b"".join(bytes(p) for p in ctx.encode(vf))


def test_jpeg_data_uri_decodes_to_rgb():
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :32] = (220, 40, 30)
    frame[:, 32:] = (20, 60, 200)
    uri = "data:image/jpg;base64," + base64.b64encode(jpeg(frame)).decode()
    out = JpegDecoder().decode(uri)
    assert out.shape == (48, 64, 3)
    assert np.abs(out[:, 4:28].reshape(-1, 3).mean(0) - (220, 40, 30)).max() < 8
    assert np.abs(out[:, 36:60].reshape(-1, 3).mean(0) - (20, 60, 200)).max() < 8


def test_screenshot_size_covers_the_model_size_with_the_source_aspect():
    assert covering_size((720, 1280), (480, 832)) == (480, 854)
    assert covering_size((720, 1280), (512, 512)) == (512, 911)
    assert covering_size((240, 320), (480, 832)) == (240, 320)  # never upscaled by OBS
    assert covering_size((10000, 20), (512, 512)) == (4096, 20)
