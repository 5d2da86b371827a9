"""PresetController: connects the gallery and the editor to the preset library, asks the user for names, files
and confirmations, and tells the window which controls to apply (`applyControls`) and what to report (`message`).
Every action also has a dialog-free form (name=, path=, confirm=False) for tests and scripts."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox, QWidget
from sdv2_studio.app.preset_editor import PresetEditor
from sdv2_studio.app.preset_gallery import PresetGallery
from sdv2_studio.app.preset_library import PresetLibrary
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.presets import Preset


class PresetController(QObject):
    applyControls = Signal(object)  # the Controls to stream with (the engine applies them at its next chunk)
    presetChanged = Signal(object)  # the active Preset (or None)
    message = Signal(str, str)  # text, level ("info" | "warn" | "error")

    def __init__(self, library: PresetLibrary, gallery: PresetGallery, editor: PresetEditor,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.library, self.gallery, self.editor = library, gallery, editor
        self._parent = parent
        self.current: Preset | None = None
        gallery.presetActivated.connect(self.activate)
        editor.controlsEdited.connect(self.applyControls.emit)
        editor.saveRequested.connect(lambda: self.save())
        editor.saveAsRequested.connect(lambda: self.save_as())
        editor.duplicateRequested.connect(lambda: self.duplicate())
        editor.deleteRequested.connect(lambda: self.delete())
        editor.importRequested.connect(lambda: self.import_file())
        editor.exportRequested.connect(lambda: self.export_to())

    def reload(self, select: str | None = None) -> None:
        for err in self.library.reload():
            self.message.emit(err, "warn")
        keep = select or (self.current.id if self.current else None)
        self.gallery.setPresets(self.library.presets, keep)
        self.current = self.library.get(keep)

    def activate(self, preset: Preset) -> None:
        """Make `preset` the current style: show it and apply it at the next chunk."""
        self.current = preset
        self.gallery.setCurrent(preset.id)
        self.editor.setPreset(preset)
        self.presetChanged.emit(preset)
        self.applyControls.emit(preset.controls)

    def activate_index(self, index: int) -> bool:
        return self.gallery.activateIndex(index)

    def _fail(self, e: EngineError | OSError) -> None:
        self.message.emit(str(e) if isinstance(e, EngineError) else f"{e.strerror or e}: {e.filename}", "error")

    def _select(self, preset: Preset) -> None:
        self.gallery.setPresets(self.library.presets, preset.id)
        self.current = self.library.get(preset.id) or preset
        self.editor.setPreset(self.current)
        self.presetChanged.emit(self.current)

    # -- actions -----------------------------------------------------------------------------------------------------

    def save(self) -> Preset | None:
        if self.current is None:
            return self.save_as()
        try:
            saved = self.library.save_edits(self.current, self.editor.controls())
        except (EngineError, OSError) as e:
            self._fail(e)
            return None
        self._select(saved)
        self.message.emit(f"saved '{saved.name}'", "info")
        return saved

    def save_as(self, name: str | None = None) -> Preset | None:
        if name is None:
            suggested = f"{self.current.name} (mine)" if self.current else "My style"
            name, ok = QInputDialog.getText(self._parent, "Save as new preset", "Name:", text=suggested)
            if not ok:
                return None
        try:
            saved = self.library.save_new(name, self.editor.controls(), base=self.current)
        except (EngineError, OSError) as e:
            self._fail(e)
            return None
        self._select(saved)
        self.message.emit(f"saved '{saved.name}' to your presets", "info")
        return saved

    def duplicate(self) -> Preset | None:
        if self.current is None:
            return self.save_as()
        try:
            saved = self.library.duplicate(self.current, self.editor.controls())
        except (EngineError, OSError) as e:
            self._fail(e)
            return None
        self._select(saved)
        return saved

    def delete(self, confirm: bool = True) -> bool:
        p = self.current
        if p is None:
            return False
        if confirm and QMessageBox.question(self._parent, "Delete preset",
                                            f"Delete '{p.name}'? This removes {p.path}.") != QMessageBox.Yes:
            return False
        try:
            self.library.delete(p)
        except (EngineError, OSError) as e:
            self._fail(e)
            return False
        self.current = None
        self.gallery.setPresets(self.library.presets, None)
        self.editor.setPreset(None)
        self.presetChanged.emit(None)
        self.message.emit(f"deleted '{p.name}'", "info")
        return True

    def import_file(self, path: str | None = None) -> Preset | None:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self._parent, "Import preset", str(Path.home()),
                                                  "Preset files (*.toml)")
            if not path:
                return None
        try:
            p = self.library.import_file(path)
        except (EngineError, OSError) as e:
            self._fail(e)
            return None
        self._select(p)
        self.message.emit(f"imported '{p.name}'", "info")
        return p

    def export_to(self, path: str | None = None) -> Path | None:
        try:
            controls = self.editor.controls()
        except EngineError as e:
            self._fail(e)
            return None
        p = (self.current or Preset(id="custom", name="Custom style", controls=controls)).replace(controls=controls)
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self._parent, "Export preset", str(Path.home() / f"{p.id}.toml"),
                                                  "Preset files (*.toml)")
            if not path:
                return None
        try:
            out = self.library.export(p, path)
        except (EngineError, OSError) as e:
            self._fail(e)
            return None
        self.message.emit(f"exported to {out}", "info")
        return out
