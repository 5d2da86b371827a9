"""PyInstaller entry point for the bundled app (installer/studio.spec)."""

import multiprocessing
import sys

from sdv2_studio.app.main import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # the engine may spawn pipeline ranks
    sys.exit(main())
