"""Scene awareness: switch the style when the program scene changes (optional mapping scene -> preset)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from sdv2_studio.engine.errors import EngineError

log = logging.getLogger(__name__)


def parse_scene_map(text: str) -> dict[str, str]:
    """``"Intro=anime,Gameplay=watercolor"`` -> ``{"Intro": "anime", "Gameplay": "watercolor"}``."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        scene, sep, preset = part.partition("=")
        if not sep or not scene.strip() or not preset.strip():
            raise EngineError(f"bad scene mapping {part!r}: use SCENE=PRESET[,SCENE=PRESET...]")
        mapping[scene.strip()] = preset.strip()
    return mapping


class ScenePresets:
    """Applies ``mapping[scene]`` through ``apply(preset_name)`` whenever OBS switches the program scene.

    Scenes without an entry keep the current style. ``on_scene_changed`` is the ``CurrentProgramSceneChanged``
    handler (it receives the event data, snake_case keys); ``sync(scene)`` applies the preset for a scene read
    at connect time. Errors from ``apply`` (e.g. an unknown preset) are logged and kept in ``last_error``,
    never raised into the event thread.
    """

    def __init__(self, mapping: Mapping[str, str], apply: Callable[[str], object]) -> None:
        self.mapping = dict(mapping)
        self._apply = apply
        self.current_scene: str | None = None
        self.applied: list[tuple[str, str]] = []  # (scene, preset) history, newest last (bounded)
        self.last_error: str | None = None

    def sync(self, scene: str) -> str | None:
        """Apply the preset mapped to ``scene``; returns the preset name or None if the scene is not mapped."""
        self.current_scene = scene
        preset = self.mapping.get(scene)
        if preset is None:
            return None
        try:
            self._apply(preset)
        except EngineError as e:
            self.last_error = f"scene {scene!r}: {e}"
            log.warning("%s", self.last_error)
            return None
        self.applied.append((scene, preset))
        del self.applied[:-32]
        return preset

    def on_scene_changed(self, data: Mapping[str, object]) -> None:
        scene = data.get("scene_name") or data.get("sceneName")
        if isinstance(scene, str):
            self.sync(scene)
