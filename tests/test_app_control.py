"""The desktop app serves the local control API of `sdv2 obs attach` (pytest-qt, offscreen, the tiny model): the
`sdv2 obs app ...` CLI in a subprocess and the OBS script's logic drive the running window; per-run reset and
honest figures (windowed fps, tooltips, misses coloured against the budget)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")
from sdv2_studio.app.engine_worker import IDLE, RUNNING, FrameRate
from sdv2_studio.app.stats_bar import TIPS, miss_level
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.obs_bridge.control_client import ControlClient, control_file, read_control_file
from sdv2_studio.obs_bridge.obs_script import ScriptLogic
from test_app_window import START_TIMEOUT, make_window, start, stop
from test_obs_control import FakeObs as FakeScriptApi

SDV2 = [sys.executable, "-m", "sdv2_studio.engine.cli"]


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def in_background(qtbot, fn, timeout: int = START_TIMEOUT):
    """Run `fn` on a thread while the UI thread keeps serving events (the control API hands calls to it)."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    qtbot.waitUntil(lambda: not t.is_alive(), timeout=timeout)
    if "error" in out:
        raise out["error"]
    return out["result"]


def app_cli(qtbot, *args: str) -> subprocess.CompletedProcess:
    return in_background(qtbot, lambda: subprocess.run([*SDV2, "obs", "app", *args], capture_output=True,
                                                       text=True, timeout=300))


def test_obs_app_cli_and_the_obs_script_drive_the_running_app(qtbot, tmp_path, bundle):
    w = make_window(qtbot, tmp_path, bundle)
    try:
        assert w.control_server is not None and w.control_server.control_path == control_file()
        url, _token = read_control_file()
        assert url == w.control_server.url

        r = app_cli(qtbot, "start")
        assert r.returncode == 0, r.stderr
        qtbot.waitUntil(lambda: w.controller.state == RUNNING, timeout=START_TIMEOUT)
        r = app_cli(qtbot, "preset", "watercolor")
        assert r.returncode == 0, r.stderr
        water = w.library.get("watercolor")
        assert w.presets.current.id == "watercolor" and w.editor.title.text() == water.name
        qtbot.waitUntil(lambda: w.controller.engine.controls.prompt == water.controls.prompt, timeout=30_000)
        qtbot.waitUntil(lambda: w.stats is not None and w.stats.fps > 0 and w.stats.stats.latency_p50 > 0,
                        timeout=START_TIMEOUT)
        r = app_cli(qtbot, "status")
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        assert status["state"] == "running" and status["preset"] == "watercolor"
        assert status["engine"]["fps"] > 0 and status["engine"]["latency_p50"] > 0
        assert status["preset_labels"]["watercolor"] == water.name
        r = app_cli(qtbot, "preset", "no-such-style")
        assert r.returncode == 2 and "no preset called 'no-such-style'" in r.stderr
        r = app_cli(qtbot, "preset", "3")  # the number `sdv2 presets list` shows
        assert r.returncode == 0, r.stderr
        assert w.presets.current.id == w.library.presets[2].id

        # the OBS script (its logic, with a stand-in for obspython) against the same running app
        api = FakeScriptApi()
        logic = ScriptLogic(api, connect=lambda: ControlClient.from_file())
        settings: dict = {}
        logic.defaults(settings)
        in_background(qtbot, lambda: logic.load(settings))
        third = w.library.presets[2]
        assert "anime-cel" in logic.presets and logic.status_text.startswith(f"running | preset {third.name} |")
        assert "ms" in logic.status_text.split("|")[-1]  # live fps and latency
        in_background(qtbot, lambda: api.press("anime-cel"))
        assert w.presets.current.id == "anime-cel"
        props = in_background(qtbot, logic.properties)
        assert (water.name, "watercolor") in props["preset"]  # display names, ids as values
        assert ("sdv2.preset.watercolor", f"StreamDiffusionV2: {water.name}") in [h[:2] for h in api.hotkeys.values()]
        in_background(qtbot, lambda: props["stop"](props))
        assert w.controller.state == IDLE and logic.status_text == "stream stopped"
    finally:
        w.close()
    assert not control_file().exists()  # the window took its discovery file with it


def test_start_clears_the_previous_run(qtbot, tmp_path, bundle):
    w = make_window(qtbot, tmp_path, bundle, control=False)
    try:
        start(qtbot, w)
        qtbot.waitUntil(lambda: w.styled_view.image() is not None and w.stats is not None, timeout=START_TIMEOUT)
        stop(qtbot, w)
        w.banner.showMessage("camera went away", "error")
        old = w.styled_view.image()
        assert old is not None and w.banner.isVisible()
        w.controller.worker.mailbox.put("styled", old)  # a frame of the old run still waiting
        w._on_frames()  # taken while idle (the input preview notifies too): not shown
        w.controller.worker.mailbox.put("styled", old)
        w.toggle_stream(confirm=False)
        assert w.styled_view.image() is None and w.input_view.image() is None
        assert not w.banner.isVisible() and w.stats is None and "–" in w.stats_bar.fps.text()
        qtbot.waitUntil(lambda: w.controller.state == RUNNING, timeout=START_TIMEOUT)
        qtbot.waitUntil(lambda: w.styled_view.image() is not None, timeout=START_TIMEOUT)
        assert w.styled_view.image() is not old
    finally:
        w.close()


def test_fps_counts_a_burst_over_a_window_of_time():
    rate = FrameRate()
    assert rate.add(10.0, 0) == 0.0
    assert rate.add(10.5, 8) == pytest.approx(16.0)  # eight frames in one burst (one timestamp for all of them)
    assert rate.add(11.0, 8) == pytest.approx(8.0)
    assert rate.add(16.0, 8) == 0.0  # a stall shows as zero, not as the last burst's rate


def test_every_figure_is_explained_and_misses_are_coloured_against_the_budget(qtbot, tmp_path, bundle):
    assert miss_level(0, 0) == "" and miss_level(0, 100) == "ok" and miss_level(1, 100) == "ok"
    assert miss_level(5, 100) == "warn" and miss_level(48, 100) == "bad"
    w = make_window(qtbot, tmp_path, bundle, control=False, latency_budget_ms=1)  # every frame misses 1 ms
    try:
        bar = w.stats_bar
        for key in TIPS:
            assert getattr(bar, key).toolTip() == TIPS[key]
        assert "budget" in bar.misses.toolTip() and "budget" in bar.latency.toolTip()
        start(qtbot, w)
        qtbot.waitUntil(lambda: w.stats is not None and w.stats.stats.frames_out > 0, timeout=START_TIMEOUT)
        assert bar.levels == {"latency": "warn", "misses": "bad"}
        assert f"of {w.stats.stats.frames_out}" in bar.misses.text() and "budget 1 ms" in bar.latency.text()
    finally:
        w.close()


def test_virtual_camera_shows_availability_before_start_and_cannot_be_armed_without_a_device(qtbot, tmp_path,
                                                                                          bundle):
    from sdv2_studio.app.services import Availability, vcam_availability

    sysfs = tmp_path / "sys"
    none = vcam_availability("linux", sysfs)
    assert none.ok is False and "v4l2loopback" in none.detail
    (sysfs / "module" / "v4l2loopback").mkdir(parents=True)
    (sysfs / "class" / "video4linux" / "video7").mkdir(parents=True)
    (sysfs / "class" / "video4linux" / "video7" / "name").write_text("Dummy video device (0x0000)\n")
    assert vcam_availability("linux", sysfs) == Availability(True, "virtual camera: /dev/video7")

    w = make_window(qtbot, tmp_path, bundle, control=False, output_vcam=True, vcam_probe=lambda: none)
    try:
        button = w.outputs.buttons["vcam"]
        qtbot.waitUntil(lambda: not button.isEnabled(), timeout=10_000)  # before any Start
        assert not button.isChecked() and not w.settings.output_vcam and "v4l2loopback" in button.toolTip()
        assert "v4l2loopback" in w.output_panel.vcam_available.text()
        button.click()
        assert not button.isChecked() and "vcam" not in w.outputs.outputs().enabled()
    finally:
        w.close()
    w = make_window(qtbot, tmp_path, bundle, control=False, vcam_probe=lambda: vcam_availability("linux", sysfs))
    try:
        qtbot.waitUntil(lambda: "/dev/video7" in w.output_panel.vcam_available.text(), timeout=10_000)
        assert w.outputs.buttons["vcam"].isEnabled()
    finally:
        w.close()


def test_audio_delay_follows_the_latency_only_when_it_moves_by_more_than_a_frame():
    from sdv2_studio.obs_bridge.av_sync import SyncTracker

    t = SyncTracker(1 / 16)  # 62.5 ms frames
    assert t.update(0.0) is None  # nothing measured yet
    assert t.update(0.400) == 400
    assert t.update(0.450) is None and t.update(0.350) is None  # within a frame: OBS is left alone
    assert t.update(0.470) == 470 and t.applied_ms == 470


def test_the_input_shows_as_soon_as_a_source_is_picked_and_again_after_stop(qtbot, tmp_path, bundle):
    w = make_window(qtbot, tmp_path, bundle, control=False)
    try:
        qtbot.waitUntil(lambda: w.input_view.image() is not None, timeout=30_000)  # no Start pressed
        assert w.controller.state == IDLE and w.styled_view.image() is None
        assert w.input_view.image().width() == 128  # the test source at its own size
        w.source_picker.setObsSources(["Webcam"])
        w.source_picker.sourceChosen.emit("obs:Webcam")  # FakeObs: a 72x128 pattern
        assert w.input_view.image() is None  # the old source's picture goes at once
        qtbot.waitUntil(lambda: w.input_view.image() is not None, timeout=30_000)
        start(qtbot, w)
        stop(qtbot, w)
        shown = w.input_view.frames_shown
        qtbot.waitUntil(lambda: w.input_view.frames_shown > shown + 3, timeout=30_000)  # the preview is back
        assert w.controller.state == IDLE
    finally:
        w.close()


def test_prompt_edits_go_live_without_apply_and_the_transition_is_set_in_seconds(qtbot, tmp_path, bundle):
    w = make_window(qtbot, tmp_path, bundle, control=False, target_fps=16)
    try:
        ed = w.editor
        assert ed.transition.suffix() == " s"
        w.presets.activate(w.library.get("watercolor"))  # 4 chunks of 4 frames at 16 fps: 1 s
        assert ed.transition.value() == pytest.approx(1.0)
        with qtbot.waitSignal(ed.controlsEdited, timeout=5_000,
                              check_params_cb=lambda c: c.transition_chunks == 8):
            ed.transition.setValue(2.0)
        w._on_settings_changed({"target_fps": 8.0})  # the Engine tab's rate: a chunk now lasts 0.5 s
        assert ed.transition.value() == pytest.approx(4.0) and ed.controls().transition_chunks == 8
        start(qtbot, w)
        ed.prompt.setPlainText("neon ink, glowing lines")  # typed, no Apply pressed
        qtbot.waitUntil(lambda: w.controller.engine.controls.prompt == "neon ink, glowing lines", timeout=30_000)
        assert not ed.apply_prompt.isEnabled()
        stop(qtbot, w)
    finally:
        w.close()


def test_first_run_recommends_the_tiny_demo_without_a_gpu(qtbot):
    from sdv2_studio.app.first_run import FirstRunDialog
    from sdv2_studio.app.services import GpuInfo
    from test_app_window import FakeModels

    none = FirstRunDialog(FakeModels(), gpu_probe=lambda: [])
    qtbot.addWidget(none)
    qtbot.waitUntil(lambda: "none found" in none.real_title.text(), timeout=10_000)
    assert "recommended on this computer" in none.tiny_title.text()
    assert none.tiny_btn.property("kind") == "primary" and none.download_btn.property("kind") != "primary"
    gpu = FirstRunDialog(FakeModels(), gpu_probe=lambda: [GpuInfo(0, "NVIDIA GeForce RTX 4090", 24 * 2**30)])
    qtbot.addWidget(gpu)
    qtbot.waitUntil(lambda: "Free on disk" in gpu.size_label.text(), timeout=10_000)  # background work done
    qtbot.wait(200)
    assert "recommended" in gpu.real_title.text() and "recommended" not in gpu.tiny_title.text()
    assert gpu.download_btn.property("kind") == "primary"


def test_a_refused_obs_password_is_fixed_in_the_app_not_in_a_terminal(qtbot, tmp_path, bundle):
    from sdv2_studio.obs_bridge.errors import ObsAuthError
    from test_app_window import FakeObs

    class RefusingObs(FakeObs):
        def status(self) -> str:
            raise ObsAuthError("OBS at 127.0.0.1:4455 rejected the password: run `sdv2 obs set-password`")

    w = make_window(qtbot, tmp_path, bundle, obs=RefusingObs(), control=False)
    try:
        qtbot.waitUntil(lambda: "rejected" in w.output_panel.obs_status.text(), timeout=10_000)
        text = w.output_panel.obs_status.text()
        assert "enter it below" in text and "sdv2 obs" not in text
    finally:
        w.close()
