"""The app icon, drawn with QPainter (no image files): a violet-to-cyan rounded square with a white diamond.

    python -m sdv2_studio.app.icon PATH [SIZE]      # write it as a PNG (the installers use this for launchers)
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QImage, QLinearGradient, QPainter, QPixmap, QPolygonF
from sdv2_studio.app import theme


def icon_image(size: int = 256) -> QImage:
    img = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    img.fill(Qt.transparent)
    p = QPainter(img)
    p.setRenderHint(QPainter.Antialiasing)
    s = float(size)
    g = QLinearGradient(0, 0, s, s)
    g.setColorAt(0, QColor(theme.ACCENT))
    g.setColorAt(1, QColor(theme.ACCENT_2))
    p.setPen(Qt.NoPen)
    p.setBrush(g)
    p.drawRoundedRect(QRectF(s * 0.04, s * 0.04, s * 0.92, s * 0.92), s * 0.22, s * 0.22)
    c = s / 2
    diamond = QPolygonF([QPointF(c, s * 0.2), QPointF(s * 0.78, c), QPointF(c, s * 0.8), QPointF(s * 0.22, c)])
    p.setBrush(QColor(255, 255, 255, 235))
    p.drawPolygon(diamond)
    inner = QPolygonF([QPointF(c, s * 0.36), QPointF(s * 0.64, c), QPointF(c, s * 0.64), QPointF(s * 0.36, c)])
    p.setBrush(QColor(theme.ACCENT))
    p.drawPolygon(inner)
    p.end()
    return img


def app_icon() -> QIcon:
    icon = QIcon()
    for size in (16, 32, 64, 128, 256):
        icon.addPixmap(QPixmap.fromImage(icon_image(size)))
    return icon


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtGui import QGuiApplication

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m sdv2_studio.app.icon PATH [SIZE]", file=sys.stderr)
        return 2
    _ = QGuiApplication.instance() or QGuiApplication(["sdv2-icon", "-platform", "offscreen"])
    size = int(argv[1]) if len(argv) > 1 else 256
    return 0 if icon_image(size).save(argv[0], "PNG") else 1


if __name__ == "__main__":
    sys.exit(main())
