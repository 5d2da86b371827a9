"""Where the bridge keeps its files (stdlib only: the OBS script imports this inside OBS's own Python).

The folder matches ``platformdirs.user_config_dir("streamdiffusion-studio", appauthor=False)``:
``$XDG_CONFIG_HOME/streamdiffusion-studio`` (default ``~/.config/...``) on Linux,
``~/Library/Application Support/streamdiffusion-studio`` on macOS and ``%LOCALAPPDATA%\\streamdiffusion-studio``
on Windows. ``$SDV2_CONFIG_DIR`` overrides it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_DIR = "streamdiffusion-studio"


def config_dir() -> Path:
    """The per-user config folder (not created)."""
    override = os.environ.get("SDV2_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP_DIR
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_DIR
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / APP_DIR


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the user only (0600 on POSIX), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        if sys.platform != "win32":
            os.fchmod(f.fileno(), 0o600)  # a stale temp file may have had wider permissions
        f.write(text)
    os.replace(tmp, path)
