"""`sdv2-studio`: the desktop app entry point."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdv2-studio", description="StreamDiffusionV2 Studio: live video styles for "
                                "creators, with OBS and virtual-camera output.")
    p.add_argument("--screenshot", metavar="PATH", help="run the tiny model on the test source, save a PNG of the "
                   "window to PATH and exit")
    p.add_argument("--seconds", type=float, default=5.0, help="with --screenshot: seconds to stream first (5)")
    p.add_argument("--tab", choices=("style", "engine", "output"), default="style",
                   help="with --screenshot: the side tab to show (style)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError as e:
        print(f"sdv2-studio: error: the desktop app needs PySide6 ({e}); install it with "
              "pip install 'streamdiffusion-studio[gui]'", file=sys.stderr)
        return 2

    from sdv2_studio.app.theme import apply_theme

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("StreamDiffusionV2 Studio")
    app.setDesktopFileName("sdv2-studio")
    apply_theme(app)
    from sdv2_studio.app.icon import app_icon

    app.setWindowIcon(app_icon())
    if args.screenshot:
        from sdv2_studio.app.screenshot import run_screenshot

        return run_screenshot(app, args.screenshot, args.seconds, tab=args.tab)

    from sdv2_studio.app.main_window import MainWindow
    from sdv2_studio.app.settings import SettingsStore

    store = SettingsStore()
    settings, notes = store.load()
    window = MainWindow(settings=settings, store=store)
    window.show()
    for note in notes:
        window.banner.showMessage(note, "warn")
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
