"""App settings on disk: atomic, versioned, corrupt files backed up and reported (Qt-free)."""

from __future__ import annotations

import dataclasses
import json

from sdv2_studio.app.settings import SETTINGS_VERSION, Settings, SettingsStore, config_dir
from sdv2_studio.engine.config import Controls


def test_round_trip(tmp_path):
    store = SettingsStore(tmp_path / "cfg" / "settings.json")
    s = Settings(source="camera:0", model="tiny", width=832, height=480, output_record=True, recent_files=["/a.mp4"],
                 latency_budget_ms=250, first_run_done=True,
                 controls=Controls(prompt="ink", steps=3, noise_scale=0.55, seed=9, transition_chunks=0))
    store.save(s)
    assert [p.name for p in store.path.parent.iterdir()] == ["settings.json"]  # no temp file left
    data = json.loads(store.path.read_text())
    assert data["version"] == SETTINGS_VERSION
    assert data["controls"] == {"prompt": "ink", "steps": 3, "noise_scale": 0.55, "seed": 9, "transition_chunks": 0,
                                "prompt_weight": 1.0, "blend": [], "loras": []}
    back, notes = store.load()
    assert notes == [] and back == s
    s.controls = s.controls.with_prompts([("ink", 0.7), ("neon", 0.3)])  # a prompt blend comes back as it went
    store.save(s)
    assert json.loads(store.path.read_text())["controls"]["blend"] == [["neon", 0.3]] and store.load() == (s, [])
    store.save(Settings())
    assert store.load() == (Settings(), []) and Settings().controls is None  # None: the preset's controls


def test_version_1_flat_controls_are_migrated(tmp_path):
    path = tmp_path / "settings.json"
    v1 = {"version": 1, "model": "tiny", "preset": "watercolor", "prompt": "my look", "steps": 3,
          "noise_scale": 0.5, "seed": 4242, "transition_chunks": 4}
    path.write_text(json.dumps(v1), encoding="utf-8")
    s, notes = SettingsStore(path).load()
    assert notes == [] and s.model == "tiny" and s.preset == "watercolor"
    assert s.controls == Controls(prompt="my look", steps=3, noise_scale=0.5, seed=4242, transition_chunks=4)
    SettingsStore(path).save(s)
    data = json.loads(path.read_text())
    assert data["version"] == SETTINGS_VERSION == 2 and "prompt" not in data and data["controls"]["seed"] == 4242
    # version 1 wrote an empty prompt for "the preset's controls"
    path.write_text(json.dumps({**v1, "prompt": ""}), encoding="utf-8")
    assert SettingsStore(path).load() == (Settings(model="tiny", preset="watercolor"), [])
    # a bad value (either version) is reported and the preset's controls are used
    path.write_text(json.dumps({**v1, "steps": 9}), encoding="utf-8")
    s, notes = SettingsStore(path).load()
    assert s.controls is None and s.model == "tiny" and len(notes) == 1 and "steps" in notes[0]
    path.write_text(json.dumps({"version": 2, "controls": {"prompt": "x", "colour": 1}}), encoding="utf-8")
    s, notes = SettingsStore(path).load()
    assert s.controls is None and "colour" in notes[0]


def test_defaults_when_missing_and_default_location(tmp_path):
    s, notes = SettingsStore(tmp_path / "none.json").load()
    assert s == Settings() and notes == []
    assert "streamdiffusion-studio" in str(config_dir())  # under the (test-isolated) user config dir


def test_corrupt_file_is_backed_up_and_reported(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"model": "tiny", ', encoding="utf-8")
    s, notes = SettingsStore(path).load()
    assert s == Settings()
    backups = list(tmp_path.glob("settings.json.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text() == '{"model": "tiny", '
    assert not path.exists()
    assert len(notes) == 1 and "unreadable" in notes[0] and backups[0].name in notes[0]


def test_bad_field_falls_back_with_a_note_and_newer_version_is_reported(tmp_path):
    path = tmp_path / "settings.json"
    good = dataclasses.asdict(Settings(model="tiny"))
    good.update(version=SETTINGS_VERSION + 1, width="wide", batch=1, target_fps=30, unknown_key=True)
    path.write_text(json.dumps(good), encoding="utf-8")
    s, notes = SettingsStore(path).load()
    assert s.model == "tiny" and s.width == Settings().width and s.batch is True and s.target_fps == 30.0
    text = " | ".join(notes)
    assert "newer version" in text and "width" in text and "batch" in text
    path.write_text("[1, 2]", encoding="utf-8")
    s, notes = SettingsStore(path).load()
    assert s == Settings() and "unreadable" in notes[0]
