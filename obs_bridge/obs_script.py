"""StreamDiffusionV2 inside OBS: load this file with Tools > Scripts (Python) while the app runs.

It shows a preset dropdown, a steps slider (1-4), Start/Stop and Refresh buttons and the app's status, and
registers one hotkey per preset (Settings > Hotkeys, "StreamDiffusionV2: <preset>"). It drives the running
app through the app's local control API (127.0.0.1, token from the app's control file); OBS's Python needs
nothing beyond the standard library. Preset names seen once are remembered, so their hotkeys exist (and keep
their bindings) even when OBS starts before the app.

Watchdog: every WATCH_SECONDS the script checks the app that published the control file (a clean quit removes the
file and hides the source itself). When its process is gone (a crash), or it stays silent for WATCH_MISSES checks in
a row (a hang), the styled source is hidden in every scene, so no frozen frame stays on air; if it answers again
while streaming, the source is shown again where the watchdog hid it.

Audio mixer: the styled source carries no sound, but OBS shows a (silent) mixer strip for every media source. The
script sets the source's private setting ``mixer_hidden`` (what OBS's own "Hide" in the mixer sets; obs-websocket has
no request for it) the moment OBS creates a source of that name, and on every watchdog tick for one that existed
before the script loaded, and refreshes the mixer so its strip goes at once. OBS saves the setting with the scene
collection. The plugin's source has no audio at all, so it never gets a strip.

Everything OBS-specific goes through :class:`ObsPythonApi`, a thin layer over ``obspython``; the logic
(:class:`ScriptLogic`) is plain Python and is tested with a stand-in layer and a real control API server.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

try:
    from sdv2_studio.obs_bridge.control_client import ControlClient, ControlError, control_file
except ImportError:  # inside OBS's own Python: expose just this folder as the package (no sys.path changes,
    import types  # so nothing else from the app's environment can shadow OBS's modules)

    _root = sys.modules.setdefault("sdv2_studio", types.ModuleType("sdv2_studio"))
    _root.__path__ = getattr(_root, "__path__", [])
    _package = types.ModuleType("sdv2_studio.obs_bridge")
    _package.__path__ = [str(Path(__file__).resolve().parent)]
    sys.modules.setdefault("sdv2_studio.obs_bridge", _package)
    from sdv2_studio.obs_bridge.control_client import ControlClient, ControlError, control_file

HOTKEY_PREFIX = "sdv2.preset."
STYLED_SOURCE = "StreamDiffusionV2"  # the styled source's name (obs_bridge.output.INPUT_NAME)
MIXER_HIDDEN = "mixer_hidden"  # the private source setting OBS's audio mixer skips a source by
WATCH_SECONDS, WATCH_MISSES = 2, 3  # a loaded machine may stall a second: only ~6 s of silence counts
KNOWN_PRESETS_KEY = "sdv2_known_presets"
PRESET_LABELS_KEY = "sdv2_preset_labels"  # preset id -> display name, as the app last reported them
DESCRIPTION = ("<b>StreamDiffusionV2</b><br>Restyle your stream in real time. Start the app first "
               "(e.g. <code>sdv2 obs attach --scene SCENE --input SOURCE</code>); presets, steps and start/stop "
               "below control it. Hotkeys per preset: Settings &gt; Hotkeys.")

Props = Any  # obs_properties_t* (opaque here)
Settings = Any  # obs_data_t*


class ScriptApi(Protocol):
    """The few obspython calls the script needs (see :class:`ObsPythonApi`)."""

    def properties(self) -> Props: ...

    def add_list(self, props: Props, name: str, label: str, items: list[tuple[str, str]]) -> None: ...

    def set_list_items(self, props: Props, name: str, items: list[tuple[str, str]]) -> None: ...

    def add_int_slider(self, props: Props, name: str, label: str, lo: int, hi: int) -> None: ...

    def add_button(self, props: Props, name: str, label: str, callback: Callable[[Props], bool]) -> None: ...

    def add_info(self, props: Props, name: str, text: str) -> None: ...

    def set_info(self, props: Props, name: str, text: str) -> None: ...

    def get_str(self, settings: Settings, name: str) -> str: ...

    def get_int(self, settings: Settings, name: str) -> int: ...

    def set_str(self, settings: Settings, name: str, value: str) -> None: ...

    def set_default_str(self, settings: Settings, name: str, value: str) -> None: ...

    def set_default_int(self, settings: Settings, name: str, value: int) -> None: ...

    def register_hotkey(self, name: str, description: str, callback: Callable[[bool], None]) -> int: ...

    def load_hotkey(self, hotkey_id: int, settings: Settings, key: str) -> None: ...

    def save_hotkey(self, hotkey_id: int, settings: Settings, key: str) -> None: ...

    def unregister_hotkey(self, hotkey_id: int) -> None: ...

    def log(self, message: str) -> None: ...

    def hide_source(self, name: str) -> list[str]: ...

    def show_source(self, name: str, scenes: list[str]) -> None: ...


class ScriptLogic:
    """What the script does, independent of OBS. ``connect()`` returns a control API client (default: the one the
    running app published); every call to the app is guarded, so an absent app only shows up in the status."""

    def __init__(self, api: ScriptApi, connect: Callable[[], ControlClient] | None = None) -> None:
        self.api = api
        self._connect = connect or (lambda: ControlClient.from_file(timeout=1.5))
        self.presets: list[str] = []
        self.labels: dict[str, str] = {}  # preset id -> display name (the app's status "preset_labels")
        self.status_text = "not connected"
        self.hotkeys: dict[str, int] = {}
        self.settings: Settings = None
        self._applied_preset: str | None = None
        self._applied_steps: int | None = None
        self._silent = 0  # watchdog: status checks in a row the published app did not answer
        self.hidden_in: list[str] = []  # scenes where the watchdog hid the styled source
        self._probe = connect or (lambda: ControlClient.from_file(timeout=0.5))  # short: runs on OBS's UI thread

    # -- watchdog -----------------------------------------------------------------------------------------------------

    def watch(self) -> bool:
        """One watchdog check (see the module docstring); True when it hid the styled source."""
        path = control_file()
        if not path.exists():
            self._silent = 0  # not running, or quit cleanly (then it hid the source itself)
            return False
        if _process_gone(path):
            self._silent = WATCH_MISSES - 1  # a crash: no need to wait for timeouts
            error: str = "its process ended"
        else:
            try:
                status = self._probe().status()
            except ControlError as e:
                error = str(e)
            else:
                self._silent = 0
                if self.hidden_in and status.get("state") == "running":
                    self.api.show_source(STYLED_SOURCE, self.hidden_in)
                    self.api.log(f"StreamDiffusionV2: the app answers again; showing {STYLED_SOURCE} again")
                    self.hidden_in = []
                return False
        self._silent += 1
        if self._silent != WATCH_MISSES:
            return False
        self.hidden_in = self.api.hide_source(STYLED_SOURCE)
        self.status_text = f"the app does not answer ({error}); styled source hidden"
        self.api.log(f"StreamDiffusionV2: the app stopped answering ({error}); hid {STYLED_SOURCE} in "
                     f"{len(self.hidden_in)} scene(s)")
        return True

    # -- talking to the app -------------------------------------------------------------------------------------------

    def _call(self, action: Callable[[ControlClient], dict]) -> dict | None:
        try:
            reply = action(self._connect())
        except ControlError as e:
            self.status_text = str(e)
            self.api.log(f"StreamDiffusionV2: {e}")
            return None
        return reply

    def refresh(self) -> None:
        """Fetch status and presets from the app (keeps the remembered presets when it is away)."""
        status = self._call(lambda c: c.status())
        if status is not None:
            labels = status.get("preset_labels")
            if isinstance(labels, dict):
                self.labels.update({str(k): str(v) for k, v in labels.items()})
        reply = self._call(lambda c: c.presets()) if status is not None else None
        if reply is not None:
            for name in reply.get("presets", []):
                if name not in self.presets:
                    self.presets.append(str(name))
            self._register_hotkeys()
        if status is not None:
            self.status_text = format_status(status, self.labels)

    def label(self, name: str) -> str:
        """The preset's display name (its id when the app did not say)."""
        return self.labels.get(name, name)

    def apply_preset(self, name: str) -> None:
        if self._call(lambda c: c.apply_preset(name)) is not None:
            self._applied_preset = name
            self.status_text = f"preset {self.label(name)}"

    def set_steps(self, steps: int) -> None:
        if self._call(lambda c: c.set_steps(steps)) is not None:
            self._applied_steps = steps
            self.status_text = f"{steps} step(s)"

    def start(self) -> None:
        reply = self._call(lambda c: c.start())
        if reply is not None:
            self.status_text = f"stream {reply.get('state')}"

    def stop(self) -> None:
        reply = self._call(lambda c: c.stop())
        if reply is not None:
            self.status_text = f"stream {reply.get('state')}"

    # -- hotkeys ------------------------------------------------------------------------------------------------------

    def _register_hotkeys(self) -> None:
        for name in self.presets:
            if name in self.hotkeys:
                continue

            def pressed(down: bool, _name: str = name) -> None:
                if down:
                    self.apply_preset(_name)

            hotkey = self.api.register_hotkey(f"{HOTKEY_PREFIX}{name}", f"StreamDiffusionV2: {self.label(name)}",
                                              pressed)
            self.hotkeys[name] = hotkey
            if self.settings is not None:
                self.api.load_hotkey(hotkey, self.settings, f"hotkey.{name}")

    # -- OBS script entry points --------------------------------------------------------------------------------------

    def defaults(self, settings: Settings) -> None:
        self.api.set_default_int(settings, "steps", 2)
        self.api.set_default_str(settings, "preset", "")

    def load(self, settings: Settings) -> None:
        self.settings = settings
        try:
            remembered = json.loads(self.api.get_str(settings, KNOWN_PRESETS_KEY) or "[]")
        except ValueError:
            remembered = []
        self.presets = [str(p) for p in remembered if isinstance(p, str)]
        try:
            labels = json.loads(self.api.get_str(settings, PRESET_LABELS_KEY) or "{}")
        except ValueError:
            labels = {}
        if isinstance(labels, dict):
            self.labels = {str(k): str(v) for k, v in labels.items()}
        self._applied_preset = self.api.get_str(settings, "preset") or None  # what was chosen last time
        self._applied_steps = self.api.get_int(settings, "steps") or None
        self._register_hotkeys()
        self.refresh()

    def update(self, settings: Settings) -> None:
        """The user changed a setting: apply what changed (nothing at load, when OBS replays saved values)."""
        if self.settings is None:  # OBS may call update before load: remember, do not apply
            self._applied_preset = self.api.get_str(settings, "preset") or None
            self._applied_steps = self.api.get_int(settings, "steps") or None
            return
        self.settings = settings
        preset = self.api.get_str(settings, "preset")
        if preset and preset != self._applied_preset:
            self.apply_preset(preset)
        steps = self.api.get_int(settings, "steps")
        if steps and steps != self._applied_steps:
            self.set_steps(steps)

    def save(self, settings: Settings) -> None:
        self.api.set_str(settings, KNOWN_PRESETS_KEY, json.dumps(self.presets))
        self.api.set_str(settings, PRESET_LABELS_KEY, json.dumps(self.labels))
        for name, hotkey in self.hotkeys.items():
            self.api.save_hotkey(hotkey, settings, f"hotkey.{name}")

    def unload(self) -> None:
        for hotkey in self.hotkeys.values():
            self.api.unregister_hotkey(hotkey)
        self.hotkeys.clear()

    def properties(self) -> Props:
        api = self.api
        props = api.properties()
        api.add_list(props, "preset", "Preset", self._items())
        api.add_int_slider(props, "steps", "Steps", 1, 4)
        api.add_button(props, "start", "Start", self._button(self.start))
        api.add_button(props, "stop", "Stop", self._button(self.stop))
        api.add_button(props, "refresh", "Refresh", self._button(self.refresh))
        api.add_info(props, "status", self.status_text)
        return props

    def _items(self) -> list[tuple[str, str]]:
        return [("(choose a preset)", ""), *((self.label(name), name) for name in self.presets)]

    def _button(self, action: Callable[[], None]) -> Callable[[Props], bool]:
        def clicked(props: Props) -> bool:
            action()
            self.api.set_list_items(props, "preset", self._items())
            self.api.set_info(props, "status", self.status_text)
            return True  # OBS redraws the properties

        return clicked


def _process_gone(path: Path) -> bool:
    """The process that wrote control file ``path`` no longer exists (POSIX; elsewhere: unknown, False)."""
    if os.name != "posix":
        return False
    try:
        pid = int(json.loads(path.read_text(encoding="utf-8"))["pid"])
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return False


def format_status(status: dict, labels: dict[str, str] | None = None) -> str:
    """One line for the status box, from the control API's status (presets by display name when known)."""
    state = status.get("state", "?")
    if status.get("error"):
        return f"{state}: {status['error']}"
    parts = [str(state)]
    labels = labels or status.get("preset_labels") or {}
    if status.get("preset"):
        parts.append(f"preset {labels.get(status['preset'], status['preset'])}")
    controls = status.get("controls") or {}
    if controls.get("steps"):
        parts.append(f"{controls['steps']} step(s)")
    engine = status.get("engine") or {}
    if engine.get("fps"):
        parts.append(f"{engine['fps']:.1f} fps")
    if engine.get("latency_p50"):
        parts.append(f"{engine['latency_p50'] * 1e3:.0f} ms")
    obs = status.get("obs") or {}
    for warning in obs.get("warnings", [])[:1]:
        parts.append(warning)
    return " | ".join(parts)


class ObsPythonApi:
    """:class:`ScriptApi` on OBS's ``obspython`` module (only importable inside OBS)."""

    def __init__(self) -> None:
        import obspython

        self.obs = obspython

    def properties(self) -> Props:
        return self.obs.obs_properties_create()

    def add_list(self, props: Props, name: str, label: str, items: list[tuple[str, str]]) -> None:
        obs = self.obs
        obs.obs_properties_add_list(props, name, label, obs.OBS_COMBO_TYPE_LIST, obs.OBS_COMBO_FORMAT_STRING)
        self.set_list_items(props, name, items)

    def set_list_items(self, props: Props, name: str, items: list[tuple[str, str]]) -> None:
        prop = self.obs.obs_properties_get(props, name)
        if prop is None:
            return
        self.obs.obs_property_list_clear(prop)
        for label, value in items:
            self.obs.obs_property_list_add_string(prop, label, value)

    def add_int_slider(self, props: Props, name: str, label: str, lo: int, hi: int) -> None:
        self.obs.obs_properties_add_int_slider(props, name, label, lo, hi, 1)

    def add_button(self, props: Props, name: str, label: str, callback: Callable[[Props], bool]) -> None:
        self.obs.obs_properties_add_button(props, name, label, lambda props, prop: callback(props))

    def add_info(self, props: Props, name: str, text: str) -> None:
        kind = getattr(self.obs, "OBS_TEXT_INFO", self.obs.OBS_TEXT_DEFAULT)  # OBS_TEXT_INFO: OBS 28+
        self.obs.obs_properties_add_text(props, name, text, kind)

    def set_info(self, props: Props, name: str, text: str) -> None:
        prop = self.obs.obs_properties_get(props, name)
        if prop is not None:
            self.obs.obs_property_set_description(prop, text)

    def get_str(self, settings: Settings, name: str) -> str:
        return self.obs.obs_data_get_string(settings, name)

    def get_int(self, settings: Settings, name: str) -> int:
        return self.obs.obs_data_get_int(settings, name)

    def set_str(self, settings: Settings, name: str, value: str) -> None:
        self.obs.obs_data_set_string(settings, name, value)

    def set_default_str(self, settings: Settings, name: str, value: str) -> None:
        self.obs.obs_data_set_default_string(settings, name, value)

    def set_default_int(self, settings: Settings, name: str, value: int) -> None:
        self.obs.obs_data_set_default_int(settings, name, value)

    def register_hotkey(self, name: str, description: str, callback: Callable[[bool], None]) -> int:
        return self.obs.obs_hotkey_register_frontend(name, description, callback)

    def load_hotkey(self, hotkey_id: int, settings: Settings, key: str) -> None:
        array = self.obs.obs_data_get_array(settings, key)
        self.obs.obs_hotkey_load(hotkey_id, array)
        self.obs.obs_data_array_release(array)

    def save_hotkey(self, hotkey_id: int, settings: Settings, key: str) -> None:
        array = self.obs.obs_hotkey_save(hotkey_id)
        self.obs.obs_data_set_array(settings, key, array)
        self.obs.obs_data_array_release(array)

    def unregister_hotkey(self, hotkey_id: int) -> None:
        self.obs.obs_hotkey_unregister(hotkey_id)

    def log(self, message: str) -> None:
        self.obs.script_log(self.obs.LOG_INFO, message)

    def _set_visible(self, name: str, visible: bool, only: list[str] | None = None) -> list[str]:
        obs, changed = self.obs, []
        scenes = obs.obs_frontend_get_scenes() or []
        try:
            for source in scenes:
                scene_name = obs.obs_source_get_name(source)
                if only is not None and scene_name not in only:
                    continue
                item = obs.obs_scene_find_source_recursive(obs.obs_scene_from_source(source), name)
                if item is not None and obs.obs_sceneitem_visible(item) != visible:
                    obs.obs_sceneitem_set_visible(item, visible)
                    changed.append(scene_name)
        finally:
            obs.source_list_release(scenes)
        return changed

    def hide_source(self, name: str) -> list[str]:
        return self._set_visible(name, False)

    def hide_from_mixer(self, source) -> bool:
        """Keep ``source`` (an obs_source_t*) out of OBS's audio mixer; True when it was in it."""
        obs = self.obs
        private = obs.obs_source_get_private_settings(source)
        try:
            if obs.obs_data_get_bool(private, MIXER_HIDDEN):
                return False
            obs.obs_data_set_bool(private, MIXER_HIDDEN, True)
        finally:
            obs.obs_data_release(private)
        if obs.obs_source_audio_active(source):  # the mixer shows it already: off and on makes OBS drop its strip
            obs.obs_source_set_audio_active(source, False)
            obs.obs_source_set_audio_active(source, True)
        return True

    def hide_named_from_mixer(self, name: str) -> bool:
        source = self.obs.obs_get_source_by_name(name)
        if source is None:
            return False
        try:
            return self.hide_from_mixer(source)
        finally:
            self.obs.obs_source_release(source)

    def show_source(self, name: str, scenes: list[str]) -> None:
        self._set_visible(name, True, scenes)


# -- the functions OBS calls ------------------------------------------------------------------------------------------

_logic: ScriptLogic | None = None


def _get_logic() -> ScriptLogic:
    global _logic
    if _logic is None:
        _logic = ScriptLogic(ObsPythonApi())
    return _logic


def script_description() -> str:
    return DESCRIPTION


def script_defaults(settings: Settings) -> None:
    _get_logic().defaults(settings)


def _watch() -> None:
    if _logic is not None:
        _logic.watch()
        ObsPythonApi().hide_named_from_mixer(STYLED_SOURCE)  # one that existed before the script loaded


def _source_created(calldata) -> None:
    """OBS made a source (on the creating thread, before any scene shows it): the styled one never reaches the
    mixer."""
    import obspython

    source = obspython.calldata_source(calldata, "source")
    if source is not None and obspython.obs_source_get_name(source) == STYLED_SOURCE:
        ObsPythonApi().hide_from_mixer(source)


def script_load(settings: Settings) -> None:
    _get_logic().load(settings)
    import obspython

    obspython.timer_add(_watch, WATCH_SECONDS * 1000)
    obspython.signal_handler_connect(obspython.obs_get_signal_handler(), "source_create", _source_created)


def script_update(settings: Settings) -> None:
    _get_logic().update(settings)


def script_save(settings: Settings) -> None:
    _get_logic().save(settings)


def script_properties() -> Props:
    logic = _get_logic()
    logic.refresh()
    return logic.properties()


def script_unload() -> None:
    global _logic
    import obspython

    obspython.timer_remove(_watch)
    obspython.signal_handler_disconnect(obspython.obs_get_signal_handler(), "source_create", _source_created)
    if _logic is not None:
        _logic.unload()
        _logic = None
