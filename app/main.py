"""`sdv2-studio`: the desktop app entry point."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("sdv2-studio: the desktop app is not built yet; use the `sdv2` command line meanwhile "
          "(`sdv2 run --help`).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
