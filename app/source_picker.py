"""SourcePicker: where the stream comes from: the test pattern, cameras, OBS sources (screenshots over the websocket,
no install) or an OBS filter of the native plugin (shared memory), video files. Emits `sourceChosen(spec)` and
`refreshRequested()`; the window fills it with `setCameras` / `setObsSources` / `setObsPlugin`."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

_BROWSE = "__browse__"
_NO_PLUGIN = "__no_plugin__"
LIVE_PREFIXES = ("camera:", "obs:", "obs-filter:")  # sources that are not files (never "recent files")


def is_file(spec: str) -> bool:
    return spec != "test" and not spec.lower().startswith(LIVE_PREFIXES)
VIDEO_FILTER = "Videos (*.mp4 *.mov *.mkv *.webm *.avi *.m4v);;All files (*)"


def describe(spec: str) -> str:
    low = spec.lower()
    if low == "test":
        return "Test pattern"
    if low.startswith("camera:"):
        return f"Camera · {spec[7:]}"
    if low.startswith("obs:"):
        return f"OBS · {spec[4:]}"
    if low.startswith("obs-filter:"):
        return f"OBS filter · {spec[11:]}"
    return f"File · {Path(spec).name}"


class SourcePicker(QWidget):
    sourceChosen = Signal(str)
    refreshRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.setMinimumWidth(240)
        self.combo.setToolTip("What to stylise: a camera, an OBS scene or source, a video file or the test pattern")
        self.refresh = QPushButton("↻")
        self.refresh.setProperty("kind", "flat")
        self.refresh.setToolTip("Look for cameras and OBS sources again")
        lab = QLabel("SOURCE")
        lab.setProperty("role", "section")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        lay.addWidget(lab)
        lay.addWidget(self.combo, 1)
        lay.addWidget(self.refresh)
        self._cameras: list = []
        self._obs: list[str] = []
        self._plugin: tuple[bool | None, str, list[str]] = (None, "", [])  # installed?, why not, channels
        self._files: list[str] = []
        self._current = "test"
        self._rebuild()
        self.combo.activated.connect(self._activated)
        self.refresh.clicked.connect(self.refreshRequested.emit)

    def _rebuild(self) -> None:
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem("Test pattern", "test")
        for cam in self._cameras:
            self.combo.addItem(f"Camera · {cam.name}", f"camera:{cam.spec}")
        for name in self._obs:
            self.combo.addItem(f"OBS · {name}", f"obs:{name}")
        installed, why, channels = self._plugin
        if installed:
            for channel in channels:
                self.combo.addItem(f"OBS filter · {channel}", f"obs-filter:{channel}")
                self.combo.setItemData(self.combo.count() - 1, "Frames of the OBS source that carries the "
                                       f"StreamDiffusionV2 filter on channel {channel!r} (shared memory, no "
                                       "encoding)", Qt.ToolTipRole)
        elif installed is False:
            self.combo.addItem("OBS filter · plugin not installed", _NO_PLUGIN)
            self.combo.setItemData(self.combo.count() - 1, why, Qt.ToolTipRole)
            self.combo.model().item(self.combo.count() - 1).setEnabled(False)
        for path in self._files:
            self.combo.addItem(f"File · {Path(path).name}", path)
        specs = [self.combo.itemData(i) for i in range(self.combo.count())]
        if self._current not in specs:
            self.combo.addItem(describe(self._current), self._current)
        self.combo.insertSeparator(self.combo.count())
        self.combo.addItem("Open video file…", _BROWSE)
        self.combo.setCurrentIndex(self.combo.findData(self._current))
        self.combo.blockSignals(False)

    def setCameras(self, cameras: list) -> None:
        self._cameras = list(cameras)
        self._rebuild()

    def setObsSources(self, names: list[str]) -> None:
        self._obs = list(names)
        self._rebuild()

    def setObsPlugin(self, installed: bool | None, why: str, channels: list[str]) -> None:
        """Offer "OBS filter · CHANNEL" for each channel when the OBS plugin is installed; else a disabled entry whose
        tooltip says why and how to install it."""
        self._plugin = (installed, why, list(channels))
        self._rebuild()

    def setRecentFiles(self, files: list[str]) -> None:
        self._files = list(files)
        self._rebuild()

    def setCurrent(self, spec: str) -> None:
        self._current = spec or "test"
        self._rebuild()

    def currentSpec(self) -> str:
        return self._current

    def choose(self, spec: str) -> None:
        """Select `spec` as if the user picked it."""
        if is_file(spec) and spec not in self._files:
            self._files = [spec, *self._files][:5]
        self.setCurrent(spec)
        self.sourceChosen.emit(spec)

    def _activated(self, index: int) -> None:
        spec = self.combo.itemData(index)
        if spec == _NO_PLUGIN:
            self._rebuild()
            return
        if spec == _BROWSE:
            path, _ = QFileDialog.getOpenFileName(self, "Open a video file", str(Path.home()), VIDEO_FILTER)
            if not path:
                self._rebuild()
                return
            spec = path
        self.choose(spec)
