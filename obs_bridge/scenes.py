"""Scenes: the feedback-loop guard shared by the CLI and the app (:func:`refuse_feedback`), and scene awareness
(switch the style when the program scene changes, an optional mapping scene -> preset)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.obs_bridge.output import INPUT_NAME

log = logging.getLogger(__name__)



def _contained(client, scene: str, targets: set[str], scenes: set[str], seen: set[str]) -> list[str] | None:
    """The path of nested scenes/groups from ``scene`` to an item named in ``targets``, else None."""
    seen.add(scene)
    request = "GetSceneItemList" if scene in scenes else "GetGroupSceneItemList"
    for item in client.call(request, {"sceneName": scene}).get("sceneItems", []):
        name = str(item.get("sourceName", ""))
        if name in targets:
            return [name]
        if name not in seen and (item.get("isGroup") or name in scenes):
            path = _contained(client, name, targets, scenes, seen)
            if path is not None:
                return [name, *path]
    return None


def refuse_feedback(capture: str | None, output_scene: str, client=None, input_name: str = INPUT_NAME) -> None:
    """Refuse (EngineError, one line naming the fix) to capture ``capture`` while the styled source ``input_name``
    shows in ``output_scene``: the capture would contain the output (a feedback loop). Without ``client`` only the
    names are compared; with a connected ``ObsClient`` nested scenes and groups inside ``capture`` are followed."""
    if not capture:
        return
    fix = "capture your camera or another source, or a scene without the styled source"
    if capture == output_scene:
        raise EngineError(f"capturing scene {output_scene!r} while showing the result in it feeds the output back "
                          f"into the input; {fix}")
    if capture == input_name:
        raise EngineError(f"capturing the styled source {input_name!r} itself feeds the output back into the input; "
                          f"{fix}")
    if client is None:
        return
    scenes = set(client.scene_names())
    if capture not in scenes:
        return  # an input: it cannot contain other sources
    path = _contained(client, capture, {input_name, output_scene}, scenes, set())
    if path is not None:
        via = " > ".join([capture, *path])
        raise EngineError(f"scene {capture!r} shows the styled output ({via}): capturing it feeds the output back "
                          f"into the input; {fix}")


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
