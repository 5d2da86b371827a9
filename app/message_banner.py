"""MessageBanner: one-line messages above the previews: errors stay until closed, info fades after a while.
Engine errors arrive here as readable text that names the fix (never a traceback)."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget
from sdv2_studio.app.theme import repolish

_ICON = {"error": "⚠", "warn": "⚠", "info": "ℹ"}


class MessageBanner(QFrame):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("Banner")
        self.icon = QLabel()
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.close_btn = QPushButton("✕")
        self.close_btn.setProperty("kind", "flat")
        self.close_btn.setFixedWidth(30)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 6, 6, 6)
        lay.addWidget(self.icon)
        lay.addWidget(self.text, 1)
        lay.addWidget(self.close_btn)
        self.history: list[tuple[str, str]] = []  # (level, text), newest last
        self._timer = QTimer(self, singleShot=True)
        self._timer.timeout.connect(self.hide)
        self.close_btn.clicked.connect(self.hide)
        self.hide()

    def showMessage(self, text: str, level: str = "error") -> None:
        self.history.append((level, text))
        del self.history[:-50]
        self.icon.setText(_ICON.get(level, "ℹ"))
        self.text.setText(text[:1].upper() + text[1:])
        self.setProperty("level", level)
        repolish(self)
        self.show()
        if level == "info":
            self._timer.start(6000)
        else:
            self._timer.stop()
