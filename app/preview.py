"""PreviewView: one video panel (input or styled). Takes state only: an image, a title, a badge, a progress
message, a notice ribbon. It paints the newest image letterboxed on a rounded dark card."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget
from sdv2_studio.app import theme


class PreviewView(QWidget):
    def __init__(self, title: str, placeholder: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self._title = title
        self._badge = ""
        self._badge_accent = True
        self._placeholder = placeholder
        self._image: QImage | None = None
        self._progress: tuple[str, float] | None = None
        self._notice = ""
        self.frames_shown = 0
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMinimumSize(240, 160)

    # -- state ------------------------------------------------------------------------------------------------------

    def setImage(self, image: QImage | None) -> None:
        self._image = image
        if image is not None:
            self.frames_shown += 1
        self.update()

    def image(self) -> QImage | None:
        return self._image

    def clear(self) -> None:
        self._image = None
        self.update()

    def setTitle(self, title: str) -> None:
        self._title = title
        self.update()

    def setBadge(self, text: str, accent: bool = True) -> None:
        self._badge = text
        self._badge_accent = accent
        self.update()

    def setPlaceholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    def setProgress(self, message: str | None, fraction: float = 0.0) -> None:
        self._progress = None if message is None else (message, max(0.0, min(1.0, fraction)))
        self.update()

    def setNotice(self, text: str) -> None:
        self._notice = text
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(560, 360)

    # -- painting ---------------------------------------------------------------------------------------------------

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        r = QRectF(self.rect()).adjusted(1, 1, -1, -1)
        clip = QPainterPath()
        clip.addRoundedRect(r, 12, 12)
        p.fillPath(clip, QColor("#07080c"))
        p.save()
        p.setClipPath(clip)
        if self._image is not None and not self._image.isNull():
            size = self._image.size().scaled(r.size().toSize(), Qt.KeepAspectRatio)
            target = QRectF(0, 0, size.width(), size.height())
            target.moveCenter(r.center())
            p.setRenderHint(QPainter.SmoothPixmapTransform)
            p.drawImage(target, self._image)
        else:
            self._paint_placeholder(p, r)
        if self._progress is not None:
            self._paint_progress(p, r)
        p.restore()
        self._paint_labels(p, r)
        p.setPen(QPen(QColor(theme.BORDER), 1))
        p.setBrush(Qt.NoBrush)
        p.drawRoundedRect(r, 12, 12)

    def _paint_placeholder(self, p: QPainter, r: QRectF) -> None:
        p.setPen(QPen(QColor(theme.CARD_HI), 2, Qt.DashLine))
        p.drawRoundedRect(r.adjusted(18, 48, -18, -18), 10, 10)
        if self._placeholder and self._progress is None:
            f = QFont(self.font())
            f.setPointSizeF(11)
            p.setFont(f)
            p.setPen(QColor(theme.FAINT))
            p.drawText(r.adjusted(30, 40, -30, -10), Qt.AlignCenter | Qt.TextWordWrap, self._placeholder)

    def _paint_progress(self, p: QPainter, r: QRectF) -> None:
        message, frac = self._progress
        p.fillRect(r, QColor(7, 8, 12, 170))
        w = min(320.0, r.width() - 60)
        bar = QRectF(r.center().x() - w / 2, r.center().y() + 6, w, 6)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor(theme.BORDER))
        p.drawRoundedRect(bar, 3, 3)
        p.setBrush(QColor(theme.ACCENT))
        p.drawRoundedRect(QRectF(bar.left(), bar.top(), max(6.0, w * frac), bar.height()), 3, 3)
        p.setPen(QColor(theme.TEXT))
        p.drawText(QRectF(r.left() + 20, bar.top() - 34, r.width() - 40, 24), Qt.AlignCenter, message)

    def _pill(self, p: QPainter, x: float, y: float, text: str, bg: QColor, fg: QColor, bold: bool = True) -> float:
        f = QFont(self.font())
        f.setPointSizeF(8.5)
        f.setBold(bold)
        f.setLetterSpacing(QFont.AbsoluteSpacing, 0.8)
        p.setFont(f)
        w = p.fontMetrics().horizontalAdvance(text) + 18
        rect = QRectF(x, y, w, 22)
        p.setPen(Qt.NoPen)
        p.setBrush(bg)
        p.drawRoundedRect(rect, 11, 11)
        p.setPen(fg)
        p.drawText(rect, Qt.AlignCenter, text)
        return w

    def _paint_labels(self, p: QPainter, r: QRectF) -> None:
        x = r.left() + 12
        x += self._pill(p, x, r.top() + 12, self._title.upper(), QColor(0, 0, 0, 150), QColor(theme.TEXT)) + 6
        if self._badge:
            bg = QColor(139, 92, 246, 215) if self._badge_accent else QColor(255, 255, 255, 38)
            self._pill(p, x, r.top() + 12, self._badge, bg, QColor("white"), bold=False)
        if self._notice:
            f = QFont(self.font())
            f.setPointSizeF(8.5)
            f.setBold(True)
            p.setFont(f)
            band = QRectF(r.left(), r.bottom() - 28, r.width(), 28)
            clip = QPainterPath()
            clip.addRoundedRect(r, 12, 12)
            p.save()
            p.setClipPath(clip)
            p.fillRect(band, QColor(245, 158, 11, 225))
            p.restore()
            p.setPen(QColor("#1a1206"))
            p.drawText(band.adjusted(12, 0, -12, 0), Qt.AlignVCenter | Qt.AlignLeft,
                       p.fontMetrics().elidedText(self._notice, Qt.ElideRight, int(band.width() - 24)))
