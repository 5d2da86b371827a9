"""The catalogue of model repos: which hub repo, which files in it, where they land under the models folder
(`engine.models.models_dir()`, or `--dir`), in the layouts `engine.models` reads (`base_parts`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sdv2_studio.engine.errors import EngineError


@dataclass(frozen=True)
class Item:
    """One downloadable thing: some files of one hub repo, replicated under `<models>/<local>/`."""

    name: str
    repo: str
    patterns: tuple[str, ...]  # files of the repo to fetch (huggingface_hub allow_patterns syntax)
    local: str  # folder under the models dir that mirrors the repo's layout (huggingface_hub local_dir)
    size: int | None  # approximate download size in bytes; None = unknown (the hub's exact sizes are used anyway)
    size_note: str  # where `size` comes from
    purpose: str
    verified: bool  # repo and file paths confirmed by the reference docs
    default: bool = False  # part of a plain `sdv2 models download`
    folder: str = ""  # the folder the engine reads (`sdv2 models path ITEM`) under the models dir; "": `local`
    required: tuple[str, ...] = ()  # globs under `local` all present for files copied by hand to count; (): patterns
    note: str = ""
    revision: str = "main"

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", self.folder or self.local)
        object.__setattr__(self, "required", self.required or self.patterns)


# Sizes: the 1.3B base is our estimate from the architecture, the DiT checkpoints' dtypes are undocumented.
# Parameter counts are those of engine/config.py's presets (tests/test_model_numerics.py).
_CATALOGUE: tuple[Item, ...] = (
    Item(
        name="sdv2-1.3b",
        repo="jerryfeng/StreamDiffusionV2",
        patterns=("wan_causal_dmd_v2v/model.pt",),
        local="StreamDiffusionV2",
        folder="StreamDiffusionV2/wan_causal_dmd_v2v",
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
        required=("text_encoder/config.json", "text_encoder/*.safetensors", "tokenizer/*", "vae/*.safetensors"),
        size=23_300_000_000,
        size_note="estimate: umT5-XXL encoder (5.68e9 parameters) in fp32 = 22.7 GB, VAE about 0.5 GB, tokenizer "
                  "about 20 MB; the diffusers transformer/ (not needed) is skipped",
        purpose="Wan2.1 1.3B base, diffusers format: fp32 umT5-XXL text encoder, tokenizer and VAE (an alternative "
                "to wan2.1-1.3b-original, twice its size)",
        verified=True,
    ),
    Item(
        name="sdv2-14b",
        repo="jerryfeng/StreamDiffusionV2",
        patterns=("wan_causal_dmd_v2v_14b/*",),
        local="StreamDiffusionV2",
        folder="StreamDiffusionV2/wan_causal_dmd_v2v_14b",
        size=None,
        size_note="unknown: 14,288,491,584 parameters are 28.6 GB in bf16 or 57 GB in fp32",
        purpose="StreamDiffusionV2 causal DiT, 14B (multi-GPU class); uses the text encoder and VAE of "
                "wan2.1-1.3b-base",
        verified=True,
        note="the folder is confirmed; the names of the files in it are not",
    ),
    Item(
        name="taehv",
        repo="madebyollin/taehv",
        patterns=("taew2_1.pth",),
        local="taehv",
        size=None,
        size_note="unknown",
        purpose="TAEHV tiny decoder for Wan2.1 latents (optional faster decoding; engine/taehv.py reads this folder)",
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


def models_root(root: str | os.PathLike | None) -> Path:
    """`root` (`--dir`), or the models folder when it is not given."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    from sdv2_studio.engine.models import models_dir

    return models_dir()


def item_path(item: str | Item, root: str | os.PathLike | None = None) -> Path:
    """The folder the engine reads for `item` (it may not exist yet)."""
    return models_root(root) / get_item(item).folder


def resolve_items(items: Iterable[str | Item] | str | Item | None) -> list[Item]:
    """The items named (each once, in order); the default set when none are."""
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


def format_size(n: int | None, approx: bool = False) -> str:
    """Bytes for people: "11.9 GB" ("~11.9 GB" for an estimate)."""
    if n is None:
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{'~' if approx else ''}{n / scale:.1f} {unit}"
    return f"{n} B"
