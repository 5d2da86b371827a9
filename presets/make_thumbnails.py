"""Draw the preset thumbnails procedurally (a stylised bust / emblem per style) with QPainter.

    QT_QPA_PLATFORM=offscreen python presets/make_thumbnails.py      # writes presets/<id>.png (240x150)

Deterministic (fixed seeds), no external images. Each PNG is kept under 30 kB (palette-quantised when needed).
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import (
    QColor,
    QGradient,
    QGuiApplication,
    QImage,
    QLinearGradient,
    QPainter,
    QPainterPath,
    QPen,
    QPolygonF,
    QRadialGradient,
)

W, H = 240, 150
HERE = Path(__file__).resolve().parent
MAX_BYTES = 30_000


def C(hex_: str, a: int = 255) -> QColor:
    c = QColor(hex_)
    c.setAlpha(a)
    return c


def bust(cx: float = W * 0.5, top: float = 26, scale: float = 1.0) -> tuple[QPainterPath, QRectF]:
    """Head + neck + shoulders silhouette; returns (path, head rect)."""
    r = 30 * scale
    head = QRectF(cx - r, top, 2 * r, 2.25 * r)
    p = QPainterPath()
    p.addEllipse(head)
    body = QPainterPath()
    neck_y = head.bottom() - 6 * scale
    body.moveTo(cx - 11 * scale, neck_y)
    body.lineTo(cx + 11 * scale, neck_y)
    body.lineTo(cx + 13 * scale, neck_y + 14 * scale)
    body.cubicTo(cx + 55 * scale, neck_y + 18 * scale, cx + 68 * scale, neck_y + 30 * scale, cx + 74 * scale, H + 4)
    body.lineTo(cx - 74 * scale, H + 4)
    body.cubicTo(cx - 68 * scale, neck_y + 30 * scale, cx - 55 * scale, neck_y + 18 * scale, cx - 13 * scale,
                 neck_y + 14 * scale)
    body.closeSubpath()
    return p.united(body), head


def hair(head: QRectF, spikes: int = 5) -> QPainterPath:
    p = QPainterPath()
    cx, top, r = head.center().x(), head.top(), head.width() / 2
    p.moveTo(cx - r - 4, head.center().y() + 6)
    p.cubicTo(cx - r - 8, top - 14, cx + r + 8, top - 14, cx + r + 4, head.center().y() + 6)
    for i in range(spikes, -1, -1):  # fringe, right to left
        x = cx - r + 2 * r * i / spikes
        y = top + head.height() * (0.38 if i % 2 else 0.22)
        p.lineTo(x, y)
    p.closeSubpath()
    return p


def eyes(p: QPainter, head: QRectF, iris: str, big: float = 1.0) -> None:
    cy = head.top() + head.height() * 0.58
    for dx in (-0.22, 0.22):
        cx = head.center().x() + dx * head.width()
        rw, rh = 6.5 * big, 8.5 * big
        p.setPen(QPen(C("#1b1b24"), 1.4))
        p.setBrush(C("#ffffff"))
        p.drawEllipse(QPointF(cx, cy), rw, rh)
        p.setPen(Qt.NoPen)
        p.setBrush(C(iris))
        p.drawEllipse(QPointF(cx, cy + 1.2), rw * 0.72, rh * 0.78)
        p.setBrush(C("#101018"))
        p.drawEllipse(QPointF(cx, cy + 1.6), rw * 0.34, rh * 0.4)
        p.setBrush(C("#ffffff"))
        p.drawEllipse(QPointF(cx - rw * 0.3, cy - rh * 0.3), rw * 0.24, rw * 0.24)


def star(cx: float, cy: float, r: float, points: int = 4, inner: float = 0.28) -> QPolygonF:
    poly = QPolygonF()
    for i in range(points * 2):
        a = math.pi * i / points - math.pi / 2
        rr = r if i % 2 == 0 else r * inner
        poly.append(QPointF(cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return poly


def shaded(g: QGradient, *stops: tuple[float, QColor | str]) -> QGradient:
    """`g` with its colour stops: (position 0..1, colour)."""
    for at, colour in stops:
        g.setColorAt(at, C(colour) if isinstance(colour, str) else colour)
    return g


def vgrad(top: str, bottom: str, y0: float = 0, y1: float = H) -> QLinearGradient:
    return shaded(QLinearGradient(0, y0, 0, y1), (0, top), (1, bottom))


# -- styles -------------------------------------------------------------------------------------------------------


def anime_cel(p: QPainter, rng: random.Random) -> None:
    for i, col in enumerate(("#7fc8ff", "#a9d8ff", "#ffd1e8")):  # posterised sky
        p.fillRect(QRectF(0, i * H / 3, W, H / 3 + 1), C(col))
    p.setPen(Qt.NoPen)
    p.setBrush(C("#ffffff"))
    for _ in range(6):
        p.drawPolygon(star(rng.uniform(8, W - 8), rng.uniform(8, H * 0.6), rng.uniform(4, 9)))
    body, head = bust()
    p.setBrush(C("#ffe2cf"))
    p.setPen(QPen(C("#2a1e2e"), 2.2))
    p.drawPath(body)
    shade = QPainterPath()
    shade.addRect(QRectF(W / 2 + 4, 0, W, H))
    p.setPen(Qt.NoPen)
    p.setBrush(C("#f2b8a8"))
    p.drawPath(body.intersected(shade))
    jacket = QPainterPath()
    jacket.addRect(QRectF(0, head.bottom() + 12, W, H))
    p.setBrush(C("#3d3a8c"))
    p.drawPath(body.intersected(jacket))
    p.setPen(QPen(C("#2a1e2e"), 2.2))
    p.setBrush(Qt.NoBrush)
    p.drawPath(body)
    p.setBrush(C("#8a4fd6"))
    p.drawPath(hair(head, 6))
    eyes(p, head, "#3a7bff", 1.0)


def watercolor(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), C("#fbf6ec"))
    p.setPen(Qt.NoPen)
    for col in ("#7fb2e5", "#f29fb5", "#9fd8c6", "#f7cf7a"):
        for _ in range(5):
            r = rng.uniform(18, 46)
            p.setBrush(C(col, 60))
            p.drawEllipse(QPointF(rng.uniform(0, W), rng.uniform(0, H)), r, r * rng.uniform(0.6, 1.1))
    body, head = bust(top=30)
    p.setBrush(shaded(QRadialGradient(head.center(), 90), (0, C("#f07896", 205)), (1, C("#4f86cc", 190))))
    p.drawPath(body)
    p.setBrush(Qt.NoBrush)
    for w, a in ((4, 40), (1.6, 90)):  # darker pigment collects at the edges
        p.setPen(QPen(C("#3f5590", a + 40), w))
        p.drawPath(body)


def oil_painting(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), vgrad("#1d3b4a", "#0f1f26"))
    body, head = bust(top=24)
    p.setPen(Qt.NoPen)
    p.setBrush(C("#c98b5b"))
    p.drawPath(body)
    for i in range(650):
        x, y = rng.uniform(-5, W + 5), rng.uniform(-5, H + 5)
        inside = body.contains(QPointF(x, y))
        if inside:
            light = x < head.center().x() - 4
            pal = ("#f6d2a6", "#eab783", "#ffe4c2") if light else ("#b8744a", "#9c5d3a", "#d08f60")
            if y > head.bottom() + 10:
                pal = ("#7a1f2b", "#9c2f38", "#5e1620") if not light else ("#b8434c", "#a0333d", "#c8565c")
        else:
            pal = ("#24495a", "#2f5d6e", "#173441", "#3c6f63", "#c9a24a" if y < 30 else "#1e3d4b")
        a = rng.uniform(-0.5, 0.5) + (1.3 if (i // 3) % 2 else 0.2)
        ln = rng.uniform(6, 13)
        p.setPen(QPen(C(rng.choice(pal), 230), rng.uniform(3.5, 6), Qt.SolidLine, Qt.RoundCap))
        p.drawLine(QPointF(x, y), QPointF(x + ln * math.cos(a), y + ln * math.sin(a)))
    p.setPen(QPen(C("#fff1d6", 210), 3, Qt.SolidLine, Qt.RoundCap))
    p.setBrush(Qt.NoBrush)
    p.drawArc(head.adjusted(5, 5, -5, -5), 110 * 16, 70 * 16)


def pixel_art(p: QPainter, rng: random.Random) -> None:
    sw, sh = 40, 25
    img = QImage(sw, sh, QImage.Format_RGB32)
    q = QPainter(img)
    q.fillRect(0, 0, sw, sh, C("#5fcde4"))
    q.fillRect(0, 18, sw, 7, C("#6abe30"))
    q.fillRect(0, 18, sw, 1, C("#37946e"))
    for cx in (6, 31):  # clouds
        q.fillRect(cx, 4, 5, 2, C("#ffffff"))
        q.fillRect(cx + 1, 3, 3, 1, C("#ffffff"))
    sprite = [
        "....KKKK....",
        "...KHHHHK...",
        "..KHHHHHHK..",
        "..KSSSSSSK..",
        "..KSESSESK..",
        "..KSSSSSSK..",
        "...KSMMSK...",
        "....KSSK....",
        "..KBBBBBBK..",
        ".KBBBBBBBBK.",
        ".KBBYBBYBBK.",
        ".KBBBBBBBBK.",
        "..KK....KK..",
    ]
    cols = {"K": "#222034", "H": "#d95763", "S": "#eec39a", "E": "#222034", "M": "#ac3232", "B": "#5b6ee1",
            "Y": "#fbf236"}
    for y, row in enumerate(sprite):
        for x, ch in enumerate(row):
            if ch in cols:
                q.fillRect(14 + x, 6 + y, 1, 1, C(cols[ch]))
    heart = [".RR.RR.", "RRRRRRR", "RRRRRRR", ".RRRRR.", "..RRR..", "...R..."]
    for y, row in enumerate(heart):
        for x, ch in enumerate(row):
            if ch == "R":
                q.fillRect(29 + x, 10 + y, 1, 1, C("#ff4f6d"))
    q.end()
    p.drawImage(QRectF(0, 0, W, H), img.scaled(W, H, Qt.IgnoreAspectRatio, Qt.FastTransformation))


def cyberpunk_neon(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), vgrad("#0b0620", "#1a0830"))
    for _ in range(7):  # city signs
        x, w_, h_ = rng.uniform(0, W), rng.uniform(6, 16), rng.uniform(20, 60)
        col = rng.choice(("#ff2bd6", "#21f0ff", "#ffe14d"))
        p.fillRect(QRectF(x, rng.uniform(10, 60), w_, h_), C(col, 70))
    horizon = 104
    p.setPen(QPen(C("#ff2bd6", 170), 1.2))
    for i in range(-10, 11):
        p.drawLine(QPointF(W / 2 + i * 8, horizon), QPointF(W / 2 + i * 40, H))
    y, k = horizon, 3.0
    while y < H:
        p.drawLine(QPointF(0, y), QPointF(W, y))
        y += k
        k *= 1.45
    body, head = bust(top=22)
    p.setPen(Qt.NoPen)
    p.setBrush(C("#07040f"))
    p.drawPath(body)
    p.setBrush(Qt.NoBrush)
    for w, a in ((9, 30), (5, 70), (2, 255)):
        p.setPen(QPen(C("#21f0ff", a), w))
        p.drawPath(body)
    p.setPen(QPen(C("#ff2bd6", 255), 3, Qt.SolidLine, Qt.RoundCap))  # visor
    cy = head.top() + head.height() * 0.55
    p.drawLine(QPointF(head.left() + 8, cy), QPointF(head.right() - 8, cy))


def claymation(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), vgrad("#ffd9b8", "#f5b38c"))
    p.setPen(Qt.NoPen)
    for _ in range(6):
        c = QPointF(rng.uniform(0, W), rng.uniform(0, H))
        r = rng.uniform(8, 18)
        col = QColor(rng.choice(("#8fd3c7", "#f7a1a1", "#c3b1f2")))
        p.setBrush(shaded(QRadialGradient(c + QPointF(-r / 3, -r / 3), r * 1.3), (0, col.lighter(130)),
                          (1, col.darker(120))))
        p.drawEllipse(c, r, r * 0.8)
    body, head = bust(top=28)
    p.setBrush(shaded(QRadialGradient(QPointF(head.center().x() - 20, head.top() + 10), 150),
                      (0, "#ffe3a3"), (0.5, "#f4b860"), (1, "#b8742e")))
    p.drawPath(body)
    p.setBrush(C("#2b1d14"))
    for dx in (-0.2, 0.2):
        p.drawEllipse(QPointF(head.center().x() + dx * head.width(), head.top() + head.height() * 0.55), 4, 5)
    p.setPen(QPen(C("#7a3d1d"), 2.5, Qt.SolidLine, Qt.RoundCap))
    p.setBrush(Qt.NoBrush)
    p.drawArc(QRectF(head.center().x() - 9, head.top() + head.height() * 0.6, 18, 12), 200 * 16, 140 * 16)


def pencil_sketch(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), C("#f7f5f0"))
    body, head = bust(top=26)
    shadow = QPainterPath()
    shadow.addRect(QRectF(W / 2 + 2, 0, W, H))
    region = body.intersected(shadow)
    p.save()
    p.setClipPath(region)
    p.setPen(QPen(C("#6b6b6b", 150), 0.9))
    for i in range(-H, W, 4):
        p.drawLine(QPointF(i, H), QPointF(i + H, 0))
    p.setPen(QPen(C("#6b6b6b", 90), 0.9))
    for i in range(0, W + H, 6):
        p.drawLine(QPointF(i, H), QPointF(i - H, 0))
    p.restore()
    p.setBrush(Qt.NoBrush)
    for k in range(3):  # a few loose, slightly offset contour passes
        p.save()
        p.translate(rng.uniform(-1.2, 1.2), rng.uniform(-1.2, 1.2))
        p.setPen(QPen(C("#3a3a3a", 150 if k else 220), 1.1 if k else 1.5))
        p.drawPath(body)
        p.restore()
    p.setPen(QPen(C("#9a9a9a", 120), 0.8))
    for _ in range(14):  # ground hatching
        x = rng.uniform(0, W)
        p.drawLine(QPointF(x, H - 2), QPointF(x + 12, H - 14))


def ukiyo_e(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), C("#efe0c2"))
    p.setPen(Qt.NoPen)
    p.setBrush(C("#c8372d"))
    p.drawEllipse(QPointF(178, 42), 24, 24)
    fuji = QPolygonF([QPointF(40, 110), QPointF(96, 48), QPointF(110, 48), QPointF(170, 110)])
    p.setBrush(C("#6d7f95"))
    p.drawPolygon(fuji)
    snow = QPolygonF([QPointF(82, 64), QPointF(96, 48), QPointF(110, 48), QPointF(124, 64), QPointF(110, 60),
                      QPointF(103, 66), QPointF(95, 59)])
    p.setBrush(C("#fbf7ee"))
    p.drawPolygon(snow)
    wave = QPainterPath()
    wave.moveTo(0, H)
    wave.lineTo(0, 92)
    wave.cubicTo(30, 60, 70, 40, 96, 62)
    wave.cubicTo(80, 58, 74, 74, 88, 80)
    wave.cubicTo(120, 90, 150, 100, W, 96)
    wave.lineTo(W, H)
    wave.closeSubpath()
    p.setBrush(C("#1f3f73"))
    p.setPen(QPen(C("#101820"), 2))
    p.drawPath(wave)
    p.setPen(QPen(C("#e9eef2"), 2))
    p.setBrush(Qt.NoBrush)
    for i in range(6):
        y = 104 + i * 8
        p.drawArc(QRectF(-10 + (i % 2) * 14, y, 28, 14), 0, 180 * 16)
        for k in range(1, 9):
            p.drawArc(QRectF(-10 + (i % 2) * 14 + k * 30, y, 28, 14), 0, 180 * 16)
    p.setPen(Qt.NoPen)
    p.setBrush(C("#fbf7ee"))
    for _ in range(12):  # foam claws
        p.drawEllipse(QPointF(rng.uniform(60, 98), rng.uniform(54, 70)), 2.5, 2.5)


def comic_ink(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), C("#ffd23f"))
    p.setPen(Qt.NoPen)
    p.setBrush(C("#ef3e36"))
    c = QPointF(W / 2, H * 0.45)
    for y in range(0, H + 8, 8):
        for x in range((y // 8) % 2 * 4, W + 8, 8):
            d = math.hypot(x - c.x(), y - c.y())
            r = max(0.0, 3.6 - d / 40)
            if r > 0.3:
                p.drawEllipse(QPointF(x, y), r, r)
    burst = star(W / 2, H * 0.45, 78, points=12, inner=0.72)
    p.setBrush(C("#ffffff"))
    p.setPen(QPen(C("#111111"), 3))
    p.drawPolygon(burst)
    body, head = bust(top=30, scale=0.95)
    p.setBrush(C("#4da3ff"))
    p.drawPath(body)
    shade = QPainterPath()
    shade.addRect(QRectF(W / 2 + 6, 0, W, H))
    p.save()
    p.setClipPath(body.intersected(shade))
    p.setPen(Qt.NoPen)
    p.setBrush(C("#111111"))
    for y in range(0, H, 5):
        for x in range(0, W, 5):
            p.drawEllipse(QPointF(x, y), 1.3, 1.3)
    p.restore()
    p.setPen(QPen(C("#111111"), 3.2))
    p.setBrush(Qt.NoBrush)
    p.drawPath(body)


def toon_3d(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), shaded(QRadialGradient(QPointF(W / 2, H * 0.3), W * 0.8), (0, "#8ee3e0"),
                                          (1, "#2d7d9a")))
    body, head = bust(top=22, scale=1.05)
    p.setPen(Qt.NoPen)
    p.setBrush(shaded(QRadialGradient(QPointF(head.center().x() - 16, head.top() + 14), 120),
                      (0, "#ffe9dc"), (0.45, "#ffbf9f"), (1, "#c9735a")))
    p.drawPath(body)
    shirt = QPainterPath()
    shirt.addRect(QRectF(0, head.bottom() + 14, W, H))
    p.setBrush(vgrad("#ff7a59", "#b23a2a", head.bottom()))
    p.drawPath(body.intersected(shirt))
    p.setBrush(Qt.NoBrush)
    p.setPen(QPen(C("#fff7c2", 160), 3))  # rim light
    p.drawArc(head.adjusted(1, 1, -1, -1), -40 * 16, 80 * 16)
    p.setPen(Qt.NoPen)
    p.setBrush(vgrad("#6b3fa0", "#3b1f63", head.top() - 10, head.center().y()))
    p.drawPath(hair(head, 4))
    eyes(p, head, "#2b9a5a", 1.15)
    p.setBrush(C("#ffffff", 150))
    p.drawEllipse(QPointF(head.center().x() - 14, head.top() + 12), 7, 4)


def vaporwave(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), vgrad("#2b1055", "#ff6ec7", 0, 100))
    sun = QPainterPath()
    sun.addEllipse(QPointF(W / 2, 78), 42, 42)
    cut = QPainterPath()
    y, h_ = 66.0, 2.0
    while y < 122:
        cut.addRect(QRectF(0, y, W, h_))
        y += 7
        h_ += 1.0
    p.setPen(Qt.NoPen)
    p.setBrush(vgrad("#ffe66d", "#ff3f8e", 36, 120))
    p.drawPath(sun.subtracted(cut))
    p.fillRect(QRectF(0, 100, W, H - 100), C("#1b0b3a"))
    p.setPen(QPen(C("#3ef7ff", 200), 1.2))
    for i in range(-12, 13):
        p.drawLine(QPointF(W / 2 + i * 6, 100), QPointF(W / 2 + i * 36, H))
    y, k = 100.0, 2.5
    while y < H:
        p.drawLine(QPointF(0, y), QPointF(W, y))
        y += k
        k *= 1.4
    p.setPen(QPen(C("#ffffff", 30), 1))
    for y in range(0, 100, 3):  # scan lines
        p.drawLine(0, y, W, y)


def film_noir(p: QPainter, rng: random.Random) -> None:
    p.fillRect(QRectF(0, 0, W, H), vgrad("#3a3a3a", "#0e0e0e"))
    p.save()
    p.translate(W * 0.55, 0)
    p.rotate(-18)
    for i in range(8):  # light through venetian blinds
        p.fillRect(QRectF(-60, 6 + i * 17, 220, 8), C("#d8d8d8", 170))
    p.restore()
    body, head = bust(cx=W * 0.42, top=24)
    p.setPen(Qt.NoPen)
    p.setBrush(C("#050505"))
    p.drawPath(body)
    brim = QPainterPath()  # fedora
    brim.addEllipse(QRectF(head.left() - 16, head.top() + 8, head.width() + 32, 12))
    crown = QPainterPath()
    crown.addRoundedRect(QRectF(head.left() + 4, head.top() - 12, head.width() - 8, 26), 8, 8)
    p.setBrush(C("#121212"))
    p.drawPath(brim.united(crown))
    p.setPen(QPen(C("#bdbdbd", 200), 1.6))
    p.setBrush(Qt.NoBrush)
    p.drawArc(head.adjusted(2, 2, -2, -2), -70 * 16, 100 * 16)
    p.setPen(Qt.NoPen)
    for _ in range(500):  # film grain
        p.setBrush(C("#ffffff", rng.randint(6, 26)))
        p.drawRect(QRectF(rng.uniform(0, W), rng.uniform(0, H), 1, 1))


STYLES = {
    "anime-cel": anime_cel,
    "watercolor": watercolor,
    "oil-painting": oil_painting,
    "pixel-art": pixel_art,
    "cyberpunk-neon": cyberpunk_neon,
    "claymation": claymation,
    "pencil-sketch": pencil_sketch,
    "ukiyo-e": ukiyo_e,
    "comic-ink": comic_ink,
    "toon-3d": toon_3d,
    "vaporwave": vaporwave,
    "film-noir": film_noir,
}


def render(style: str) -> QImage:
    img = QImage(W, H, QImage.Format_RGB32)
    img.fill(QColor("#000000"))
    p = QPainter(img)
    p.setRenderHint(QPainter.Antialiasing)
    STYLES[style](p, random.Random(sum(map(ord, style))))
    p.end()
    return img


def save_small(img: QImage, path: Path) -> int:
    """PNG under MAX_BYTES: full colour if it fits, else a dithered 256-colour palette."""
    img.save(str(path), "PNG", 0)
    if path.stat().st_size > MAX_BYTES:
        img.convertToFormat(QImage.Format_Indexed8, Qt.DiffuseDither).save(str(path), "PNG", 0)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    _ = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    out = Path(argv[0]) if argv else HERE
    for style in STYLES:
        n = save_small(render(style), out / f"{style}.png")
        print(f"{style}.png {n} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
