"""The app's settings: one versioned JSON file in the user config folder (Qt-free).

Written atomically (temp file + `os.replace`, engine.presets.atomic_write_text). A file that is not valid JSON is
renamed `settings.json.corrupt-<timestamp>` and reported; a field with a wrong type falls back to its default and
is reported; unknown fields are kept out. Nothing is silently discarded: `SettingsStore.load()` returns the
settings and a list of messages for the user. Version 1 files kept the controls as flat prompt/steps/... fields;
they are read into `controls`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sdv2_studio.engine.config import CONTROL_FIELDS, FIT_MODES, Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.presets import APP_NAME, atomic_write_text, backup_corrupt

SETTINGS_VERSION = 2


@dataclass
class Settings:
    version: int = SETTINGS_VERSION
    # source
    source: str = "test"  # "test", "camera:NAME", "obs:NAME", "obs-filter:CHANNEL" or a video file path
    recent_files: list[str] = field(default_factory=list)
    # engine
    model: str = "auto"  # "auto" (downloaded model, else tiny), "tiny", or a checkpoint path
    device: str = "auto"  # "auto", "cpu", "cuda:N"
    gpus: int = 1  # pipeline-parallel GPUs (1-4)
    dtype: str = "auto"
    width: int = 512
    height: int = 512
    batch: bool = True  # Stream-Batch
    fit: str = "crop"  # framing of sources of another aspect: "crop" to fill or "bars" (engine.io.frames.fit_frame)
    target_fps: float = 16.0
    latency_budget_ms: int = 1000
    text_on_gpu: bool = False
    compile: bool = False  # torch.compile the hot path at Start (engine/compiled.py; one device only)
    # model files picked in the Engine tab ("": the model folder's / base folder's own); checked by EngineConfig
    vae: str = ""
    text_encoder: str = ""
    tokenizer: str = ""
    loras: list[str] = field(default_factory=list)  # "FILE:STRENGTH" each, merged into the DiT at load
    # style
    preset: str = "anime-cel"
    controls: Controls | None = None  # the controls last in use (None: the preset's)
    # outputs
    output_obs: bool = False
    output_vcam: bool = False
    output_record: bool = False
    output_ndi: bool = False
    output_spout: bool = False
    output_syphon: bool = False
    obs_plugin: bool = False  # the styled source is the OBS plugin's source (shared memory), not a media source
    obs_channel: str = "main"  # the plugin's channel (source picker "OBS filter", the plugin source)
    record_dir: str = ""  # "" = the user's Videos folder
    obs_scene: str = ""  # the OBS scene that gets the styled source; "" = the current program scene
    av_sync: bool = False  # delay av_sync_inputs in OBS by the styled video's measured latency
    av_sync_inputs: list[str] = field(default_factory=list)
    obs_fallback: str = ""  # shown in OBS when the stream stops: "" the OBS input being styled, ":hide", or a name
    # first run
    first_run_done: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def model_files(self) -> dict:
        """The EngineConfig fields of the picked model files (EngineConfig checks them)."""
        return {"vae": self.vae or None, "text_encoder": self.text_encoder or None,
                "tokenizer": self.tokenizer or None, "loras": tuple(self.loras)}


def config_dir() -> Path:
    env = os.environ.get("SDV2_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def default_record_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_videos_dir()) / "StreamDiffusionV2"




def _coerce(name: str, value, default):
    """`value` if it has the field's type (ints accepted for floats), else raise TypeError."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = True
    if not ok:
        raise TypeError(f"{name} should be like {default!r}, not {value!r}")
    return value


def _read_controls(data: dict) -> Controls | None:
    """`controls` of a version 2 file, or the flat fields of a version 1 file (whose empty prompt meant "the
    preset's"). Raises EngineError for a bad value."""
    raw = data.get("controls")
    if raw is None and data.get("prompt"):
        raw = {k: data[k] for k in CONTROL_FIELDS if k in data}
    if raw is None:
        return None
    if not isinstance(raw, dict) or not set(raw) <= set(CONTROL_FIELDS):
        raise EngineError(f"controls should be an object with the fields {', '.join(CONTROL_FIELDS)}, not {raw!r}")
    return Controls(**raw)


class SettingsStore:
    """Load/save `Settings` at `<config dir>/settings.json`."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else config_dir() / "settings.json"

    def load(self) -> tuple[Settings, list[str]]:
        defaults = Settings()
        if not self.path.exists():
            return defaults, []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("the top level is not an object")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            try:
                moved = backup_corrupt(self.path)
                where = f"it was moved aside to {moved}"
            except OSError as oe:
                where = f"moving it aside failed too ({oe.strerror or oe})"
            return defaults, [f"the settings file {self.path} was unreadable ({e}); {where}. Using defaults."]
        notes: list[str] = []
        version = data.get("version", SETTINGS_VERSION)
        if isinstance(version, int) and version > SETTINGS_VERSION:
            notes.append(f"the settings file {self.path} is from a newer version of the app (v{version}); "
                         "settings this version does not know are ignored")
        values = {}
        for f in dataclasses.fields(Settings):
            if f.name in ("version", "controls") or f.name not in data:
                continue
            default = getattr(defaults, f.name)
            try:
                values[f.name] = _coerce(f.name, data[f.name], default)
            except TypeError as e:
                notes.append(f"settings: {e}; using the default")
        if values.get("fit", defaults.fit) not in FIT_MODES:
            notes.append(f"settings: framing {values.pop('fit')!r} is not one of {', '.join(FIT_MODES)}; using crop")
        try:
            values["controls"] = _read_controls(data)
        except EngineError as e:
            notes.append(f"settings: {e}; using the preset's controls")
        return dataclasses.replace(defaults, **values), notes

    def save(self, settings: Settings) -> Path:
        data = dataclasses.asdict(settings)
        data["version"] = SETTINGS_VERSION
        return atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
