"""Which weights to run: the embedded `tiny` test model, or StreamDiffusionV2 / Wan2.1 files on disk.

`resolve_model(spec, base)` is the one place a model spec is turned into files and shapes, without loading any
weights: "auto" (the downloaded StreamDiffusionV2 1.3B model when present, else the tiny model), "tiny",
"random:PRESET" (seeded random weights of a preset, for benchmarks), "passthrough" (no network: frames pass through
unchanged, engine/passthrough.py) or a checkpoint file/folder with its Wan2.1 base folder. The engine, its pipeline
ranks, `sdv2 run` under torchrun, the memory estimate (engine/memory.py) and the app all start from it. A
`ModelBundle` is the three networks a stream needs (DiT, VAE, text encoder) loaded for a resolved model, with what
the UI should say about them (a notice for the untrained tiny model names the command that downloads the real one;
the passthrough model's says that prompts are ignored).

Files on disk (what `sdv2 models download` produces; any folder with the same layout works):
    <models>/StreamDiffusionV2/wan_causal_dmd_v2v/model.pt      the causal DMD-distilled DiT (1.3B)
    <models>/Wan2.1-T2V-1.3B-Diffusers/{text_encoder,tokenizer,vae}/   umT5 + VAE (diffusers format)

The VAE and text encoder come from a base folder (`base_parts` decides what a folder holds: a diffusers Wan2.1
folder, or the original Wan2.1 release with Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth and
google/umt5-xxl/), or from single files named one by one (`vae=`, `text_encoder=`, `tokenizer=`: any layout
engine/vae.py and engine/text.py read); a part named explicitly wins over the folder's. LoRAs (`loras=`) are merged
into the DiT at load (engine/lora.py); the bundle keeps the `LoRAMerger` that switches the LoRAs a preset names
(`Controls.loras`) on top of them, or removes them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from sdv2_studio.engine.config import PASSTHROUGH, ModelConfig, check_model_files, get_preset
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.model import CausalWanModel, cast_model, fuse_qkv, keep_fp32
from sdv2_studio.engine.text import (
    WAN_T5_FILE,
    TextEncoder,
    load_text_encoder,
    tiny_text_config,
    tiny_text_encoder,
)
from sdv2_studio.engine.vae import WanVAE, get_vae_preset, load_vae

if TYPE_CHECKING:
    from sdv2_studio.engine.lora import LoRAMerger

TINY_NOTICE = ("using the built-in tiny model: UNTRAINED random weights for testing the pipeline, its output is "
               "noise-like, not a style; run `sdv2 models download` for the real StreamDiffusionV2 model")
PASSTHROUGH_NOTICE = ("passthrough model: frames pass through unchanged (no diffusion, no weights), to check the "
                      "wiring and measure transport latency; prompts, presets and steps are accepted and ignored")
CAUSAL_DIR = Path("StreamDiffusionV2") / "wan_causal_dmd_v2v"
BASE_DIR = Path("Wan2.1-T2V-1.3B-Diffusers")
ORIGINAL_DIR = Path("Wan2.1-T2V-1.3B")  # the original release's folder name (its huggingface repo)
DOWNLOAD_PRESET = "wan2.1-1.3b"  # the DiT `sdv2 models download` fetches (StreamDiffusionV2 1.3B)
REAL_SIZE = (480, 832)  # (h, w) the released Wan2.1 / StreamDiffusionV2 models were trained at
RANDOM_SIZE = (256, 256)  # default (h, w) of the seeded-random models
# The umT5-XXL encoder of every Wan2.1 base folder (its text_encoder/config.json, architecture fields only)
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "relative_attention_num_buckets": 32, "feed_forward_proj": "gated-gelu"}

Progress = Callable[[str, float], None]  # (message, fraction done 0..1)


@dataclass(frozen=True)
class ResolvedModel:
    """What a model spec names, found without loading weights (`resolve_model`)."""

    spec: str  # "tiny", "random:PRESET", "passthrough" or the checkpoint path: what pipeline ranks are told to build
    config: ModelConfig  # the DiT's shape
    checkpoint: Path | None  # the DiT checkpoint file/folder; None for seeded random weights
    base: Path | None  # the Wan2.1 base folder the VAE / text encoder come from (`base_parts`); None: none used
    name: str  # for the UI: "wan2.1-1.3b (causal-wan, model.pt)", "tiny (untrained test model)"
    default_size: tuple[int, int]  # (h, w) the model runs at unless told otherwise
    vae: str  # the VAE preset (engine/vae.py) its VAE has: "wan2.1", or "tiny" for the seeded-random models
    text_config: dict  # the text encoder's umT5 architecture (transformers' UMT5Config names)
    vae_file: Path | None = None  # the VAE file/folder load_vae reads; None for the built-in parts
    text_file: Path | None = None  # the text encoder file/folder load_text_encoder reads
    tokenizer: Path | None = None  # its tokenizer folder/file; None: found beside the weights or embedded
    loras: tuple[tuple[str, float], ...] = ()  # (LoRA file, strength), merged into the DiT at load

    @property
    def passthrough(self) -> bool:
        """No network runs: the engine builds engine.passthrough.PassthroughPipeline instead of StreamPipeline."""
        return self.spec == PASSTHROUGH

    @property
    def untrained(self) -> bool:
        return self.checkpoint is None and not self.passthrough

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def notice(self) -> str:
        return PASSTHROUGH_NOTICE if self.passthrough else TINY_NOTICE if self.untrained else ""

    @property
    def text_dtype_cpu(self) -> torch.dtype:
        """The text encoder's dtype on a CPU: bf16 for released weights, as upstream runs umT5 (11.4 GB of RAM for
        umT5-XXL; fp32 would take 23 GB); fp32 for the tiny test encoder (its outputs are frozen in the golden
        runs)."""
        return torch.float32 if self.untrained else torch.bfloat16


@dataclass
class ModelBundle:
    """The networks of a resolved model, loaded (none for the passthrough model)."""

    model: ResolvedModel
    dit: CausalWanModel | None
    vae: WanVAE | None
    text: TextEncoder | None
    loras: LoRAMerger | None = None  # what switches or removes the merged LoRAs (None: none merged)

    def merger(self) -> LoRAMerger:
        """What merges LoRAs into this bundle's DiT (made on first use); the model's own LoRAs are its `fixed`."""
        if self.loras is None:
            from sdv2_studio.engine.lora import LoRAMerger

            self.loras = LoRAMerger(self.dit)
        return self.loras

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def untrained(self) -> bool:
        return self.model.untrained

    @property
    def default_size(self) -> tuple[int, int]:
        return self.model.default_size

    @property
    def notice(self) -> str:
        return self.model.notice


def models_dir() -> Path:
    """Where downloaded models live: $SDV2_MODELS, else the platform's user data dir."""
    env = os.environ.get("SDV2_MODELS")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("streamdiffusion-studio", appauthor=False)) / "models"


def _seeded_tensor(name: str, shape: torch.Size, seed: int, std: float) -> torch.Tensor:
    """The value of parameter `name`: a function of (seed, name) only, so any pipeline rank can build any block."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    if len(shape) == 1 and ("norm" in name or name.endswith("gamma")):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:
        return 0.02 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) * min(std, fan_in**-0.5)


def _seeded_init(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Deterministic random weights independent of the global RNG and of torch's init schemes."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(_seeded_tensor(name, p.shape, seed, std))


def random_preset(spec: str) -> str | None:
    """The DiT preset of a seeded-random model spec: "tiny", or "random:PRESET" (e.g. random:small for benchmarks);
    None for a real checkpoint path."""
    if spec == "tiny":
        return "tiny"
    if spec.startswith("random:"):
        get_preset(spec[len("random:"):])  # validates
        return spec[len("random:"):]
    return None


def tiny_dit(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
             select: Callable[[str], bool] | None = None, preset: str = "tiny") -> CausalWanModel:
    """The tiny DiT (or another preset) with seeded random weights; `select(name)` materialises only some tensors
    (the rest stay on the meta device), as a pipeline rank does with a real checkpoint."""
    cfg = get_preset(preset)
    with torch.device("meta"):
        dit = CausalWanModel(cfg)
    sd = {}
    for name, p in dit.named_parameters():
        if select is None or select(name):
            want = torch.float32 if keep_fp32(name) else dtype
            sd[name] = _seeded_tensor(name, p.shape, seed, 0.05).to(device=device, dtype=want)
    dit.load_state_dict(sd, strict=select is None, assign=True)
    cast_model(dit.eval().requires_grad_(False), dtype)
    fuse_qkv(dit)  # as a loaded checkpoint: one q/k/v GEMM per self-attention
    return dit


def random_vae_preset(dit_preset: str) -> str:
    """The VAE of a seeded-random model: the real Wan2.1 VAE's shapes beside a real-size DiT (benchmarks measure
    the real work), the tiny VAE otherwise."""
    return "wan2.1" if dit_preset.startswith("wan2.1") else "tiny"


def tiny_vae(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
             dit_preset: str = "tiny") -> WanVAE:
    """The VAE of the seeded-random models (`random_vae_preset`), random weights from a fixed seed."""
    vae = WanVAE(get_vae_preset(random_vae_preset(dit_preset)))
    _seeded_init(vae, seed + 1, std=0.2)
    vae_dtype = dtype if dtype != torch.float16 else torch.float32
    return vae.eval().requires_grad_(False).to(device=device, dtype=vae_dtype)


def tiny_bundle(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                select: Callable[[str], bool] | None = None, preset: str = "tiny") -> ModelBundle:
    """The embedded default: tiny DiT + tiny VAE + tiny umT5, random weights from fixed seeds (`preset` swaps in
    another DiT shape with random weights, for benchmarks)."""
    model = _random_model(preset)
    text = tiny_text_encoder(text_dim=model.config.text_dim, text_len=model.config.text_len, seed=seed + 2)
    dit = tiny_dit(device, dtype, seed, select=select, preset=preset)
    return ModelBundle(model, dit, tiny_vae(device, dtype, seed, dit_preset=preset), text)


def find_downloaded() -> tuple[Path, Path] | None:
    """(causal checkpoint folder, base folder) if both are in the models dir (the base: the diffusers folder or the
    original release's, which `sdv2 models download` fetches by default)."""
    root = models_dir()
    ckpt = root / CAUSAL_DIR
    if (ckpt / "model.pt").is_file():
        for base in (root / BASE_DIR, root / ORIGINAL_DIR):
            if base_parts(base) is not None:
                return ckpt, base
    return None


@dataclass(frozen=True)
class BaseParts:
    """What a Wan2.1 base folder holds (`base_parts`)."""

    layout: str  # "diffusers" (vae/, text_encoder/, tokenizer/) or "wan" (the original release)
    vae: Path  # what load_vae reads
    text_encoder: Path  # what load_text_encoder reads
    tokenizer: Path | None  # the tokenizer folder; None: load_text_encoder looks beside the weights


ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_TOKENIZER = Path("google") / "umt5-xxl"


def base_parts(folder: Path) -> BaseParts | None:
    """The VAE, text encoder and tokenizer a Wan2.1 base folder holds, or None when it is neither layout: a
    diffusers folder (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`: vae/, text_encoder/, tokenizer/) or the original release
    (`Wan-AI/Wan2.1-T2V-1.3B`: Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/)."""
    if (folder / "vae").is_dir() and (folder / "text_encoder").is_dir():
        tok = folder / "tokenizer"
        return BaseParts("diffusers", folder / "vae", folder / "text_encoder", tok if tok.is_dir() else None)
    if (folder / ORIGINAL_VAE).is_file() and (folder / WAN_T5_FILE).is_file():
        tok = folder / ORIGINAL_TOKENIZER
        return BaseParts("wan", folder / ORIGINAL_VAE, folder / WAN_T5_FILE, tok if tok.is_dir() else None)
    return None


BASE_HINT = ("Wan2.1 base folder (original: Wan2.1_VAE.pth + models_t5_umt5-xxl-enc-bf16.pth + google/umt5-xxl/; "
             "or diffusers: vae/ + text_encoder/ + tokenizer/)")


def _find_base(path: Path) -> tuple[Path, BaseParts]:
    """The base folder for a checkpoint at `path`: the folder itself, up to three parents, a base folder of the
    release's name (Wan2.1-T2V-1.3B[-Diffusers]) in one of them, or the downloaded one."""
    for cand in (path, *path.parents[:3], models_dir() / BASE_DIR):
        for folder in (cand, cand / BASE_DIR, cand / ORIGINAL_DIR):
            parts = base_parts(folder)
            if parts is not None:
                return folder, parts
    raise EngineError(f"no {BASE_HINT} found for {path}; run `sdv2 models download`, pass --base FOLDER, or name "
                      "the parts with --vae and --text-encoder")


def _random_model(preset: str) -> ResolvedModel:
    cfg = get_preset(preset)
    name = "tiny (untrained test model)" if preset == "tiny" else f"random {preset} (untrained benchmark model)"
    return ResolvedModel("tiny" if preset == "tiny" else f"random:{preset}", cfg, None, None, name, RANDOM_SIZE,
                         random_vae_preset(preset), tiny_text_config(cfg.text_dim))


def resolve_model(spec: str = "auto", base: str | os.PathLike | None = None, *, vae=None, text_encoder=None,
                  tokenizer=None, loras=()) -> ResolvedModel:
    """The model `spec` names, with its parts and shapes, without loading weights: "auto" (the downloaded
    StreamDiffusionV2 model, else "tiny"), "tiny", "random:PRESET", "passthrough", or a checkpoint file/folder (any
    layout `engine.checkpoint` reads, inspected from its headers). Its VAE and text encoder are `vae` / `text_encoder`
    (+ `tokenizer`) when given, else those of the base folder: `base`, else one found at or beside the checkpoint
    or in the models dir (`base_parts`). `loras`: see `engine.config.check_model_files`."""
    loras = check_model_files(spec, base, vae, text_encoder, tokenizer, loras)
    if spec == PASSTHROUGH:  # the tiny preset only stands in for a DiT shape; nothing is built from it
        return ResolvedModel(PASSTHROUGH, get_preset("tiny"), None, None, "passthrough (identity: no model)",
                             REAL_SIZE, "none", {})
    if spec == "auto":
        found = find_downloaded()
        if found is None:
            if vae or text_encoder or tokenizer or base:
                raise EngineError("--vae/--text-encoder/--tokenizer/--base need a DiT: no model is downloaded, pass "
                                  "--model CHECKPOINT or run `sdv2 models download`")
            return dataclasses.replace(_random_model("tiny"), loras=loras)
        spec, base = str(found[0]), base or found[1]
    preset = random_preset(spec)
    if preset:
        return dataclasses.replace(_random_model(preset), loras=loras)
    from sdv2_studio.engine.checkpoint import inspect_checkpoint

    ckpt = Path(spec).expanduser()
    info = inspect_checkpoint(ckpt)
    base_dir, parts = None, None
    if base is not None:
        base_dir = Path(base).expanduser()
        parts = base_parts(base_dir)
        if parts is None:
            raise EngineError(f"{base_dir} is not a {BASE_HINT} (--base)")
    elif not (vae and text_encoder):
        base_dir, parts = _find_base(ckpt)
    name = f"{info.preset} ({info.layout}, {ckpt.name})" + "".join(
        f" + LoRA {Path(p).stem}" + (f" x{s:g}" if s != 1 else "") for p, s in loras)
    return ResolvedModel(str(ckpt), info.config, ckpt, base_dir, name, REAL_SIZE, "wan2.1", UMT5_XXL,
                         vae_file=Path(vae).expanduser() if vae else parts.vae,
                         text_file=Path(text_encoder).expanduser() if text_encoder else parts.text_encoder,
                         tokenizer=Path(tokenizer).expanduser() if tokenizer else
                         (parts.tokenizer if parts and not text_encoder else None),
                         loras=loras)


def load_bundle(spec: str | ResolvedModel = "auto", *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, base: str | None = None, text_device: str | torch.device = "cpu",
                progress: Progress | None = None, select: Callable[[str], bool] | None = None) -> ModelBundle:
    """Load the networks of `spec` (a spec for `resolve_model`, with `base`, or a model it resolved) and merge its
    LoRAs. `select(name)`: materialise only these DiT tensors (pipeline rank 0: embeddings + its blocks)."""
    say = progress or (lambda msg, frac: None)
    model = spec if isinstance(spec, ResolvedModel) else resolve_model(spec, base)
    if model.passthrough:
        say("passthrough: no model to load", 1.0)
        return ModelBundle(model, None, None, None)
    if model.untrained:
        say("no downloaded model found; using the tiny test model" if spec == "auto" else
            "building the tiny test model", 0.0)
        bundle = tiny_bundle(device, dtype, select=select, preset=random_preset(model.spec))
        bundle.model = model
    else:
        from sdv2_studio.engine.checkpoint import load_model

        say(f"loading the DiT from {model.checkpoint}", 0.05)
        dit, _ = load_model(model.checkpoint, dtype=dtype, device=device, select=select)
        say(f"loading the VAE from {model.vae_file}", 0.6)
        vae = load_vae(model.vae_file, dtype=dtype, device=device)
        say(f"loading the umT5 text encoder from {model.text_file}", 0.75)
        text = load_text_encoder(model.text_file, tokenizer=model.tokenizer, device=text_device,
                                 dtype=model.text_dtype_cpu if torch.device(text_device).type == "cpu" else dtype,
                                 text_len=dit.cfg.text_len)
        text.check_compatible(dit.cfg.text_dim, dit.cfg.text_len)
        bundle = ModelBundle(model, dit, vae, text)
    if model.loras:
        say(f"merging {len(model.loras)} LoRA(s)", 0.9)
        merger = bundle.merger()
        fixed = merger.load(model.loras)
        merger.check_room(fixed)
        merger.fixed = fixed
        merger.set(merger.fixed)
    say("models loaded", 1.0)
    return bundle
