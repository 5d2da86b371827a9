"""FirstRunDialog: no model weights yet: download the real model (size and free space shown, progress, cancel) or
start with the built-in tiny demo model, clearly labelled as untrained. `choice` is "download", "tiny" or None.
The recommendation follows the machine: the real model with an NVIDIA GPU, the tiny demo on the CPU without one (the
GPU query runs in the background, `gpu_probe`, default `services.gpus`). The sizes quoted come from the one memory
estimator, as `sdv2 doctor` quotes them (doctor.vram_needs for the real model, doctor.memory_estimate for the tiny)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from sdv2_studio.app import theme
from sdv2_studio.app.background import Task, run_task
from sdv2_studio.app.services import ModelItem, ModelService, gpus
from sdv2_studio.engine.doctor import memory_estimate, vram_needs
from sdv2_studio.engine.memory import gib


def _gb(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1e9:.1f} GB"


class FirstRunDialog(QDialog):
    def __init__(self, models: ModelService, parent: QWidget | None = None, gpu_probe=gpus):
        super().__init__(parent)
        self.setWindowTitle("Welcome to StreamDiffusionV2 Studio")
        self.setModal(True)
        self.setMinimumWidth(620)
        self.models = models
        self.choice: str | None = None
        self.task: Task | None = None

        title = QLabel("Welcome! Let's get a model.")
        title.setProperty("role", "title")
        intro = QLabel("StreamDiffusionV2 restyles your camera or OBS scene live. It needs its model files "
                       "once; they stay on this computer.")
        intro.setProperty("role", "muted")
        intro.setWordWrap(True)

        self.download_btn = QPushButton("Download")
        self.download_btn.setProperty("kind", "primary")
        self.size_label = QLabel("Checking sizes…")
        self.size_label.setProperty("role", "muted")
        self.size_label.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        self.progress_text = QLabel("")
        self.progress_text.setProperty("role", "muted")
        self.progress_text.setWordWrap(True)
        self.progress_text.hide()
        real = self._card(self.REAL_TITLE,
                          "The real-time style model with its Wan2.1 VAE and text encoder. Needs an NVIDIA GPU "
                          f"(about {vram_needs()[1]} GB of VRAM at 480×832).",
                          [self.size_label, self.progress, self.progress_text], self.download_btn)

        self.tiny_btn = QPushButton("Use the tiny demo")
        tiny_model, tiny_est = memory_estimate("tiny", device="cpu")
        h, w = tiny_model.default_size
        tiny = self._card(self.TINY_TITLE,
                          "Built in, starts in seconds on any computer (the CPU is enough: about "
                          f"{gib(tiny_est.total)} of RAM at {w}×{h}). It checks that your camera, OBS and outputs "
                          "work, but its output is noise-like, not a style.", [], self.tiny_btn)

        self.cancel_btn = QPushButton("Decide later")
        self.cancel_btn.setProperty("kind", "flat")
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(self.cancel_btn)

        self.real_title, self.tiny_title = (card.findChild(QLabel, "CardTitle") for card in (real, tiny))
        lay = QVBoxLayout(self)
        lay.setContentsMargins(24, 22, 24, 18)
        lay.setSpacing(12)
        lay.addWidget(title)
        lay.addWidget(intro)
        lay.addWidget(real)
        lay.addWidget(tiny)
        lay.addLayout(bottom)

        self.download_btn.clicked.connect(self.start_download)
        self.tiny_btn.clicked.connect(self.use_tiny)
        self.cancel_btn.clicked.connect(self._cancel)
        run_task(self._sizes, on_done=self._show_sizes, on_error=self.size_label.setText)
        run_task(gpu_probe, on_done=self._recommend, on_error=lambda _m: self._recommend([]))

    REAL_TITLE = "StreamDiffusionV2 1.3B  ·  recommended"
    TINY_TITLE = f"Tiny demo model  ·  <span style='color:{theme.WARN}'>UNTRAINED</span>"

    def _recommend(self, found: list) -> None:
        """No NVIDIA GPU: the real model would not run here, so the tiny demo is the recommended choice."""
        if found:
            return
        self.real_title.setText("StreamDiffusionV2 1.3B  ·  needs an NVIDIA GPU (none found here)")
        self.tiny_title.setText(f"{self.TINY_TITLE}  ·  recommended on this computer (no GPU: CPU)")
        self.download_btn.setProperty("kind", "")
        self.tiny_btn.setProperty("kind", "primary")
        theme.repolish(self.download_btn)
        theme.repolish(self.tiny_btn)
        self.tiny_btn.setDefault(True)

    @staticmethod
    def _card(title: str, text: str, extra: list[QWidget], button: QPushButton) -> QFrame:
        card = QFrame()
        card.setObjectName("Card")
        head = QLabel(title, objectName="CardTitle")
        head.setTextFormat(Qt.RichText)
        head.setStyleSheet("font-weight: 700; font-size: 11pt;")
        body = QLabel(text)
        body.setProperty("role", "muted")
        body.setWordWrap(True)
        col = QVBoxLayout()
        col.addWidget(head)
        col.addWidget(body)
        for w in extra:
            col.addWidget(w)
        row = QHBoxLayout(card)
        row.setContentsMargins(16, 14, 16, 14)
        row.addLayout(col, 1)
        row.addWidget(button, 0, Qt.AlignVCenter)
        return card

    def _sizes(self) -> tuple[list[ModelItem], int | None]:
        return self.models.items(), self.models.free_space()

    def _show_sizes(self, result) -> None:
        items, free = result
        todo = [it for it in items if it.default and it.status != "downloaded"]
        known = sum(it.size_bytes or 0 for it in todo)
        unknown = any(it.size_bytes is None for it in todo)
        size = f"{_gb(known)}{' + the DiT checkpoint (≈3-6 GB)' if unknown else ''}" if todo else "nothing left"
        low = free is not None and known and free < known * 1.05
        warn = "  ⚠ not enough space" if low else ""
        self.size_label.setText(f"Download: {size}\nFree on disk: {_gb(free)}{warn}\n"
                                f"Folder: {self.models.models_dir()}")
        self.adjustSize()

    # -- actions ----------------------------------------------------------------------------------------------------

    def start_download(self) -> None:
        self.download_btn.setEnabled(False)
        self.tiny_btn.setEnabled(False)
        self.cancel_btn.setText("Cancel download")
        self.progress.show()
        self.progress_text.show()
        self.progress_text.setText("starting…")
        self.task = run_task(self.models.download, on_done=self._downloaded, on_error=self._failed,
                             on_progress=self._progress)

    def _progress(self, message: str, fraction: float) -> None:
        self.progress.setValue(int(1000 * fraction))
        self.progress_text.setText(message)
        self.adjustSize()

    def _downloaded(self, _result) -> None:
        self.task = None
        self.choice = "download"
        self.accept()

    def _failed(self, message: str) -> None:
        self.task = None
        self.download_btn.setEnabled(True)
        self.tiny_btn.setEnabled(True)
        self.cancel_btn.setText("Decide later")
        self.progress_text.setText("Download stopped: finished files are kept; Download continues where it "
                                   "stopped." if message == "cancelled" else f"Download failed: {message}")

    def use_tiny(self) -> None:
        self.choice = "tiny"
        self.accept()

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            return
        self.reject()
