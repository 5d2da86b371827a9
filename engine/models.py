"""Which weights to run: the embedded `tiny` test model, or StreamDiffusionV2 / Wan2.1 files on disk.

`resolve_model(spec, base)` is the one place a model spec is turned into files and shapes, without loading any
weights: "auto" (the downloaded StreamDiffusionV2 1.3B model when present, else the tiny model), "tiny",
"random:PRESET" (seeded random weights of a preset, for benchmarks) or a checkpoint file/folder with its Wan2.1
base folder. The engine, its pipeline ranks, `sdv2 run` under torchrun, the memory estimate (engine/memory.py) and
the app all start from it. A `ModelBundle` is the three networks a stream needs (DiT, VAE, text encoder) loaded
for a resolved model, with what the UI should say about them (a notice for the untrained tiny model names the
command that downloads the real one).

Files on disk (what `sdv2 models download` produces; any folder with the same layout works):
    <models>/StreamDiffusionV2/wan_causal_dmd_v2v/model.pt      the causal DMD-distilled DiT (1.3B)
    <models>/Wan2.1-T2V-1.3B-Diffusers/{text_encoder,tokenizer,vae}/   umT5 + VAE (diffusers format)
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from sdv2_studio.engine.config import ModelConfig, get_preset
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.model import CausalWanModel, cast_model, keep_fp32
from sdv2_studio.engine.text import TextEncoder, load_text_encoder, tiny_text_config, tiny_text_encoder
from sdv2_studio.engine.vae import WanVAE, get_vae_preset, load_vae

TINY_NOTICE = ("using the built-in tiny model: UNTRAINED random weights for testing the pipeline, its output is "
               "noise-like, not a style; run `sdv2 models download` for the real StreamDiffusionV2 model")
CAUSAL_DIR = Path("StreamDiffusionV2") / "wan_causal_dmd_v2v"
BASE_DIR = Path("Wan2.1-T2V-1.3B-Diffusers")
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

    spec: str  # "tiny", "random:PRESET" or the checkpoint path: what pipeline ranks are told to build
    config: ModelConfig  # the DiT's shape
    checkpoint: Path | None  # the DiT checkpoint file/folder; None for seeded random weights
    base: Path | None  # the Wan2.1 diffusers folder (vae/, text_encoder/, tokenizer/); None for the built-in parts
    name: str  # for the UI: "wan2.1-1.3b (causal-wan, model.pt)", "tiny (untrained test model)"
    default_size: tuple[int, int]  # (h, w) the model runs at unless told otherwise
    vae: str  # the VAE preset (engine/vae.py) its VAE has: "wan2.1", or "tiny" for the seeded-random models
    text_config: dict  # the text encoder's umT5 architecture (transformers' UMT5Config names)

    @property
    def untrained(self) -> bool:
        return self.checkpoint is None

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def notice(self) -> str:
        return TINY_NOTICE if self.untrained else ""

    @property
    def text_dtype_cpu(self) -> torch.dtype:
        """The text encoder's dtype on a CPU: bf16 for released weights, as upstream runs umT5 (11.4 GB of RAM for
        umT5-XXL; fp32 would take 23 GB); fp32 for the tiny test encoder (its outputs are frozen in the golden
        runs)."""
        return torch.float32 if self.untrained else torch.bfloat16


@dataclass
class ModelBundle:
    """The networks of a resolved model, loaded."""

    model: ResolvedModel
    dit: CausalWanModel
    vae: WanVAE
    text: TextEncoder

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
    return cast_model(dit.eval().requires_grad_(False), dtype)


def tiny_vae(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> WanVAE:
    vae = WanVAE(get_vae_preset("tiny"))
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
    return ModelBundle(model, dit, tiny_vae(device, dtype, seed), text)


def find_downloaded() -> tuple[Path, Path] | None:
    """(causal checkpoint folder, diffusers base folder) if both are in the models dir."""
    root = models_dir()
    ckpt, base = root / CAUSAL_DIR, root / BASE_DIR
    if (ckpt / "model.pt").is_file() and (base / "vae").is_dir() and (base / "text_encoder").is_dir():
        return ckpt, base
    return None


def _find_base(path: Path) -> Path:
    """The diffusers base folder (text_encoder/, tokenizer/, vae/) for a checkpoint at `path`."""
    for cand in (path, *path.parents[:3], models_dir() / BASE_DIR):
        if (cand / "vae").is_dir() and (cand / "text_encoder").is_dir():
            return cand
        if (cand / BASE_DIR / "vae").is_dir():
            return cand / BASE_DIR
    raise EngineError(f"no Wan2.1 base folder (text_encoder/, tokenizer/, vae/) found for {path}; "
                      "run `sdv2 models download` or pass --base FOLDER")


def _random_model(preset: str) -> ResolvedModel:
    cfg = get_preset(preset)
    name = "tiny (untrained test model)" if preset == "tiny" else f"random {preset} (untrained benchmark model)"
    return ResolvedModel("tiny" if preset == "tiny" else f"random:{preset}", cfg, None, None, name, RANDOM_SIZE,
                         "tiny", tiny_text_config(cfg.text_dim))


def resolve_model(spec: str = "auto", base: str | os.PathLike | None = None) -> ResolvedModel:
    """The model `spec` names, with its base folder and shapes, without loading weights: "auto" (the downloaded
    StreamDiffusionV2 model, else "tiny"), "tiny", "random:PRESET", or a checkpoint file/folder (any layout
    `engine.checkpoint` reads, inspected from its headers) whose Wan2.1 base folder is `base`, or found beside it
    or in the models dir."""
    if spec == "auto":
        found = find_downloaded()
        if found is None:
            return _random_model("tiny")
        spec, base = str(found[0]), base or found[1]
    preset = random_preset(spec)
    if preset:
        return _random_model(preset)
    ckpt = Path(spec).expanduser()
    if not ckpt.exists():
        raise EngineError(f"model path {ckpt} does not exist; pass a checkpoint file or folder, 'tiny', or "
                          "run `sdv2 models download`")
    if base is not None and not Path(base).expanduser().is_dir():
        raise EngineError(f"base folder {base} does not exist; pass the Wan2.1 diffusers folder (vae/, "
                          "text_encoder/, tokenizer/) or leave --base out to find it")
    from sdv2_studio.engine.checkpoint import inspect_checkpoint

    info = inspect_checkpoint(ckpt)
    base_dir = Path(base).expanduser() if base is not None else _find_base(ckpt)
    return ResolvedModel(str(ckpt), info.config, ckpt, base_dir, f"{info.preset} ({info.layout}, {ckpt.name})",
                         REAL_SIZE, "wan2.1", UMT5_XXL)


def load_bundle(spec: str | ResolvedModel = "auto", *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, base: str | None = None, text_device: str | torch.device = "cpu",
                progress: Progress | None = None, select: Callable[[str], bool] | None = None) -> ModelBundle:
    """Load the networks of `spec` (a spec for `resolve_model`, with `base`, or a model it resolved).
    `select(name)`: materialise only these DiT tensors (pipeline rank 0: embeddings + its blocks)."""
    say = progress or (lambda msg, frac: None)
    model = spec if isinstance(spec, ResolvedModel) else resolve_model(spec, base)
    if model.untrained:
        say("no downloaded model found; using the tiny test model" if spec == "auto" else
            "building the tiny test model", 0.0)
        return tiny_bundle(device, dtype, select=select, preset=random_preset(model.spec))
    from sdv2_studio.engine.checkpoint import load_model

    say(f"loading the DiT from {model.checkpoint}", 0.05)
    dit, _ = load_model(model.checkpoint, dtype=dtype, device=device, select=select)
    say("loading the VAE", 0.6)
    vae = load_vae(model.base / "vae", dtype=dtype, device=device)
    say("loading the umT5 text encoder", 0.75)
    text = load_text_encoder(model.base, device=text_device,
                             dtype=model.text_dtype_cpu if torch.device(text_device).type == "cpu" else dtype,
                             text_len=dit.cfg.text_len)
    text.check_compatible(dit.cfg.text_dim, dit.cfg.text_len)
    say("models loaded", 1.0)
    return ModelBundle(model, dit, vae, text)
