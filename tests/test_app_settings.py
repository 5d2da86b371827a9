"""App settings on disk: atomic, versioned, corrupt files backed up and reported (Qt-free)."""

from __future__ import annotations

import dataclasses
import json

from sdv2_studio.app.settings import SETTINGS_VERSION, Settings, SettingsStore, config_dir


def test_round_trip(tmp_path):
    store = SettingsStore(tmp_path / "cfg" / "settings.json")
    s = Settings(source="camera:0", model="tiny", width=832, height=480, steps=3, noise_scale=0.55, seed=9,
                 output_record=True, recent_files=["/a.mp4"], latency_budget_ms=250, first_run_done=True)
    store.save(s)
    assert [p.name for p in store.path.parent.iterdir()] == ["settings.json"]  # no temp file left
    data = json.loads(store.path.read_text())
    assert data["version"] == SETTINGS_VERSION
    back, notes = store.load()
    assert notes == [] and back == s


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
