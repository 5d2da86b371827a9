"""PresetCard: a clickable card with the preset's thumbnail, name and shortcut number (custom painted)."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QLinearGradient, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QAbstractButton, QWidget
from sdv2_studio.app import theme
from sdv2_studio.engine.presets import Preset

THUMB_W, THUMB_H = 138, 86


class PresetCard(QAbstractButton):
    def __init__(self, preset: Preset, shortcut: int | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.preset = preset
        self.shortcut = shortcut
        self.setCheckable(True)
        self.setCursor(Qt.PointingHandCursor)
        self.setFocusPolicy(Qt.NoFocus)  # digits and arrows stay with the window
        self.setObjectName(f"preset-{preset.id}")
        self.setAccessibleName(preset.name)
        self._thumb = self._load_thumb(preset)
        tip = preset.description or preset.controls.prompt
        if shortcut is not None:
            tip += f"\n\nShortcut: {shortcut}"
        self.setToolTip(tip)
        self._hover = False

    @staticmethod
    def _load_thumb(preset: Preset) -> QImage | None:
        if preset.thumbnail is None:
            return None
        img = QImage(str(preset.thumbnail))
        if img.isNull():
            return None
        return img.scaled(THUMB_W * 2, THUMB_H * 2, Qt.KeepAspectRatioByExpanding, Qt.SmoothTransformation)

    def sizeHint(self) -> QSize:
        return QSize(THUMB_W + 12, THUMB_H + 40)

    def enterEvent(self, event) -> None:
        self._hover = True
        self.update()

    def leaveEvent(self, event) -> None:
        self._hover = False
        self.update()

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        r = QRectF(self.rect()).adjusted(1, 1, -1, -1)
        selected = self.isChecked()
        p.setPen(QPen(QColor(theme.ACCENT if selected else (theme.FAINT if self._hover else theme.BORDER)),
                      2 if selected else 1))
        p.setBrush(QColor(theme.CARD_HI if (selected or self._hover) else theme.CARD))
        p.drawRoundedRect(r, 10, 10)
        thumb = QRectF(r.left() + 5, r.top() + 5, r.width() - 10, THUMB_H)
        clip = QPainterPath()
        clip.addRoundedRect(thumb, 7, 7)
        p.save()
        p.setClipPath(clip)
        if self._thumb is not None:
            src = QRectF(self._thumb.rect())
            scale = max(thumb.width() / src.width(), thumb.height() / src.height())
            sw, sh = thumb.width() / scale, thumb.height() / scale
            p.setRenderHint(QPainter.SmoothPixmapTransform)
            p.drawImage(thumb, self._thumb, QRectF((src.width() - sw) / 2, (src.height() - sh) / 2, sw, sh))
        else:
            g = QLinearGradient(thumb.topLeft(), thumb.bottomRight())
            g.setColorAt(0, QColor(theme.ACCENT))
            g.setColorAt(1, QColor(theme.ACCENT_2))
            p.fillRect(thumb, g)
            f = QFont(self.font())
            f.setPointSizeF(22)
            f.setBold(True)
            p.setFont(f)
            p.setPen(QColor(255, 255, 255, 220))
            p.drawText(thumb, Qt.AlignCenter, (self.preset.name[:1] or "?").upper())
        p.restore()
        if self.shortcut is not None:
            key = QRectF(thumb.left() + 6, thumb.top() + 6, 20, 20)
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(0, 0, 0, 160))
            p.drawRoundedRect(key, 5, 5)
            f = QFont(self.font())
            f.setPointSizeF(8.5)
            f.setBold(True)
            p.setFont(f)
            p.setPen(QColor("white"))
            p.drawText(key, Qt.AlignCenter, str(self.shortcut))
        if not self.preset.builtin:
            f = QFont(self.font())
            f.setPointSizeF(7.5)
            f.setBold(True)
            p.setFont(f)
            tag = QRectF(thumb.right() - 44, thumb.top() + 6, 38, 18)
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(34, 211, 238, 200))
            p.drawRoundedRect(tag, 9, 9)
            p.setPen(QColor("#04212a"))
            p.drawText(tag, Qt.AlignCenter, "MINE")
        f = QFont(self.font())
        f.setPointSizeF(9.5)
        f.setBold(selected)
        p.setFont(f)
        p.setPen(QColor(theme.TEXT if selected or self._hover else "#c9cedb"))
        text_rect = QRectF(r.left() + 8, thumb.bottom() + 4, r.width() - 16, r.bottom() - thumb.bottom() - 6)
        p.drawText(text_rect, Qt.AlignVCenter | Qt.AlignLeft,
                   p.fontMetrics().elidedText(self.preset.name, Qt.ElideRight, int(text_rect.width())))
