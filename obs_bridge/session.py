"""The OBS bridge's stream: the engine's :class:`~engine.session.Session` plus what the control API serves.

``StreamSession`` runs one live, paced session (source -> engine -> outputs; the engine drops the oldest input when
behind, outputs get a steady frame rate; the model is loaded once and reused across stop/start) and adds the named
styles (:class:`PresetBook`), the preset in use and ``status_extra`` sections (e.g. OBS health) to its JSON status:
the surface of ``obs_bridge.control`` and the OBS script.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.models import ModelBundle
from sdv2_studio.engine.session import Session, SinkFactory, SourceFactory, describe
from sdv2_studio.obs_bridge.preset_book import PresetBook


class StreamSession:
    """Start/stop/status/presets for the control API over one engine session (see the module docstring).

    ``open_source(model_size)`` and ``open_sinks(source)`` are called at every start. ``presets`` names the styles
    :meth:`apply_preset` knows. ``bundle`` skips loading the model (tests, or a model the app already loaded).
    ``status_extra`` callables add sections to :meth:`status` (e.g. OBS health).
    """

    def __init__(self, config: EngineConfig, open_source: SourceFactory, open_sinks: SinkFactory,
                 presets: PresetBook | None = None, *, bundle: ModelBundle | None = None) -> None:
        self.presets = presets or PresetBook({})
        prompts = [p for name in self.presets.names() if (p := self.presets.controls(name).get("prompt"))]
        config = dataclasses.replace(config, warm_prompts=tuple(dict.fromkeys([*config.warm_prompts, *prompts])))
        self.session = Session(config, open_source, open_sinks, live=True, paced=True, bundle=bundle)
        self.status_extra: dict[str, Callable[[], object]] = {}
        self.preset: str | None = None

    def start(self, wait: bool = True) -> None:
        """Load the model (first time), open source and outputs, stream. ``wait=False`` returns at once."""
        self.session.start(wait=wait)

    def stop(self) -> None:
        self.session.stop()

    def __enter__(self) -> StreamSession:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def state(self) -> str:
        return self.session.state

    @property
    def engine(self) -> Engine:
        return self.session.engine

    @property
    def controls(self) -> Controls:
        return self.session.engine.controls

    # -- controls -----------------------------------------------------------------------------------------------------

    def preset_names(self) -> list[str]:
        return self.presets.names()

    def set_controls(self, controls: Controls | None = None, /, **changes) -> Controls:
        """`Engine.set_controls`: applied at the next chunk; before a start (or after a stop), for the start."""
        return self.session.engine.set_controls(controls, **changes)

    def apply_preset(self, name: str) -> Controls:
        """Switch to preset ``name`` (its name, display name or list number)."""
        name = self.presets.resolve(name)
        controls = self.set_controls(**self.presets.controls(name))
        self.preset = name
        return controls

    def set_steps(self, steps: int) -> Controls:
        return self.set_controls(steps=steps)

    def set_prompts(self, pairs) -> Controls:
        """A prompt or a weighted blend ((prompt, weight), ...), blended in over the transition."""
        new = self.controls.with_prompts(pairs)
        return self.set_controls(prompt=new.prompt, prompt_weight=new.prompt_weight, blend=new.blend)

    # -- readouts -----------------------------------------------------------------------------------------------------

    def status(self) -> dict:
        """Everything a status line or the OBS script shows, JSON-serialisable."""
        out = dataclasses.asdict(self.session.status())
        out["preset"] = self.preset
        out["preset_labels"] = {name: self.presets.labels.get(name, name) for name in self.presets.names()}
        out["controls"] = dataclasses.asdict(self.controls)
        for name, fn in list(self.status_extra.items()):
            try:
                out[name] = fn()
            except Exception as e:  # a status section must not break the whole readout
                out[name] = {"error": describe(e)}
        return out
