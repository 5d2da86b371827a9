"""StatsBar: the status-bar readout: state, fps, latency p50/p99, deadline misses, drops, device and memory."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QWidget
from sdv2_studio.app import theme
from sdv2_studio.app.engine_worker import IDLE, LOADING, RUNNING, STOPPING, LiveStats

_STATE = {IDLE: ("Idle", theme.FAINT), LOADING: ("Loading", theme.WARN), RUNNING: ("Live", theme.OK),
          STOPPING: ("Stopping", theme.WARN)}


class StatsBar(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 2, 10, 2)
        lay.setSpacing(18)
        self.state = QLabel()
        self.fps = QLabel()
        self.latency = QLabel()
        self.misses = QLabel()
        self.drops = QLabel()
        self.device = QLabel()
        for w in (self.state, self.fps, self.latency, self.misses, self.drops):
            w.setTextFormat(Qt.RichText)
            lay.addWidget(w)
        lay.addStretch(1)
        self.device.setTextFormat(Qt.RichText)
        lay.addWidget(self.device)
        self.setState(IDLE)
        self.reset()

    @staticmethod
    def _kv(key: str, value: str) -> str:
        return f"<span style='color:{theme.FAINT}'>{key}</span>&nbsp;<b style='color:{theme.TEXT}'>{value}</b>"

    def setState(self, state: str) -> None:
        text, colour = _STATE.get(state, (state, theme.FAINT))
        self.state.setText(f"<span style='color:{colour}'>●</span>&nbsp;<b>{text}</b>")

    def reset(self) -> None:
        for w, key in ((self.fps, "FPS"), (self.latency, "LATENCY p50/p99"), (self.misses, "DEADLINE MISSES"),
                       (self.drops, "DROPPED")):
            w.setText(self._kv(key, "–"))
        self.device.setText(self._kv("DEVICE", "–"))

    def setStats(self, live: LiveStats) -> None:
        s = live.stats
        self.fps.setText(self._kv("FPS", f"{s.fps:.1f}"))
        self.latency.setText(self._kv("LATENCY p50/p99", f"{s.latency_p50 * 1e3:.0f} / {s.latency_p99 * 1e3:.0f} ms"))
        self.misses.setText(self._kv("DEADLINE MISSES", str(s.deadline_misses)))
        self.drops.setText(self._kv("DROPPED", str(s.dropped_in + s.dropped_out)))
        dev = live.device + (f" · {live.memory}" if live.memory else "")
        self.device.setText(self._kv("DEVICE", dev))
