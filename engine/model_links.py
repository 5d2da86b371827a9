"""`sdv2 models download --link FOLDER`: use model files the user already has instead of downloading them.

`LinkFolder(folder)` indexes the file names under FOLDER (a ComfyUI `models/` folder with diffusion_models/, vae/,
text_encoders/, or any folder), once. `find(rel, size)` picks the file that can stand in for the hub's file `rel`:
same file name, same size as the hub lists and, for a weights file whose kind the engine knows, the same kind of
network read from its header (`engine.checkpoint.identify`, as `sdv2 inspect` does). Every candidate must resolve to
a real file inside FOLDER; one that does not is reported, never followed. The caller (engine/hub/plan.py) checks the
content against the hub's hash and then `link()`s it: a symlink in the models folder, never a copy, never over an
existing file.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from sdv2_studio.engine.errors import EngineError


def expected_kind(name: str) -> str | None:
    """The kind `identify` must find in a weights file the hub lists under this name (others: name and size only)."""
    from sdv2_studio.engine.models import ORIGINAL_VAE
    from sdv2_studio.engine.text import WAN_T5_FILE

    return {"model.pt": "dit", ORIGINAL_VAE: "vae", WAN_T5_FILE: "text-encoder"}.get(name)


def _kind(path: Path) -> str | None:
    """What `identify` says the file is (None: not a model file it reads)."""
    from sdv2_studio.engine.checkpoint import identify

    try:
        return identify(path).kind
    except (EngineError, OSError, ValueError, RuntimeError):
        return None


class LinkFolder:
    """The files under one folder, by lower-case name; `notes` says why a same-named file was not used."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise EngineError(f"--link {folder}: no such folder; pass the folder that holds your model files (for "
                              "example ComfyUI/models)")
        self.real = self.folder.resolve()
        self.notes: list[str] = []
        self.by_name: dict[str, list[Path]] = {}
        for dirpath, dirnames, filenames in os.walk(self.real):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                self.by_name.setdefault(name.lower(), []).append(Path(dirpath) / name)

    def find(self, rel: str, size: int) -> Path | None:
        """The resolved file that can stand in for the hub's `rel` of `size` bytes, or None."""
        name = PurePosixPath(rel).name
        want = expected_kind(name)
        for path in self.by_name.get(name.lower(), []):
            target = path.resolve()
            if not target.is_file():
                self.notes.append(f"not linked: {path} is a broken link")
            elif not target.is_relative_to(self.real):
                self.notes.append(f"not linked: {path} leads outside {self.folder}")
            elif target.stat().st_size != size:
                self.notes.append(f"not linked: {path} has {target.stat().st_size:,} bytes, the hub's {rel} "
                                  f"{size:,}")
            elif want is not None and (kind := _kind(target)) != want:
                from sdv2_studio.engine.checkpoint import KINDS

                what = f"a {KINDS[kind]}" if kind else "not a model file"
                self.notes.append(f"not linked: {path} is {what}, not a {KINDS[want]}")
            else:
                return target
        return None


def link(target: Path, path: Path) -> None:
    """A symlink at `path` (in the models folder) to the user's file `target`; never replaces anything."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
    except FileExistsError:
        raise EngineError(f"{path} already exists; it was left as it is: remove it to link {target}") from None
    except OSError as e:
        raise EngineError(f"cannot link {path} to {target} ({e.strerror or e}): drop --link to download the file, "
                          "or on Windows enable Developer Mode (symlinks)") from None
