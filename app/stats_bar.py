"""StatsBar: the status-bar readout: state, fps, latency p50/p99, deadline misses, drops, device and memory.

Every figure has a tooltip saying what it measures. Latency and deadline misses are coloured against the latency
budget (Engine tab): green within it, amber when a few frames miss it, red when many do (`miss_level`)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QWidget
from sdv2_studio.app import theme
from sdv2_studio.app.engine_worker import IDLE, LOADING, RUNNING, STOPPING, FrameRate, LiveStats

_STATE = {IDLE: ("Idle", theme.FAINT), LOADING: ("Loading", theme.WARN), RUNNING: ("Live", theme.OK),
          STOPPING: ("Stopping", theme.WARN)}
_LEVEL_COLOUR = {"ok": theme.OK, "warn": theme.WARN, "bad": theme.DANGER, "": theme.TEXT}
MISS_WARN, MISS_BAD = 0.02, 0.10  # share of this run's styled frames over the budget: amber, red above

TIPS = {
    "fps": f"Styled frames reaching your outputs per second, counted over the last {FrameRate.WINDOW:g} s.",
    "latency": "Time from a camera frame entering the engine to its styled frame being ready: the median (p50) "
               "and the slowest 1 % (p99) of this run. Coloured against the latency budget set in the Engine tab.",
    "misses": "Styled frames of this run that took longer than the latency budget (Engine tab), of all its "
              f"styled frames. Green: none or a few; amber: over {MISS_WARN:.0%}; red: over {MISS_BAD:.0%}. Lower "
              "the steps or the resolution, or raise the budget.",
    "drops": "Frames skipped in this run: camera frames the engine had no time for, plus styled frames no output "
             "took in time. The stream stays live by dropping instead of falling behind.",
    "device": "Where the model runs, and the memory this app uses there.",
}


def miss_level(misses: int, frames: int) -> str:
    """"ok" | "warn" | "bad" for `misses` deadline misses among `frames` styled frames ("" before the first)."""
    if frames <= 0:
        return ""
    share = misses / frames
    return "bad" if share > MISS_BAD else "warn" if share > MISS_WARN else "ok"


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
        self.levels: dict[str, str] = {}  # figure -> "ok" | "warn" | "bad" as last coloured
        for w in (self.state, self.fps, self.latency, self.misses, self.drops):
            w.setTextFormat(Qt.RichText)
            lay.addWidget(w)
        lay.addStretch(1)
        self.device.setTextFormat(Qt.RichText)
        lay.addWidget(self.device)
        for key, tip in TIPS.items():
            getattr(self, key).setToolTip(tip)
        self.state.setToolTip("Idle, Loading (the model), Live (streaming) or Stopping.")
        self.setState(IDLE)
        self.reset()

    @staticmethod
    def _kv(key: str, value: str, level: str = "") -> str:
        return (f"<span style='color:{theme.FAINT}'>{key}</span>&nbsp;"
                f"<b style='color:{_LEVEL_COLOUR[level]}'>{value}</b>")

    def setState(self, state: str) -> None:
        text, colour = _STATE.get(state, (state, theme.FAINT))
        self.state.setText(f"<span style='color:{colour}'>●</span>&nbsp;<b>{text}</b>")

    def reset(self) -> None:
        for w, key in ((self.fps, "FPS"), (self.latency, "LATENCY p50/p99"), (self.misses, "DEADLINE MISSES"),
                       (self.drops, "DROPPED")):
            w.setText(self._kv(key, "–"))
        self.device.setText(self._kv("DEVICE", "–"))
        self.levels = {}

    def setStats(self, live: LiveStats) -> None:
        s = live.stats
        budget_ms = live.budget * 1e3
        lat_level = "" if not budget_ms else "ok" if s.latency_p99 * 1e3 <= budget_ms else "warn"
        self.levels = {"latency": lat_level, "misses": miss_level(s.deadline_misses, s.frames_out)}
        self.fps.setText(self._kv("FPS", f"{live.fps:.1f}"))
        budget = f" (budget {budget_ms:.0f} ms)" if budget_ms else ""
        self.latency.setText(self._kv("LATENCY p50/p99", f"{s.latency_p50 * 1e3:.0f} / "
                                      f"{s.latency_p99 * 1e3:.0f} ms{budget}", lat_level))
        self.misses.setText(self._kv("DEADLINE MISSES", f"{s.deadline_misses} of {s.frames_out}",
                                     self.levels["misses"]))
        self.drops.setText(self._kv("DROPPED", str(s.dropped_in + s.dropped_out)))
        dev = live.device + (f" · {live.memory}" if live.memory else "")
        self.device.setText(self._kv("DEVICE", dev))
