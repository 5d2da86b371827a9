"""Style presets: a small TOML schema, validation, and the on-disk library (Qt-free; used by the CLI, app, OBS).

A preset file (`presets/*.toml` ships with the app; the user's own live in the user data folder):

    schema = 2                          # format version (optional; 1 when missing; 2 when it names LoRAs)
    name = "Anime Cel"                  # shown on the card
    prompt = "anime cel-shaded ..."     # what the stream should look like
    steps = 2                           # denoising steps 1-4 (more = better quality, slower)
    noise_scale = 0.75                  # (0, 1]: how strongly the picture is restyled
    seed = 7                            # >= 0
    transition_chunks = 3               # 0-64: chunks over which a switch to this preset blends in
    prompt_weight = 0.7                 # optional, with blend: the prompt's weight in a blend
    blend = [["neon glow", 0.3]]        # optional: more [prompt, weight] pairs mixed in by normalised weight
    loras = [["ink.safetensors", 0.8]]  # optional: DiT LoRAs of this style, [file, strength] (strength -10 to 10)
    thumbnail = "anime-cel.png"         # optional, relative to the preset file
    tags = ["anime", "bold"]            # optional
    description = "..."                 # optional, one line
    order = 10                          # optional: position in the gallery (default 1000, then by name)

prompt, steps, noise_scale, seed, transition_chunks, prompt_weight, blend and loras are the preset's `Controls`
(engine/config.py: their defaults and their one validation). A LoRA file given by name (or a relative path) is
looked up in the user's LoRA folder (`user_loras_dir`: $SDV2_LORAS, else `loras/` in the user data folder; a link
in it to another folder, e.g. ComfyUI's `models/loras`, works); it may not leave that folder (`..`). An absolute
path is used as it is (such a preset does not travel to another machine). Whether the file exists and fits the
model is checked when the preset is applied (`Engine.set_controls`): a missing or mismatched LoRA refuses the whole
preset with one line, and the stream keeps its current style; the library still lists the preset.

A preset's id is its file name without `.toml`; a later folder overrides an earlier one with the same id (so a user
preset called `anime-cel.toml` replaces the shipped one). A bad file never stops the others loading: every problem
becomes one `EngineError` line naming the file and the field. In folders the app writes to (the user's presets), a
file that is not valid TOML at all is renamed to `<name>.corrupt-<timestamp>` and reported, never silently
discarded. Writes go to a temp file in the same folder and are renamed over the target (`os.replace`), so a crash
never leaves half a preset behind.

Only the standard library (+ platformdirs) is imported: the OBS script runs this inside OBS's own Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdv2_studio.engine.config import CONTROL_FIELDS, Controls, InvalidControl, leaves_folder
from sdv2_studio.engine.errors import EngineError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError:  # e.g. OBS's own Python without tomli: reading presets then says what to install
        tomllib = None

SCHEMA_VERSION = 2  # 2: `loras`; files without LoRAs are written as schema 1, which older versions read
APP_NAME = "streamdiffusion-studio"
_TEXT_LIMITS = {"name": 60, "description": 300}
DEFAULT_ORDER = 1000
_KNOWN = {"schema", "name", "thumbnail", "tags", "description", "order", *CONTROL_FIELDS}


@dataclass(frozen=True)
class Preset:
    """One style: its `controls` (what `Engine.set_controls` takes) and how the gallery shows it."""

    id: str
    name: str
    controls: Controls
    thumbnail: Path | None = None  # absolute once loaded
    tags: tuple[str, ...] = ()
    description: str = ""
    order: int = DEFAULT_ORDER  # gallery position
    path: Path | None = None  # the file it was read from / written to
    builtin: bool = False  # shipped with the app (read-only)

    def replace(self, **changes) -> Preset:
        return dataclasses.replace(self, **changes)

    def validated(self) -> Preset:
        """Check the fields besides the (always valid) controls; raises EngineError naming the file and field."""
        data = {"name": self.name, "prompt": self.controls.prompt, "description": self.description,
                "order": self.order, "tags": list(self.tags)}
        parse_preset(data, self.path or Path(f"{self.id}.toml"), preset_id=self.id)
        return self

    def to_toml(self, thumbnail: str | None = None) -> str:
        """The file text; `thumbnail` is the path to write (default: the thumbnail's file name)."""
        thumb = thumbnail if thumbnail is not None else (self.thumbnail.name if self.thumbnail else None)
        c = self.controls
        lines = [f"schema = {SCHEMA_VERSION if c.loras else 1}", f"name = {_toml_str(self.name)}",
                 f"prompt = {_toml_str(c.prompt)}",
                 f"steps = {c.steps}", f"noise_scale = {c.noise_scale!r}", f"seed = {c.seed}",
                 f"transition_chunks = {c.transition_chunks}"]
        if c.blend:
            pairs = ", ".join(f"[{_toml_str(p)}, {w!r}]" for p, w in c.blend)
            lines += [f"prompt_weight = {c.prompt_weight!r}", f"blend = [{pairs}]"]
        if c.loras:
            lines.append(f"loras = [{', '.join(f'[{_toml_str(f)}, {s!r}]' for f, s in c.loras)}]")
        if thumb:
            lines.append(f"thumbnail = {_toml_str(thumb)}")
        if self.tags:
            lines.append(f"tags = [{', '.join(_toml_str(t) for t in self.tags)}]")
        if self.description:
            lines.append(f"description = {_toml_str(self.description)}")
        if self.order != DEFAULT_ORDER:
            lines.append(f"order = {self.order}")
        return "\n".join(lines) + "\n"


def _toml_str(text: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML escapes; DEL must be escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


# -- validation -------------------------------------------------------------------------------------------------------


THUMBNAIL_TYPES = (".png", ".jpg", ".jpeg", ".webp")


def _bad(path: Path, field: str, why: str) -> EngineError:
    return EngineError(f"preset {path}: field '{field}' {why}; fix the file or delete it")


def _int(data: dict, key: str, default: int, lo: int, hi: int, path: Path) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(path, key, f"must be a whole number {lo}-{hi}, not {v!r}")
    if not lo <= v <= hi:
        raise _bad(path, key, f"must be {lo}-{hi}, not {v}")
    return v


def _text(data: dict, key: str, path: Path, required: bool) -> str:
    v = data.get(key, "")
    if not isinstance(v, str):
        raise _bad(path, key, f"must be text in quotes, not {v!r}")
    v = v.strip()
    if required and not v:
        raise _bad(path, key, "is missing or empty")
    if len(v) > _TEXT_LIMITS[key]:
        raise _bad(path, key, f"is too long ({len(v)} characters, at most {_TEXT_LIMITS[key]})")
    return v


def parse_preset(data: dict, path: Path, *, preset_id: str | None = None, builtin: bool = False) -> Preset:
    """Validate the table read from `path` and build the Preset (EngineError naming file and field)."""
    path = Path(path)
    version = data.get("schema", SCHEMA_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _bad(path, "schema", f"must be a positive whole number, not {version!r}")
    if version > SCHEMA_VERSION:
        raise EngineError(f"preset {path} uses schema {version}, newer than this app understands "
                          f"({SCHEMA_VERSION}); update StreamDiffusionV2 Studio to use it")
    for key in data:
        if key not in _KNOWN:
            raise _bad(path, key, f"is not a preset field (known fields: {', '.join(sorted(_KNOWN))})")
    name = _text(data, "name", path, required=True)
    description = _text(data, "description", path, required=False)
    order = _int(data, "order", DEFAULT_ORDER, -(10**6), 10**6, path)
    if "prompt" not in data:
        raise _bad(path, "prompt", "is missing")
    values = {k: data[k] for k in CONTROL_FIELDS if k in data}  # missing ones take the Controls defaults
    if isinstance(values["prompt"], str):
        values["prompt"] = values["prompt"].strip()
    try:
        controls = Controls(**values)
    except InvalidControl as e:
        raise _bad(path, e.field, e.why) from None
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise _bad(path, "tags", f"must be a list of words in quotes, like [\"anime\"], not {tags!r}")
    thumb = data.get("thumbnail")
    thumbnail = None
    if thumb is not None:
        if not isinstance(thumb, str) or not thumb.strip():
            raise _bad(path, "thumbnail", f"must be an image file name in quotes, not {thumb!r}")
        folder = path.parent.resolve()
        thumbnail = (folder / thumb).resolve()  # links followed: what would really be read
        if thumbnail.parent != folder or thumbnail.suffix.lower() not in THUMBNAIL_TYPES:
            raise _bad(path, "thumbnail", f"must name a picture ({', '.join(THUMBNAIL_TYPES)}) in the preset's own "
                       f"folder, not {thumb!r}")
        if not thumbnail.is_file():
            thumbnail = None  # a missing picture is cosmetic: the card shows a placeholder
    return Preset(id=preset_id or path.stem, name=name, controls=controls, thumbnail=thumbnail,
                  tags=tuple(t.strip() for t in tags), description=description, order=order, path=path,
                  builtin=builtin)


def read_preset(path: str | os.PathLike, *, builtin: bool = False) -> Preset:
    """Read and validate one preset file."""
    path = Path(path)
    if tomllib is None:  # pragma: no cover
        raise EngineError("reading presets on Python 3.10 needs tomli: pip install tomli")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise EngineError(f"cannot read preset {path} ({e.strerror or e}); check the file") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:  # TOMLDecodeError is a ValueError
        raise CorruptPresetError(f"preset {path} is not a valid TOML file ({e}); fix or delete it") from None
    return parse_preset(data, path, builtin=builtin)


class CorruptPresetError(EngineError):
    """The file could not be parsed at all (as opposed to a field with a bad value)."""


# -- files ------------------------------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def backup_corrupt(path: str | os.PathLike) -> Path:
    """Rename a file that cannot be read to `<name>.corrupt-<timestamp>` beside it and return the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, dest)
    return dest


def shipped_presets_dir() -> Path | None:
    """The presets that come with the app: $SDV2_PRESETS, else the `sdv2_studio.presets` package data (a wheel, an
    editable install, `pip install --user` or a PyInstaller bundle alike)."""
    env = os.environ.get("SDV2_PRESETS")
    candidates = [Path(env).expanduser()] if env else []
    try:
        candidates.append(Path(str(importlib.resources.files("sdv2_studio.presets"))))
    except (ModuleNotFoundError, TypeError):  # a broken install; the user's own presets still load
        pass
    for c in candidates:
        if c.is_dir() and any(c.glob("*.toml")):
            return c
    return None


def _user_data_dir() -> Path:
    """The platform's user data folder of the app (platformdirs; the same folders without it, in OBS's Python)."""
    try:
        import platformdirs

        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    except ImportError:
        if sys.platform == "win32":
            base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        elif sys.platform == "darwin":
            base = Path.home() / "Library" / "Application Support"
        else:
            base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        return base / APP_NAME


def user_presets_dir() -> Path:
    """Where the user's own presets are saved ($SDV2_USER_PRESETS, else the platform's user data folder)."""
    env = os.environ.get("SDV2_USER_PRESETS")
    return Path(env).expanduser() if env else _user_data_dir() / "presets"


def user_loras_dir() -> Path:
    """Where presets find the LoRA files they name ($SDV2_LORAS, else `loras/` in the user data folder)."""
    env = os.environ.get("SDV2_LORAS")
    return Path(env).expanduser() if env else _user_data_dir() / "loras"


def resolve_lora_ref(ref: str, folder: str | os.PathLike | None = None) -> Path:
    """The file a preset's LoRA entry (Controls.loras) means: an absolute path as it is, a relative one inside
    `folder` (default `user_loras_dir()`); EngineError naming the folder when there is no such file."""
    path, where = Path(ref).expanduser(), ""
    if not path.is_absolute():
        folder = Path(folder) if folder is not None else user_loras_dir()
        if leaves_folder(ref):  # Controls refuses these; a hand-made call too
            raise EngineError(f"LoRA {ref!r} leaves the LoRA folder {folder}; name a file inside it")
        path, where = folder / path, f" in the LoRA folder {folder}"
    if not path.is_file():
        raise EngineError(f"LoRA {ref} not found{where}; put the file there (or fix the preset's loras) and apply "
                          "the preset again")
    return path


def load_presets(dirs: Iterable[str | os.PathLike | None], *, backup_dirs: Iterable[str | os.PathLike] = (),
                 builtin_dirs: Iterable[str | os.PathLike] = ()) -> tuple[list[Preset], list[EngineError]]:
    """Every valid preset in `dirs` (sorted by `order`, then name; a later folder overrides an earlier id) and
    one EngineError per bad file. Unparseable files in `backup_dirs` are renamed `.corrupt-<timestamp>`."""
    backup = {Path(d).resolve() for d in backup_dirs}
    builtin = {Path(d).resolve() for d in builtin_dirs}
    found: dict[str, Preset] = {}
    errors: list[EngineError] = []
    for d in dirs:
        if d is None or not Path(d).is_dir():
            continue
        folder = Path(d).resolve()
        for path in sorted(folder.glob("*.toml")):
            try:
                p = read_preset(path, builtin=folder in builtin)
            except CorruptPresetError as e:
                if folder in backup:
                    try:
                        moved = backup_corrupt(path)
                        e = EngineError(f"{e}; it was moved aside to {moved.name}")
                    except OSError as oe:
                        e = EngineError(f"{e}; moving it aside failed too ({oe.strerror or oe})")
                errors.append(e)
                continue
            except EngineError as e:
                errors.append(e)
                continue
            found[p.id] = p
    return sorted(found.values(), key=lambda p: (p.order, p.name.lower(), p.id)), errors


def load_library(user_dir: str | os.PathLike | None = None) -> tuple[list[Preset], list[EngineError]]:
    """Shipped presets, then the user's (backing up corrupt user files)."""
    shipped = shipped_presets_dir()
    user = Path(user_dir) if user_dir is not None else user_presets_dir()
    dirs = [d for d in (shipped, user) if d is not None]
    return load_presets(dirs, backup_dirs=[user] if user.is_dir() else [],
                        builtin_dirs=[shipped] if shipped else [])


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:40].strip("-") or "preset"


def unique_id(name: str, folder: str | os.PathLike, taken: Iterable[str] = ()) -> str:
    """A file-name-safe id for `name` that is not used in `folder` (any file, corrupt backups included) or `taken`."""
    folder = Path(folder)
    used = set(taken)
    if folder.is_dir():
        used |= {p.name.split(".")[0] for p in folder.iterdir()}
    base = slugify(name)
    pid, n = base, 1
    while pid in used:
        n += 1
        pid = f"{base}-{n}"
    return pid


def save_preset(preset: Preset, folder: str | os.PathLike | None = None) -> Preset:
    """Validate and write `preset` as `<folder>/<id>.toml` (atomic); its thumbnail is copied beside it if it lives
    elsewhere. Returns the preset as saved (path, thumbnail, builtin=False)."""
    folder = Path(folder) if folder is not None else user_presets_dir()
    preset.validated()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", preset.id):
        raise EngineError(f"preset id {preset.id!r} cannot be a file name; use letters, digits, - and _")
    folder.mkdir(parents=True, exist_ok=True)
    thumb = preset.thumbnail
    if thumb is not None and thumb.is_file() and thumb.resolve().parent != folder.resolve():
        dest = folder / f"{preset.id}{thumb.suffix.lower()}"
        atomic_write_bytes(dest, thumb.read_bytes())
        thumb = dest
    path = folder / f"{preset.id}.toml"
    saved = preset.replace(path=path, thumbnail=thumb, builtin=False)
    atomic_write_text(path, saved.to_toml())
    return saved


def delete_preset(preset: Preset) -> None:
    """Delete a user preset file (and its own thumbnail). Shipped presets cannot be deleted."""
    if preset.builtin or preset.path is None:
        raise EngineError(f"'{preset.name}' ships with the app and cannot be deleted; duplicate it to make your own")
    preset.path.unlink(missing_ok=True)
    thumb = preset.thumbnail
    if thumb is not None and thumb.parent == preset.path.parent and thumb.stem == preset.id:
        thumb.unlink(missing_ok=True)


def export_preset(preset: Preset, dest: str | os.PathLike) -> Path:
    """Write the preset to `dest` (a .toml path) with its thumbnail beside it as `<dest stem>.png`."""
    dest = Path(dest)
    if dest.suffix.lower() != ".toml":
        dest = dest.with_suffix(".toml")
    dest.parent.mkdir(parents=True, exist_ok=True)
    thumb_name = None
    if preset.thumbnail is not None and preset.thumbnail.is_file():
        thumb_dest = dest.with_name(dest.stem + preset.thumbnail.suffix.lower())
        if thumb_dest.resolve() != preset.thumbnail.resolve():
            atomic_write_bytes(thumb_dest, preset.thumbnail.read_bytes())
        thumb_name = thumb_dest.name
    atomic_write_text(dest, preset.to_toml(thumbnail=thumb_name or ""))
    return dest


def import_preset(src: str | os.PathLike, folder: str | os.PathLike | None = None,
                  taken: Iterable[str] = ()) -> Preset:
    """Validate a preset file from anywhere and save a copy among the user's presets under a fresh id."""
    folder = Path(folder) if folder is not None else user_presets_dir()
    p = read_preset(src)
    return save_preset(p.replace(id=unique_id(p.name, folder, taken)), folder)


def preset_index(entries: Sequence[tuple[str, str]], key: str) -> int:
    """Index of the preset ``key`` names among ``(id, name)`` pairs: its id, (case-insensitive) name, or its number
    in the list (1-based, as `sdv2 presets list` shows them). EngineError naming the choices otherwise."""
    low = key.strip().lower()
    for i, (pid, name) in enumerate(entries):
        if pid.lower() == low or name.lower() == low:
            return i
    if low.isdigit() and 1 <= int(low) <= len(entries):
        return int(low) - 1
    names = ", ".join(pid for pid, _ in entries) or "none found"
    raise EngineError(f"no preset called {key!r}; available: {names}, or a number 1-{len(entries)} from "
                      "`sdv2 presets list`")


def find_preset(presets: Sequence[Preset], key: str, problems: Sequence[EngineError] = ()) -> Preset:
    """Look a preset up by id, name or list number (:func:`preset_index`). `problems` (from `load_library`): a
    preset file named `key` that did not load is refused with its own error, not as "no preset called"."""
    try:
        return presets[preset_index([(p.id, p.name) for p in presets], key)]
    except EngineError:
        wanted = f"{os.sep}{key.strip()}.toml:"
        for problem in problems:
            if wanted in str(problem):
                raise problem from None
        raise


# -- CLI ----------------------------------------------------------------------------------------------------------


def printable(text: object) -> str:
    """``text`` safe for a terminal: control characters (escape sequences, bells, line breaks) become U+FFFD."""
    return "".join(c if c.isprintable() else "\ufffd" for c in str(text))


def _cmd_list(args: argparse.Namespace) -> int:
    presets, errors = load_library()
    for i, p in enumerate(presets, 1):
        where, c = "shipped" if p.builtin else "user", p.controls
        print(f"{i:>2}. {printable(p.id):<20} {printable(p.name):<22} steps {c.steps}  noise {c.noise_scale:.2f}  "
              f"seed {c.seed:<6} transition {c.transition_chunks}  ({where})"
              + "".join(f"  + LoRA {printable(f)} x{s:g}" for f, s in c.loras))
    for e in errors:
        print(f"warning: {printable(e)}", file=sys.stderr)
    print(f"user presets folder: {user_presets_dir()}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    presets, problems = load_library()
    p = find_preset(presets, args.preset, problems)
    print(f"# {p.path}")
    print(p.to_toml(), end="")
    return 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add `presets {list,show}` to an argparse subparsers object."""
    p = subparsers.add_parser("presets", help="list or show the style presets (shipped and your own)")
    sub = p.add_subparsers(dest="presets_command", required=True, metavar="{list,show}")
    s = sub.add_parser("list", help="every preset with its settings")
    s.set_defaults(fn=_cmd_list)
    s = sub.add_parser("show", help="print one preset file")
    s.add_argument("preset", help="preset id or name")
    s.set_defaults(fn=_cmd_show)
    return p
