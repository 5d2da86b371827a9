"""`sdv2 models list|download|path`: fetch the StreamDiffusionV2 / Wan2.1 weights from the Hugging Face hub.

The catalogue below is data: which hub repo, which files in it, where they land under the models folder
(`engine.models.models_dir()`, or `--dir`). The layout matches what `engine.models.find_downloaded()` looks for:

    <models>/StreamDiffusionV2/wan_causal_dmd_v2v/model.pt            sdv2-1.3b
    <models>/Wan2.1-T2V-1.3B-Diffusers/{model_index.json,text_encoder,tokenizer,vae}/   wan2.1-1.3b-base

Downloads go through `huggingface_hub.hf_hub_download(local_dir=...)`, one file at a time, pinned to the commit the
hub reports when the download starts. What that gives, as of huggingface_hub 2.4 (read in its source):
  * a dropped connection mid-file is resumed in the same run with an HTTP Range request (up to 5 retries
    without progress); partial files are NOT kept across runs (huggingface_hub deletes them), but every file
    that finished is kept, so an interrupted `sdv2 models download` continues with the files still missing;
  * only the size of a downloaded file is checked by huggingface_hub, so after each download we compare the
    file's sha256 with the LFS sha256 the hub lists for it (`/api/models/{repo}/revision/{rev}?blobs=true`)
    and delete it on a mismatch. Small git-stored files (configs, tokenizer) have no sha256 there: their size
    is checked;
  * `HF_ENDPOINT` is read when `download()` is called (huggingface_hub itself reads it only once, at import),
    `HF_TOKEN` is passed through when set (else huggingface_hub's saved login, if any, is used), files already
    in the user's huggingface cache (`HF_HUB_CACHE` / `HF_HOME`) are copied instead of downloaded.
A record of what was verified (`<folder>/.cache/sdv2/<item>.json`) makes a repeated download a no-op that
transfers no file data, and lets `status()` answer without hashing gigabytes.

Every user-fixable problem (hub unreachable, not enough disk space, corrupted download, unknown item) raises
`EngineError` with one line that names the fix.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sdv2_studio.engine.errors import EngineError

Progress = Callable[[str, float], None]  # (message, fraction done 0..1), as in engine.models

DEFAULT_ENDPOINT = "https://huggingface.co"
DOWNLOADED, PARTIAL, MISSING = "downloaded", "partial", "missing"
_MANIFEST_DIR = Path(".cache") / "sdv2"
_DISK_MARGIN = 64 * 1024 * 1024  # head-room on top of the bytes to download
_CHUNK = 8 * 1024 * 1024


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
        name="wan2.1-1.3b-base",
        repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        patterns=("model_index.json", "text_encoder/*", "tokenizer/*", "vae/*"),
        local="Wan2.1-T2V-1.3B-Diffusers",
        folder="Wan2.1-T2V-1.3B-Diffusers",
        required=("text_encoder/config.json", "text_encoder/*.safetensors", "tokenizer/*", "vae/*.safetensors"),
        size=23_300_000_000,
        size_note="estimate: umT5-XXL encoder (5.68e9 parameters) in fp32 = 22.7 GB, VAE about 0.5 GB, tokenizer "
                  "about 20 MB; the diffusers transformer/ (not needed) is skipped",
        purpose="Wan2.1 1.3B base, diffusers format: umT5-XXL text encoder, tokenizer and VAE (needed by every DiT)",
        default=True,
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
# local state


def _manifest_file(base: Path, it: Item) -> Path:
    return base / _MANIFEST_DIR / f"{it.name}.json"


def _read_manifest(base: Path, it: Item) -> dict:
    try:
        data = json.loads(_manifest_file(base, it).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else {}


def _write_manifest(base: Path, it: Item, data: dict) -> None:
    path = _manifest_file(base, it)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _has_match(base: Path, pattern: str) -> bool:
    return any(p.is_file() for p in base.glob(pattern))


def status(item: str | Item, root: str | os.PathLike | None = None) -> str:
    """"downloaded", "partial" or "missing", from the files on disk (no network, no hashing).

    After `download()` the record of verified files decides; files put there by hand count as downloaded when
    every file the engine needs is present."""
    it = get_item(item)
    base = _root(root) / it.local
    man = _read_manifest(base, it)
    if man.get("complete"):
        for rel, rec in man["files"].items():
            path = base / rel
            if not path.is_file() or path.stat().st_size != rec.get("size"):
                return PARTIAL
        return DOWNLOADED
    present = [g for g in it.required if _has_match(base, g)]
    if man.get("planned"):  # an unfinished download
        return PARTIAL if present or any((base / rel).is_file() for rel in man["planned"]) else MISSING
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


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


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
        raise EngineError("downloading models needs huggingface_hub: pip install 'streamdiffusion-studio[hub]' "
                          "(or `pip install huggingface_hub`)") from None
    return huggingface_hub


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


# huggingface_hub >= 1 uses httpx(2), older versions requests: match the transport errors by name.
_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "TimeoutException",
                   "NetworkError", "ReadError", "WriteError", "RemoteProtocolError", "ProxyError", "SSLError",
                   "ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "Timeout"}


def _is_network_error(e: BaseException) -> bool:
    return any(isinstance(x, (ConnectionError, TimeoutError, socket.gaierror)) or type(x).__name__ in _NETWORK_ERRORS
               for x in _chain(e))


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
    if type(inner).__name__ == "OfflineModeIsEnabled":
        text = "HF_HUB_OFFLINE is set"
    return text if len(text) <= 160 else text[:157] + "..."


def _unreachable(e: BaseException | str, it: Item, root: Path) -> EngineError:
    why = e if isinstance(e, str) else _reason(e)
    if "HF_HUB_OFFLINE" in why:
        return EngineError(f"cannot reach the model hub (HF_HUB_OFFLINE is set): unset HF_HUB_OFFLINE, or copy the "
                           f"files to {root / it.folder}")
    return EngineError(f"cannot reach the model hub ({_endpoint()}: {why}): check your connection or copy the files "
                       f"to {root / it.folder}")


def _hub_error(e: BaseException, it: Item, root: Path, what: str) -> EngineError:
    """One readable line for a huggingface_hub failure while fetching `what`."""
    names = {type(x).__name__ for x in _chain(e)}
    code = _http_status(e)
    hint = f" ({it.note})" if it.note and not it.verified else ""
    if "GatedRepoError" in names or code in (401, 403):
        return EngineError(f"the hub refused access to {it.repo} (HTTP {code}): accept its terms on the hub and set "
                           f"HF_TOKEN to a token with read access{hint}")
    if "RepositoryNotFoundError" in names:
        return EngineError(f"the hub has no repository {it.repo} (HTTP {code}){hint}; copy the files to "
                           f"{root / it.folder} by hand")
    if "RevisionNotFoundError" in names:
        return EngineError(f"{it.repo} has no revision {it.revision!r} on the hub")
    if "RemoteEntryNotFoundError" in names or ("EntryNotFoundError" in names and code == 404):
        return EngineError(f"{what} is not in {it.repo} on the hub any more{hint}; run `sdv2 models download "
                           f"{it.name}` again")
    if code is not None and code >= 500:
        return EngineError(f"the model hub failed with HTTP {code} while fetching {what}: try again later or copy "
                           f"the files to {root / it.folder}")
    if _is_network_error(e):
        return _unreachable(e, it, root)
    if code is not None:
        return EngineError(f"the model hub answered HTTP {code} for {what}: {_reason(e)}")
    if isinstance(e, OSError) and getattr(e, "errno", None) == 28:
        return EngineError(f"the disk is full while downloading {what}: free some space or pass --dir FOLDER")
    if "Consistency check failed" in str(e):
        return EngineError(f"the download of {what} was cut short: run `sdv2 models download {it.name}` again")
    return EngineError(f"downloading {what} from {it.repo} failed ({type(e).__name__}: {_reason(e)}): run "
                       f"`sdv2 models download {it.name}` again")


@dataclass
class _File:
    rel: str  # path in the repo == path under <root>/<item.local>
    size: int | None
    sha256: str | None  # LFS files
    oid: str | None  # what identifies this version of the file on the hub: sha256 (LFS) or the git blob id

    def label(self, it: Item) -> str:
        return f"{it.local}/{self.rel}"


@dataclass
class _Plan:
    it: Item
    base: Path
    commit: str  # the hub commit every file is pinned to
    files: list[_File]
    skip: bool = False  # hub unreachable but the item is already downloaded
    todo: list[_File] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


def _files_from_info(info, it: Item) -> list[_File]:
    from huggingface_hub.utils import filter_repo_objects

    siblings = getattr(info, "siblings", None) or []
    chosen = list(filter_repo_objects(siblings, allow_patterns=list(it.patterns), key=lambda s: s.rfilename))
    files = []
    for s in chosen:
        lfs = getattr(s, "lfs", None)
        sha256 = getattr(lfs, "sha256", None) if lfs is not None else None
        size = getattr(lfs, "size", None) if lfs is not None else None
        if size is None:
            size = getattr(s, "size", None)
        files.append(_File(rel=s.rfilename, size=size, sha256=sha256, oid=sha256 or getattr(s, "blob_id", None)))
    return sorted(files, key=lambda f: f.rel)


def _sha256(path: Path, say: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            if say:
                say(len(chunk))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# progress


class _Reporter:
    """Turns byte counts into throttled `progress(message, fraction)` calls and acts as huggingface_hub's bar."""

    interval = 0.1  # seconds between two byte-count messages

    def __init__(self, progress: Progress | None, total: int):
        self.progress = progress
        self.total = max(total, 0)
        self.done = 0  # bytes of finished files
        self.current = 0  # bytes of the file being downloaded
        self.size: int | None = None
        self.label = ""
        self.last = 0.0
        self.lock = threading.Lock()

    def fraction(self) -> float:
        if self.total <= 0:
            return 0.0
        return min(1.0, max(0.0, (self.done + self.current) / self.total))

    def say(self, message: str, fraction: float | None = None) -> None:
        if self.progress is not None:
            self.progress(message, self.fraction() if fraction is None else fraction)

    def start(self, label: str, size: int | None) -> None:
        self.label, self.size, self.current = label, size, 0
        self.last = time.monotonic()
        self.say(f"downloading {label} ({format_size(size)})")

    def add(self, n: int | float | None) -> None:
        with self.lock:
            self.current += int(n or 0)
            now = time.monotonic()
            if now - self.last < self.interval:
                return
            self.last = now
        self.say(f"downloading {self.label}: {format_size(max(self.current, 0))} of {format_size(self.size)}")

    def finish(self, size: int | None) -> None:
        self.done += size if size is not None else max(self.current, 0)
        self.current = 0

    def bar_class(self) -> type:
        reporter = self

        class _Bar:
            """The parts of tqdm that huggingface_hub's http_get / xet_get use."""

            def __init__(self, *args, **kwargs):
                self.n = 0
                self.total = kwargs.get("total")
                if kwargs.get("initial"):
                    self.update(kwargs["initial"])

            def update(self, n: int | float | None = 1) -> None:
                self.n += int(n or 0)
                reporter.add(n)

            def update_transfer(self, n: int | float | None = 1) -> None:  # network bytes (xet): not counted
                pass

            def set_postfix_str(self, *args, **kwargs) -> None:
                pass

            set_transfer_postfix_str = set_description = set_description_str = set_postfix_str

            def refresh(self, *args, **kwargs) -> None:
                pass

            def close(self) -> None:
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                pass

        return _Bar


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


def _local_ok(plan: _Plan, f: _File, rep: _Reporter) -> bool:
    """True if the file on disk is this version of the hub file (hashing it only if we never verified it)."""
    path = plan.base / f.rel
    if not path.is_file():
        return False
    st = path.stat()
    if f.size is not None and st.st_size != f.size:
        return False
    rec = plan.manifest.setdefault("files", {}).get(f.rel)
    if rec and rec.get("oid") == f.oid and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
        return True
    if rec and rec.get("oid") != f.oid and not f.sha256:  # the hub has a new version of a small git file
        return False
    if f.sha256:  # a file we did not download or verify (copied by hand, or an older run): check its content
        rep.say(f"checking the existing {f.label(plan.it)} (sha256)")
        if _sha256(path) != f.sha256:
            return False
    plan.manifest["files"][f.rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "oid": f.oid,
                                     "sha256": f.sha256}
    return True


def _verify(plan: _Plan, f: _File, path: Path, rep: _Reporter) -> None:
    it = plan.it
    st = path.stat()
    if f.size is not None and st.st_size != f.size:
        path.unlink(missing_ok=True)
        raise EngineError(f"{f.label(it)} downloaded with {st.st_size} bytes instead of {f.size}; it was deleted: "
                          f"run `sdv2 models download {it.name}` again")
    if f.sha256:
        rep.say(f"verifying {f.label(it)} (sha256)")
        got = _sha256(path)
        if got != f.sha256:
            path.unlink(missing_ok=True)
            raise EngineError(f"{f.label(it)} from {it.repo} is corrupted (sha256 {got[:12]}..., the hub says "
                              f"{f.sha256[:12]}...); it was deleted: run `sdv2 models download {it.name}` again")
    plan.manifest.setdefault("files", {})[f.rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "oid": f.oid,
                                                    "sha256": f.sha256}
    _write_manifest(plan.base, it, plan.manifest)


def download(items: Iterable[str | Item] | str | Item | None = None, root: str | os.PathLike | None = None,
             progress: Progress | None = None) -> list[Path]:
    """Download `items` (names or `Item`s; default: the 1.3B causal model + the 1.3B base) into `root`
    (default: the models dir) and return the folders the engine reads, one per item.

    `progress(message, fraction)` gets throttled updates (fraction = bytes done / bytes to download); it may be
    called from a worker thread. An exception raised by it stops the download: finished files are kept and the
    next call fetches only what is missing. Files already present and verified are not downloaded again."""
    its = _resolve_items(items)
    root = _root(root)
    rep = _Reporter(progress, 0)
    hub = _import_hub()
    endpoint, token = _endpoint(), _token()
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    api = hub.HfApi(endpoint=endpoint, token=token)

    infos: dict[tuple[str, str], object] = {}
    plans: list[_Plan] = []
    for it in its:
        base = root / it.local
        key = (it.repo, it.revision)
        if key not in infos:
            try:
                if offline:
                    raise ConnectionError("HF_HUB_OFFLINE is set")
                rep.say(f"asking {endpoint} about {it.repo}", 0.0)
                infos[key] = api.model_info(it.repo, revision=it.revision, files_metadata=True, token=token)
            except Exception as e:
                if not (_is_network_error(e) and _http_status(e) is None):
                    raise _hub_error(e, it, root, it.repo) from None
                infos[key] = e
        info = infos[key]
        if isinstance(info, BaseException):  # hub unreachable: fine if the files are already here
            if status(it, root) == DOWNLOADED:
                rep.say(f"{it.name}: already downloaded (the hub could not be reached to check for updates)", 1.0)
                plans.append(_Plan(it, base, "", [], skip=True))
                continue
            raise _unreachable(info, it, root) from None
        files = _files_from_info(info, it)
        if not files:
            raise EngineError(f"{it.repo} on the hub has no files matching {', '.join(it.patterns)} (its layout may "
                              f"have changed); copy the files to {root / it.folder} by hand")
        commit = getattr(info, "sha", None) or it.revision
        plans.append(_Plan(it, base, commit, files, manifest=_read_manifest(base, it)))

    for plan in plans:
        if plan.skip:
            continue
        planned = {f.rel: f.oid for f in plan.files}
        verified = plan.manifest.get("files", {})
        plan.manifest.update(item=plan.it.name, repo=plan.it.repo, commit=plan.commit, complete=False,
                             planned=planned, files={k: v for k, v in verified.items() if k in planned})
        plan.todo = [f for f in plan.files if not _local_ok(plan, f, rep)]
        if plan.todo:
            _write_manifest(plan.base, plan.it, plan.manifest)

    needed = sum(f.size or 0 for p in plans for f in p.todo)
    if any(f.size is None for p in plans for f in p.todo):  # the hub gave no size: fall back to the catalogue
        needed = max(needed, sum(p.it.size or 0 for p in plans if p.todo))
    if needed:
        free = _free_bytes(root)
        if free is not None and free < needed + _DISK_MARGIN:
            raise EngineError(f"not enough disk space in {root}: the download needs {format_size(needed)}, "
                              f"{format_size(free)} is free; free some space or pass --dir FOLDER on another disk")
    rep.total = needed
    bar = {"tqdm_class": rep.bar_class()} if _accepts(hub.hf_hub_download, "tqdm_class") else {}

    for plan in plans:
        it = plan.it
        for f in plan.todo:
            path = plan.base / f.rel
            path.unlink(missing_ok=True)  # a stale or damaged copy: huggingface_hub would keep it
            rep.start(f.label(it), f.size)
            try:
                got = hub.hf_hub_download(it.repo, f.rel, revision=plan.commit, local_dir=plan.base,
                                          cache_dir=_hf_cache_dir(), endpoint=endpoint, token=token, **bar)
            except EngineError:
                raise
            except Exception as e:
                if not _is_hub_exception(e):
                    raise
                raise _hub_error(e, it, root, f.label(it)) from None
            _verify(plan, f, Path(got), rep)
            rep.finish(f.size)
        if not plan.skip:
            plan.manifest["complete"] = True
            _write_manifest(plan.base, it, plan.manifest)
    rep.say("all files are present and verified", 1.0)
    return [root / p.it.folder for p in plans]


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _is_hub_exception(e: BaseException) -> bool:
    """Errors of the transfer itself (hub, network, disk), as opposed to bugs or a cancel from `progress`."""
    mod = type(e).__module__ or ""
    return (mod.startswith(("huggingface_hub", "httpx", "httpcore", "requests", "urllib3"))
            or isinstance(e, (OSError, ConnectionError, TimeoutError)) or _is_network_error(e))


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


def _cmd_download(args: argparse.Namespace) -> int:
    its = _resolve_items(args.items or None)
    root = _root(args.dir)
    folders = download(its, root, progress=_cli_progress())
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

    s = sub.add_parser("download", help="download items (default: the 1.3B causal model and the 1.3B base)")
    s.add_argument("items", nargs="*", metavar="ITEM", help=f"what to download: {names}")
    s.add_argument("--dir", default=None, metavar="FOLDER", help="models folder (default: $SDV2_MODELS or user data)")
    s.set_defaults(fn=_cmd_download)

    s = sub.add_parser("path", help="print the models folder, or the folder of one item")
    s.add_argument("item", nargs="?", default=None, metavar="ITEM", help=names)
    s.add_argument("--dir", default=None, metavar="FOLDER", help="models folder (default: $SDV2_MODELS or user data)")
    s.set_defaults(fn=_cmd_path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sdv2_studio.engine.hub ...`: the `models` commands on their own (same as `sdv2 models ...`)."""
    parser = argparse.ArgumentParser(prog="sdv2")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except EngineError as e:
        print(f"sdv2: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
