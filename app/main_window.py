"""MainWindow: wires the widgets (which emit intents and take state) to the engine controller, the preset
library, the settings store and the services. Nothing slow runs here: the engine has its own thread and every
query that may block (cameras, GPUs, OBS, model files, downloads, settings writes) is a background task."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from sdv2_studio.app import theme
from sdv2_studio.app.background import run_task
from sdv2_studio.app.engine_controller import EngineController
from sdv2_studio.app.engine_settings import EngineSettingsPanel
from sdv2_studio.app.engine_worker import IDLE, LOADING, RUNNING, STOPPING, LiveStats, Outputs, StartRequest
from sdv2_studio.app.first_run import FirstRunDialog
from sdv2_studio.app.message_banner import MessageBanner
from sdv2_studio.app.output_panel import VIA_MEDIA, VIA_PLUGIN, OutputPanel
from sdv2_studio.app.output_toggles import OutputToggles
from sdv2_studio.app.preset_controller import PresetController
from sdv2_studio.app.preset_editor import PresetEditor
from sdv2_studio.app.preset_gallery import PresetGallery
from sdv2_studio.app.preset_library import PresetLibrary
from sdv2_studio.app.preview import PreviewView
from sdv2_studio.app.services import ModelService, ObsService, gpus, system_memory, vcam_availability
from sdv2_studio.app.settings import Settings, SettingsStore, default_record_dir
from sdv2_studio.app.source_picker import SourcePicker, describe, is_file
from sdv2_studio.app.stats_bar import StatsBar
from sdv2_studio.app.stats_plot import StatsPlot
from sdv2_studio.engine.api import EngineConfig
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.availability import LABELS, low_latency_outputs
from sdv2_studio.obs_bridge.av_sync import SyncTracker
from sdv2_studio.obs_bridge.errors import ObsAuthError
from sdv2_studio.obs_bridge.native_plugin import plugin_status

UNTRAINED_RIBBON = "TINY DEMO MODEL · untrained: noise-like output, not a style"
RESTART_KEYS = {"model", "device", "gpus", "dtype", "width", "height", "batch", "target_fps", "latency_budget_ms",
                "text_on_gpu", "fit"}


def _section(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setProperty("role", "section")
    return lab


class MainWindow(QMainWindow):
    def __init__(self, *, settings: Settings | None = None, store: SettingsStore | None = None,
                 library: PresetLibrary | None = None, controller: EngineController | None = None,
                 models: ModelService | None = None, obs: ObsService | None = None, first_run: bool = True,
                 input_size: tuple[int, int] = (360, 640), control: bool = True, vcam_probe=None,
                 outputs_probe=None, plugin_probe=None):
        super().__init__()
        from sdv2_studio.app.services import default_model_service, default_obs_service

        self.store = store
        self.settings = settings or Settings()
        self.library = library or PresetLibrary()
        self.models = models or default_model_service()
        self.obs = obs or default_obs_service()
        self.controller = controller or EngineController(_default_worker(self.obs))
        self.input_size = input_size
        self._vcam_probe = vcam_probe or vcam_availability
        self._outputs_probe = outputs_probe or low_latency_outputs  # NDI / Spout / Syphon
        self._plugin_probe = plugin_probe or plugin_status  # the native OBS plugin
        self.stats: LiveStats | None = None
        self._first_run = first_run
        self._weights_present: bool | None = None
        self._closing = False
        self._last_error: str | None = None
        self._av_tracker = SyncTracker(1 / 16)
        self.control_server = None
        self.setWindowTitle("StreamDiffusionV2 Studio")
        self.resize(1440, 900)
        self._save_timer = QTimer(self, singleShot=True, interval=500)
        self._save_timer.timeout.connect(self._save_async)
        self._build()
        self._wire()
        self._restore()
        if control:
            self._serve_control()
        QTimer.singleShot(0, self._scan)
        QTimer.singleShot(0, self._preview_source)

    def _preview_source(self) -> None:
        """Show the picked source in the input preview before Start (the worker keeps it after each Stop)."""
        try:
            self.controller.preview(self.request())
        except EngineError:
            pass  # an invalid setting is reported when Start is pressed

    def _serve_control(self) -> None:
        """Serve the local control API (the one `sdv2 obs attach` serves) and publish its control file, so the OBS
        script and `sdv2 obs app ...` drive this window."""
        from sdv2_studio.app.app_control import AppControl
        from sdv2_studio.obs_bridge.control import ControlServer

        try:
            self.control_server = ControlServer(AppControl(self)).start()
        except (EngineError, OSError) as e:
            self.banner.showMessage(f"OBS hotkeys and `sdv2 obs app` are off: {e}", "warn")

    # -- layout -----------------------------------------------------------------------------------------------------

    def _build(self) -> None:
        header = QWidget(objectName="Header")
        brand = QLabel(f"◆  StreamDiffusionV2 <span style='color:{theme.ACCENT}'>Studio</span>")
        brand.setProperty("role", "brand")
        brand.setTextFormat(Qt.RichText)
        self.source_picker = SourcePicker()
        self.model_badge = QLabel("MODEL · checking…")
        self.model_badge.setProperty("role", "badge")
        self.outputs = OutputToggles()
        self.start_btn = QPushButton("Start")
        self.start_btn.setProperty("kind", "start")
        self.start_btn.setMinimumWidth(150)
        self.start_btn.setToolTip("Start or stop the styled stream (Ctrl+Space)")
        self.start_btn.setShortcut("Ctrl+Space")
        h = QHBoxLayout(header)
        h.setContentsMargins(18, 10, 18, 10)
        h.setSpacing(14)
        h.addWidget(brand)
        h.addSpacing(16)
        h.addWidget(self.source_picker, 1)
        h.addStretch(1)
        h.addWidget(self.model_badge)
        h.addWidget(self.outputs)
        h.addWidget(self.start_btn)

        self.banner = MessageBanner()
        self.input_view = PreviewView("Input", "Your camera, OBS scene or video shows here")
        self.styled_view = PreviewView("Styled", "Press Start to see your styled stream")
        previews = QHBoxLayout()
        previews.setSpacing(12)
        previews.addWidget(self.input_view, 1)
        previews.addWidget(self.styled_view, 1)
        self.gallery = PresetGallery()
        self.gallery.setFixedHeight(266)
        gallery_head = QHBoxLayout()
        gallery_head.addWidget(_section("STYLES"))
        hint = QLabel("click to switch live  ·  keys 1–9")
        hint.setProperty("role", "muted")
        gallery_head.addWidget(hint)
        gallery_head.addStretch(1)
        left = QVBoxLayout()
        left.setContentsMargins(16, 14, 12, 12)
        left.setSpacing(10)
        left.addWidget(self.banner)
        left.addLayout(previews, 1)
        left.addLayout(gallery_head)
        left.addWidget(self.gallery)

        side = QWidget(objectName="SidePanel")
        side.setFixedWidth(400)
        self.tabs = QTabWidget()
        self.editor = PresetEditor()
        self.engine_panel = EngineSettingsPanel()
        self.output_panel = OutputPanel()
        for widget, name in ((self.editor, "Style"), (self.engine_panel, "Engine"), (self.output_panel, "Output")):
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
            holder = QWidget()
            v = QVBoxLayout(holder)
            v.setContentsMargins(4, 14, 10, 8)
            v.addWidget(widget)
            v.addStretch(1)
            scroll.setWidget(holder)
            self.tabs.addTab(scroll, name)
        self.plot = StatsPlot()
        self.plot.setFixedHeight(170)
        s = QVBoxLayout(side)
        s.setContentsMargins(14, 8, 14, 12)
        s.setSpacing(8)
        s.addWidget(self.tabs, 1)
        s.addWidget(_section("LIVE · LAST MINUTE"))
        s.addWidget(self.plot)

        body = QHBoxLayout()
        body.setContentsMargins(0, 0, 0, 0)
        body.setSpacing(0)
        body.addLayout(left, 1)
        body.addWidget(side)
        central = QWidget()
        root = QVBoxLayout(central)
        root.setContentsMargins(0, 0, 0, 0)
        root.setSpacing(0)
        root.addWidget(header)
        root.addLayout(body, 1)
        self.setCentralWidget(central)
        self.stats_bar = StatsBar()
        self.statusBar().addPermanentWidget(self.stats_bar, 1)
        self.statusBar().setSizeGripEnabled(False)
        self.presets = PresetController(self.library, self.gallery, self.editor, self)

    def _wire(self) -> None:
        c = self.controller
        c.stateChanged.connect(self._on_state)
        c.progress.connect(self._on_progress)
        c.framesReady.connect(self._on_frames)
        c.statsReady.connect(self._on_stats)
        c.errorRaised.connect(self._on_error)
        c.notice.connect(self._on_notice)
        c.outputFailed.connect(self.outputs.setFailed)
        self.start_btn.clicked.connect(self.toggle_stream)
        self.source_picker.sourceChosen.connect(self._on_source)
        self.source_picker.refreshRequested.connect(self._scan)
        self.outputs.outputsChanged.connect(self._on_outputs)
        self.presets.applyControls.connect(self.controller.set_controls)  # straight to the engine (next chunk)
        self.presets.applyControls.connect(self._on_controls_chosen)
        self.presets.presetChanged.connect(self._on_preset_changed)
        self.presets.message.connect(self.banner.showMessage)
        self.engine_panel.settingsChanged.connect(self._on_settings_changed)
        self.engine_panel.downloadRequested.connect(self.show_first_run)
        self.engine_panel.browseModelRequested.connect(self._browse_model)
        self.engine_panel.openModelsFolderRequested.connect(
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.models.models_dir()))))
        self.output_panel.recordDirChosen.connect(lambda p: self._update_settings(record_dir=p))
        self.output_panel.obsRefreshRequested.connect(self._scan_obs)
        self.output_panel.obsConnectRequested.connect(self._configure_obs)
        self.output_panel.obsSceneChosen.connect(self._on_obs_scene)
        self.output_panel.obsFallbackChosen.connect(self._on_obs_fallback)
        self.output_panel.avSyncChanged.connect(self._on_av_sync)
        self.output_panel.obsViaChosen.connect(self._on_obs_via)

    def _restore(self) -> None:
        s = self.settings
        self.editor.setFrameRate(s.target_fps)
        saved = s.controls  # before activating the preset overwrites them
        self.presets.reload(select=s.preset)
        preset = self.library.get(s.preset) or (self.library.presets[0] if self.library.presets else None)
        if preset is not None:
            self.presets.activate(preset)
        if saved is not None and (preset is None or saved != preset.controls):
            self.editor.setControls(saved)  # the engine starts with the editor's controls (see request())
            self.editor.setModified(True)
            self._on_controls_chosen(saved)
        self.source_picker.setRecentFiles(s.recent_files)
        self.source_picker.setCurrent(s.source)
        self.engine_panel.setSettings(s)
        self.outputs.setOutputs(Outputs(obs=s.output_obs, vcam=s.output_vcam, record=s.output_record,
                                        ndi=s.output_ndi, spout=s.output_spout, syphon=s.output_syphon,
                                        record_dir=s.record_dir))
        self.output_panel.setObsVia(VIA_PLUGIN if s.obs_plugin else VIA_MEDIA)
        self.output_panel.setRecordDir(s.record_dir or str(default_record_dir()))
        self.input_view.setBadge(describe(s.source), accent=False)

    # -- background scans -------------------------------------------------------------------------------------------

    def _scan(self) -> None:
        from sdv2_studio.engine.io.cameras import list_cameras

        run_task(list_cameras, on_done=self.source_picker.setCameras)
        run_task(lambda: (gpus(), system_memory()), on_done=lambda r: self.engine_panel.setGpus(*r),
                 on_error=lambda m: self.engine_panel.setGpus([], system_memory()))
        run_task(self._vcam_probe, on_done=self._vcam_checked)
        run_task(self._outputs_probe, on_done=self._outputs_checked)
        run_task(self._plugin_probe, on_done=self._plugin_checked)
        self._scan_models()
        self._scan_obs()

    def _vcam_checked(self, availability) -> None:
        self.output_panel.setVcamAvailability(availability.ok, availability.detail)
        self.outputs.setAvailable("vcam", availability.ok is not False, availability.detail)

    def _outputs_checked(self, found: dict) -> None:
        """NDI / Spout / Syphon: disabled with the reason and the fix as its tooltip where unavailable (Spout and
        Syphon have a switch only on their platforms); the Output tab lists all three."""
        for kind, a in found.items():
            self.outputs.setAvailable(kind, a.ok is not False, a.describe())
        self.output_panel.setLowLatency([(LABELS[k], a.ok, a.describe()) for k, a in found.items()])

    def _plugin_checked(self, status) -> None:
        """The OBS plugin: its filter as a source and its source as the styled output, or why not and how."""
        s = self.settings
        channels = list(dict.fromkeys(["main", s.obs_channel]))
        self.source_picker.setObsPlugin(status.ok, status.describe(), channels)
        self.output_panel.setPluginStatus(status.ok, status.describe(), s.obs_channel)
        if status.ok is False and s.obs_plugin:  # uninstalled since: back to the media source
            self._on_obs_via(VIA_MEDIA)
            self.output_panel.setObsVia(VIA_MEDIA)

    def _on_obs_via(self, via: str) -> None:
        self._update_settings(obs_plugin=via == VIA_PLUGIN)
        self.controller.set_outputs(self._outputs())
        if self.controller.state == RUNNING and self.settings.output_obs:
            self.banner.showMessage("the styled source in OBS switches the next time you press Start", "info")

    def _scan_models(self) -> None:
        run_task(lambda: (self.models.items(), self.models.weights_present()), on_done=self._models_scanned,
                 on_error=self._models_failed)

    def _scan_obs(self) -> None:
        self.output_panel.setObsStatus("checking OBS…")

        def query():
            address = self.obs.address()
            try:
                return (address, self.obs.status(), self.obs.list_sources(), self.obs.list_scenes(),
                        self.obs.list_audio_inputs())
            except ObsAuthError:  # the fix is here in the app, not a terminal command
                return (address, "not connected: OBS rejected the password (or needs one): enter it below and press "
                        "Save and connect (OBS: Tools > WebSocket Server Settings > Show Connect Info)", [], [], [])
            except EngineError as e:
                return address, f"not connected: {e}", [], [], []

        run_task(query, on_done=self._obs_scanned, on_error=lambda m: self.output_panel.setObsStatus(
            f"OBS not reachable: {m}"))

    def _obs_scanned(self, result) -> None:
        (host, port), status, sources, scenes, audio = result
        self.output_panel.setObsAddress(host, port)
        self.output_panel.setObsStatus(status[:1].upper() + status[1:])
        self.output_panel.setObsChoices(scenes, sources, self.settings.obs_scene, self.settings.obs_fallback)
        self.output_panel.setAudioInputs(audio, self.settings.av_sync_inputs, self.settings.av_sync)
        self.source_picker.setObsSources(sources)
        if scenes:
            self._check_feedback()

    def _check_feedback(self) -> None:
        """With the OBS output on and an OBS source as input: warn now (a banner) if capturing it would show the
        styled output; Start refuses the OBS output then (BridgeObsService.open_output)."""
        s = self.settings
        if s.output_obs and s.source.lower().startswith("obs:"):
            run_task(self.obs.check_feedback, s.source[4:], s.obs_scene,
                     on_error=lambda m: self.banner.showMessage(m, "error"))

    def _on_obs_scene(self, scene: str) -> None:
        self._update_settings(obs_scene=scene)
        self._check_feedback()
        if self.controller.state == RUNNING:
            self.banner.showMessage("the styled source moves to the new scene the next time you press Start", "info")

    def _on_av_sync(self, on: bool, inputs: list) -> None:
        self._update_settings(av_sync=on, av_sync_inputs=list(inputs))
        self._av_tracker.applied_ms = None  # apply the current latency at the next figures

    def _follow_latency(self, live: LiveStats) -> None:
        """A/V sync: delay the chosen OBS audio by the styled video's latency when it moved by more than a frame."""
        s = self.settings
        on = s.av_sync and bool(s.av_sync_inputs)
        offset = self._av_tracker.update(live.stats.latency_p50) if on else None
        self.output_panel.setAvLatency(live.stats.latency_p50 * 1e3, self._av_tracker.applied_ms if on else None)
        if offset is not None:
            run_task(self.obs.set_audio_offset, list(s.av_sync_inputs), offset,
                     on_error=lambda m: self.banner.showMessage(f"could not set the audio delay in OBS: {m}", "warn"))

    def _on_obs_fallback(self, fallback: str) -> None:
        self._update_settings(obs_fallback=fallback)
        self.controller.set_outputs(self._outputs())

    def _outputs(self, outputs: Outputs | None = None) -> Outputs:
        """The output switches with what the settings add: recording folder, OBS scene and stop fallback."""
        from sdv2_studio.app.output_panel import FALLBACK_HIDE, FALLBACK_SOURCE

        s = self.settings
        fallback = s.obs_fallback
        if fallback == FALLBACK_SOURCE:
            fallback = s.source[4:] if s.source.lower().startswith("obs:") else ""
        elif fallback == FALLBACK_HIDE:
            fallback = ""
        return dataclasses.replace(outputs or self.outputs.outputs(), record_dir=s.record_dir,
                                   obs_scene=s.obs_scene, obs_fallback=fallback,
                                   obs_plugin_channel=s.obs_channel if s.obs_plugin else "")

    def _configure_obs(self, host: str, port: int, password: str) -> None:
        self.output_panel.setObsStatus("saving and connecting…")
        run_task(self.obs.configure, host, port, password, on_done=lambda _where: self._scan_obs(),
                 on_error=lambda m: self.banner.showMessage(m, "error"))

    def _models_scanned(self, result) -> None:
        items, present = result
        self._weights_present = present
        self.engine_panel.setModelItems(items, present)
        self._update_model_badge()
        if self._first_run and not present and not self.settings.first_run_done:
            self._first_run = False
            QTimer.singleShot(0, self.show_first_run)

    def _models_failed(self, message: str) -> None:
        self._weights_present = False
        self.engine_panel.setModelError(message)
        self._update_model_badge()

    def _update_model_badge(self) -> None:
        m = self.settings.model
        if m == "tiny" or (m == "auto" and self._weights_present is False):
            text, level = "TINY DEMO · UNTRAINED", "warn"
        elif m == "auto" and self._weights_present:
            text, level = "SDV2 1.3B", "ok"
        elif m == "auto":
            text, level = "MODEL · checking…", ""
        else:
            text, level = f"MODEL · {Path(m).name}", "ok"
        self.model_badge.setText(text)
        self.model_badge.setProperty("level", level)
        theme.repolish(self.model_badge)

    def show_first_run(self) -> int:
        dlg = FirstRunDialog(self.models, self)
        result = dlg.exec()
        if dlg.choice == "tiny":
            self._update_settings(model="tiny", first_run_done=True)
            if not self.engine_panel.has_gpu():  # keep the CPU demo fluid
                self._update_settings(width=128, height=128, target_fps=12)
                self.banner.showMessage("no GPU found: the tiny demo runs at 128×128 on the CPU", "info")
            self.engine_panel.setSettings(self.settings)
        elif dlg.choice == "download":
            self._update_settings(model="auto", first_run_done=True)
            self.engine_panel.setSettings(self.settings)
            self.banner.showMessage("model downloaded: press Start", "info")
        self._scan_models()
        return result

    # -- stream -----------------------------------------------------------------------------------------------------

    def request(self) -> StartRequest:
        """What Start would run, from the current settings and the editor's controls (EngineError if invalid)."""
        s = self.settings
        controls = self.editor.controls()
        text_device = "cpu"
        if s.text_on_gpu and s.device != "cpu":
            text_device = s.device if s.device.startswith("cuda") else "cuda"
        fields = {f.name for f in dataclasses.fields(EngineConfig)}
        extra = {}
        if s.gpus > 1 and "ranks" in fields:
            extra["ranks"] = s.gpus
        elif s.compile:  # the engine compiles on one device only
            extra["compile"] = True
        if "target_fps" in fields:
            extra["target_fps"] = s.target_fps
        cfg = EngineConfig(model=s.model, device=s.device, dtype=s.dtype, size=(s.height, s.width), fit=s.fit,
                           batch=s.batch,
                           controls=controls, queue_frames=8, latency_budget=s.latency_budget_ms / 1000,
                           text_device=text_device, **s.model_files(),
                           warm_prompts=tuple(dict.fromkeys(
                               t for p in self.library.presets for t in p.controls.prompt_texts)), **extra)
        return StartRequest(cfg, source=s.source, source_fps=s.target_fps, input_size=self.input_size,
                            outputs=self._outputs())

    def toggle_stream(self, _checked: bool = False, *, confirm: bool = True) -> None:
        if self.controller.state in (RUNNING, LOADING):
            self.controller.stop()
            return
        if self.controller.state != IDLE:
            return
        level, text = self.engine_panel.fit_level()
        if level == "no" and confirm:
            answer = QMessageBox.warning(self, "This setting will probably not fit",
                                         text[0].upper() + text[1:] + ".\n\nStart anyway?",
                                         QMessageBox.Yes | QMessageBox.Cancel, QMessageBox.Cancel)
            if answer != QMessageBox.Yes:
                return
        if not self.engine_panel.has_gpu() and self.settings.width * self.settings.height > 256 * 256:
            self.banner.showMessage("no GPU: at this resolution expect well under 1 fps; pick 128 × 128 in the "
                                    "Engine tab for the CPU demo", "warn")
        if self.settings.gpus > 1 and "ranks" not in {f.name for f in dataclasses.fields(EngineConfig)}:
            self.banner.showMessage("multi-GPU streaming is not in this build of the engine yet; using one GPU",
                                    "warn")
        try:
            req = self.request()
        except EngineError as e:
            self.banner.showMessage(str(e), "error")
            return
        self._reset_run()
        self.controller.start(req)

    def _reset_run(self) -> None:
        """A new run shows nothing of the previous one: frames, ribbon, banners, figures and plot."""
        self._last_error = None
        self.stats = None
        self._av_tracker = SyncTracker(1 / max(1.0, self.settings.target_fps))
        self.banner.hide()
        self.styled_view.clear()
        self.styled_view.setNotice("")
        self.input_view.clear()
        self.stats_bar.reset()
        self.plot.clear()

    def control_status(self) -> dict:
        """What the control API's GET /status answers (the shape `sdv2 obs attach` serves; UI thread)."""
        from sdv2_studio.app.app_control import SESSION_STATE

        preset = self.presets.current
        engine = self.controller.engine
        try:
            controls = engine.controls if engine is not None else self.editor.controls()
        except EngineError:
            controls = None
        live = self.stats if self.controller.state == RUNNING else None
        figures = None
        if live is not None:
            figures = dataclasses.asdict(live.stats)
            figures.update(fps=live.fps, latency_budget=live.budget)
        return {"app": "studio", "state": SESSION_STATE.get(self.controller.state, self.controller.state),
                "error": self._last_error, "preset": preset.id if preset else None,
                "preset_labels": {p.id: p.name for p in self.library.presets},
                "controls": dataclasses.asdict(controls) if controls else None, "source": self.settings.source,
                "outputs": sorted(self.outputs.outputs().enabled()), "engine": figures}

    def _on_state(self, state: str) -> None:
        self.stats_bar.setState(state)
        busy = state in (LOADING, STOPPING)
        self.start_btn.setText({IDLE: "Start", LOADING: "Cancel", RUNNING: "Stop", STOPPING: "Stopping…"}[state])
        self.start_btn.setProperty("state", "running" if state in (RUNNING, LOADING) else ("busy" if busy else ""))
        self.start_btn.setEnabled(state != STOPPING)
        theme.repolish(self.start_btn)
        if state == LOADING:
            self.styled_view.setProgress("loading the model…", 0.0)
        elif state == RUNNING:
            self.styled_view.setProgress(None)
        elif state == IDLE:
            self.styled_view.setProgress(None)
            self.stats_bar.reset()
            self.output_panel.setAvLatency(None)
            self.styled_view.setPlaceholder("Press Start to see your styled stream")

    def _on_error(self, message: str) -> None:
        self._last_error = message
        self.banner.showMessage(message, "error")

    def _on_progress(self, message: str, fraction: float) -> None:
        if self.controller.state == LOADING:
            self.styled_view.setProgress(message, fraction)

    def _on_frames(self) -> None:
        frames = self.controller.take_frames()
        if "input" in frames:
            self.input_view.setImage(frames["input"])
        if "styled" in frames and self.controller.state == RUNNING:  # never a late frame of an ended run
            self.styled_view.setImage(frames["styled"])

    def _on_stats(self, live: LiveStats) -> None:
        self.stats = live
        self.stats_bar.setStats(live)
        if live.stats.frames_out:
            self._follow_latency(live)
        if live.stats.chunks >= 3:  # the first chunks arrive in a burst: their rate says nothing yet
            self.plot.addSample(live.elapsed, live.fps, live.stats.latency_p50 * 1e3)

    def _on_notice(self, text: str) -> None:
        if "untrained" in text.lower():
            self.styled_view.setNotice(UNTRAINED_RIBBON)
        else:
            self.banner.showMessage(text, "info")

    # -- intents from widgets ---------------------------------------------------------------------------------------

    def _on_controls_chosen(self, controls: Controls) -> None:
        self._update_settings(controls=controls)
        self.engine_panel.refreshEstimate(controls)

    def _on_preset_changed(self, preset) -> None:
        self.styled_view.setBadge(preset.name if preset else "Custom")
        self._update_settings(preset=preset.id if preset else "")

    def _on_source(self, spec: str) -> None:
        files = self.settings.recent_files
        if is_file(spec):
            files = [spec, *[f for f in files if f != spec]][:5]
        self._update_settings(source=spec, recent_files=files)
        self.input_view.setBadge(describe(spec), accent=False)
        self._check_feedback()
        self.input_view.clear()
        self._preview_source()
        if self.controller.state == RUNNING:
            self.banner.showMessage("source changed: restarting the stream", "info")
            self.controller.stop()
            QTimer.singleShot(0, self._restart_when_idle)

    def _restart_when_idle(self) -> None:
        if self.controller.state == IDLE:
            self.toggle_stream(confirm=False)
        elif not self._closing:
            QTimer.singleShot(100, self._restart_when_idle)

    def _on_outputs(self, outputs: Outputs) -> None:
        self._update_settings(output_obs=outputs.obs, output_vcam=outputs.vcam, output_record=outputs.record,
                              output_ndi=outputs.ndi, output_spout=outputs.spout, output_syphon=outputs.syphon)
        self.controller.set_outputs(self._outputs(outputs))
        self._check_feedback()

    def _on_settings_changed(self, changes: dict) -> None:
        self._update_settings(**changes)
        if "model" in changes:
            self._update_model_badge()
        if "target_fps" in changes:
            self.editor.setFrameRate(self.settings.target_fps)
        if RESTART_KEYS & set(changes) and self.controller.state == RUNNING:
            self.banner.showMessage("engine settings apply the next time you press Start", "info")

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a StreamDiffusionV2 / Wan checkpoint",
                                              str(self.models.models_dir()),
                                              "Checkpoints (*.pt *.pth *.safetensors *.bin);;All files (*)")
        if path:
            self.engine_panel.setModelPath(path)

    # -- settings ---------------------------------------------------------------------------------------------------

    def _update_settings(self, **changes) -> None:
        for k, v in changes.items():
            setattr(self.settings, k, v)
        if self.store is not None:
            self._save_timer.start()

    def _save_async(self) -> None:
        snapshot = dataclasses.replace(self.settings, recent_files=list(self.settings.recent_files))
        run_task(self.store.save, snapshot, on_error=lambda m: self.banner.showMessage(
            f"could not save settings: {m}", "warn"))

    # -- keys and shutdown ------------------------------------------------------------------------------------------

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if Qt.Key_1 <= key <= Qt.Key_9 and not (event.modifiers() & ~Qt.KeypadModifier):
            if self.presets.activate_index(key - Qt.Key_1):
                return
        super().keyPressEvent(event)

    def closeEvent(self, event) -> None:
        self._closing = True
        if self.control_server is not None:
            self.control_server.stop()  # first: no request may reach a window being torn down
            self.control_server = None
        self.controller.shutdown()
        if self.store is not None:
            self._save_timer.stop()
            try:
                self.store.save(self.settings)
            except OSError:
                pass
        super().closeEvent(event)


def _default_worker(obs: ObsService):
    from sdv2_studio.app.engine_worker import EngineWorker

    return EngineWorker(obs_service=obs)
