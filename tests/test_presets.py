"""Preset schema, validation, the shipped library and the user library on disk (Qt-free)."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
from sdv2_studio.engine.config import MAX_STEPS, Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.presets import (
    SCHEMA_VERSION,
    Preset,
    delete_preset,
    export_preset,
    find_preset,
    import_preset,
    load_library,
    load_presets,
    read_preset,
    register_cli,
    save_preset,
    shipped_presets_dir,
    unique_id,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
GOOD = """schema = 1
name = "Test Style"
prompt = "a test prompt"
steps = 3
noise_scale = 0.6
seed = 5
transition_chunks = 1
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_library_has_ten_plus_valid_styles_with_small_thumbnails():
    folder = shipped_presets_dir()
    assert folder == ROOT / "presets"
    presets, errors = load_presets([folder], builtin_dirs=[folder])
    assert errors == []
    assert len(presets) >= 10
    names = {p.name for p in presets}
    for wanted in ("Anime Cel", "Watercolor", "Oil Painting", "Pixel Art", "Cyberpunk Neon", "Claymation",
                   "Pencil Sketch", "Ukiyo-e", "Comic Ink", "3D Toon"):
        assert wanted in names
    assert presets[0].id == "anime-cel"  # gallery order comes from `order`
    for p in presets:
        assert p.builtin and 1 <= p.controls.steps <= MAX_STEPS and len(p.controls.prompt) > 60
        assert p.thumbnail is not None and p.thumbnail.suffix == ".png"
        assert p.thumbnail.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.thumbnail.stat().st_size < 30_000


def test_toml_fields_are_the_presets_controls_and_round_trip(tmp_path):
    path = write(tmp_path, "t.toml", GOOD)
    p = read_preset(path)
    assert p.controls == Controls(prompt="a test prompt", steps=3, noise_scale=0.6, seed=5, transition_chunks=1)
    assert read_preset(write(tmp_path, "again.toml", p.to_toml())).controls == p.controls
    # fields a file leaves out take the Controls defaults (one default for presets, settings, CLI and engine)
    minimal = read_preset(write(tmp_path, "minimal.toml", 'name = "M"\nprompt = "m"\nnoise_scale = 1\n'))
    assert minimal.controls == Controls(prompt="m", noise_scale=1.0)
    assert isinstance(minimal.controls.noise_scale, float)
    for shipped in load_library(tmp_path / "user")[0]:
        assert tomllib.loads(shipped.to_toml())["steps"] == shipped.controls.steps


@pytest.mark.parametrize("line, field", [
    ("steps = 7", "steps"),
    ("steps = 2.5", "steps"),
    ("steps = true", "steps"),
    ("noise_scale = 0", "noise_scale"),
    ("noise_scale = 1.5", "noise_scale"),
    ("noise_scale = \"high\"", "noise_scale"),
    ("seed = -1", "seed"),
    ("seed = 1.5", "seed"),
    ("transition_chunks = -2", "transition_chunks"),
    ("transition_chunks = 65", "transition_chunks"),
    ("prompt = \"   \"", "prompt"),
    ("prompt = 7", "prompt"),
    ("name = 3", "name"),
    ("tags = \"anime\"", "tags"),
    ("stpes = 2", "stpes"),
    ("schema = 0", "schema"),
    ('loras = [["../outside.safetensors", 1.0]]', "loras"),
    ('loras = [["ink.safetensors", 20]]', "loras"),
    ('loras = "ink.safetensors"', "loras"),
])
def test_bad_field_names_file_and_field_and_others_still_load(tmp_path, line, field):
    key = line.split(" =")[0]
    body = "\n".join(x for x in GOOD.splitlines() if not x.startswith(key + " ")) + "\n" + line + "\n"
    write(tmp_path, "bad.toml", body)
    write(tmp_path, "good.toml", GOOD)
    presets, errors = load_presets([tmp_path])
    assert [p.id for p in presets] == ["good"]
    assert len(errors) == 1
    msg = str(errors[0])
    assert "bad.toml" in msg and f"'{field}'" in msg and "\n" not in msg


def test_missing_name_and_newer_schema(tmp_path):
    write(tmp_path, "noname.toml", 'prompt = "x"\n')
    write(tmp_path, "future.toml", GOOD.replace("schema = 1", f"schema = {SCHEMA_VERSION + 1}"))
    presets, errors = load_presets([tmp_path])
    assert presets == []
    text = " | ".join(map(str, errors))
    assert "noname.toml" in text and "'name'" in text
    assert "future.toml" in text and "newer" in text and "update" in text


def test_corrupt_user_file_is_backed_up_and_reported_shipped_one_only_reported(tmp_path):
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    broken = write(user, "broken.toml", "name = 'unterminated\nprompt = \n")
    write(user, "fine.toml", GOOD)
    shipped_broken = write(shipped, "also-broken.toml", "[[[")
    presets, errors = load_presets([shipped, user], backup_dirs=[user], builtin_dirs=[shipped])
    assert [p.id for p in presets] == ["fine"]
    assert len(errors) == 2
    assert not broken.exists()
    backups = list(user.glob("broken.toml.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text() == "name = 'unterminated\nprompt = \n"
    user_err = next(str(e) for e in errors if "broken.toml" in str(e) and "also" not in str(e))
    assert "not a valid TOML" in user_err and backups[0].name in user_err
    assert shipped_broken.exists()  # never touch the install folder
    # the id of the corrupt file stays taken, so a new preset never overwrites its backup's name
    assert unique_id("broken", user) == "broken-2"


def test_round_trip_through_disk_keeps_every_field(tmp_path):
    p = Preset(id="x", name='Quote "and" back\\slash ✨', tags=("a", "b c"), description="d", order=5,
               controls=Controls(prompt="line one\nline two\ttab \x7f del é", steps=4, noise_scale=0.35,
                                 seed=2**40, transition_chunks=7))
    saved = save_preset(p, tmp_path)
    assert saved.path == tmp_path / "x.toml" and not saved.builtin
    assert [f.name for f in tmp_path.iterdir()] == ["x.toml"]  # no temp files left behind
    tomllib.loads(saved.path.read_text(encoding="utf-8"))  # valid TOML
    back = read_preset(saved.path)
    for f in ("name", "controls", "tags", "description", "order"):
        assert getattr(back, f) == getattr(p, f), f


def test_loras_round_trip_and_raise_the_schema_only_when_present(tmp_path):
    """A preset naming LoRAs is written as schema 2 (older versions then say to update rather than reject an
    unknown field); one without stays schema 1."""
    c = Controls(prompt="ink", loras=(("ink.safetensors", 0.8), ("sub dir/glow \"x\".safetensors", -1.0),
                                      ("/abs/style.safetensors", 1.0)))
    saved = save_preset(Preset(id="inked", name="Inked", controls=c), tmp_path)
    assert tomllib.loads(saved.path.read_text(encoding="utf-8"))["schema"] == SCHEMA_VERSION == 2
    assert read_preset(saved.path).controls == c
    plain = save_preset(Preset(id="plain", name="Plain", controls=Controls(prompt="p")), tmp_path)
    assert tomllib.loads(plain.path.read_text(encoding="utf-8"))["schema"] == 1
    bare = read_preset(write(tmp_path, "bare.toml", 'name = "B"\nprompt = "b"\nloras = ["ink.safetensors"]\n'))
    assert bare.controls.loras == (("ink.safetensors", 1.0),)


def test_lora_files_resolve_in_the_user_lora_folder(tmp_path, monkeypatch):
    from sdv2_studio.engine.presets import resolve_lora_ref, user_loras_dir

    monkeypatch.delenv("SDV2_LORAS", raising=False)
    assert user_loras_dir() == Path(os.environ["XDG_DATA_HOME"]) / "streamdiffusion-studio" / "loras"
    folder = tmp_path / "loras"
    monkeypatch.setenv("SDV2_LORAS", str(folder))
    write(folder / "sub", "a.safetensors", "x")
    elsewhere = write(tmp_path / "comfy", "b.safetensors", "x")
    assert resolve_lora_ref("sub/a.safetensors") == folder / "sub" / "a.safetensors"
    assert resolve_lora_ref(str(elsewhere)) == elsewhere  # absolute: as it is
    with pytest.raises(EngineError, match="not found in the LoRA folder"):
        resolve_lora_ref("b.safetensors")
    with pytest.raises(EngineError, match="leaves the LoRA folder"):
        resolve_lora_ref("../comfy/b.safetensors")


def test_save_validates_and_copies_thumbnail(tmp_path):
    shipped, _ = load_presets([shipped_presets_dir()])
    base = shipped[0]
    with pytest.raises(EngineError, match="name"):
        save_preset(base.replace(id="bad", name=""), tmp_path)
    with pytest.raises(EngineError, match="file name"):
        save_preset(base.replace(id="../escape"), tmp_path)
    saved = save_preset(base.replace(id="mine", name="Mine"), tmp_path)
    assert saved.thumbnail == tmp_path / "mine.png" and saved.thumbnail.read_bytes() == base.thumbnail.read_bytes()
    assert read_preset(saved.path).thumbnail == (tmp_path / "mine.png").resolve()


def test_user_preset_overrides_shipped_id_and_delete_rules(tmp_path):
    shipped = shipped_presets_dir()
    override = save_preset(Preset(id="anime-cel", name="My Anime", controls=Controls(prompt="mine")), tmp_path)
    presets, errors = load_presets([shipped, tmp_path], builtin_dirs=[shipped])
    assert not errors
    p = find_preset(presets, "anime-cel")
    assert p.name == "My Anime" and not p.builtin
    assert find_preset(presets, "my anime") == p
    with pytest.raises(EngineError, match="no preset called"):
        find_preset(presets, "nope")
    builtin = find_preset(presets, "watercolor")
    with pytest.raises(EngineError, match="cannot be deleted"):
        delete_preset(builtin)
    delete_preset(p)
    assert not override.path.exists()


def test_export_then_import_under_a_fresh_id(tmp_path):
    src = find_preset(load_library(tmp_path / "user")[0], "pixel-art")
    out = export_preset(src.replace(controls=dataclasses.replace(src.controls, prompt="edited prompt")),
                        tmp_path / "share" / "pixel")
    assert out.name == "pixel.toml" and (tmp_path / "share" / "pixel.png").is_file()
    user = tmp_path / "user"
    first = import_preset(out, user)
    second = import_preset(out, user)
    assert first.id == "pixel-art" and second.id == "pixel-art-2"
    assert first.controls.prompt == "edited prompt" and first.thumbnail.is_file()
    with pytest.raises(EngineError, match="not a valid TOML"):
        import_preset(write(tmp_path, "junk.toml", "not toml ["), user)


def test_preset_dataclass_fields_cover_the_schema():
    names = {f.name for f in dataclasses.fields(Preset)} | {f.name for f in dataclasses.fields(Controls)}
    assert {"name", "prompt", "steps", "noise_scale", "seed", "transition_chunks", "thumbnail", "tags"} <= names


def test_cli_list_and_show(tmp_path, capsys, monkeypatch):
    import argparse

    monkeypatch.setenv("SDV2_USER_PRESETS", str(tmp_path))
    write(tmp_path, "broken.toml", "steps = \n")
    write(tmp_path, "inked.toml", 'name = "Inked"\nprompt = "ink"\nloras = [["ink.safetensors", 0.8]]\n')
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["presets", "list"])
    assert args.fn(args) == 0
    out, err = capsys.readouterr()
    assert "anime-cel" in out and "Anime Cel" in out and str(tmp_path) in out
    assert "inked" in out and "+ LoRA ink.safetensors x0.8" in out
    assert "broken.toml" in err
    args = parser.parse_args(["presets", "show", "ukiyo-e"])
    assert args.fn(args) == 0
    assert 'name = "Ukiyo-e"' in capsys.readouterr().out


def test_run_with_a_user_preset_that_does_not_load_names_its_problem(tmp_path, monkeypatch, capsys):
    """`--preset escape` where escape.toml exists but is refused: its own error, not "no preset called"."""
    from helpers import refused

    monkeypatch.setenv("SDV2_USER_PRESETS", str(tmp_path))
    (tmp_path / "escape.toml").write_text('schema = 2\nname = "Escape"\nprompt = "ink"\n'
                                          'loras = [["../../x.safetensors", 1.0]]\n')
    refused(["run", "--model", "tiny", "--preset", "escape"], "leaves the LoRA folder", capsys)
    refused(["presets", "show", "escape"], "leaves the LoRA folder", capsys)
    refused(["run", "--model", "tiny", "--preset", "nothere"], "no preset called 'nothere'", capsys)
