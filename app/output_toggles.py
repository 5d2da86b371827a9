"""OutputToggles: the output switches in the header (styled source in OBS, virtual camera, recording, NDI, Spout,
Syphon). Emits `outputsChanged(Outputs)`; `setOutputs` / `setFailed` / `setAvailable` set their state. Spout and
Syphon have a switch only on their platforms; an unavailable output is disabled, its tooltip says why and how to get
it."""

from __future__ import annotations

import dataclasses
import sys

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QPushButton, QWidget
from sdv2_studio.app.engine_worker import Outputs
from sdv2_studio.app.theme import repolish
from sdv2_studio.engine.io.availability import PLATFORMS

_LABELS = {"obs": ("OBS source", "Send the styled video into OBS as a source"),
           "vcam": ("Virtual cam", "Show the styled video as a webcam in Zoom, Discord, Meet…"),
           "record": ("● Rec", "Record the styled video to an .mp4 file"),
           "ndi": ("NDI", "Send the styled video as an NDI source (OBS: DistroAV's NDI Source; vMix, Resolume…)"),
           "spout": ("Spout", "Share the styled video as a Spout sender (OBS: Spout2 Capture)"),
           "syphon": ("Syphon", "Share the styled video as a Syphon server (OBS: Syphon Client)")}


class OutputToggles(QWidget):
    outputsChanged = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        self.buttons: dict[str, QPushButton] = {}
        for kind, (text, tip) in _LABELS.items():
            b = QPushButton(text)
            b.setCheckable(True)
            b.setProperty("kind", "toggle")
            b.setToolTip(tip)
            b.toggled.connect(lambda _on, k=kind: self._toggled(k))
            lay.addWidget(b)
            b.setVisible(PLATFORMS.get(kind, sys.platform) == sys.platform)  # Spout: Windows only, Syphon: macOS
            self.buttons[kind] = b
        self._outputs = Outputs()

    def outputs(self) -> Outputs:
        return self._outputs

    def setOutputs(self, outputs: Outputs) -> None:
        self._outputs = outputs
        for kind, b in self.buttons.items():
            b.blockSignals(True)
            b.setChecked(getattr(outputs, kind))
            b.blockSignals(False)

    def setFailed(self, kind: str, message: str = "") -> None:
        b = self.buttons[kind]
        b.setProperty("failed", bool(message))
        b.setToolTip(message or _LABELS[kind][1])
        if message:
            b.blockSignals(True)
            b.setChecked(False)
            b.blockSignals(False)
            self._outputs = dataclasses.replace(self._outputs, **{kind: False})
        repolish(b)

    def setAvailable(self, kind: str, available: bool, message: str) -> None:
        """An output that cannot work here cannot be armed: switched off and disabled, the tooltip says why."""
        b = self.buttons[kind]
        b.setEnabled(available)
        b.setToolTip(message if not available else f"{_LABELS[kind][1]} ({message})" if message else _LABELS[kind][1])
        if not available and b.isChecked():
            b.setChecked(False)  # emits outputsChanged: the saved setting follows

    def _toggled(self, kind: str) -> None:
        b = self.buttons[kind]
        if b.property("failed"):
            b.setProperty("failed", False)
            repolish(b)
        self._outputs = dataclasses.replace(self._outputs, **{kind: b.isChecked()})
        self.outputsChanged.emit(self._outputs)
