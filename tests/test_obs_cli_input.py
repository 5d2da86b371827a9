"""CLI input without a terminal and by list number, end to end in subprocesses: `sdv2 obs set-password` reads the
password from stdin when it is piped; `sdv2 run --preset N` / `sdv2 presets show N` take the number `sdv2 presets
list` shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from sdv2_studio.engine.config import Controls
from sdv2_studio.obs_bridge.settings import load_settings

SDV2 = [sys.executable, "-m", "sdv2_studio.engine.cli"]


def sdv2(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SDV2, *args], input=stdin if stdin is not None else "", capture_output=True, text=True,
                          timeout=600, env=env)


def test_set_password_reads_a_piped_password():
    env = {**os.environ, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}  # never the real keyring
    env.pop("SDV2_OBS_PASSWORD", None)
    r = sdv2("obs", "set-password", stdin="s3cret pw\n", env=env)
    assert r.returncode == 0, r.stderr
    assert "saved in the settings file" in r.stdout
    assert load_settings(env={}, use_keyring=False).password == "s3cret pw"
    r = sdv2("obs", "set-password", stdin="", env=env)  # nothing piped: the password is cleared, no prompt hangs
    assert r.returncode == 0 and "password cleared" in r.stdout
    assert not load_settings(env={}, use_keyring=False).password


def test_presets_are_accepted_by_their_list_number():
    listing = sdv2("presets", "list")
    assert listing.returncode == 0, listing.stderr
    rows = re.findall(r"^\s*(\d+)\. (\S+)\s.*?steps (\d+)", listing.stdout, re.M)
    number, preset_id, steps = next(row for row in rows if int(row[2]) != Controls().steps)  # tells itself apart
    shown = sdv2("presets", "show", number)
    assert shown.returncode == 0 and f"{preset_id}.toml" in shown.stdout.splitlines()[0]
    r = sdv2("run", "--preset", number, "--model", "tiny", "--size", "64x64", "--frames", "2", "--out", "")
    assert r.returncode == 0, r.stderr
    assert f"| {steps} step(s) |" in r.stderr
    r = sdv2("run", "--preset", str(len(rows) + 1), "--model", "tiny", "--out", "")
    assert r.returncode == 2 and f"a number 1-{len(rows)}" in r.stderr and "Traceback" not in r.stderr


def test_the_obs_preset_book_takes_list_numbers_and_display_names_too():
    import pytest
    from sdv2_studio.engine.errors import EngineError
    from sdv2_studio.engine.presets import load_library
    from sdv2_studio.obs_bridge.preset_book import PresetBook

    presets, _ = load_library()
    book, _ = PresetBook.from_library()
    second = presets[1]
    assert book.resolve("2") == book.resolve(second.name) == book.resolve(second.id) == second.id
    assert book.controls("2")["prompt"] == second.controls.prompt
    with pytest.raises(EngineError, match="unknown preset '99'"):
        book.controls("99")
