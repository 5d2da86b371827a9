"""The dark creator theme: one palette, one style sheet, a few named colours the custom-painted widgets share."""

from __future__ import annotations

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

BG = "#0e1016"
PANEL = "#151821"
CARD = "#1c202b"
CARD_HI = "#242938"
BORDER = "#2a3040"
TEXT = "#e8eaf0"
MUTED = "#9199ab"
FAINT = "#5f6678"
ACCENT = "#8b5cf6"  # violet
ACCENT_2 = "#22d3ee"  # cyan
OK = "#22c55e"
WARN = "#f59e0b"
DANGER = "#ef4444"

STYLE = f"""
QWidget {{ color: {TEXT}; font-size: 10pt; }}
QMainWindow, QDialog {{ background: {BG}; }}
QWidget#Header {{ background: {PANEL}; border-bottom: 1px solid {BORDER}; }}
QWidget#SidePanel {{ background: {PANEL}; border-left: 1px solid {BORDER}; }}
QFrame#Card {{ background: {CARD}; border: 1px solid {BORDER}; border-radius: 10px; }}
QLabel {{ background: transparent; }}
QLabel[role="title"] {{ font-size: 13pt; font-weight: 600; }}
QLabel[role="brand"] {{ font-size: 13pt; font-weight: 700; letter-spacing: 0.5px; }}
QLabel[role="section"] {{ color: {MUTED}; font-size: 8pt; font-weight: 700; letter-spacing: 1.2px; }}
QLabel[role="muted"] {{ color: {MUTED}; }}
QLabel[role="value"] {{ color: {TEXT}; font-weight: 600; }}
QLabel[role="badge"] {{ background: {CARD_HI}; border: 1px solid {BORDER}; border-radius: 9px; padding: 2px 9px;
    color: {MUTED}; font-size: 8.5pt; font-weight: 600; }}
QLabel[role="badge"][level="warn"] {{ color: #1a1206; background: {WARN}; border-color: {WARN}; }}
QLabel[role="badge"][level="ok"] {{ color: #04130a; background: {OK}; border-color: {OK}; }}
QLabel[role="badge"][level="no"] {{ color: white; background: {DANGER}; border-color: {DANGER}; }}
QLabel[role="hint"][level="ok"] {{ color: {OK}; }}
QLabel[role="hint"][level="tight"] {{ color: {WARN}; }}
QLabel[role="hint"][level="no"] {{ color: {DANGER}; font-weight: 600; }}
QLabel[role="hint"] {{ color: {MUTED}; }}

QPushButton {{ background: {CARD_HI}; border: 1px solid {BORDER}; border-radius: 8px; padding: 6px 14px; }}
QPushButton:hover {{ border-color: {ACCENT}; }}
QPushButton:pressed {{ background: {BORDER}; }}
QPushButton:disabled {{ color: {FAINT}; border-color: {CARD_HI}; }}
QPushButton[kind="primary"] {{ background: {ACCENT}; border: none; color: white; font-weight: 600; }}
QPushButton[kind="primary"]:hover {{ background: #9d74ff; }}
QPushButton[kind="start"] {{ background: {OK}; border: none; color: #04130a; font-size: 12pt; font-weight: 700;
    border-radius: 10px; padding: 8px 26px; }}
QPushButton[kind="start"]:hover {{ background: #3fd874; }}
QPushButton[kind="start"][state="running"] {{ background: {DANGER}; color: white; }}
QPushButton[kind="start"][state="running"]:hover {{ background: #f25f5f; }}
QPushButton[kind="start"][state="busy"] {{ background: {CARD_HI}; color: {MUTED}; border: 1px solid {BORDER}; }}
QPushButton[kind="toggle"] {{ border-radius: 15px; padding: 5px 14px; color: {MUTED}; font-weight: 600; }}
QPushButton[kind="toggle"]:checked {{ background: rgba(139, 92, 246, 0.22); border-color: {ACCENT}; color: {TEXT}; }}
QPushButton[kind="toggle"][failed="true"] {{ border-color: {DANGER}; color: {DANGER}; }}
QPushButton[kind="toggle"]:disabled {{ color: {FAINT}; border-style: dashed; }}
QPushButton[kind="flat"] {{ background: transparent; border: none; color: {MUTED}; padding: 4px 8px; }}
QPushButton[kind="flat"]:hover {{ color: {TEXT}; }}

QComboBox, QLineEdit, QSpinBox, QDoubleSpinBox, QPlainTextEdit {{ background: {BG}; border: 1px solid {BORDER};
    border-radius: 7px; padding: 5px 8px; selection-background-color: {ACCENT}; }}
QComboBox:focus, QLineEdit:focus, QSpinBox:focus, QDoubleSpinBox:focus, QPlainTextEdit:focus {{
    border-color: {ACCENT}; }}
QComboBox::drop-down {{ border: none; width: 22px; }}
QComboBox QAbstractItemView {{ background: {CARD}; border: 1px solid {BORDER}; selection-background-color: {ACCENT};
    outline: none; }}
QComboBox QAbstractItemView::item:disabled {{ color: {FAINT}; }}
QSpinBox::up-button, QSpinBox::down-button, QDoubleSpinBox::up-button, QDoubleSpinBox::down-button {{
    width: 0px; border: none; }}

QSlider::groove:horizontal {{ height: 4px; background: {BORDER}; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: white; width: 14px; height: 14px; margin: -6px 0; border-radius: 7px; }}

QTabWidget::pane {{ border: none; }}
QTabBar::tab {{ background: transparent; color: {MUTED}; padding: 8px 16px; border: none;
    border-bottom: 2px solid transparent; font-weight: 600; }}
QTabBar::tab:selected {{ color: {TEXT}; border-bottom-color: {ACCENT}; }}
QTabBar::tab:hover {{ color: {TEXT}; }}

QScrollArea {{ background: transparent; border: none; }}
QScrollArea > QWidget > QWidget {{ background: transparent; }}
QScrollBar:vertical, QScrollBar:horizontal {{ background: transparent; width: 8px; height: 8px; margin: 0; }}
QScrollBar::handle {{ background: {BORDER}; border-radius: 4px; min-height: 24px; min-width: 24px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ width: 0; height: 0; }}

QStatusBar {{ background: {PANEL}; border-top: 1px solid {BORDER}; color: {MUTED}; }}
QStatusBar::item {{ border: none; }}
QProgressBar {{ background: {BG}; border: 1px solid {BORDER}; border-radius: 5px; height: 10px; text-align: center;
    color: {MUTED}; font-size: 8pt; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 4px; }}
QCheckBox {{ spacing: 8px; }}
QCheckBox::indicator {{ width: 16px; height: 16px; border-radius: 4px; border: 1px solid {BORDER}; background: {BG}; }}
QCheckBox::indicator:checked {{ background: {ACCENT}; border-color: {ACCENT}; }}
QToolTip {{ background: {CARD}; color: {TEXT}; border: 1px solid {BORDER}; padding: 6px; }}
QMenu {{ background: {CARD}; border: 1px solid {BORDER}; padding: 4px; }}
QMenu::item {{ padding: 6px 20px; border-radius: 5px; }}
QMenu::item:selected {{ background: {ACCENT}; }}
QFrame#Banner {{ background: rgba(239, 68, 68, 0.16); border: 1px solid {DANGER}; border-radius: 8px; }}
QFrame#Banner[level="info"] {{ background: rgba(34, 211, 238, 0.12); border-color: {ACCENT_2}; }}
QFrame#Banner[level="warn"] {{ background: rgba(245, 158, 11, 0.14); border-color: {WARN}; }}
"""


def apply_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    pal = QPalette()
    for role, colour in ((QPalette.Window, BG), (QPalette.WindowText, TEXT), (QPalette.Base, BG),
                         (QPalette.AlternateBase, PANEL), (QPalette.Text, TEXT), (QPalette.Button, CARD_HI),
                         (QPalette.ButtonText, TEXT), (QPalette.Highlight, ACCENT),
                         (QPalette.HighlightedText, "#ffffff"), (QPalette.ToolTipBase, CARD),
                         (QPalette.ToolTipText, TEXT), (QPalette.PlaceholderText, FAINT)):
        pal.setColor(role, QColor(colour))
    app.setPalette(pal)
    font = QFont(app.font())
    font.setPointSizeF(10)
    app.setFont(font)
    app.setStyleSheet(STYLE)


def repolish(widget) -> None:
    """Re-apply the style sheet after a dynamic property used in a selector changed."""
    widget.style().unpolish(widget)
    widget.style().polish(widget)
    widget.update()
