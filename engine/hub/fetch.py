"""`download()`: the verified fetch. One checked listing per repo, the plan, the free-space check and the caller's
yes before the first byte, then `huggingface_hub.snapshot_download(local_dir=..., allow_patterns=..., tqdm_class=...)`
pinned to the listed commit and allowed only the exact names missing (files in parallel, a dropped connection
resumed within the run, finished files kept), and every file's hash checked after it (a mismatch is deleted)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.hub.catalogue import Item, models_root, resolve_items
from sdv2_studio.engine.hub.containment import local_path
from sdv2_studio.engine.hub.plan import Confirm, Plan, check_space, link_files, make_plan
from sdv2_studio.engine.hub.record import DOWNLOADED, digest, status, write_record
from sdv2_studio.engine.hub.remote import (
    ask,
    bound_requests,
    hf_cache_dir,
    hub_endpoint,
    hub_error,
    hub_token,
    import_hub,
    unreachable,
)
from sdv2_studio.engine.hub.transfer import Progress, Transfer
from sdv2_studio.engine.model_links import LinkFolder

_WORKERS = 8  # files fetched at the same time (huggingface_hub's default)


def verify(plan: Plan, progress: Transfer) -> None:
    """Size and hash of every file just downloaded; a wrong one is deleted."""
    it = plan.it
    for rel in plan.todo:
        f, path = plan.files[rel], local_path(plan.base, rel)
        if not path.is_file():
            raise EngineError(f"{it.local}/{rel} was not downloaded (the hub no longer lists it at commit "
                              f"{plan.commit[:12]}): run `sdv2 models download {it.name}` again")
        progress.say(f"verifying {it.local}/{rel} ({'sha256' if f.lfs else 'git blob id'})")
        size, got = path.stat().st_size, digest(path, f.lfs)
        if size != f.size or got != f.digest:
            path.unlink()
            raise EngineError(f"{it.local}/{rel} from {it.repo} is corrupted ({size} bytes, hash {got[:12]}...; the "
                              f"hub lists {f.size} bytes, {f.digest[:12]}...); it was deleted: run `sdv2 models "
                              f"download {it.name}` again")
        plan.record[rel] = {"size": size, "digest": f.digest, "mtime_ns": path.stat().st_mtime_ns}
        write_record(plan.base, it, plan.record)


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
    its = resolve_items(items)
    root = models_root(root)
    links = LinkFolder(link_from) if link_from is not None else None
    transfer = Transfer(progress)
    hub = import_hub()
    from huggingface_hub.utils import filter_repo_objects, tqdm

    endpoint, token = hub_endpoint(), hub_token()
    bound_requests(hub)
    api = hub.HfApi(endpoint=endpoint, token=token)

    answers: dict[tuple[str, str], object] = {}
    plans: list[Plan] = []
    for it in its:
        key = (it.repo, it.revision)
        if key not in answers:
            answers[key] = ask(api, it, root, transfer)
        answer = answers[key]
        if not isinstance(answer, tuple):  # the hub cannot be reached: fine if the files are already here
            if status(it, root) != DOWNLOADED:
                raise unreachable(answer, it, root)
            transfer.say(f"{it.name}: already downloaded (the hub could not be reached to check for updates)", 1.0)
            continue
        commit, listed = answer
        files = {rel: listed[rel] for rel in filter_repo_objects(sorted(listed), allow_patterns=list(it.patterns))}
        if not files:
            raise EngineError(f"{it.repo} on the hub has no files matching {', '.join(it.patterns)} (its layout may "
                              f"have changed); copy the files to {root / it.folder} by hand")
        plans.append(make_plan(it, root / it.local, commit, files, transfer, links))

    transfer.total = sum(p.need for p in plans)
    free = check_space(root, transfer.total)
    if confirm is not None and not confirm(plans, links, free):
        return []
    for plan in plans:
        link_files(plan)

    bar = transfer.bar_class(tqdm)
    for plan in (p for p in plans if p.todo):
        it = plan.it
        transfer.start(it.name, plan.need)
        try:
            transfer.run(hub.snapshot_download, it.repo, revision=plan.commit, local_dir=plan.base,
                         allow_patterns=[glob.escape(rel) for rel in plan.todo], cache_dir=hf_cache_dir(),
                         endpoint=endpoint, token=token, tqdm_class=bar, max_workers=_WORKERS)
        except Exception as e:
            transfer_error = isinstance(e, OSError) or type(e).__module__.startswith(("huggingface_hub", "httpx"))
            if transfer.error is not None or not transfer_error:  # a stop, or a bug
                raise
            raise hub_error(e, it, root) from None
        verify(plan, transfer)
        transfer.finish()
    transfer.say("all files are present and verified", 1.0)
    return [root / it.folder for it in its]
