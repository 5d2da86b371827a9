"""The download plan: per file of the hub's listing, present (verified), linked (a user's file, --link) or to
download, with the bytes each takes; and the free space it needs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.hub.catalogue import Item, format_size
from sdv2_studio.engine.hub.containment import local_path
from sdv2_studio.engine.hub.record import digest, read_record, verified, write_record
from sdv2_studio.engine.hub.remote import Remote
from sdv2_studio.engine.hub.transfer import Transfer
from sdv2_studio.engine.model_links import LinkFolder, link

_DISK_MARGIN = 64 * 1024 * 1024  # head-room on top of the bytes to download


@dataclass
class Plan:
    """What happens to each file of one item: `todo` is downloaded, `links` linked, the rest is present."""

    it: Item
    base: Path
    commit: str
    files: dict[str, Remote]
    record: dict[str, dict]
    todo: list[str]
    links: dict[str, Path]  # repo path -> the user's file (--link) a symlink will point to, hash checked

    @property
    def need(self) -> int:
        """Bytes to download."""
        return sum(self.files[rel].size for rel in self.todo)


def make_plan(it: Item, base: Path, commit: str, files: dict[str, Remote], progress: Transfer,
              links: LinkFolder | None = None) -> Plan:
    """Which files to fetch: those missing, or whose copy on disk is not the listed one (deleted here: the hub's
    copy replaces it), less those a user's file in `links` stands in for. Copies never verified (put there by hand,
    damaged, outdated) and the user's files are hashed first."""
    old = read_record(base, it)
    record, todo, linked = {}, [], {}
    for rel, f in files.items():
        path = local_path(base, rel)
        rec = old.get(rel) if (old.get(rel) or {}).get("digest") == f.digest else None
        if not verified(path, rec) and path.is_file() and path.stat().st_size == f.size:
            progress.say(f"checking the existing {it.local}/{rel} ({'sha256' if f.lfs else 'git blob id'})")
            if digest(path, f.lfs) == f.digest:
                rec = {"size": f.size, "digest": f.digest, "mtime_ns": path.stat().st_mtime_ns}
        if verified(path, rec):
            record[rel] = rec
            continue
        if path.is_file():
            path.unlink()
        record[rel] = {"size": f.size, "digest": f.digest, "mtime_ns": None}
        target = links.find(rel, f.size) if links is not None else None
        if target is not None:
            progress.say(f"checking {target} ({'sha256' if f.lfs else 'git blob id'})")
            if digest(target, f.lfs) == f.digest:
                linked[rel] = target
                continue
            links.notes.append(f"not linked: {target} is not the hub's {rel} (its hash differs)")
        todo.append(rel)
    if record != old:
        write_record(base, it, record)
    return Plan(it, base, commit, files, record, todo, linked)


def free_bytes(path: Path) -> int | None:
    """Free bytes on the disk of `path` (or of its nearest existing parent); None when unknown."""
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def check_space(root: Path, need: int) -> int | None:
    """The free bytes at `root`, refusing a download of `need` bytes that would not fit."""
    free = free_bytes(root)
    if need and free is not None and free < need + _DISK_MARGIN:
        raise EngineError(f"not enough disk space in {root}: the download needs {format_size(need)}, "
                          f"{format_size(free)} is free; free some space or pass --dir FOLDER on another disk")
    return free


def link_files(plan: Plan) -> None:
    """Symlink the user's files chosen by `make_plan` into the models folder and record them as verified."""
    for rel, target in plan.links.items():
        path = local_path(plan.base, rel)
        link(target, path)
        plan.record[rel]["mtime_ns"] = path.stat().st_mtime_ns
    if plan.links:
        write_record(plan.base, plan.it, plan.record)


Confirm = Callable[[list[Plan], LinkFolder | None, int], bool]  # (plans, --link folder, free bytes) -> go ahead
