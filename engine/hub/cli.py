"""`sdv2 models list|download|path`: the catalogue with what is on disk, the plan with every file's size and a
question before the first byte (`--yes` skips it), `--link FOLDER` for files the user already has."""

from __future__ import annotations

import argparse
import shutil
import sys

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.hub.catalogue import catalogue, format_size, item_path, models_root, resolve_items
from sdv2_studio.engine.hub.fetch import download
from sdv2_studio.engine.hub.plan import Confirm, Plan
from sdv2_studio.engine.hub.record import MISSING, local_size, status
from sdv2_studio.engine.hub.transfer import Progress
from sdv2_studio.engine.model_links import LinkFolder


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
    root = models_root(args.dir)
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
    print(item_path(args.item, args.dir) if args.item else models_root(args.dir))
    return 0


def _plan_lines(plans: list[Plan], links: LinkFolder | None, free: int | None) -> list[str]:
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

    def confirm(plans: list[Plan], links: LinkFolder | None, free: int | None) -> bool:
        need = sum(p.need for p in plans)
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
    its = resolve_items(args.items or None)
    root = models_root(args.dir)
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
    names = ", ".join(it.name for it in catalogue())

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
