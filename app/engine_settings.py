"""EngineSettingsPanel: model (and its download status), the model files (DiT, VAE, text encoder, tokenizer and LoRAs
with strengths, each picked file shown with what `sdv2 inspect` says about it: app/model_pickers.py), device and
GPUs, resolution, framing (crop to fill or fit with bars, for every source), dtype, Stream-Batch, target fps /
latency budget, with a live memory estimate that warns before a setting that will not fit.

Emits `settingsChanged(dict)` (Settings field -> value), `downloadRequested()`, `browseModelRequested()` and
`openModelsFolderRequested()`; `setSettings`, `setGpus`, `setModelItems`, `setMemory` set its state."""

from __future__ import annotations

import dataclasses

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from sdv2_studio.app.model_pickers import FilePicker, LoraList
from sdv2_studio.app.services import GpuInfo, ModelItem
from sdv2_studio.app.settings import Settings
from sdv2_studio.app.theme import repolish
from sdv2_studio.engine.config import SEEDED_MODELS, Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.memory import GiB, MemoryEstimate, check_fit, for_settings, t5_encoder_params
from sdv2_studio.engine.models import UMT5_XXL, ResolvedModel, resolve_model

RESOLUTIONS = [(512, 512), (480, 832), (832, 480), (384, 384), (320, 576), (256, 256), (192, 192), (128, 128),
               (64, 64)]
FRAMING = [("crop", "Crop to fill"), ("bars", "Fit with bars")]
DTYPES = [("auto", "Auto (bf16/fp16 GPU, fp32 CPU)"), ("bfloat16", "bfloat16"), ("float16", "float16"),
          ("float32", "float32")]
_STATUS = {"downloaded": "✓ downloaded", "partial": "◐ partial", "missing": "○ not downloaded"}
UMT5_GB = round(t5_encoder_params(UMT5_XXL) * 2 / GiB)  # umT5-XXL in bf16


def _checkpoint(spec: str) -> str:
    """The DiT path a model setting names, or "" for the built-in choices (auto, tiny, random:PRESET)."""
    return "" if spec in SEEDED_MODELS or spec.startswith("random:") else spec


def _section(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setProperty("role", "section")
    return lab


class EngineSettingsPanel(QWidget):
    settingsChanged = Signal(dict)
    downloadRequested = Signal()
    browseModelRequested = Signal()
    openModelsFolderRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._settings = Settings()
        self._gpus: list[GpuInfo] = []
        self._ram: int | None = None
        self._loading = False
        self._model: tuple[tuple, ResolvedModel | str] | None = None  # (model files, what they resolve to or why not)

        self.model = QComboBox()
        self.model.addItem("Auto (downloaded, else tiny demo)", "auto")
        self.model.addItem("Tiny demo (untrained)", "tiny")
        self.model.addItem("Custom checkpoint…", "__browse__")
        self.model_files = QLabel("checking model files…")
        self.model_files.setProperty("role", "muted")
        self.model_files.setWordWrap(True)
        self.model_files.setTextFormat(Qt.RichText)
        self.download = QPushButton("Download model…")
        self.open_folder = QPushButton("Open folder")
        self.open_folder.setProperty("kind", "flat")
        self.dit_file = FilePicker("dit", "the model chosen above")
        self.vae_file = FilePicker("vae", "the model folder's VAE")
        self.text_file = FilePicker("text-encoder", "the model folder's umT5")
        self.tokenizer_file = FilePicker("tokenizer", "beside the text encoder", folder=True)
        self.lora_list = LoraList()
        files = QFormLayout()
        files.setLabelAlignment(Qt.AlignLeft)
        files.setHorizontalSpacing(12)
        files.setVerticalSpacing(6)
        for label, picker in (("DiT", self.dit_file), ("VAE", self.vae_file), ("Text encoder", self.text_file),
                              ("Tokenizer", self.tokenizer_file), ("LoRAs", self.lora_list)):
            files.addRow(label, picker)

        self.device = QComboBox()
        self.gpus = QSpinBox()
        self.gpus.setRange(1, 4)
        self.gpus.setSuffix(" GPU")
        self.gpus.setToolTip("Pipeline parallelism: split the model over 1-4 GPUs")
        self.resolution = QComboBox()
        for h, w in RESOLUTIONS:
            self.resolution.addItem(f"{w} × {h}", f"{h}x{w}")  # (QVariant compares strings, not tuples)
        self.dtype = QComboBox()
        for key, text in DTYPES:
            self.dtype.addItem(text, key)
        self.framing = QComboBox()
        for key, text in FRAMING:
            self.framing.addItem(text, key)
        self.framing.setToolTip("A source whose shape differs from the resolution (a 16:9 camera, OBS scene or file at "
                            "512 × 512): crop it to fill the frame (edges cut off), or fit it whole with black bars. "
                            "The same rule for every source")
        self.batch = QCheckBox("Stream-Batch (faster, more VRAM)")
        self.batch.setToolTip("Overlap the denoising steps of consecutive chunks: higher fps, one KV cache per step")
        self.text_gpu = QCheckBox(f"Text encoder on GPU (+{UMT5_GB} GB)")
        self.text_gpu.setToolTip(f"Run umT5 on the GPU: new prompts encode faster, but it needs about {UMT5_GB} GB "
                                 "more VRAM")
        self.compile = QCheckBox("Compile the hot path (faster on a GPU; the first Start compiles for minutes)")
        self.compile.setToolTip("torch.compile the model's steady chunk (and on a GPU the VAE decode) at Start, "
                                "before the first frame (CUDA graphs on a GPU). Compiled once per resolution and "
                                "steps, then loaded from disk in seconds. One GPU only; on a CPU it rarely helps")
        self.fps = QSpinBox()
        self.fps.setRange(1, 60)
        self.fps.setSuffix(" fps")
        self.budget = QSpinBox()
        self.budget.setRange(50, 10000)
        self.budget.setSingleStep(50)
        self.budget.setSuffix(" ms")
        self.budget.setToolTip("Frames slower than this count as deadline misses")

        self.estimate = QLabel()
        self.estimate.setProperty("role", "value")
        self.fit = QLabel()
        self.fit.setProperty("role", "hint")
        self.fit.setWordWrap(True)

        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignLeft)
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(8)
        form.addRow("Device", self.device)
        form.addRow("GPUs", self.gpus)
        form.addRow("Resolution", self.resolution)
        form.addRow("Framing", self.framing)
        form.addRow("Precision", self.dtype)
        form.addRow("Target rate", self.fps)
        form.addRow("Latency budget", self.budget)

        files_row = QHBoxLayout()
        files_row.addWidget(self.download)
        files_row.addWidget(self.open_folder)
        files_row.addStretch(1)

        for combo in (self.model, self.device, self.resolution, self.dtype, self.framing):
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(12)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        lay.addWidget(_section("MODEL"))
        lay.addWidget(self.model)
        lay.addWidget(self.model_files)
        lay.addLayout(files_row)
        lay.addSpacing(6)
        lay.addWidget(_section("MODEL FILES"))
        lay.addLayout(files)
        lay.addSpacing(6)
        lay.addWidget(_section("HARDWARE & STREAM"))
        lay.addLayout(form)
        lay.addWidget(self.batch)
        lay.addWidget(self.text_gpu)
        lay.addWidget(self.compile)
        lay.addSpacing(6)
        lay.addWidget(_section("MEMORY ESTIMATE"))
        lay.addWidget(self.estimate)
        lay.addWidget(self.fit)
        lay.addStretch(1)

        self.model.activated.connect(self._model_chosen)
        self.device.activated.connect(lambda: self._emit(device=self.device.currentData()))
        self.gpus.valueChanged.connect(lambda v: self._emit(gpus=max(1, int(v))))
        self.resolution.activated.connect(self._resolution_chosen)
        self.dtype.activated.connect(lambda: self._emit(dtype=self.dtype.currentData()))
        self.framing.activated.connect(lambda: self._emit(fit=self.framing.currentData()))
        self.batch.toggled.connect(lambda on: self._emit(batch=bool(on)))
        self.text_gpu.toggled.connect(lambda on: self._emit(text_on_gpu=bool(on)))
        self.compile.toggled.connect(lambda on: self._emit(compile=bool(on)))
        self.fps.valueChanged.connect(lambda v: self._emit(target_fps=float(v)))
        self.budget.valueChanged.connect(lambda v: self._emit(latency_budget_ms=int(v)))
        self.download.clicked.connect(self.downloadRequested.emit)
        self.dit_file.pathChanged.connect(self._dit_picked)
        self.vae_file.pathChanged.connect(lambda p: self._emit(vae=p))
        self.text_file.pathChanged.connect(lambda p: self._emit(text_encoder=p))
        self.tokenizer_file.pathChanged.connect(lambda p: self._emit(tokenizer=p))
        self.lora_list.lorasChanged.connect(lambda specs: self._emit(loras=list(specs)))
        self.open_folder.clicked.connect(self.openModelsFolderRequested.emit)
        self.setGpus([], None)

    # -- state ------------------------------------------------------------------------------------------------------

    def setSettings(self, s: Settings) -> None:
        self._settings = dataclasses.replace(s)
        self._loading = True
        try:
            idx = self.model.findData(s.model)
            if idx < 0:
                self.model.insertItem(2, f"Checkpoint: {s.model}", s.model)
                idx = 2
            self.model.setCurrentIndex(idx)
            self.dit_file.setPath(_checkpoint(s.model), emit=False)
            self.vae_file.setPath(s.vae, emit=False)
            self.text_file.setPath(s.text_encoder, emit=False)
            self.tokenizer_file.setPath(s.tokenizer, emit=False)
            self.lora_list.setLoras(s.loras)
            self._select(self.device, s.device)
            self.gpus.setValue(max(1, min(4, s.gpus)))
            key = f"{s.height}x{s.width}"
            if self.resolution.findData(key) < 0:
                self.resolution.addItem(f"{s.width} × {s.height}", key)
            self._select(self.resolution, key)
            self._select(self.dtype, s.dtype)
            self._select(self.framing, s.fit)
            self.batch.setChecked(s.batch)
            self.text_gpu.setChecked(s.text_on_gpu)
            self.compile.setChecked(s.compile)
            self.fps.setValue(round(s.target_fps))
            self.budget.setValue(s.latency_budget_ms)
        finally:
            self._loading = False
        self._update_estimate()

    def setGpus(self, gpus: list[GpuInfo], ram: int | None) -> None:
        self._gpus, self._ram = list(gpus), ram
        self._loading = True
        try:
            self.device.clear()
            self.device.addItem("Auto (GPU if available)" if gpus else "Auto (no GPU: CPU)", "auto")
            self.device.addItem("CPU (tiny demo only)", "cpu")
            for g in gpus:
                self.device.addItem(g.label, f"cuda:{g.index}")
            self._select(self.device, self._settings.device)
            self.gpus.setEnabled(len(gpus) > 1)
            # no GPU: the spin box reads "no GPU: CPU" (its special value at 0) instead of a count that is not there
            self.gpus.setSpecialValueText("" if gpus else "no GPU: CPU")
            self.gpus.setMinimum(1 if gpus else 0)
            self.gpus.setMaximum(max(1, min(4, len(gpus))) if gpus else 0)
            self.gpus.setValue(max(self.gpus.minimum(), min(self.gpus.maximum(), self._settings.gpus)))
        finally:
            self._loading = False
        self._update_estimate()

    def setModelItems(self, items: list[ModelItem], present: bool) -> None:
        lines = []
        for it in items:
            if not it.default:
                continue
            lines.append(f"{_STATUS.get(it.status, it.status)} &nbsp;<b>{it.name}</b> <span>({it.size})</span>")
        head = "Real-time model ready." if present else "The real model is not downloaded yet."
        self.model_files.setText(head + ("<br>" + "<br>".join(lines) if lines else ""))
        self.download.setText("Check / repair files…" if present else "Download model…")
        self._model = None  # "auto" may name another model now
        self._update_estimate()

    def setModelError(self, message: str) -> None:
        self.model_files.setText(message)

    # -- derived ----------------------------------------------------------------------------------------------------

    def has_gpu(self) -> bool:
        return bool(self._gpus) and self._settings.device != "cpu"

    def capacity(self) -> tuple[int | None, str]:
        """(bytes, "VRAM"/"RAM") of the device the settings run on."""
        dev = self._settings.device
        if dev.startswith("cuda") or (dev == "auto" and self._gpus):
            idx = int(dev.split(":")[1]) if ":" in dev else 0
            gpu = next((g for g in self._gpus if g.index == idx), None)
            return (gpu.total if gpu else None), "VRAM"
        return self._ram, "RAM"

    def resolved_model(self) -> ResolvedModel:
        """The model the settings name (engine.models.resolve_model, remembered until the setting or the downloads
        change); EngineError when it names no usable model."""
        spec, files = self._settings.model, self._settings.model_files()
        key = (spec, *files.values())
        if self._model is None or self._model[0] != key:
            try:
                self._model = (key, resolve_model(spec, **files))
            except EngineError as e:
                self._model = (spec, str(e))
        found = self._model[1]
        if isinstance(found, str):
            raise EngineError(found)
        return found

    def estimate_now(self) -> MemoryEstimate:
        """The memory of the fullest device for these settings (engine.memory.for_settings, the figure `sdv2 doctor`
        gives for the same settings); EngineError when the model setting names no usable model."""
        s = self._settings
        on_gpu = s.device.startswith("cuda") or (s.device == "auto" and bool(self._gpus))
        return for_settings(self.resolved_model(), (s.height, s.width), gpu=on_gpu, dtype=s.dtype,
                            steps=(s.controls or Controls()).steps, batch=s.batch, gpus=s.gpus,
                            text_on_gpu=s.text_on_gpu)

    def fit_level(self) -> tuple[str, str]:
        cap, _kind = self.capacity()
        try:
            return check_fit(self.estimate_now(), cap)
        except EngineError as e:
            return "unknown", str(e)

    def _update_estimate(self) -> None:
        level, text = self.fit_level()
        _cap, kind = self.capacity()
        try:
            est = self.estimate_now()
        except EngineError:
            self.estimate.setText("–")
            self.estimate.setToolTip("")
        else:
            self.estimate.setText(f"~{est.total / GiB:.1f} GB {kind}" + (" per GPU" if est.ranks > 1 else ""))
            self.estimate.setToolTip(est.breakdown())
        self.fit.setText(text[0].upper() + text[1:])
        self.fit.setProperty("level", level)
        repolish(self.fit)

    # -- intents ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _select(combo: QComboBox, data) -> None:
        idx = combo.findData(data)
        if idx >= 0:
            combo.setCurrentIndex(idx)

    def _emit(self, **changes) -> None:
        if self._loading:
            return
        for k, v in changes.items():
            setattr(self._settings, k, v)
        self._update_estimate()
        self.settingsChanged.emit(changes)

    def _model_chosen(self) -> None:
        data = self.model.currentData()
        if data == "__browse__":
            self._select(self.model, self._settings.model)
            self.browseModelRequested.emit()
            return
        self.dit_file.setPath(_checkpoint(data), emit=False)
        self._emit(model=data)

    def _resolution_chosen(self) -> None:
        h, w = (int(v) for v in self.resolution.currentData().split("x"))
        self._emit(height=h, width=w)

    def setModelPath(self, path: str) -> None:
        if not self.dit_file.setPath(path, emit=False):
            return  # not a DiT: the picker shows why
        idx = self.model.findData(path)
        if idx < 0:
            self.model.insertItem(2, f"Checkpoint: {path}", path)
            idx = 2
        self.model.setCurrentIndex(idx)
        self._emit(model=path)

    def _dit_picked(self, path: str) -> None:
        if path:
            self.setModelPath(path)
        else:  # cleared: back to the downloaded model (else the tiny demo)
            self._select(self.model, "auto")
            self._emit(model="auto")

    def refreshEstimate(self, controls: Controls | None = None) -> None:
        if controls is not None:
            self._settings.controls = controls
        self._update_estimate()
