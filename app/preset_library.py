"""PresetLibrary: the presets the app shows (shipped + the user's) and the operations on the user's (Qt-free)."""

from __future__ import annotations

import os
from pathlib import Path

from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.presets import (
    DEFAULT_ORDER,
    Preset,
    delete_preset,
    export_preset,
    import_preset,
    load_presets,
    save_preset,
    shipped_presets_dir,
    unique_id,
    user_presets_dir,
)


class PresetLibrary:
    def __init__(self, shipped_dir: str | os.PathLike | None = None, user_dir: str | os.PathLike | None = None):
        self.shipped_dir = Path(shipped_dir) if shipped_dir is not None else shipped_presets_dir()
        self.user_dir = Path(user_dir) if user_dir is not None else user_presets_dir()
        self.presets: list[Preset] = []

    def reload(self) -> list[str]:
        """Read both folders again; returns one message per bad file (corrupt user files are moved aside)."""
        dirs = [d for d in (self.shipped_dir, self.user_dir) if d is not None]
        self.presets, errors = load_presets(dirs, backup_dirs=[self.user_dir],
                                            builtin_dirs=[self.shipped_dir] if self.shipped_dir else [])
        return [str(e) for e in errors]

    def get(self, preset_id: str | None) -> Preset | None:
        return next((p for p in self.presets if p.id == preset_id), None)

    def _ids(self) -> set[str]:
        return {p.id for p in self.presets}

    def save_edits(self, preset: Preset, controls: Controls) -> Preset:
        if preset.builtin:
            raise EngineError(f"'{preset.name}' ships with the app; use 'Save as new' to keep your changes")
        saved = save_preset(preset.replace(controls=controls), self.user_dir)
        self.reload()
        return saved

    def save_new(self, name: str, controls: Controls, base: Preset | None = None) -> Preset:
        name = name.strip()
        if not name:
            raise EngineError("give the new preset a name")
        pid = unique_id(name, self.user_dir, self._ids())
        src = base or Preset(id=pid, name=name, controls=controls)
        fresh = src.replace(id=pid, name=name, controls=controls, builtin=False, path=None, order=DEFAULT_ORDER)
        saved = save_preset(fresh, self.user_dir)
        self.reload()
        return saved

    def duplicate(self, preset: Preset, controls: Controls | None = None) -> Preset:
        return self.save_new(f"{preset.name} copy"[:60], controls or preset.controls, base=preset)

    def delete(self, preset: Preset) -> None:
        delete_preset(preset)
        self.reload()

    def import_file(self, path: str | os.PathLike) -> Preset:
        p = import_preset(path, self.user_dir, taken=self._ids())
        self.reload()
        return p

    def export(self, preset: Preset, path: str | os.PathLike) -> Path:
        return export_preset(preset, path)
