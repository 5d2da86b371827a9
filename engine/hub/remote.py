"""Asking the hub: its settings read when asked, a deadline on every request, the listing of a repo checked at the
boundary, and every failure as one line that names the fix.

huggingface_hub sends some requests without a timeout, so every phase of every request waits at most
max(HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT) seconds (huggingface_hub's settings, read at import; 10 s by
default); retries are huggingface_hub's (bounded). `HF_ENDPOINT`, `HF_HOME` / `HF_HUB_CACHE`, `HF_HUB_OFFLINE` are
read here when a download runs (huggingface_hub reads them at import); `HF_TOKEN` is passed on when set (else
huggingface_hub's saved login is used).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.hub.catalogue import Item
from sdv2_studio.engine.hub.containment import unsafe_name
from sdv2_studio.engine.hub.transfer import Transfer

DEFAULT_ENDPOINT = "https://huggingface.co"
_SHA256, _GIT_OID = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Remote:
    """One file of a hub listing, checked at the boundary."""

    size: int
    digest: str  # sha256 of an LFS file, the git blob id of a file stored in git
    lfs: bool


def _listing(info, it: Item) -> tuple[str, dict[str, Remote]]:
    """The commit and the files of `it.repo` from `model_info(files_metadata=True)`, every value checked."""
    commit = getattr(info, "sha", None)
    if not isinstance(commit, str) or not _GIT_OID.fullmatch(commit):
        raise EngineError(f"the hub's answer about {it.repo} has no valid commit id ({str(commit)[:60]!r}): check "
                          "HF_ENDPOINT and any proxy in front of the hub")
    files: dict[str, Remote] = {}
    for s in getattr(info, "siblings", None) or []:
        name, lfs = getattr(s, "rfilename", None), getattr(s, "lfs", None)
        why = unsafe_name(name)
        if why:
            raise EngineError(f"the hub lists an unsafe file name {str(name)[:100]!r} in {it.repo} ({why}); nothing "
                              "was downloaded: check HF_ENDPOINT and any proxy in front of the hub")
        size = lfs.size if lfs is not None else getattr(s, "size", None)
        digest = lfs.sha256 if lfs is not None else getattr(s, "blob_id", None)
        if not (isinstance(size, int) and size >= 0 and isinstance(digest, str)
                and (_SHA256 if lfs is not None else _GIT_OID).fullmatch(digest)):
            raise EngineError(f"the hub's listing of {it.repo} has no valid size or hash for {name!r}: check "
                              "HF_ENDPOINT and any proxy in front of the hub")
        files[name] = Remote(size, digest, lfs is not None)
    return commit, files


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def offline() -> bool:
    return any((os.environ.get(v) or "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> str:
    """huggingface_hub's cache folder, resolved now (huggingface_hub resolves it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def import_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise EngineError("downloading models needs huggingface_hub: pip install 'huggingface_hub>=1.20,<3'") from None
    return huggingface_hub


def deadline() -> float:
    """Seconds any phase of a request to the hub may take (huggingface_hub's two timeout settings, the larger)."""
    from huggingface_hub import constants

    return float(max(constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT))


def _cap_timeouts(request) -> None:
    """A request hook of huggingface_hub's httpx client: no phase waits without a deadline, none longer than it."""
    limit = deadline()
    timeout = request.extensions.get("timeout") or {}
    request.extensions = {**request.extensions, "timeout": {
        k: limit if timeout.get(k) is None else min(timeout[k], limit) for k in ("connect", "read", "write", "pool")}}


def bound_requests(hub) -> None:
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


def unreachable(e: BaseException | None, it: Item, root: Path) -> EngineError:
    where = root / it.folder
    if e is None:
        return EngineError(f"cannot reach the model hub (HF_HUB_OFFLINE is set): unset HF_HUB_OFFLINE, or copy the "
                           f"files to {where}")
    if _is_timeout(e):
        return EngineError(f"the model hub ({hub_endpoint()}) did not answer within {deadline():g} s: check your "
                           f"connection or proxy (HF_HUB_DOWNLOAD_TIMEOUT sets the deadline), or copy the files to "
                           f"{where}")
    return EngineError(f"cannot reach the model hub ({hub_endpoint()}: {_reason(e)}): check your connection or copy "
                       f"the files to {where}")


def hub_error(e: BaseException, it: Item, root: Path) -> EngineError:
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
        return unreachable(e, it, root)
    if no_room is not None:
        return EngineError(f"cannot write {it.name} to {root} ({no_room.strerror}): free some space or pass --dir "
                           "FOLDER on another disk")
    if "Consistency check failed" in str(e):
        return EngineError(f"the download of {it.name} was cut short: run `sdv2 models download {it.name}` again")
    return EngineError(f"downloading {it.name} from {it.repo} failed ({type(e).__name__}: {_reason(e)}): run "
                       f"`sdv2 models download {it.name}` again")


def ask(api, it: Item, root: Path, progress: Transfer) -> tuple[str, dict[str, Remote]] | BaseException | None:
    """The checked listing of `it.repo`; the cause (None: offline mode) when the hub cannot be reached."""
    if offline():
        return None
    progress.say(f"asking {hub_endpoint()} about {it.repo}", 0.0)
    try:
        info = api.model_info(it.repo, revision=it.revision, files_metadata=True, timeout=deadline())
    except Exception as e:
        if _is_network_error(e) and _http_status(e) is None:
            return e
        raise hub_error(e, it, root) from None
    return _listing(info, it)
