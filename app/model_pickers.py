"""File pickers for the model files of the Engine tab (DiT, VAE, text encoder, tokenizer, LoRAs), each showing
what `sdv2 inspect` says about the picked file (engine.checkpoint.identify: kind, layout, parameters, dtype), or
one line when the file is of the wrong kind (then the pick is not kept).

`FilePicker.setPath(path)` and `LoraList.addLora(path, strength)` are what the Browse buttons call (and tests)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from sdv2_studio.engine.checkpoint import KINDS, identify
from sdv2_studio.engine.config import MAX_LORA_STRENGTH, parse_lora_spec
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.text import describe_tokenizer

WEIGHTS_FILTER = "Model files (*.safetensors *.pth *.pt *.bin);;All files (*)"


def describe_pick(path: str, kind: str) -> tuple[bool, str]:
    """(ok, the line shown beside a picked file): what `sdv2 inspect` says when it is a `kind` file ("dit", "vae",
    "text-encoder", "lora" or "tokenizer"), else why it cannot be used."""
    if kind == "tokenizer":
        found = describe_tokenizer(path) if Path(path).expanduser().exists() else None
        return (True, found) if found else (False, f"{Path(path).name} is not a tokenizer: pick the google/umt5-xxl "
                                                   "or tokenizer/ folder, or a spiece.model file")
    try:
        info = identify(path)
    except EngineError as e:
        return False, str(e)
    if info.kind != kind:
        return False, (f"this is a {KINDS[info.kind]} ({info.summary}), not a {KINDS[kind]}: pick the "
                       f"{KINDS[kind]} file")
    return True, (f"{KINDS[kind]}: {info.summary} · layout {info.layout} · {info.num_params:,} params · "
                  f"{', '.join(info.dtypes)}")


def _summary_label() -> QLabel:
    lab = QLabel()
    lab.setProperty("role", "muted")
    lab.setWordWrap(True)
    return lab


class FilePicker(QWidget):
    """One model file: its path, Browse / clear buttons, and the inspect summary (or the error) below."""

    pathChanged = Signal(str)  # a usable path of the wanted kind, or "" when cleared

    def __init__(self, kind: str, empty: str, *, folder: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.kind, self.folder, self.empty = kind, folder, empty
        self.line = QLineEdit()
        self.line.setReadOnly(True)
        self.line.setPlaceholderText(empty)
        self.browse = QPushButton("Browse…")
        self.clear = QPushButton("×")
        self.clear.setProperty("kind", "flat")
        self.clear.setToolTip("Use the model folder's own")
        self.summary = _summary_label()
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.line, 1)
        row.addWidget(self.browse)
        row.addWidget(self.clear)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(row)
        lay.addWidget(self.summary)
        self.browse.clicked.connect(self._browse)
        self.clear.clicked.connect(lambda: self.setPath(""))
        self.ok = True

    def path(self) -> str:
        return self.line.text()

    def setPath(self, path: str, *, emit: bool = True) -> bool:
        """Pick `path` ("" clears). A file of the wrong kind is not kept: its error is shown instead. True if
        kept."""
        if path and path == self.path() and self.ok:
            if emit:
                self.pathChanged.emit(path)
            return True
        if not path:
            self.ok = True
            self.line.setText("")
            self.summary.setText("")
            if emit:
                self.pathChanged.emit("")
            return True
        self.ok, text = describe_pick(path, self.kind)
        self.summary.setText(text if self.ok else f"✗ {text}")
        self.summary.setProperty("level", "ok" if self.ok else "no")
        if self.ok:
            self.line.setText(path)
            if emit:
                self.pathChanged.emit(path)
        return self.ok

    def _browse(self) -> None:
        start = str(Path(self.path()).parent) if self.path() else ""
        if self.folder:
            path = QFileDialog.getExistingDirectory(self, "Choose the tokenizer folder", start)
        else:
            path, _ = QFileDialog.getOpenFileName(self, f"Choose the {KINDS.get(self.kind, self.kind)} file", start,
                                                  WEIGHTS_FILTER)
        if path:
            self.setPath(path)


class LoraList(QWidget):
    """LoRAs merged into the DiT at load, each with a strength; emits the list as "FILE:STRENGTH" strings."""

    lorasChanged = Signal(list)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.rows: list[tuple[QWidget, str, QDoubleSpinBox, QLabel]] = []
        self.add = QPushButton("Add LoRA…")
        self.error = _summary_label()
        self.error.setProperty("level", "no")
        self._rows = QVBoxLayout()
        self._rows.setContentsMargins(0, 0, 0, 0)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addLayout(self._rows)
        lay.addWidget(self.add)
        lay.addWidget(self.error)
        self.add.clicked.connect(self._browse)

    def loras(self) -> list[str]:
        return [f"{path}:{spin.value():g}" for _, path, spin, _ in self.rows]

    def summaries(self) -> list[str]:
        return [label.text() for *_, label in self.rows]

    def setLoras(self, specs: list[str]) -> None:
        """Show these "FILE[:STRENGTH]" LoRAs (from the settings; no signal). Unusable ones are left out with their
        error shown."""
        while self.rows:
            self._remove(0)
        for spec in specs:
            path, strength = parse_lora_spec(spec)
            self.addLora(str(path), strength, emit=False)

    def addLora(self, path: str, strength: float = 1.0, *, emit: bool = True) -> bool:
        ok, text = describe_pick(path, "lora")
        self.error.setText("" if ok else f"✗ {text}")
        if not ok:
            return False
        row = QWidget()
        name = QLabel(Path(path).name)
        name.setToolTip(path)
        spin = QDoubleSpinBox()
        spin.setRange(-MAX_LORA_STRENGTH, MAX_LORA_STRENGTH)
        spin.setSingleStep(0.05)
        spin.setDecimals(2)
        spin.setValue(strength)
        spin.setToolTip("LoRA strength (1 = as trained)")
        remove = QPushButton("×")
        remove.setProperty("kind", "flat")
        summary = _summary_label()
        summary.setText(text)
        grid = QVBoxLayout(row)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        top = QHBoxLayout()
        top.addWidget(name, 1)
        top.addWidget(spin)
        top.addWidget(remove)
        grid.addLayout(top)
        grid.addWidget(summary)
        self._rows.addWidget(row)
        self.rows.append((row, path, spin, summary))
        spin.valueChanged.connect(lambda _v: self.lorasChanged.emit(self.loras()))
        remove.clicked.connect(lambda: self.removeLora(next(i for i, r in enumerate(self.rows) if r[0] is row)))
        if emit:
            self.lorasChanged.emit(self.loras())
        return True

    def setStrength(self, index: int, strength: float) -> None:
        self.rows[index][2].setValue(strength)

    def removeLora(self, index: int) -> None:
        self._remove(index)
        self.lorasChanged.emit(self.loras())

    def _remove(self, index: int) -> None:
        row, *_ = self.rows.pop(index)
        self._rows.removeWidget(row)
        row.deleteLater()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a Wan2.1 LoRA", "",
                                              "LoRA (*.safetensors);;All files (*)")
        if path:
            self.addLora(path)
