"""PresetGallery: the wrapping grid of preset cards. Emits `presetActivated(Preset)` on a click; `setCurrent`
shows which one is active. Cards 1-9 carry their keyboard shortcut."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QButtonGroup, QScrollArea, QWidget
from sdv2_studio.app.flow_layout import FlowLayout
from sdv2_studio.app.preset_card import PresetCard
from sdv2_studio.engine.presets import Preset


class PresetGallery(QScrollArea):
    presetActivated = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self._inner = QWidget()
        self._flow = FlowLayout(self._inner, spacing=10)
        self._flow.setContentsMargins(2, 2, 2, 2)
        self.setWidget(self._inner)
        self._group = QButtonGroup(self)
        self._group.setExclusive(True)
        self.cards: list[PresetCard] = []

    def setPresets(self, presets: list[Preset], current: str | None = None) -> None:
        for card in self.cards:
            self._group.removeButton(card)
            self._flow.removeWidget(card)
            card.deleteLater()
        self.cards = []
        for i, preset in enumerate(presets):
            card = PresetCard(preset, shortcut=i + 1 if i < 9 else None)
            card.clicked.connect(lambda _checked=False, c=card: self.presetActivated.emit(c.preset))
            self._group.addButton(card)
            self._flow.addWidget(card)
            self.cards.append(card)
        self.setCurrent(current)

    def setCurrent(self, preset_id: str | None) -> None:
        for card in self.cards:
            if card.preset.id == preset_id:
                card.setChecked(True)
                self.ensureWidgetVisible(card)
                return
        checked = self._group.checkedButton()
        if checked is not None:
            self._group.setExclusive(False)
            checked.setChecked(False)
            self._group.setExclusive(True)

    def card(self, preset_id: str) -> PresetCard | None:
        return next((c for c in self.cards if c.preset.id == preset_id), None)

    def activateIndex(self, index: int) -> bool:
        """Keyboard shortcut: activate the index-th card (0-based)."""
        if 0 <= index < len(self.cards):
            self.cards[index].click()
            return True
        return False
