"""What is on disk: the record of verified files (`<folder>/.cache/sdv2/<item>.json`, which makes a repeated
download a no-op and `status()` hash-free), the hashes the hub lists, and an item's status and size."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.hub.catalogue import Item, get_item, item_path, models_root
from sdv2_studio.engine.hub.containment import unsafe_name

DOWNLOADED, PARTIAL, MISSING = "downloaded", "partial", "missing"
_RECORD_DIR = Path(".cache") / "sdv2"
_CHUNK = 8 * 1024 * 1024


def digest(path: Path, lfs: bool) -> str:
    """sha256 of an LFS file's content, or the git blob id of a file stored in git (what the hub lists)."""
    h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _record_file(base: Path, it: Item) -> Path:
    return base / _RECORD_DIR / f"{it.name}.json"


def read_record(base: Path, it: Item) -> dict[str, dict]:
    """{repo path: {"size", "digest", "mtime_ns" (None until verified)}} of the last download; {} if none or damaged."""
    try:
        files = json.loads(_record_file(base, it).read_text(encoding="utf-8"))["files"]
        if all(unsafe_name(rel) is None and isinstance(rec["size"], int) for rel, rec in files.items()):
            return files
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        pass
    return {}


def write_record(base: Path, it: Item, files: dict[str, dict]) -> None:
    path = _record_file(base, it)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"item": it.name, "repo": it.repo, "files": files}, indent=1, sort_keys=True),
                       encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise EngineError(f"cannot write to {base} ({e.strerror or e}): free some space, or pass --dir FOLDER on a "
                          "disk you can write to") from None


def verified(path: Path, rec: dict | None) -> bool:
    """True if the file is still exactly what we verified (size and modification time; no hashing)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return rec is not None and rec.get("mtime_ns") == st.st_mtime_ns and rec.get("size") == st.st_size


def status(item: str | Item, root: str | os.PathLike | None = None) -> str:
    """"downloaded", "partial" or "missing", from the files on disk (no network, no hashing).

    After `download()` its record of verified files decides; files put there by hand count as downloaded when
    every file the engine needs is present."""
    it = get_item(item)
    base = models_root(root) / it.local
    record = read_record(base, it)
    if record:
        if all(verified(base / rel, rec) for rel, rec in record.items()):
            return DOWNLOADED
        return PARTIAL if any((base / rel).is_file() for rel in record) else MISSING
    present = [g for g in it.required if any(p.is_file() for p in base.glob(g))]
    if present and len(present) == len(it.required):
        return DOWNLOADED
    return PARTIAL if present else MISSING


def local_size(item: str | Item, root: str | os.PathLike | None = None) -> int:
    """Bytes on disk in the item's folder (0 when absent)."""
    folder = item_path(item, root)
    total = 0
    if folder.is_dir():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != ".cache"]
            for name in filenames:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return total
