"""StatsPlot: fps and latency over the last minute, drawn with QPainter (no plotting library)."""

from __future__ import annotations

import collections
import math

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QWidget
from sdv2_studio.app import theme

WINDOW_S = 60.0


def _nice_max(v: float, floor: float) -> float:
    v = max(v, floor)
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


class StatsPlot(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.samples: collections.deque = collections.deque()  # (t, fps, latency_ms)
        self.setMinimumHeight(120)

    def sizeHint(self) -> QSize:
        return QSize(320, 150)

    def clear(self) -> None:
        self.samples.clear()
        self.update()

    def addSample(self, t: float, fps: float, latency_ms: float) -> None:
        self.samples.append((t, fps, latency_ms))
        while self.samples and self.samples[0][0] < t - WINDOW_S:
            self.samples.popleft()
        self.update()

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        f = QFont(self.font())
        f.setPointSizeF(8)
        p.setFont(f)
        fm = p.fontMetrics()
        r = QRectF(self.rect()).adjusted(34, 24, -40, -18)
        fps_max = _nice_max(max((s[1] for s in self.samples), default=0), 10)
        lat_max = _nice_max(max((s[2] for s in self.samples), default=0), 100)
        # grid + axes labels
        p.setPen(QPen(QColor(theme.BORDER), 1, Qt.DotLine))
        for i in range(5):
            y = r.top() + r.height() * i / 4
            p.drawLine(QPointF(r.left(), y), QPointF(r.right(), y))
        p.setPen(QColor(theme.ACCENT_2))
        for i in (0, 2, 4):
            y = r.top() + r.height() * i / 4
            p.drawText(QRectF(0, y - 8, r.left() - 6, 16), Qt.AlignRight | Qt.AlignVCenter,
                       f"{fps_max * (4 - i) / 4:g}")
        p.setPen(QColor("#f472b6"))
        for i in (0, 2, 4):
            y = r.top() + r.height() * i / 4
            p.drawText(QRectF(r.right() + 6, y - 8, 40, 16), Qt.AlignLeft | Qt.AlignVCenter,
                       f"{lat_max * (4 - i) / 4:g}")
        p.setPen(QColor(theme.FAINT))
        p.drawText(QRectF(r.left(), r.bottom() + 2, r.width(), 14), Qt.AlignLeft, "-60 s")
        p.drawText(QRectF(r.left(), r.bottom() + 2, r.width(), 14), Qt.AlignRight, "now")
        # legend
        x = r.left()
        for text, colour in (("fps", theme.ACCENT_2), ("latency p50 (ms)", "#f472b6")):
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(colour))
            p.drawRoundedRect(QRectF(x, 7, 10, 10), 3, 3)
            p.setPen(QColor(theme.MUTED))
            p.drawText(QPointF(x + 14, 16), text)
            x += 14 + fm.horizontalAdvance(text) + 16
        if len(self.samples) < 2:
            p.setPen(QColor(theme.FAINT))
            p.drawText(r, Qt.AlignCenter, "live stats appear here while streaming")
            return
        now = self.samples[-1][0]
        for idx, colour, top in ((1, theme.ACCENT_2, fps_max), (2, "#f472b6", lat_max)):
            path = QPainterPath()
            for j, s in enumerate(self.samples):
                pt = QPointF(r.right() - (now - s[0]) / WINDOW_S * r.width(),
                             r.bottom() - min(s[idx], top) / top * r.height())
                path.lineTo(pt) if j else path.moveTo(pt)
            p.setPen(QPen(QColor(colour), 2))
            p.setBrush(Qt.NoBrush)
            p.drawPath(path)
