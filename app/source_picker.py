"""SourcePicker: where the stream comes from: the test pattern, cameras, OBS sources, video files.
Emits `sourceChosen(spec)` and `refreshRequested()`; the window fills it with `setCameras` / `setObsSources`."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

_BROWSE = "__browse__"
VIDEO_FILTER = "Videos (*.mp4 *.mov *.mkv *.webm *.avi *.m4v);;All files (*)"


def describe(spec: str) -> str:
    low = spec.lower()
    if low == "test":
        return "Test pattern"
    if low.startswith("camera:"):
        return f"Camera · {spec[7:]}"
    if low.startswith("obs:"):
        return f"OBS · {spec[4:]}"
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
        if spec not in ("test",) and not spec.lower().startswith(("camera:", "obs:")) and spec not in self._files:
            self._files = [spec, *self._files][:5]
        self.setCurrent(spec)
        self.sourceChosen.emit(spec)

    def _activated(self, index: int) -> None:
        spec = self.combo.itemData(index)
        if spec == _BROWSE:
            path, _ = QFileDialog.getOpenFileName(self, "Open a video file", str(Path.home()), VIDEO_FILTER)
            if not path:
                self._rebuild()
                return
            spec = path
        self.choose(spec)
