"""The one user-facing error type.

An ``EngineError`` carries a single readable line that names the fix ("... run `sdv2 models download`").
The CLI prints it and exits non-zero; the app shows it in a dialog. Tracebacks are reserved for bugs.
"""


class EngineError(Exception):
    """A problem the user can fix (bad path, wrong checkpoint, missing device, ...)."""
