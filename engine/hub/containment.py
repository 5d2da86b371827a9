"""Names from the hub as paths under the models folder: a name that could leave it is refused before anything is
written or deleted, and so is a folder that leads out of it through a link."""

from __future__ import annotations

import os
from pathlib import Path

from sdv2_studio.engine.errors import EngineError


def unsafe_name(name: object) -> str | None:
    """Why a file name listed by the hub cannot be a path under the models folder (None: it can)."""
    if not isinstance(name, str) or not name:
        return "not a file name"
    if name.startswith("/"):
        return "an absolute path"
    if any(c in "\\:" or ord(c) < 32 or ord(c) == 127 for c in name):
        return "a backslash, colon or control character"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "a '..', '.' or empty path segment"
    return None


def local_path(base: Path, rel: str) -> Path:
    """`base/rel` for a checked name, refusing one whose folder leads out of `base` through a link. The file itself
    may be a link to a file (made by --link): it is read through, and removed (never written through) when the hub's
    copy replaces it; a link to nothing (a disk not mounted?) or to a folder stops everything."""
    path = base / rel
    if not path.parent.resolve().is_relative_to(base.resolve()):
        raise EngineError(f"{path} leads outside {base} (through a link): remove the link or pass --dir FOLDER")
    if path.is_symlink() and not path.is_file():
        what = "not a file" if path.exists() else "missing (a disk not mounted?)"
        raise EngineError(f"{path} is a link to {os.readlink(path)}, which is {what}: fix or remove the link")
    return path
