"""`sdv2-studio --screenshot PATH [--seconds N] [--tab style|engine|output]`: run the tiny model on the test source for
N seconds, save a PNG of the main window (with that side tab showing) and exit (for reviewing the UI and for the
screenshot test). Settings are not read or written."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from sdv2_studio.app.engine_worker import IDLE, RUNNING
from sdv2_studio.app.main_window import MainWindow
from sdv2_studio.app.settings import Settings

SIZE = (128, 128)  # the tiny model at 128x128 runs ~10 fps on two CPU cores


TABS = ("style", "engine", "output")


def run_screenshot(app: QApplication, path: str, seconds: float = 5.0, *, window_size=(1440, 900),
                   timeout: float = 180.0, tab: str = "style") -> int:
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = Settings(model="tiny", source="test", height=SIZE[0], width=SIZE[1], target_fps=12,
                        first_run_done=True, device="cpu")
    window = MainWindow(settings=settings, store=None, first_run=False, control=False)  # not discoverable
    window.resize(*window_size)
    window.tabs.setCurrentIndex(TABS.index(tab))
    window.show()
    result = {"code": 1, "saved": False, "ran": False}

    def save(code: int) -> None:
        if result["saved"]:
            return
        result["saved"] = True
        ok = window.grab().save(str(out), "PNG")
        result["code"] = code if ok else 1
        print(f"sdv2-studio: saved {out}" if ok else f"sdv2-studio: could not write {out}", file=sys.stderr)
        window.close()
        app.quit()

    def on_state(state: str) -> None:
        if state == RUNNING and not result["ran"]:
            result["ran"] = True
            QTimer.singleShot(int(seconds * 1000), lambda: save(0))
        elif state == IDLE and result["ran"] is False and not result["saved"]:
            QTimer.singleShot(500, lambda: save(1))  # the start failed: keep the error in the picture

    window.controller.stateChanged.connect(on_state)
    QTimer.singleShot(200, lambda: window.toggle_stream(confirm=False))
    QTimer.singleShot(int(timeout * 1000), lambda: save(1))
    app.exec()
    return result["code"]
