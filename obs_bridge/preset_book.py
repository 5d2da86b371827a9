"""Named styles the OBS script, hotkeys and scene mapping switch between: name -> the engine Controls fields it sets.

Sources: the preset library of ``engine.presets`` (:meth:`PresetBook.from_library`, :meth:`PresetBook.from_presets`:
shipped + user presets, keyed by preset id; they set every field), a JSON file or a plain mapping
``name -> {field: value}`` (:meth:`PresetBook.load`, the constructor), which sets only the fields it names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from sdv2_studio.engine.config import CONTROL_FIELDS, Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.presets import Preset, preset_index

ALIASES = {"transition": "transition_chunks"}


def _clean(name: str, kwargs: Mapping[str, object]) -> dict:
    out = {}
    for key, value in kwargs.items():
        key = ALIASES.get(key, key)
        if key not in CONTROL_FIELDS:
            raise EngineError(f"preset {name!r}: unknown setting {key!r}; use {', '.join(CONTROL_FIELDS)}")
        out[key] = value
    Controls(**out)  # fail at load time, not on stage
    return out


class PresetBook:
    """An ordered set of presets. ``controls(name)`` gives the Controls fields to set."""

    def __init__(self, presets: Mapping[str, Mapping[str, object]], labels: Mapping[str, str] | None = None) -> None:
        self._presets = {str(name): _clean(str(name), kw) for name, kw in presets.items()}
        self.labels = {name: str(labels[name]) for name in self._presets if labels and name in labels}

    @classmethod
    def from_presets(cls, presets: Iterable[Preset]) -> PresetBook:
        """From presets of the library, keyed by id (display names in ``labels``); each sets all of its controls."""
        presets = list(presets)
        return cls({p.id: dataclasses.asdict(p.controls) for p in presets}, {p.id: p.name for p in presets})

    @classmethod
    def from_library(cls) -> tuple[PresetBook, list[str]]:
        """The app's preset library (shipped, then the user's); also returns one line per preset file that failed."""
        from sdv2_studio.engine.presets import load_library

        presets, errors = load_library()
        return cls.from_presets(presets), [str(e) for e in errors]

    @classmethod
    def load(cls, path: str | Path) -> PresetBook:
        """From a JSON file ``{"name": {"prompt": ..., "steps": 2, ...}, ...}``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EngineError(f"preset file not found: {path}; check the path") from None
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot read presets from {path} ({e}); it must be a JSON object") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise EngineError(f"{path} must map preset names to settings objects, e.g. "
                              '{"anime": {"prompt": "...", "steps": 2}}')
        return cls(data)

    def names(self) -> list[str]:
        return list(self._presets)

    def __contains__(self, name: object) -> bool:
        return name in self._presets

    def __len__(self) -> int:
        return len(self._presets)

    def resolve(self, key: str) -> str:
        """The preset name ``key`` means: a name, a display name or a list number (engine.presets.preset_index)."""
        if key in self._presets:
            return key
        try:
            names = list(self._presets)
            return names[preset_index([(n, self.labels.get(n, n)) for n in names], key)]
        except EngineError:
            known = ", ".join(self._presets) or "(none loaded)"
            raise EngineError(f"unknown preset {key!r}; known presets: {known}") from None

    def controls(self, name: str) -> dict:
        """The Controls fields preset ``name`` (see :meth:`resolve`) sets; EngineError naming the presets otherwise."""
        return dict(self._presets[self.resolve(name)])
