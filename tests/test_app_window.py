"""The main window with a real engine (tiny model, 64x64) under pytest-qt, offscreen.

Covers: the window builds; a preset card click reaches the engine's controls; Start/Stop drive the engine and the
previews and stats update; errors arrive as readable messages; outputs; preset library actions; the UI thread
stays responsive while the engine runs.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QElapsedTimer, Qt, QTimer
from PySide6.QtWidgets import QApplication
from sdv2_studio.app.engine_controller import EngineController
from sdv2_studio.app.engine_worker import IDLE, RUNNING, EngineWorker
from sdv2_studio.app.main_window import MainWindow
from sdv2_studio.app.preset_library import PresetLibrary
from sdv2_studio.app.services import Availability, GpuInfo, ModelItem, UnavailableObsService
from sdv2_studio.app.settings import Settings, SettingsStore
from sdv2_studio.app.theme import apply_theme
from sdv2_studio.engine.api import Engine
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.io.sinks import CallbackSink
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.pipeline import StreamPipeline
from sdv2_studio.engine.presets import shipped_presets_dir

START_TIMEOUT = 60_000


class FakeModels:
    def __init__(self, present: bool = False):
        self.present = present
        self.downloads = 0

    def weights_present(self) -> bool:
        return self.present

    def models_dir(self) -> Path:
        return Path(os.environ["SDV2_MODELS"])

    def items(self) -> list[ModelItem]:
        return [ModelItem("sdv2-1.3b", "the real-time DiT", "missing", "unknown", None, "/m/a", True),
                ModelItem("wan2.1-1.3b-base", "VAE + umT5", "missing", "~23.3 GB", 23_300_000_000, "/m/b", True)]

    def free_space(self) -> int | None:
        return 100_000_000_000

    def download(self, progress) -> None:
        for i in range(5):
            progress(f"file {i}", i / 4)
            time.sleep(0.01)
        self.downloads += 1
        self.present = True


class FakeObs:
    """An OBS bridge stand-in: two sources, an output that records what it got."""

    def __init__(self):
        self.frames: list = []
        self.saved = None
        self.plugin_channels: list = []  # per opened output: the plugin channel (None: the media source)

    def address(self):
        return ("127.0.0.1", 4455) if self.saved is None else self.saved[:2]

    def configure(self, host, port, password):
        self.saved = (host, port, password)
        return "keyring"

    def status(self) -> str:
        return "connected: OBS 30.0 (fake)"

    def list_sources(self) -> list[str]:
        return ["Scene", "Webcam"]

    def list_scenes(self) -> list[str]:
        return ["Scene"]

    def check_feedback(self, capture, scene) -> None:
        pass

    def list_audio_inputs(self) -> list[str]:
        return ["Mic/Aux"]

    def set_audio_offset(self, inputs, offset_ms) -> None:
        self.frames.append(("audio offset", tuple(inputs), offset_ms))

    def open_source(self, name, size, fps, fit="crop"):
        return TestPatternSource((72, 128), fps=fps, realtime=True)

    def open_output(self, size, fps, scene="", capture=None, fallback=None, plugin_channel=None):
        self.plugin_channels.append(plugin_channel)
        return CallbackSink(lambda frame, pts: self.frames.append(("obs", frame.shape)))


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def make_window(qtbot, tmp_path, bundle, obs=None, models=None, control=True, vcam_probe=None, outputs_probe=None,
                plugin_probe=None, **overrides) -> MainWindow:
    apply_theme(QApplication.instance())
    fields = dict(model="tiny", device="cpu", width=64, height=64, target_fps=16, first_run_done=True,
                  record_dir=str(tmp_path / "recordings"), latency_budget_ms=5000)
    fields.update(overrides)
    obs = obs or FakeObs()
    controller = EngineController(EngineWorker(obs_service=obs, bundle=bundle))
    w = MainWindow(settings=Settings(**fields), store=SettingsStore(tmp_path / "settings.json"),
                   library=PresetLibrary(shipped_presets_dir(), tmp_path / "user-presets"), controller=controller,
                   models=models or FakeModels(), obs=obs, first_run=False, input_size=(72, 128), control=control,
                   vcam_probe=vcam_probe or (lambda: Availability(None, "not probed in tests")),
                   outputs_probe=outputs_probe or (lambda: {}),
                   plugin_probe=plugin_probe or (lambda: Availability(None, "not probed in tests")))
    qtbot.addWidget(w)
    w.show()
    return w


@pytest.fixture
def window(qtbot, tmp_path, bundle):
    w = make_window(qtbot, tmp_path, bundle)
    yield w
    w.close()


def start(qtbot, w: MainWindow) -> None:
    w.toggle_stream(confirm=False)
    qtbot.waitUntil(lambda: w.controller.state == RUNNING, timeout=START_TIMEOUT)


def stop(qtbot, w: MainWindow) -> None:
    w.toggle_stream()
    qtbot.waitUntil(lambda: w.controller.state == IDLE, timeout=START_TIMEOUT)


def test_window_builds(window, qtbot):
    w = window
    assert w.windowTitle() == "StreamDiffusionV2 Studio"
    assert len(w.gallery.cards) >= 10 and w.gallery.cards[0].shortcut == 1 and w.gallery.cards[9].shortcut is None
    assert [w.tabs.tabText(i) for i in range(w.tabs.count())] == ["Style", "Engine", "Output"]
    assert w.start_btn.text() == "Start" and w.controller.state == IDLE
    assert w.presets.current.id == "anime-cel" and w.editor.title.text() == "Anime Cel"
    # background scans fill the source picker, OBS status, model status and badge
    qtbot.waitUntil(lambda: w.source_picker.combo.findData("obs:Webcam") >= 0, timeout=10_000)
    qtbot.waitUntil(lambda: "fake" in w.output_panel.obs_status.text(), timeout=10_000)
    w.output_panel.obs_host.setText("192.168.1.20")
    w.output_panel.obs_port.setValue(4460)
    w.output_panel.obs_password.setText("secret")
    w.output_panel.obs_connect.click()
    qtbot.waitUntil(lambda: w.output_panel.obs_port.value() == 4460 and "fake" in w.output_panel.obs_status.text(),
                    timeout=10_000)
    assert w.obs.saved == ("192.168.1.20", 4460, "secret") and w.output_panel.obs_password.text() == ""
    qtbot.waitUntil(lambda: "not downloaded" in w.engine_panel.model_files.text(), timeout=10_000)
    assert w.model_badge.text() == "TINY DEMO · UNTRAINED"


def test_start_stop_drive_a_real_engine_and_previews_and_stats_update(window, qtbot):
    w = window
    stats_seen = []
    w.controller.statsReady.connect(stats_seen.append)
    start(qtbot, w)
    assert w.start_btn.text() == "Stop" and w.stats_bar.state.text().endswith("<b>Live</b>")
    qtbot.waitUntil(lambda: w.styled_view.frames_shown >= 5 and w.input_view.frames_shown >= 5, timeout=30_000)
    img = w.styled_view.image()
    assert (img.width(), img.height()) == (128, 72)  # restored to the input's size
    assert "untrained" in w.styled_view._notice.lower()
    engine = w.controller.engine
    assert engine is not None and engine.size == (64, 64) and engine.bundle.untrained
    qtbot.waitUntil(lambda: w.stats is not None and w.stats.stats.frames_out >= 8, timeout=30_000)
    assert "FPS</span>&nbsp;<b style='color:#e8eaf0'>–" not in w.stats_bar.fps.text()
    assert "CPU" in w.stats_bar.device.text()
    qtbot.waitUntil(lambda: len(w.plot.samples) >= 2, timeout=30_000)
    stop(qtbot, w)
    assert w.controller.engine is None and w.start_btn.text() == "Start"
    assert stats_seen and all(s.stats.fps >= 0 for s in stats_seen)
    # start again: a fresh engine
    start(qtbot, w)
    qtbot.waitUntil(lambda: w.controller.engine is not None and w.controller.engine.stats().frames_out > 0,
                    timeout=30_000)
    stop(qtbot, w)


def test_clicking_a_preset_card_changes_the_engines_controls(window, qtbot):
    w = window
    start(qtbot, w)
    card = w.gallery.card("watercolor")
    want = card.preset.controls
    with qtbot.waitSignal(w.controller.controlsApplied, timeout=10_000, check_params_cb=lambda c: c == want):
        qtbot.mouseClick(card, Qt.LeftButton)
    assert card.isChecked() and w.editor.title.text() == "Watercolor" and w.editor.controls() == want
    engine = w.controller.engine
    assert engine.config.controls == want  # the engine holds the preset's controls
    qtbot.waitUntil(lambda: engine.controls.prompt == want.prompt, timeout=30_000)  # applied at a chunk boundary
    c = engine.controls
    assert (c.noise_scale, c.seed, c.transition_chunks) == (want.noise_scale, want.seed, want.transition_chunks)
    assert 1 <= c.steps <= want.steps  # the SLO plan may run fewer steps than the user's
    assert w.settings.controls == want  # and the settings remember them
    # keys 1-9 pick cards too
    third = w.gallery.cards[2].preset
    with qtbot.waitSignal(w.controller.controlsApplied, timeout=10_000,
                          check_params_cb=lambda c: c == third.controls):
        qtbot.keyClick(w, Qt.Key_3)
    assert w.presets.current.id == third.id
    # editing a control in the editor goes to the engine as well, on top of the preset's
    with qtbot.waitSignal(w.controller.controlsApplied, timeout=10_000,
                          check_params_cb=lambda c: c == dataclasses.replace(third.controls, steps=1)):
        w.editor.steps.setValue(1)
    # a typed prompt joins the controls only when applied
    w.editor.prompt.setPlainText("neon ink, glowing lines")
    assert engine.config.controls.prompt == third.controls.prompt and w.editor.apply_prompt.isEnabled()
    with qtbot.waitSignal(w.controller.controlsApplied, timeout=10_000,
                          check_params_cb=lambda c: c.prompt == "neon ink, glowing lines" and c.steps == 1):
        w.editor.apply_prompt.click()
    stop(qtbot, w)


def test_preset_chosen_while_idle_is_used_at_start(window, qtbot):
    w = window
    qtbot.mouseClick(w.gallery.card("comic-ink"), Qt.LeftButton)
    w.editor.seed.setValue(77)  # idle edits too: the start request carries the editor's controls
    start(qtbot, w)
    want = w.gallery.card("comic-ink").preset.controls
    assert w.controller.engine.config.controls == dataclasses.replace(want, seed=77)
    assert w.controller.engine.controls.prompt == want.prompt
    stop(qtbot, w)
    assert w.settings.preset == "comic-ink"


def test_errors_surface_as_readable_messages(window, qtbot, tmp_path):
    w = window
    missing = str(tmp_path / "nope.mp4")
    w.source_picker.choose(missing)
    assert w.settings.source == missing
    w.toggle_stream(confirm=False)
    qtbot.waitUntil(lambda: w.banner.isVisible() and "no such video file" in w.banner.text.text().lower(),
                    timeout=START_TIMEOUT)
    qtbot.waitUntil(lambda: w.controller.state == IDLE, timeout=10_000)
    text = w.banner.text.text()
    assert "Traceback" not in text and "nope.mp4" in text and "\n" not in text
    # an empty prompt cannot be applied, saved or started: the message names the fix
    w.source_picker.choose("test")
    w.editor.prompt.setPlainText("  ")
    assert not w.editor.apply_prompt.isEnabled()
    assert w.presets.save_as("Empty") is None and "prompt is empty; type what" in w.banner.text.text().lower()
    w.banner.showMessage("", "info")
    w.toggle_stream(confirm=False)
    assert "prompt is empty" in w.banner.text.text().lower() and w.controller.state == IDLE


def test_outputs_record_to_mp4_and_reach_the_obs_bridge(qtbot, tmp_path, bundle):
    obs = FakeObs()
    w = make_window(qtbot, tmp_path, bundle, obs=obs, output_record=True)
    w.outputs.buttons["obs"].click()
    assert w.outputs.outputs().obs and w.outputs.outputs().record
    start(qtbot, w)
    qtbot.waitUntil(lambda: len(obs.frames) >= 8, timeout=30_000)
    assert all(kind == "obs" and shape == (72, 128, 3) for kind, shape in obs.frames)
    w.outputs.buttons["obs"].click()  # switching off while live closes that output only
    n = len(obs.frames)
    qtbot.wait(800)
    assert len(obs.frames) <= n + 2
    stop(qtbot, w)
    files = list((tmp_path / "recordings").glob("styled-*.mp4"))
    assert len(files) == 1 and files[0].stat().st_size > 1000
    w.close()


def test_unavailable_outputs_are_switched_off_with_the_fix(qtbot, tmp_path, bundle):
    w = make_window(qtbot, tmp_path, bundle, obs=UnavailableObsService())
    start(qtbot, w)
    w.outputs.buttons["obs"].click()
    qtbot.waitUntil(lambda: not w.outputs.buttons["obs"].isChecked(), timeout=10_000)
    assert w.outputs.buttons["obs"].property("failed") is True
    assert "pip install" in w.banner.text.text()
    # no virtual-camera driver in a container: the message names what to install
    w.outputs.buttons["vcam"].click()
    qtbot.waitUntil(lambda: not w.outputs.buttons["vcam"].isChecked(), timeout=10_000)
    assert any(word in w.banner.text.text() for word in ("v4l2loopback", "pyvirtualcam", "OBS"))
    assert w.controller.state == RUNNING  # a failed output never stops the stream
    stop(qtbot, w)
    w.close()


def test_obs_source_input(qtbot, tmp_path, bundle):
    w = make_window(qtbot, tmp_path, bundle, source="obs:Webcam")
    start(qtbot, w)
    qtbot.waitUntil(lambda: w.styled_view.frames_shown >= 2, timeout=30_000)
    stop(qtbot, w)
    w.close()


def test_ui_thread_stays_responsive_while_the_engine_runs(window, qtbot, monkeypatch):
    """The engine's work never runs on the UI thread, and the UI thread keeps serving its event loop while the
    stream runs. Wall-clock gaps are printed, not asserted: this VM stalls every process for up to ~0.6 s now and
    then (a plain Python loop shows it too), which says nothing about the app."""
    w = window
    ui_thread, chunk_threads = threading.get_ident(), set()
    process = StreamPipeline.process

    def recording_process(self, frames):
        chunk_threads.add(threading.get_ident())
        return process(self, frames)

    monkeypatch.setattr(StreamPipeline, "process", recording_process)
    start(qtbot, w)
    qtbot.waitUntil(lambda: w.styled_view.frames_shown >= 2, timeout=60_000)
    gaps: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    def tick():
        now = clock.nsecsElapsed()
        gaps.append((now - last[0]) / 1e6)
        last[0] = now

    timer = QTimer()
    timer.setTimerType(Qt.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    shown = w.styled_view.frames_shown
    qtbot.waitUntil(lambda: w.styled_view.frames_shown >= shown + 8, timeout=120_000)  # two more chunks at least
    timer.stop()
    frames = w.styled_view.frames_shown - shown
    stop(qtbot, w)
    worst, p50 = max(gaps), sorted(gaps)[len(gaps) // 2]
    print(f"\nUI timer (10 ms): {len(gaps)} ticks while {frames} styled frames were shown; median gap "
          f"{p50:.1f} ms, max gap {worst:.1f} ms")
    assert chunk_threads and ui_thread not in chunk_threads  # every chunk ran off the UI thread
    assert len(gaps) >= 10 and p50 < 100  # the event loop kept turning: most 10 ms ticks arrived on time


def test_preset_library_actions_round_trip_through_disk(window, qtbot, tmp_path):
    w = window
    pc = w.presets
    w.editor.prompt.setPlainText("my own look, neon ink")
    saved = pc.save_as("My Look")
    assert saved is not None and saved.path == tmp_path / "user-presets" / "my-look.toml"
    assert w.gallery.card("my-look").isChecked() and not saved.builtin
    assert saved.controls.prompt == "my own look, neon ink" and saved.thumbnail.is_file()  # the base's thumbnail
    w.editor.steps.setValue(4)
    edited = pc.save()
    assert edited.controls == dataclasses.replace(saved.controls, steps=4)
    dup = pc.duplicate()
    assert dup.name == "My Look copy" and dup.id == "my-look-copy"
    exported = pc.export_to(str(tmp_path / "out" / "share.toml"))
    assert exported.is_file()
    assert pc.delete(confirm=False) and not (tmp_path / "user-presets" / "my-look-copy.toml").exists()
    imported = pc.import_file(str(exported))
    assert imported.name == "My Look copy" and w.gallery.card(imported.id) is not None
    # a shipped preset cannot be deleted or overwritten
    pc.activate(w.library.get("watercolor"))
    assert not w.editor.save.isEnabled()
    assert not pc.delete(confirm=False) and "ships with the app" in w.banner.text.text().lower()
    # a fresh library sees the same files
    lib = PresetLibrary(shipped_presets_dir(), tmp_path / "user-presets")
    assert lib.reload() == [] and {"my-look", imported.id} <= {p.id for p in lib.presets}


def test_corrupt_user_preset_is_reported_at_startup(qtbot, tmp_path, bundle):
    user = tmp_path / "user-presets"
    user.mkdir()
    (user / "mine.toml").write_text("name = 'oops\n", encoding="utf-8")
    w = make_window(qtbot, tmp_path, bundle)
    assert "mine.toml" in w.banner.text.text() and "moved aside" in w.banner.text.text()
    assert list(user.glob("mine.toml.corrupt-*"))
    w.close()


def test_settings_persist_across_windows(qtbot, tmp_path, bundle):
    w = make_window(qtbot, tmp_path, bundle)
    qtbot.mouseClick(w.gallery.card("pixel-art"), Qt.LeftButton)
    w.editor.seed.setValue(4242)
    w.engine_panel._select(w.engine_panel.resolution, "128x128")
    w.engine_panel._resolution_chosen()
    w.close()  # saves synchronously
    s, notes = SettingsStore(tmp_path / "settings.json").load()
    assert notes == [] and s.preset == "pixel-art" and (s.width, s.height) == (128, 128)
    assert s.controls == dataclasses.replace(w.library.get("pixel-art").controls, seed=4242)
    w2 = make_window(qtbot, tmp_path, bundle, preset=s.preset, controls=s.controls)
    assert w2.presets.current.id == "pixel-art" and w2.editor.seed.value() == 4242 and w2.editor.modified.isVisible()
    assert w2.editor.controls() == s.controls and w2.request().config.controls == s.controls
    w2.close()


def test_engine_settings_warn_before_a_setting_that_will_not_fit(window, qtbot):
    panel = window.engine_panel
    panel.setGpus([GpuInfo(0, "Test GPU 8 GB", 8 * 1024**3)], 32 * 1024**3)
    # the shape of the 1.3B model with random weights: nothing is downloaded here, and "auto" would be the tiny model
    panel.setSettings(Settings(model="random:wan2.1-1.3b", device="cuda:0", width=832, height=480,
                               controls=Controls(steps=4)))
    assert panel.fit_level()[0] == "no"
    assert "will not fit" in panel.fit.text().lower() and panel.fit.property("level") == "no"
    panel._select(panel.resolution, "256x256")
    panel._resolution_chosen()
    panel.batch.setChecked(False)
    assert panel.fit_level()[0] == "ok" and "fits" in panel.fit.text().lower()


def test_first_run_offers_download_with_progress_or_the_tiny_demo(qtbot, tmp_path, bundle):
    from sdv2_studio.app.first_run import FirstRunDialog

    models = FakeModels()
    dlg = FirstRunDialog(models)
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: "Free on disk: 100.0 GB" in dlg.size_label.text(), timeout=10_000)
    assert "23.3 GB" in dlg.size_label.text() and "UNTRAINED" in " ".join(
        lab.text() for lab in dlg.findChildren(type(dlg.size_label)))
    progress = []
    dlg.progress.valueChanged.connect(progress.append)
    with qtbot.waitSignal(dlg.accepted, timeout=10_000):
        dlg.start_download()
    assert dlg.choice == "download" and models.downloads == 1 and max(progress) == 1000
    dlg2 = FirstRunDialog(models)
    qtbot.addWidget(dlg2)
    dlg2.use_tiny()
    assert dlg2.choice == "tiny"


loaders: set[int] = set()  # threads SlowLoadingEngine.start ran on


class SlowLoadingEngine(Engine):
    """A real engine whose model load takes ~2 s and reports progress (like a big checkpoint)."""

    def start(self, progress=None):
        loaders.add(threading.get_ident())
        for i in range(20):
            if progress:
                progress(f"loading the DiT ({i * 5}%)", i / 20)
            time.sleep(0.1)
        return super().start(progress)


def test_model_loading_shows_progress_never_blocks_the_ui_and_can_be_cancelled(qtbot, tmp_path, bundle):
    apply_theme(QApplication.instance())
    controller = EngineController(EngineWorker(engine_factory=SlowLoadingEngine, obs_service=FakeObs(),
                                               bundle=bundle))
    w = MainWindow(settings=Settings(model="tiny", device="cpu", width=64, height=64, first_run_done=True),
                   store=None, library=PresetLibrary(shipped_presets_dir(), tmp_path / "u"), controller=controller,
                   models=FakeModels(), obs=FakeObs(), first_run=False, input_size=(72, 128))
    qtbot.addWidget(w)
    w.show()
    seen = []
    w.controller.progress.connect(lambda m, f: seen.append(f))
    clock = QElapsedTimer()
    clock.start()
    gaps, last = [], [0]

    def tick():
        gaps.append(clock.elapsed() - last[0])
        last[0] = clock.elapsed()

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    w.toggle_stream(confirm=False)
    qtbot.waitUntil(lambda: len(seen) >= 5, timeout=10_000)
    assert w.start_btn.text() == "Cancel" and w.styled_view._progress is not None
    assert "loading the DiT" in w.styled_view._progress[0]
    w.toggle_stream()  # Cancel while loading
    qtbot.waitUntil(lambda: w.controller.state == IDLE, timeout=10_000)
    timer.stop()
    assert w.controller.engine is None and w.styled_view._progress is None and max(seen) < 1.0
    assert loaders and threading.main_thread().ident not in loaders  # the model loads off the UI thread
    assert len(gaps) >= 10 and sorted(gaps)[len(gaps) // 2] < 100  # and the event loop kept turning meanwhile
    # and a load that completes goes live
    start(qtbot, w)
    stop(qtbot, w)
    w.close()


def test_the_compile_switch_reaches_the_engine_and_a_preset_with_a_missing_lora_is_refused_in_the_banner(
        qtbot, tmp_path, bundle):
    w = make_window(qtbot, tmp_path, bundle)
    try:
        w.engine_panel.compile.setChecked(True)
        assert w.settings.compile and w.request().config.compile
        w._on_settings_changed({"gpus": 2})
        assert not w.request().config.compile  # the engine compiles on one device only: pipeline ranks run eager
        w._on_settings_changed({"gpus": 1})
        w.engine_panel.compile.setChecked(False)
        start(qtbot, w)
        before = w.controller.engine.controls
        w.controller.set_controls(dataclasses.replace(before, loras=((str(tmp_path / "gone.safetensors"), 1.0),)))
        qtbot.waitUntil(lambda: w.banner.isVisible() and "not applied" in w.banner.text.text().lower(), timeout=30_000)
        assert "gone.safetensors" in w.banner.text.text()
        assert w.controller.state == RUNNING and w.controller.engine.controls.loras == ()  # the stream keeps its style
        stop(qtbot, w)
    finally:
        w.close()
