"""PresetEditor: edits the live `Controls` of the current style (prompt, a weighted blend of further prompts, steps,
noise scale, seed, transition) and offers the preset actions. It emits intents only: `controlsEdited(Controls)` with
the whole edited controls (a typed prompt joins them once the typing pauses, or on Apply; a blend weight at once),
and one signal per library action; `setPreset` / `setControls` / `setModified` / `setFrameRate` (the transition
shows in seconds at that rate) set its state."""

from __future__ import annotations

import dataclasses
import random

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from sdv2_studio.engine.config import MAX_BLEND, MAX_STEPS, MAX_TRANSITION, MAX_WEIGHT, CacheConfig, Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.presets import Preset


def _label(text: str, role: str) -> QLabel:
    lab = QLabel(text)
    lab.setProperty("role", role)
    return lab


def _weight_box(tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, MAX_WEIGHT)
    box.setDecimals(2)
    box.setSingleStep(0.05)
    box.setValue(1.0)
    box.setToolTip(tip)
    return box


class BlendRow(QWidget):
    """One more prompt of the blend: its text, its weight and a remove button."""

    def __init__(self, prompt: str = "", weight: float = 1.0, parent: QWidget | None = None):
        super().__init__(parent)
        self.text = QLineEdit(prompt)
        self.text.setPlaceholderText("Another look to mix in, e.g. 'neon glow'")
        self.weight = _weight_box("This prompt's weight in the blend (weights are normalised to sum to 1)")
        self.weight.setValue(weight)
        self.remove = QPushButton("✕")
        self.remove.setProperty("kind", "flat")
        self.remove.setToolTip("Remove this prompt from the blend")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.text, 1)
        row.addWidget(self.weight)
        row.addWidget(self.remove)

    def pair(self) -> tuple[str, float]:
        return self.text.text().strip(), self.weight.value()


class PresetEditor(QWidget):
    controlsEdited = Signal(object)  # Controls
    PROMPT_DELAY_MS = 1200  # a typed prompt goes live once the typing pauses this long
    saveRequested = Signal()
    saveAsRequested = Signal()
    duplicateRequested = Signal()
    deleteRequested = Signal()
    importRequested = Signal()
    exportRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._preset: Preset | None = None
        self._controls = Controls()  # what the widgets show, with the prompt as last applied
        self._loading = False

        self.title = _label("No preset", "title")
        self.subtitle = _label("", "muted")
        self.subtitle.setWordWrap(True)
        self.modified = _label("", "badge")
        self.modified.hide()

        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("Describe the look, e.g. 'watercolor painting, soft pastel washes'")
        self.prompt.setTabChangesFocus(True)
        self.prompt.setFixedHeight(96)
        self.apply_prompt = QPushButton("Apply prompt")
        self.apply_prompt.setProperty("kind", "primary")
        self.apply_prompt.setToolTip("The prompt goes to the stream by itself a moment after you stop typing, "
                                     "blending in over the transition; this sends it now (Ctrl+Enter)")
        self.apply_prompt.setEnabled(False)
        QShortcut(QKeySequence("Ctrl+Return"), self.prompt, activated=self._apply_prompt)
        # the blend (as Daydream Scope does): the prompt above at `prompt_weight`, plus weighted rows
        self.prompt_weight = _weight_box("The prompt's weight in the blend (weights are normalised to sum to 1)")
        self.prompt_weight_row = QWidget()
        pw = QHBoxLayout(self.prompt_weight_row)
        pw.setContentsMargins(0, 0, 0, 0)
        pw.addWidget(_label("Weight of the prompt above", "muted"), 1)
        pw.addWidget(self.prompt_weight)
        self.blend_rows: list[BlendRow] = []
        self.blend_box = QVBoxLayout()
        self.blend_box.setSpacing(6)
        self.add_blend = QPushButton("+ Blend in another prompt")
        self.add_blend.setProperty("kind", "flat")
        self.add_blend.setToolTip("Mix the look of several prompts by weight; weight changes blend in over the "
                                  "transition")
        self.blend_hint = _label("", "hint")
        self.blend_hint.setWordWrap(True)
        self.blend_hint.hide()

        self.steps = QSlider(Qt.Horizontal)
        self.steps.setRange(1, MAX_STEPS)
        self.steps.setPageStep(1)
        self.steps.setTickPosition(QSlider.TicksBelow)
        self.steps_value = _label("2", "value")
        self.noise = QSlider(Qt.Horizontal)
        self.noise.setRange(1, 100)
        self.noise_value = _label("0.80", "value")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.dice = QPushButton("Random")
        self.dice.setToolTip("New random seed")
        self.transition = QDoubleSpinBox()
        self.transition.setDecimals(2)
        self.transition.setSuffix(" s")
        self.transition.setToolTip("How long a switch to this style (or a prompt edit) blends in, in seconds at the "
                                   "target rate (0 = instant). The engine blends per chunk of "
                                   f"{CacheConfig().chunk_pixels} frames, so the value snaps to whole chunks.")
        self.setFrameRate(16.0)

        grid = QGridLayout()
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(10)
        grid.addWidget(_label("Quality steps", "muted"), 0, 0)
        grid.addWidget(self.steps, 0, 1)
        grid.addWidget(self.steps_value, 0, 2)
        grid.addWidget(_label("Style strength", "muted"), 1, 0)
        grid.addWidget(self.noise, 1, 1)
        grid.addWidget(self.noise_value, 1, 2)
        grid.addWidget(_label("Seed", "muted"), 2, 0)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.dice)
        grid.addLayout(seed_row, 2, 1, 1, 2)
        grid.addWidget(_label("Transition", "muted"), 3, 0)
        grid.addWidget(self.transition, 3, 1, 1, 2)
        grid.setColumnStretch(1, 1)

        self.save = QPushButton("Save")
        self.save.setToolTip("Save the changes to this preset (your own presets only)")
        self.save_as = QPushButton("Save as new…")
        self.more = QPushButton("More ▾")
        menu = QMenu(self.more)
        self.action_duplicate = menu.addAction("Duplicate", self.duplicateRequested.emit)
        self.action_delete = menu.addAction("Delete", self.deleteRequested.emit)
        menu.addSeparator()
        self.action_import = menu.addAction("Import preset file…", self.importRequested.emit)
        self.action_export = menu.addAction("Export preset file…", self.exportRequested.emit)
        self.more.setMenu(menu)

        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.modified)
        prompt_row = QHBoxLayout()
        prompt_row.addStretch(1)
        prompt_row.addWidget(self.apply_prompt)
        actions = QHBoxLayout()
        actions.addWidget(self.save)
        actions.addWidget(self.save_as)
        actions.addStretch(1)
        actions.addWidget(self.more)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(10)
        lay.addLayout(head)
        lay.addWidget(self.subtitle)
        lay.addWidget(_label("PROMPT", "section"))
        lay.addWidget(self.prompt)
        lay.addWidget(self.prompt_weight_row)
        lay.addLayout(self.blend_box)
        lay.addWidget(self.blend_hint)
        prompt_row.insertWidget(0, self.add_blend)
        lay.addLayout(prompt_row)
        lay.addWidget(_label("CONTROLS", "section"))
        lay.addLayout(grid)
        lay.addSpacing(4)
        lay.addLayout(actions)

        self._prompt_timer = QTimer(self, singleShot=True, interval=self.PROMPT_DELAY_MS)
        self._prompt_timer.timeout.connect(self._apply_prompt)
        self._noise_timer = QTimer(self, singleShot=True, interval=150)
        self._noise_timer.timeout.connect(lambda: self._edit(noise_scale=self.noise.value() / 100))
        self.prompt.textChanged.connect(self._prompt_changed)
        self.apply_prompt.clicked.connect(self._apply_prompt)
        self.prompt_weight.valueChanged.connect(self._blend_weight_changed)
        self.add_blend.clicked.connect(lambda: self._add_blend_row().text.setFocus())
        self.steps.valueChanged.connect(self._steps_changed)
        self.noise.valueChanged.connect(self._noise_changed)
        self.seed.valueChanged.connect(lambda v: self._edit(seed=int(v)))
        self.dice.clicked.connect(lambda: self.seed.setValue(random.randrange(0, 2**31 - 1)))
        self.transition.valueChanged.connect(lambda v: self._edit(transition_chunks=self._chunks(v)))
        self.save.clicked.connect(self.saveRequested.emit)
        self.save_as.clicked.connect(self.saveAsRequested.emit)
        self.setPreset(None)

    # -- state ------------------------------------------------------------------------------------------------------

    def setPreset(self, preset: Preset | None) -> None:
        self._preset = preset
        if preset is None:
            self.title.setText("Custom style")
            self.subtitle.setText("Type a prompt, or pick a preset below.")
            self.apply_prompt.setEnabled(False)
        else:
            self.title.setText(preset.name)
            where = "Shipped preset" if preset.builtin else "Your preset"
            tags = "  ·  ".join(preset.tags)
            self.subtitle.setText(f"{where}{'  ·  ' + tags if tags else ''}\n{preset.description}".strip())
            self.setControls(preset.controls)
        self.setModified(False)

    def preset(self) -> Preset | None:
        return self._preset

    def setModified(self, modified: bool) -> None:
        self.modified.setText("MODIFIED")
        self.modified.setVisible(modified)
        user = self._preset is not None and not self._preset.builtin
        self.save.setEnabled(modified and user)
        self.action_delete.setEnabled(user)
        self.action_export.setEnabled(self._preset is not None or bool(self.prompt.toPlainText().strip()))

    def controls(self) -> Controls:
        """The controls as shown, the prompts and blend as typed (what Save and Start use); EngineError for an empty
        prompt or a blend whose weights are all 0."""
        return self._controls.with_prompts(self._typed_prompts())

    def _typed_prompts(self) -> list[tuple[str, float]]:
        """(prompt, weight) as shown: the main prompt first, then the blend rows with text."""
        rows = [r.pair() for r in self.blend_rows if r.pair()[0]]
        return [(self.prompt.toPlainText().strip(), self.prompt_weight.value() if rows else 1.0), *rows]

    def _add_blend_row(self, prompt: str = "", weight: float = 1.0) -> BlendRow:
        row = BlendRow(prompt, weight)
        row.text.textEdited.connect(lambda _text: self._prompt_changed())
        row.text.returnPressed.connect(self._apply_prompt)
        row.weight.valueChanged.connect(self._blend_weight_changed)
        row.remove.clicked.connect(lambda: self._remove_blend_row(row))
        self.blend_rows.append(row)
        self.blend_box.addWidget(row)
        self._sync_blend()
        return row

    def _remove_blend_row(self, row: BlendRow) -> None:
        self.blend_rows.remove(row)
        row.deleteLater()
        self._sync_blend()
        self._apply_prompt()

    def _sync_blend(self) -> None:
        self.prompt_weight_row.setVisible(bool(self.blend_rows))
        self.add_blend.setEnabled(len(self.blend_rows) + 1 < MAX_BLEND)

    def _blend_weight_changed(self) -> None:
        if not self._loading:
            self._apply_prompt()  # a weight goes live at once (with the transition)

    def setControls(self, controls: Controls) -> None:
        """Show `controls` without emitting (a preset, restored settings)."""
        self._controls = controls
        self._loading = True
        try:
            self.prompt.setPlainText(controls.prompt)
            for row in self.blend_rows:
                row.deleteLater()
            self.blend_rows = []
            for p, w in controls.blend:
                self._add_blend_row(p, w)
            self.prompt_weight.setValue(controls.prompt_weight)
            self._sync_blend()
            self.blend_hint.hide()
            self.steps.setValue(controls.steps)
            self.noise.setValue(round(controls.noise_scale * 100))
            self.seed.setValue(min(controls.seed, self.seed.maximum()))
            self.transition.setValue(controls.transition_chunks * self._chunk_s)
            self._sync_labels()
            self.apply_prompt.setEnabled(False)
            self._prompt_timer.stop()
        finally:
            self._loading = False

    def setFrameRate(self, fps: float) -> None:
        """The stream's target rate: what a chunk lasts, so the transition shows in seconds."""
        chunks = self._controls.transition_chunks
        self._chunk_s = CacheConfig().chunk_pixels / max(1.0, fps)
        was, self._loading = self._loading, True
        try:
            self.transition.setSingleStep(self._chunk_s)
            self.transition.setRange(0.0, MAX_TRANSITION * self._chunk_s)
            self.transition.setValue(chunks * self._chunk_s)
        finally:
            self._loading = was

    def _chunks(self, seconds: float) -> int:
        return max(0, min(MAX_TRANSITION, round(seconds / self._chunk_s)))

    # -- intents ----------------------------------------------------------------------------------------------------

    def _sync_labels(self) -> None:
        self.steps_value.setText(str(self.steps.value()))
        self.noise_value.setText(f"{self.noise.value() / 100:.2f}")

    def _edit(self, **change) -> None:
        if self._loading:
            return
        self._controls = dataclasses.replace(self._controls, **change)
        self.setModified(True)
        self.controlsEdited.emit(self._controls)

    def _prompt_changed(self) -> None:
        if not self._loading:
            typed = bool(self.prompt.toPlainText().strip())
            self.apply_prompt.setEnabled(typed)
            self.setModified(True)
            if typed:
                self._prompt_timer.start()  # live: applied once the typing pauses

    def _apply_prompt(self) -> None:
        """The prompt and the blend as typed go live (when they changed)."""
        self._prompt_timer.stop()
        if not self.prompt.toPlainText().strip():
            return
        try:
            new = self._controls.with_prompts(self._typed_prompts())
        except EngineError as e:  # e.g. every weight 0: say so, keep streaming what was applied
            self.blend_hint.setText(str(e)[0].upper() + str(e)[1:])
            self.blend_hint.show()
            return
        self.blend_hint.hide()
        self.apply_prompt.setEnabled(False)
        if new != self._controls:
            self._edit(prompt=new.prompt, prompt_weight=new.prompt_weight, blend=new.blend)

    def _steps_changed(self, value: int) -> None:
        self._sync_labels()
        self._edit(steps=int(value))

    def _noise_changed(self, value: int) -> None:
        self._sync_labels()
        if not self._loading:
            self.setModified(True)
            self._noise_timer.start()
