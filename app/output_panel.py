"""OutputPanel: details behind the header's output switches: OBS connection, the scene that gets the styled source,
how it gets there (a media source over local UDP, no install; or the OBS plugin's source, when the plugin is
installed) and what shows in its place when the stream stops, NDI / Spout / Syphon availability, virtual camera,
recording folder."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)


def _section(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setProperty("role", "section")
    return lab


def _muted(text: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setProperty("role", "muted")
    lab.setWordWrap(True)
    lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
    return lab


AV_IDLE = "The styled video lags your live audio by the engine's latency (shown while streaming)."
FALLBACK_SOURCE = ""  # when the stream stops, show the OBS source being styled (if the input is one)
FALLBACK_HIDE = ":hide"  # just hide the styled source (no OBS name starts with a colon here)
VIA_MEDIA, VIA_PLUGIN = "udp", "plugin"  # how the styled source reaches OBS


def _fill(combo: QComboBox, fixed: list[tuple[str, str]], names: list[str], current: str) -> None:
    combo.blockSignals(True)
    combo.clear()
    for label, value in fixed:
        combo.addItem(label, value)
    for name in names:
        combo.addItem(name, name)
    if combo.findData(current) < 0:  # a saved choice OBS does not list right now stays selectable
        combo.addItem(f"{current} (not in OBS now)", current)
    combo.setCurrentIndex(combo.findData(current))
    combo.blockSignals(False)


class OutputPanel(QWidget):
    recordDirChosen = Signal(str)
    obsRefreshRequested = Signal()
    obsConnectRequested = Signal(str, int, str)  # host, port, password ("" keeps the saved one)
    obsSceneChosen = Signal(str)  # "" = the current program scene
    obsFallbackChosen = Signal(str)  # FALLBACK_SOURCE, FALLBACK_HIDE or an OBS source name
    avSyncChanged = Signal(bool, list)  # on, the OBS audio inputs to delay
    obsViaChosen = Signal(str)  # VIA_MEDIA or VIA_PLUGIN

    SCENE_ITEMS = [("Current program scene", "")]
    FALLBACK_ITEMS = [("The OBS source being styled", FALLBACK_SOURCE), ("Nothing: hide the styled source",
                                                                         FALLBACK_HIDE)]

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.obs_status = _muted("checking OBS…")
        self.obs_refresh = QPushButton("Check again")
        self.obs_host = QLineEdit("127.0.0.1")
        self.obs_port = QSpinBox()
        self.obs_port.setRange(1, 65535)
        self.obs_port.setValue(4455)
        self.obs_password = QLineEdit()
        self.obs_password.setEchoMode(QLineEdit.Password)
        self.obs_password.setPlaceholderText("saved password (leave empty to keep)")
        self.obs_connect = QPushButton("Save and connect")
        self.obs_connect.setProperty("kind", "primary")
        self.obs_connect.setToolTip("OBS: Tools > WebSocket Server Settings shows the port and password. The "
                                    "password goes to the system keyring when there is one.")
        self.obs_scene = QComboBox()
        self.obs_scene.setToolTip("The OBS scene that gets the styled source \"StreamDiffusionV2\". Capturing a "
                                  "scene that shows it is refused: that would feed the output back into the input.")
        self.obs_fallback = QComboBox()
        self.obs_fallback.setToolTip("When you press Stop or the app quits, the styled source is hidden so its last "
                                     "frame does not freeze on stream; this source shows in its place.")
        self.obs_via = QComboBox()
        self.obs_via.addItem("Media Source (UDP, no install)", VIA_MEDIA)
        self.obs_via.addItem("OBS plugin source (fastest)", VIA_PLUGIN)
        self.obs_via.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.obs_via.setMinimumContentsLength(12)
        self.obs_via.setToolTip("How the styled video reaches OBS: a Media Source playing a local UDP stream (works "
                                "without installing anything), or the OBS plugin's source (shared memory: no "
                                "encoding, lowest latency, a \"not running\" card instead of a frozen frame).")
        self.plugin_status = _muted("checking for the OBS plugin…")
        self.low_latency = _muted("checking NDI, Spout and Syphon…")
        _fill(self.obs_scene, self.SCENE_ITEMS, [], "")
        _fill(self.obs_fallback, self.FALLBACK_ITEMS, [], FALLBACK_SOURCE)
        self.vcam_status = _muted(
            "Zoom, Discord and Meet see the styled video as a webcam. With OBS running, start OBS's own Virtual "
            "Camera with the styled source in your scene instead: only one program can drive it.")
        self.av_latency = _muted(AV_IDLE)
        self.av_inputs = QListWidget()
        self.av_inputs.setMaximumHeight(96)
        self.av_inputs.setToolTip("OBS inputs with audio: check your microphone and other live audio")
        self.av_sync = QCheckBox("Delay the checked audio to match")
        self.av_sync.setToolTip("Sets their Sync Offset in OBS (Advanced Audio Properties) to the measured latency, "
                                "and again when it moves by more than a frame. The OBS media source adds about "
                                "0.2 s more: fine-tune in OBS if needed.")
        self.vcam_available = _muted("checking for a virtual camera…")
        self.record_dir = _muted()
        self.record_change = QPushButton("Change folder…")
        self._dir = ""

        obs_form = QFormLayout()
        obs_form.setHorizontalSpacing(12)
        obs_form.addRow("Host", self.obs_host)
        obs_form.addRow("Port", self.obs_port)
        obs_form.addRow("Password", self.obs_password)
        obs_form.addRow("Output scene", self.obs_scene)
        obs_form.addRow("Styled source", self.obs_via)
        obs_form.addRow("On stop show", self.obs_fallback)
        obs_row = QHBoxLayout()
        obs_row.addWidget(self.obs_connect)
        obs_row.addWidget(self.obs_refresh)
        obs_row.addStretch(1)
        obs_row_wrap = QVBoxLayout()
        obs_row_wrap.addLayout(obs_row)
        obs_row_wrap.addWidget(self.plugin_status)
        rec_row = QHBoxLayout()
        rec_row.addWidget(self.record_change)
        rec_row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        lay.addWidget(_section("OBS STUDIO"))
        lay.addWidget(self.obs_status)
        lay.addLayout(obs_form)
        lay.addLayout(obs_row_wrap)
        lay.addSpacing(8)
        lay.addWidget(_section("AUDIO / VIDEO SYNC"))
        lay.addWidget(self.av_latency)
        lay.addWidget(self.av_inputs)
        lay.addWidget(self.av_sync)
        lay.addSpacing(8)
        lay.addWidget(_section("NDI · SPOUT · SYPHON"))
        lay.addWidget(self.low_latency)
        lay.addSpacing(8)
        lay.addWidget(_section("VIRTUAL CAMERA"))
        lay.addWidget(self.vcam_available)
        lay.addWidget(self.vcam_status)
        lay.addSpacing(8)
        lay.addWidget(_section("RECORDING"))
        lay.addWidget(self.record_dir)
        lay.addLayout(rec_row)
        lay.addStretch(1)
        self.obs_refresh.clicked.connect(self.obsRefreshRequested.emit)
        self.obs_connect.clicked.connect(self._connect)
        self.record_change.clicked.connect(self._choose_dir)
        self.obs_scene.activated.connect(lambda _i: self.obsSceneChosen.emit(self.obs_scene.currentData()))
        self.obs_fallback.activated.connect(lambda _i: self.obsFallbackChosen.emit(self.obs_fallback.currentData()))
        self.obs_via.activated.connect(lambda _i: self.obsViaChosen.emit(self.obs_via.currentData()))
        self.av_sync.toggled.connect(self._av_changed)
        self.av_inputs.itemChanged.connect(self._av_changed)

    def _av_changed(self, *_args) -> None:
        self.avSyncChanged.emit(self.av_sync.isChecked(), self.audioInputsChecked())

    def setAudioInputs(self, names: list[str], checked: list[str], on: bool) -> None:
        self.av_inputs.blockSignals(True)
        self.av_inputs.clear()
        for name in dict.fromkeys([*names, *checked]):
            item = QListWidgetItem(name if name in names else f"{name} (not in OBS now)")
            item.setData(Qt.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if name in checked else Qt.Unchecked)
            self.av_inputs.addItem(item)
        self.av_inputs.blockSignals(False)
        self.av_sync.blockSignals(True)
        self.av_sync.setChecked(on)
        self.av_sync.blockSignals(False)

    def audioInputsChecked(self) -> list[str]:
        items = (self.av_inputs.item(i) for i in range(self.av_inputs.count()))
        return [it.data(Qt.UserRole) for it in items if it.checkState() == Qt.Checked]

    def setAvLatency(self, latency_ms: float | None, applied_ms: int | None = None) -> None:
        """The measured lag and the delay applied (None: not streaming)."""
        if latency_ms is None:
            self.av_latency.setText(AV_IDLE)
            return
        applied = f"; checked audio delayed by {applied_ms} ms" if applied_ms is not None else ""
        self.av_latency.setText(f"The styled video lags your live audio by {latency_ms:.0f} ms{applied}.")

    def setObsVia(self, via: str) -> None:
        self.obs_via.setCurrentIndex(max(0, self.obs_via.findData(via)))

    def setPluginStatus(self, installed: bool | None, detail: str, channel: str) -> None:
        """The OBS plugin: installed (its source can be picked, with `channel`) or why not and how to install it
        (the plugin entry is disabled then; the media source needs no install)."""
        item = self.obs_via.model().item(self.obs_via.findData(VIA_PLUGIN))
        item.setEnabled(installed is not False)
        item.setToolTip(detail)
        if installed:
            text = f"✓ OBS plugin installed: the plugin source reads channel {channel!r}"
        else:
            text = f"{'✗' if installed is False else '?'} {detail[:1].upper()}{detail[1:]}"
        self.plugin_status.setText(text)

    def setLowLatency(self, lines: list[tuple[str, bool | None, str]]) -> None:
        """NDI / Spout / Syphon: (label, available, what is there or why not and how to get it) each."""
        marks = {True: "✓", False: "✗", None: "?"}
        self.low_latency.setText("\n".join(f"{marks[ok]} {label}: {text}" for label, ok, text in lines))

    def setVcamAvailability(self, available: bool | None, detail: str) -> None:
        mark = {True: "✓", False: "✗", None: "?"}[available]
        self.vcam_available.setText(f"{mark} {detail[:1].upper()}{detail[1:]}")

    def setObsChoices(self, scenes: list[str], sources: list[str], scene: str, fallback: str) -> None:
        """Fill the scene and fallback pickers from OBS, keeping the saved choices selected."""
        _fill(self.obs_scene, self.SCENE_ITEMS, scenes, scene)
        _fill(self.obs_fallback, self.FALLBACK_ITEMS, sources, fallback)

    def setObsStatus(self, text: str) -> None:
        self.obs_status.setText(text)

    def setObsAddress(self, host: str, port: int) -> None:
        self.obs_host.setText(host)
        self.obs_port.setValue(port)

    def _connect(self) -> None:
        self.obsConnectRequested.emit(self.obs_host.text().strip() or "127.0.0.1", self.obs_port.value(),
                                      self.obs_password.text())
        self.obs_password.clear()

    def setRecordDir(self, path: str) -> None:
        self._dir = path
        self.record_dir.setText(f"Recordings go to {path}")

    def _choose_dir(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Recordings folder", self._dir or str(Path.home()))
        if path:
            self.setRecordDir(path)
            self.recordDirChosen.emit(path)
