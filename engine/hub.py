"""`sdv2 models list|download|path`: fetch the StreamDiffusionV2 / Wan2.1 weights from the Hugging Face hub.

The catalogue below is data: which hub repo, which files in it, where they land under the models folder
(`engine.models.models_dir()`, or `--dir`), in the layouts `engine.models` reads (`base_parts`):

    <models>/StreamDiffusionV2/wan_causal_dmd_v2v/model.pt            sdv2-1.3b (default)
    <models>/Wan2.1-T2V-1.3B/{Wan2.1_VAE.pth,models_t5_umt5-xxl-enc-bf16.pth,google/umt5-xxl/}   wan2.1-1.3b-original
        (default: the smallest complete base, bf16 umT5, ~11.9 GB)
    <models>/Wan2.1-T2V-1.3B-Diffusers/{model_index.json,text_encoder,tokenizer,vae}/   wan2.1-1.3b-base (fp32, ~23 GB)

The CLI shows every file with its size (the hub's listing) and the total, checks the free space, and asks before
the first byte (`--yes` skips the question). `--link FOLDER` symlinks files the user already has (engine/model_links.py
finds them by name, size and kind; the hub's hash decides) instead of downloading them.

The transfer is `huggingface_hub.snapshot_download(local_dir=..., allow_patterns=..., tqdm_class=...)`: files in
parallel, a dropped connection resumed within the run, finished files kept. Around it:
  * one listing per repo (`HfApi.model_info(files_metadata=True)`) with every name, size, hash and the commit checked
    before use: a name that could leave the models folder (`..`, absolute, backslash) stops everything before a
    byte is written or deleted; the transfer is pinned to that commit and allowed only the exact names missing;
  * every file's sha256 (git blob id for small git files) checked against that listing before (copies put there by
    hand, damaged or outdated: replaced) and after the transfer (a mismatch is deleted); a record of what was
    verified (`<folder>/.cache/sdv2/<item>.json`) makes a repeated download a no-op and `status()` hash-free;
  * the free-space check before the first byte;
  * a deadline: huggingface_hub sends some requests without a timeout, so every phase of every request waits at
    most max(HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT) seconds (huggingface_hub's settings, read at import;
    10 s by default); retries are huggingface_hub's (bounded);
  * `HF_ENDPOINT`, `HF_HOME` / `HF_HUB_CACHE`, `HF_HUB_OFFLINE` read when `download()` runs (huggingface_hub reads
    them at import); `HF_TOKEN` passed on when set (else huggingface_hub's saved login is used);
  * Ctrl-C, or an exception from the `progress` callback, stops every running file transfer at its next chunk.

Every user-fixable problem (hub unreachable or silent, refused, unknown, unsafe listing, not enough disk space,
corrupted download, unknown item) raises `EngineError` with one line that names the fix.
"""

from __future__ import annotations

import argparse
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.model_links import LinkFolder, link

Progress = Callable[[str, float], None]  # (message, fraction done 0..1), as in engine.models

DEFAULT_ENDPOINT = "https://huggingface.co"
DOWNLOADED, PARTIAL, MISSING = "downloaded", "partial", "missing"
_RECORD_DIR = Path(".cache") / "sdv2"
_DISK_MARGIN = 64 * 1024 * 1024  # head-room on top of the bytes to download
_CHUNK = 8 * 1024 * 1024
_WORKERS = 8  # files fetched at the same time (huggingface_hub's default)
_BYTES_BAR = "huggingface_hub.snapshot_download"  # the name of snapshot_download's bar of bytes written to disk
_SHA256, _GIT_OID = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Item:
    """One downloadable thing: some files of one hub repo, replicated under `<models>/<local>/`."""

    name: str
    repo: str
    patterns: tuple[str, ...]  # files of the repo to fetch (huggingface_hub allow_patterns syntax)
    local: str  # folder under the models dir that mirrors the repo's layout (huggingface_hub local_dir)
    folder: str  # the folder the engine reads (what `sdv2 models path ITEM` prints), under the models dir
    required: tuple[str, ...]  # globs under `local` that must all match for files copied by hand to count
    size: int | None  # approximate download size in bytes; None = unknown (the hub's exact sizes are used anyway)
    size_note: str  # where `size` comes from
    purpose: str
    default: bool  # part of a plain `sdv2 models download`
    verified: bool  # repo and file paths confirmed by the reference docs
    note: str = ""
    revision: str = "main"


# Sizes: the 1.3B base is our estimate from the architecture, the DiT checkpoints' dtypes are undocumented.
# Parameter counts are those of engine/config.py's presets (tests/test_model_numerics.py).
_CATALOGUE: tuple[Item, ...] = (
    Item(
        name="sdv2-1.3b",
        repo="jerryfeng/StreamDiffusionV2",
        patterns=("wan_causal_dmd_v2v/model.pt",),
        local="StreamDiffusionV2",
        folder="StreamDiffusionV2/wan_causal_dmd_v2v",
        required=("wan_causal_dmd_v2v/model.pt",),
        size=None,
        size_note="unknown: 1,418,996,800 parameters are 2.8 GB in bf16 or 5.7 GB in fp32; the file's dtype is "
                  "not documented",
        purpose="StreamDiffusionV2 causal DMD-distilled Wan2.1 DiT, 1.3B (the real-time model)",
        default=True,
        verified=True,
    ),
    Item(
        name="wan2.1-1.3b-original",
        repo="Wan-AI/Wan2.1-T2V-1.3B",
        patterns=("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/*"),
        local="Wan2.1-T2V-1.3B",
        folder="Wan2.1-T2V-1.3B",
        required=("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/*"),
        size=11_900_000_000,
        size_note="estimate: umT5-XXL encoder (5.68e9 parameters) in bf16 = 11.4 GB, VAE about 0.5 GB, tokenizer "
                  "about 20 MB; the release's own DiT (not needed) is skipped",
        purpose="Wan2.1 1.3B base, original release: bf16 umT5-XXL text encoder, its tokenizer and the VAE (needed "
                "by every DiT; half the size of wan2.1-1.3b-base)",
        default=True,
        verified=True,
    ),
    Item(
        name="wan2.1-1.3b-base",
        repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        patterns=("model_index.json", "text_encoder/*", "tokenizer/*", "vae/*"),
        local="Wan2.1-T2V-1.3B-Diffusers",
        folder="Wan2.1-T2V-1.3B-Diffusers",
        required=("text_encoder/config.json", "text_encoder/*.safetensors", "tokenizer/*", "vae/*.safetensors"),
        size=23_300_000_000,
        size_note="estimate: umT5-XXL encoder (5.68e9 parameters) in fp32 = 22.7 GB, VAE about 0.5 GB, tokenizer "
                  "about 20 MB; the diffusers transformer/ (not needed) is skipped",
        purpose="Wan2.1 1.3B base, diffusers format: fp32 umT5-XXL text encoder, tokenizer and VAE (an alternative "
                "to wan2.1-1.3b-original, twice its size)",
        default=False,
        verified=True,
    ),
    Item(
        name="sdv2-14b",
        repo="jerryfeng/StreamDiffusionV2",
        patterns=("wan_causal_dmd_v2v_14b/*",),
        local="StreamDiffusionV2",
        folder="StreamDiffusionV2/wan_causal_dmd_v2v_14b",
        required=("wan_causal_dmd_v2v_14b/*",),
        size=None,
        size_note="unknown: 14,288,491,584 parameters are 28.6 GB in bf16 or 57 GB in fp32",
        purpose="StreamDiffusionV2 causal DiT, 14B (multi-GPU class); uses the text encoder and VAE of "
                "wan2.1-1.3b-base",
        default=False,
        verified=True,
        note="the folder is confirmed; the names of the files in it are not",
    ),
    Item(
        name="taehv",
        repo="madebyollin/taehv",
        patterns=("taew2_1.pth",),
        local="taehv",
        folder="taehv",
        required=("taew2_1.pth",),
        size=None,
        size_note="unknown",
        purpose="TAEHV tiny decoder for Wan2.1 latents (optional faster decoding; engine/taehv.py reads this folder)",
        default=False,
        verified=False,
        note="UNVERIFIED hub location: upstream downloads taew2_1.pth from "
             "https://github.com/madebyollin/taehv/raw/main/taew2_1.pth, not from the hub",
    ),
)


def catalogue() -> list[Item]:
    """Every downloadable item, default set first."""
    return list(_CATALOGUE)


def default_items() -> list[Item]:
    return [it for it in _CATALOGUE if it.default]


def get_item(item: str | Item) -> Item:
    if isinstance(item, Item):
        return item
    for it in _CATALOGUE:
        if it.name == item.strip().lower():
            return it
    raise EngineError(f"unknown model {item!r}: choose from {', '.join(it.name for it in _CATALOGUE)} "
                      "(see `sdv2 models list`)")


def _root(root: str | os.PathLike | None) -> Path:
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    from sdv2_studio.engine.models import models_dir

    return models_dir()


def item_path(item: str | Item, root: str | os.PathLike | None = None) -> Path:
    """The folder the engine reads for `item` (it may not exist yet)."""
    return _root(root) / get_item(item).folder


# ---------------------------------------------------------------------------------------------------------------
# names from the hub, files on disk


@dataclass(frozen=True)
class _Remote:
    """One file of a hub listing, checked at the boundary."""

    size: int
    digest: str  # sha256 of an LFS file, the git blob id of a file stored in git
    lfs: bool


def _unsafe(name: object) -> str | None:
    """Why a file name listed by the hub cannot be a path under the models folder (None: it can)."""
    if not isinstance(name, str) or not name:
        return "not a file name"
    if name.startswith("/"):
        return "an absolute path"
    if any(c in "\\:" or ord(c) < 32 or ord(c) == 127 for c in name):
        return "a backslash, colon or control character"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "a '..', '.' or empty path segment"
    return None


def _listing(info, it: Item) -> tuple[str, dict[str, _Remote]]:
    """The commit and the files of `it.repo` from `model_info(files_metadata=True)`, every value checked."""
    commit = getattr(info, "sha", None)
    if not isinstance(commit, str) or not _GIT_OID.fullmatch(commit):
        raise EngineError(f"the hub's answer about {it.repo} has no valid commit id ({str(commit)[:60]!r}): check "
                          "HF_ENDPOINT and any proxy in front of the hub")
    files: dict[str, _Remote] = {}
    for s in getattr(info, "siblings", None) or []:
        name, lfs = getattr(s, "rfilename", None), getattr(s, "lfs", None)
        why = _unsafe(name)
        if why:
            raise EngineError(f"the hub lists an unsafe file name {str(name)[:100]!r} in {it.repo} ({why}); nothing "
                              "was downloaded: check HF_ENDPOINT and any proxy in front of the hub")
        size = lfs.size if lfs is not None else getattr(s, "size", None)
        digest = lfs.sha256 if lfs is not None else getattr(s, "blob_id", None)
        if not (isinstance(size, int) and size >= 0 and isinstance(digest, str)
                and (_SHA256 if lfs is not None else _GIT_OID).fullmatch(digest)):
            raise EngineError(f"the hub's listing of {it.repo} has no valid size or hash for {name!r}: check "
                              "HF_ENDPOINT and any proxy in front of the hub")
        files[name] = _Remote(size, digest, lfs is not None)
    return commit, files


def _local(base: Path, rel: str) -> Path:
    """`base/rel` for a checked name, refusing one whose folder leads out of `base` through a link. The file itself
    may be a link to a file (made by --link): it is read through, and removed (never written through) when the hub's
    copy replaces it; a link to nothing (a disk not mounted?) or to a folder stops everything."""
    path = base / rel
    if not path.parent.resolve().is_relative_to(base.resolve()):
        raise EngineError(f"{path} leads outside {base} (through a link): remove the link or pass --dir FOLDER")
    if path.is_symlink() and not path.is_file():
        what = "not a file" if path.exists() else "missing (a disk not mounted?)"
        raise EngineError(f"{path} is a link to {os.readlink(path)}, which is {what}: fix or remove the link")
    return path


def _digest(path: Path, lfs: bool) -> str:
    """sha256 of an LFS file's content, or the git blob id of a file stored in git (what the hub lists)."""
    h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _record_file(base: Path, it: Item) -> Path:
    return base / _RECORD_DIR / f"{it.name}.json"


def _read_record(base: Path, it: Item) -> dict[str, dict]:
    """{repo path: {"size", "digest", "mtime_ns" (None until verified)}} of the last download; {} if none or damaged."""
    try:
        files = json.loads(_record_file(base, it).read_text(encoding="utf-8"))["files"]
        if all(_unsafe(rel) is None and isinstance(rec["size"], int) for rel, rec in files.items()):
            return files
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        pass
    return {}


def _write_record(base: Path, it: Item, files: dict[str, dict]) -> None:
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


def _verified(path: Path, rec: dict | None) -> bool:
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
    base = _root(root) / it.local
    record = _read_record(base, it)
    if record:
        if all(_verified(base / rel, rec) for rel, rec in record.items()):
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


def format_size(n: int | None, approx: bool = False) -> str:
    if n is None:
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{'~' if approx else ''}{n / scale:.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------------------------------------------
# hub access


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def _offline() -> bool:
    return any((os.environ.get(v) or "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hf_cache_dir() -> str:
    """huggingface_hub's cache folder, resolved now (huggingface_hub resolves it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def _import_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise EngineError("downloading models needs huggingface_hub: pip install 'huggingface_hub>=1.20,<3'") from None
    return huggingface_hub


def _deadline() -> float:
    """Seconds any phase of a request to the hub may take (huggingface_hub's two timeout settings, the larger)."""
    from huggingface_hub import constants

    return float(max(constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT))


def _cap_timeouts(request) -> None:
    """A request hook of huggingface_hub's httpx client: no phase waits without a deadline, none longer than it."""
    limit = _deadline()
    timeout = request.extensions.get("timeout") or {}
    request.extensions = {**request.extensions, "timeout": {
        k: limit if timeout.get(k) is None else min(timeout[k], limit) for k in ("connect", "read", "write", "pool")}}


def _bound_requests(hub) -> None:
    client = hub.get_session()  # shared by all of huggingface_hub's calls; a new one after close_session()
    hooks = client.event_hooks
    if _cap_timeouts not in hooks["request"]:
        client.event_hooks = {**hooks, "request": [*hooks["request"], _cap_timeouts]}


_NO_ROOM = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}  # full disk, quota, size limit


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _kinds(e: BaseException) -> set[str]:
    """Class names of `e`, its causes and their bases: huggingface_hub's errors, httpx's or httpx2's (matched by
    name: either can be installed), the OS's."""
    return {c.__name__ for x in _chain(e) for c in type(x).__mro__}


def _is_timeout(e: BaseException) -> bool:
    return bool(_kinds(e) & {"TimeoutException", "TimeoutError"})


def _is_network_error(e: BaseException) -> bool:
    return bool(_kinds(e) & {"TransportError", "ConnectionError", "TimeoutError", "gaierror"})


def _http_status(e: BaseException) -> int | None:
    for x in _chain(e):
        code = getattr(getattr(x, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _reason(e: BaseException) -> str:
    """The innermost cause, on one short line."""
    inner = list(_chain(e))[-1]
    text = " ".join(str(inner).split()) or type(inner).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _unreachable(e: BaseException | None, it: Item, root: Path) -> EngineError:
    where = root / it.folder
    if e is None:
        return EngineError(f"cannot reach the model hub (HF_HUB_OFFLINE is set): unset HF_HUB_OFFLINE, or copy the "
                           f"files to {where}")
    if _is_timeout(e):
        return EngineError(f"the model hub ({_endpoint()}) did not answer within {_deadline():g} s: check your "
                           f"connection or proxy (HF_HUB_DOWNLOAD_TIMEOUT sets the deadline), or copy the files to "
                           f"{where}")
    return EngineError(f"cannot reach the model hub ({_endpoint()}: {_reason(e)}): check your connection or copy the "
                       f"files to {where}")


def _hub_error(e: BaseException, it: Item, root: Path) -> EngineError:
    """One readable line for a failure of huggingface_hub (or of the network or disk under it) while fetching `it`."""
    kinds, code = _kinds(e), _http_status(e)
    hint = f" ({it.note})" if it.note and not it.verified else ""
    no_room = next((x for x in _chain(e) if isinstance(x, OSError) and x.errno in _NO_ROOM), None)
    if "GatedRepoError" in kinds or code in (401, 403):
        return EngineError(f"the hub refused access to {it.repo} (HTTP {code}): accept its terms on the hub and set "
                           f"HF_TOKEN to a token with read access{hint}")
    if "RepositoryNotFoundError" in kinds:
        return EngineError(f"the hub has no repository {it.repo} (HTTP {code}){hint}; copy the files to "
                           f"{root / it.folder} by hand")
    if "RevisionNotFoundError" in kinds:
        return EngineError(f"{it.repo} has no revision {it.revision!r} on the hub")
    if "EntryNotFoundError" in kinds and code == 404:
        return EngineError(f"a file of {it.name} is not in {it.repo} on the hub any more{hint}; run `sdv2 models "
                           f"download {it.name}` again")
    if code is not None and code >= 500:
        return EngineError(f"the model hub failed with HTTP {code} while fetching {it.name}: try again later or copy "
                           f"the files to {root / it.folder}")
    if code is not None:
        return EngineError(f"the model hub answered HTTP {code} for {it.name}: {_reason(e)}")
    if _is_network_error(e):
        return _unreachable(e, it, root)
    if no_room is not None:
        return EngineError(f"cannot write {it.name} to {root} ({no_room.strerror}): free some space or pass --dir "
                           "FOLDER on another disk")
    if "Consistency check failed" in str(e):
        return EngineError(f"the download of {it.name} was cut short: run `sdv2 models download {it.name}` again")
    return EngineError(f"downloading {it.name} from {it.repo} failed ({type(e).__name__}: {_reason(e)}): run "
                       f"`sdv2 models download {it.name}` again")


def _ask(api, it: Item, root: Path, progress: _Transfer) -> tuple[str, dict[str, _Remote]] | BaseException | None:
    """The checked listing of `it.repo`; the cause (None: offline mode) when the hub cannot be reached."""
    if _offline():
        return None
    progress.say(f"asking {_endpoint()} about {it.repo}", 0.0)
    try:
        info = api.model_info(it.repo, revision=it.revision, files_metadata=True, timeout=_deadline())
    except Exception as e:
        if _is_network_error(e) and _http_status(e) is None:
            return e
        raise _hub_error(e, it, root) from None
    return _listing(info, it)


# ---------------------------------------------------------------------------------------------------------------
# progress and stopping


class _Stopped(Exception):
    """Raised in a file transfer after a stop: `download()` raises the exception that caused the stop instead."""


class _Transfer:
    """Byte counts from huggingface_hub's progress bars become throttled `progress(message, fraction)` calls
    (fraction = bytes done / bytes to download, never decreasing); a stop (an exception from `progress`, Ctrl-C)
    ends every running file transfer at its next chunk."""

    interval = 0.1  # seconds between two byte-count messages

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.total = self.done = self.item_done = self.item_total = 0
        self.label = ""
        self.last = self.shown = 0.0
        self.error: BaseException | None = None
        self.lock = threading.RLock()

    def say(self, message: str, fraction: float | None = None) -> None:
        if self.progress is None:
            return
        with self.lock:
            if fraction is None and self.total > 0:
                fraction = min(1.0, max(0.0, (self.done + self.item_done) / self.total))
            self.shown = max(self.shown, fraction or 0.0)
            self.progress(message, self.shown)

    def start(self, label: str, size: int) -> None:
        self.label, self.item_total, self.item_done, self.last = label, size, 0, 0.0
        self.say(f"downloading {label} ({format_size(size)})")

    def add(self, n: int | float | None) -> None:
        with self.lock:
            if self.error is not None:
                raise _Stopped
            self.item_done += int(n or 0)
            now = time.monotonic()
            if now - self.last < self.interval:
                return
            self.last = now
            try:
                self.say(f"downloading {self.label}: {format_size(max(self.item_done, 0))} of "
                         f"{format_size(self.item_total)}")
            except BaseException as e:
                self.stop(e)
                raise

    def finish(self) -> None:
        self.done += self.item_total
        self.item_done = 0

    def stop(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error

    def bar_class(self, tqdm: type) -> type:
        transfer = self

        class Bar(tqdm):
            """huggingface_hub's progress bar, silent: what snapshot_download writes is counted by the transfer."""

            def __init__(self, *args, **kwargs):
                self.counts_bytes = kwargs.get("name") == _BYTES_BAR
                super().__init__(*args, **{**kwargs, "disable": True})

            def update(self, n: int | float | None = 1) -> None:
                if self.counts_bytes:
                    transfer.add(n)
                elif transfer.error is not None:
                    raise _Stopped

        return Bar

    def run(self, fn: Callable, *args, **kwargs) -> None:
        """`fn(*args, **kwargs)` on a thread, so that Ctrl-C here stops the transfers instead of waiting for
        huggingface_hub's thread pool to finish them. Exceptions come back here; a stop raises its cause."""
        failed: list[BaseException] = []
        done = threading.Event()  # not Thread.join: a Ctrl-C inside join() can make a later join() return early

        def work() -> None:
            try:
                fn(*args, **kwargs)
            except BaseException as e:
                failed.append(e)
            finally:
                done.set()

        threading.Thread(target=work, name="sdv2-download", daemon=True).start()
        try:
            while not done.wait(0.1):
                pass
        except BaseException as e:
            self.stop(e)
            done.wait()
        if self.error is not None:
            raise self.error
        if failed:
            raise failed[0]


# ---------------------------------------------------------------------------------------------------------------
# download


def _resolve_items(items: Iterable[str | Item] | str | Item | None) -> list[Item]:
    if items is None:
        return default_items()
    if isinstance(items, (str, Item)):
        items = [items]
    out: list[Item] = []
    for x in items:
        it = get_item(x)
        if it not in out:
            out.append(it)
    return out or default_items()


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


@dataclass
class _Plan:
    it: Item
    base: Path
    commit: str
    files: dict[str, _Remote]
    record: dict[str, dict]
    todo: list[str]
    links: dict[str, Path]  # repo path -> the user's file (--link) a symlink will point to, hash checked


def _plan(it: Item, base: Path, commit: str, files: dict[str, _Remote], progress: _Transfer,
          links: LinkFolder | None = None) -> _Plan:
    """Which files to fetch: those missing, or whose copy on disk is not the listed one (deleted here: the hub's
    copy replaces it), less those a user's file in `links` stands in for. Copies never verified (put there by hand,
    damaged, outdated) and the user's files are hashed first."""
    old = _read_record(base, it)
    record, todo, linked = {}, [], {}
    for rel, f in files.items():
        path = _local(base, rel)
        rec = old.get(rel) if (old.get(rel) or {}).get("digest") == f.digest else None
        if not _verified(path, rec) and path.is_file() and path.stat().st_size == f.size:
            progress.say(f"checking the existing {it.local}/{rel} ({'sha256' if f.lfs else 'git blob id'})")
            if _digest(path, f.lfs) == f.digest:
                rec = {"size": f.size, "digest": f.digest, "mtime_ns": path.stat().st_mtime_ns}
        if _verified(path, rec):
            record[rel] = rec
            continue
        if path.is_file():
            path.unlink()
        record[rel] = {"size": f.size, "digest": f.digest, "mtime_ns": None}
        target = links.find(rel, f.size) if links is not None else None
        if target is not None:
            progress.say(f"checking {target} ({'sha256' if f.lfs else 'git blob id'})")
            if _digest(target, f.lfs) == f.digest:
                linked[rel] = target
                continue
            links.notes.append(f"not linked: {target} is not the hub's {rel} (its hash differs)")
        todo.append(rel)
    if record != old:
        _write_record(base, it, record)
    return _Plan(it, base, commit, files, record, todo, linked)


def _link(plan: _Plan) -> None:
    """Symlink the user's files chosen by `_plan` into the models folder and record them as verified."""
    for rel, target in plan.links.items():
        path = _local(plan.base, rel)
        link(target, path)
        plan.record[rel]["mtime_ns"] = path.stat().st_mtime_ns
    if plan.links:
        _write_record(plan.base, plan.it, plan.record)


def _verify(plan: _Plan, progress: _Transfer) -> None:
    """Size and hash of every file just downloaded; a wrong one is deleted."""
    it = plan.it
    for rel in plan.todo:
        f, path = plan.files[rel], _local(plan.base, rel)
        if not path.is_file():
            raise EngineError(f"{it.local}/{rel} was not downloaded (the hub no longer lists it at commit "
                              f"{plan.commit[:12]}): run `sdv2 models download {it.name}` again")
        progress.say(f"verifying {it.local}/{rel} ({'sha256' if f.lfs else 'git blob id'})")
        size, got = path.stat().st_size, _digest(path, f.lfs)
        if size != f.size or got != f.digest:
            path.unlink()
            raise EngineError(f"{it.local}/{rel} from {it.repo} is corrupted ({size} bytes, hash {got[:12]}...; the "
                              f"hub lists {f.size} bytes, {f.digest[:12]}...); it was deleted: run `sdv2 models "
                              f"download {it.name}` again")
        plan.record[rel] = {"size": size, "digest": f.digest, "mtime_ns": path.stat().st_mtime_ns}
        _write_record(plan.base, it, plan.record)


Confirm = Callable[[list[_Plan], LinkFolder | None, int], bool]  # (plans, --link folder, free bytes) -> go ahead


def download(items: Iterable[str | Item] | str | Item | None = None, root: str | os.PathLike | None = None,
             progress: Progress | None = None, link_from: str | os.PathLike | None = None,
             confirm: Confirm | None = None) -> list[Path]:
    """Download `items` (names or `Item`s; default: the 1.3B causal model + the original 1.3B base) into `root`
    (default: the models dir) and return the folders the engine reads, one per item ([] when `confirm` says no).

    `link_from`: a folder of the user's model files; a file there with the name, size, kind and hash of a missing
    one is symlinked instead of downloaded. `confirm(plans, links, free)` is asked once everything is planned and
    the free space checked, before any link or byte is written.

    `progress(message, fraction)` gets throttled updates (fraction = bytes done / bytes to download); it may be
    called from worker threads. An exception raised by it stops the download (and is raised here): finished files
    are kept and the next call fetches only what is missing. Files already present and verified are not
    downloaded again."""
    its = _resolve_items(items)
    root = _root(root)
    links = LinkFolder(link_from) if link_from is not None else None
    transfer = _Transfer(progress)
    hub = _import_hub()
    from huggingface_hub.utils import filter_repo_objects, tqdm

    endpoint, token = _endpoint(), _token()
    _bound_requests(hub)
    api = hub.HfApi(endpoint=endpoint, token=token)

    answers: dict[tuple[str, str], object] = {}
    plans: list[_Plan] = []
    for it in its:
        key = (it.repo, it.revision)
        if key not in answers:
            answers[key] = _ask(api, it, root, transfer)
        answer = answers[key]
        if not isinstance(answer, tuple):  # the hub cannot be reached: fine if the files are already here
            if status(it, root) != DOWNLOADED:
                raise _unreachable(answer, it, root)
            transfer.say(f"{it.name}: already downloaded (the hub could not be reached to check for updates)", 1.0)
            continue
        commit, listed = answer
        files = {rel: listed[rel] for rel in filter_repo_objects(sorted(listed), allow_patterns=list(it.patterns))}
        if not files:
            raise EngineError(f"{it.repo} on the hub has no files matching {', '.join(it.patterns)} (its layout may "
                              f"have changed); copy the files to {root / it.folder} by hand")
        plans.append(_plan(it, root / it.local, commit, files, transfer, links))

    transfer.total = sum(p.files[rel].size for p in plans for rel in p.todo)
    free = _free_bytes(root)
    if transfer.total and free is not None and free < transfer.total + _DISK_MARGIN:
        raise EngineError(f"not enough disk space in {root}: the download needs {format_size(transfer.total)}, "
                          f"{format_size(free)} is free; free some space or pass --dir FOLDER on another disk")
    if confirm is not None and not confirm(plans, links, free):
        return []
    for plan in plans:
        _link(plan)

    bar = transfer.bar_class(tqdm)
    for plan in (p for p in plans if p.todo):
        it = plan.it
        transfer.start(it.name, sum(plan.files[rel].size for rel in plan.todo))
        try:
            transfer.run(hub.snapshot_download, it.repo, revision=plan.commit, local_dir=plan.base,
                         allow_patterns=[glob.escape(rel) for rel in plan.todo], cache_dir=_hf_cache_dir(),
                         endpoint=endpoint, token=token, tqdm_class=bar, max_workers=_WORKERS)
        except Exception as e:
            transfer_error = isinstance(e, OSError) or type(e).__module__.startswith(("huggingface_hub", "httpx"))
            if transfer.error is not None or not transfer_error:  # a stop, or a bug
                raise
            raise _hub_error(e, it, root) from None
        _verify(plan, transfer)
        transfer.finish()
    transfer.say("all files are present and verified", 1.0)
    return [root / it.folder for it in its]


# ---------------------------------------------------------------------------------------------------------------
# command line


def _cli_progress(stream=None) -> Progress:
    """A one-line progress display on a terminal, a line per file / 10 % step otherwise."""
    out = stream or sys.stderr
    tty = hasattr(out, "isatty") and out.isatty()
    state = {"step": -1, "head": None}

    def show(message: str, fraction: float) -> None:
        if tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            out.write("\r\033[K" + f"[{fraction:4.0%}] {message}"[:width])
            if fraction >= 1.0:
                out.write("\n")
            out.flush()
            return
        head = message.split(":", 1)[0]
        step = int(fraction * 10)
        if head != state["head"] or step != state["step"]:
            state["head"], state["step"] = head, step
            print(f"[{fraction:4.0%}] {message}", file=out, flush=True)

    return show


def _cmd_list(args: argparse.Namespace) -> int:
    root = _root(args.dir)
    rows = [("ITEM", "STATUS", "SIZE", "DEFAULT", "PATH")]
    for it in catalogue():
        st = status(it, root)
        size = format_size(local_size(it, root)) if st != MISSING else format_size(it.size, approx=True)
        name = it.name if it.verified else f"{it.name}*"
        rows.append((name, st, size, "yes" if it.default else "no", str(root / it.folder)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print()
    for it in catalogue():
        extra = f" [{it.note}]" if it.note else ""
        print(f"{it.name}: {it.purpose}; {it.repo} {', '.join(it.patterns)}; size {it.size_note}{extra}")
    print(f"\nmodels folder: {root}   (* = hub location not confirmed; SIZE is on disk, ~ = estimated download)")
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    print(item_path(args.item, args.dir) if args.item else _root(args.dir))
    return 0


def _plan_lines(plans: list[_Plan], links: LinkFolder | None, free: int | None) -> list[str]:
    """Every file with its size from the hub's listing and what happens to it, then the totals."""
    lines, sizes = [], {"download": 0, "link": 0, "present": 0}
    for p in plans:
        for rel, f in p.files.items():
            what = "download" if rel in p.todo else "link" if rel in p.links else "present"
            sizes[what] += f.size
            extra = f" -> {p.links[rel]}" if what == "link" else ""
            lines.append(f"  {p.it.local}/{rel}  {format_size(f.size)}  {what}{extra}")
    lines += [f"  {note}" for note in (links.notes if links else [])]
    lines.append(f"total {format_size(sum(sizes.values()))}: download {format_size(sizes['download'])}, link "
                 f"{format_size(sizes['link'])} (no copy), present {format_size(sizes['present'])}; "
                 f"{format_size(free)} free")
    return lines


def _cli_confirm(yes: bool) -> Confirm:
    """Print the plan; ask on a terminal before downloading anything (`--yes`: do not ask)."""

    def confirm(plans: list[_Plan], links: LinkFolder | None, free: int | None) -> bool:
        need = sum(p.files[rel].size for p in plans for rel in p.todo)
        if need and not yes and not sys.stdin.isatty():
            raise EngineError(f"the download of {format_size(need)} needs a yes: pass --yes (stdin is not a terminal)")
        print("\n".join(_plan_lines(plans, links, free)), flush=True)
        if not need or yes:
            return True
        try:
            return input(f"download {format_size(need)}? [y/N] ").strip().lower() in ("y", "yes")
        except EOFError:  # Ctrl-D
            print()
            return False

    return confirm


def _cmd_download(args: argparse.Namespace) -> int:
    its = _resolve_items(args.items or None)
    root = _root(args.dir)
    folders = download(its, root, progress=_cli_progress(), link_from=args.link, confirm=_cli_confirm(args.yes))
    if not folders:
        print("nothing was downloaded")
        return 1
    for it, folder in zip(its, folders):
        print(f"{it.name}: {status(it, root)} in {folder} ({format_size(local_size(it, root))})")
    from sdv2_studio.engine.models import models_dir

    if args.dir and root.expanduser().resolve() != models_dir().expanduser().resolve():
        print(f"note: {root} is not the default models folder; set SDV2_MODELS={root} so `sdv2 run` finds it")
    return 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add `models {list,download,path}` to an argparse subparsers object (as made by add_subparsers)."""
    p = subparsers.add_parser("models", help="list, download or locate the StreamDiffusionV2 / Wan2.1 weights",
                              description="Manage model files in the models folder ($SDV2_MODELS or the user data "
                                          "folder). Downloads use the Hugging Face hub (HF_ENDPOINT, HF_TOKEN).")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="{list,download,path}")
    names = ", ".join(it.name for it in _CATALOGUE)

    s = sub.add_parser("list", help="the downloadable items with their status, size and folder")
    s.add_argument("--dir", default=None, metavar="FOLDER", help="models folder (default: $SDV2_MODELS or user data)")
    s.set_defaults(fn=_cmd_list)

    s = sub.add_parser("download", help="download items (default: the 1.3B causal model and the original 1.3B "
                                        "base, the smallest complete set)")
    s.add_argument("items", nargs="*", metavar="ITEM", help=f"what to download: {names}")
    s.add_argument("--yes", "-y", action="store_true", help="do not ask before downloading")
    s.add_argument("--link", default=None, metavar="FOLDER", help="use model files you already have (e.g. "
                   "ComfyUI/models): symlink those with the right name, size and hash instead of downloading them")
    s.add_argument("--dir", default=None, metavar="FOLDER", help="models folder (default: $SDV2_MODELS or user data)")
    s.set_defaults(fn=_cmd_download)

    s = sub.add_parser("path", help="print the models folder, or the folder of one item")
    s.add_argument("item", nargs="?", default=None, metavar="ITEM", help=names)
    s.add_argument("--dir", default=None, metavar="FOLDER", help="models folder (default: $SDV2_MODELS or user data)")
    s.set_defaults(fn=_cmd_path)
    return p

