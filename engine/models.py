"""Which weights to run: the embedded `tiny` test model, or StreamDiffusionV2 / Wan2.1 files on disk.

A `ModelBundle` is the three networks a stream needs (DiT, VAE, text encoder) plus what the UI should say
about them. `load_bundle("auto")` uses the downloaded StreamDiffusionV2 1.3B model when present and otherwise the
tiny model, with a notice naming the command that downloads the real one.

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
from sdv2_studio.engine.config import get_preset
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.model import CausalWanModel, cast_model, keep_fp32
from sdv2_studio.engine.text import TextEncoder, load_text_encoder, tiny_text_encoder
from sdv2_studio.engine.vae import WanVAE, get_vae_preset, load_vae

TINY_NOTICE = ("using the built-in tiny model: UNTRAINED random weights for testing the pipeline, its output is "
               "noise-like, not a style; run `sdv2 models download` for the real StreamDiffusionV2 model")
CAUSAL_DIR = Path("StreamDiffusionV2") / "wan_causal_dmd_v2v"
BASE_DIR = Path("Wan2.1-T2V-1.3B-Diffusers")

Progress = Callable[[str, float], None]  # (message, fraction done 0..1)


@dataclass
class ModelBundle:
    name: str
    dit: CausalWanModel
    vae: WanVAE
    text: TextEncoder
    untrained: bool
    default_size: tuple[int, int]  # (h, w) the model was trained at
    notice: str = ""


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
    cfg = get_preset(preset)
    text = tiny_text_encoder(text_dim=cfg.text_dim, text_len=cfg.text_len, seed=seed + 2)
    dit = tiny_dit(device, dtype, seed, select=select, preset=preset)
    name = "tiny (untrained test model)" if preset == "tiny" else f"random {preset} (untrained benchmark model)"
    return ModelBundle(name, dit, tiny_vae(device, dtype, seed),
                       text, untrained=True, default_size=(256, 256), notice=TINY_NOTICE)


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


def load_bundle(spec: str = "auto", *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                base: str | None = None, text_device: str | torch.device = "cpu",
                progress: Progress | None = None, select: Callable[[str], bool] | None = None) -> ModelBundle:
    """Load the networks named by `spec`: "auto", "tiny", or a checkpoint file/folder (any layout
    `engine.checkpoint` reads) with its Wan2.1 base folder found beside it, in the models dir, or at `base`.
    `select(name)`: materialise only these DiT tensors (pipeline rank 0: embeddings + its blocks)."""
    say = progress or (lambda msg, frac: None)
    if random_preset(spec):
        say("building the tiny test model", 0.0)
        return tiny_bundle(device, dtype, select=select, preset=random_preset(spec))
    if spec == "auto":
        found = find_downloaded()
        if found is None:
            say("no downloaded model found; using the tiny test model", 0.0)
            return tiny_bundle(device, dtype, select=select)
        ckpt, base_dir = found
    else:
        ckpt = Path(spec).expanduser()
        if not ckpt.exists():
            raise EngineError(f"model path {ckpt} does not exist; pass a checkpoint file or folder, 'tiny', or "
                              "run `sdv2 models download`")
        base_dir = Path(base).expanduser() if base else _find_base(ckpt)
    from sdv2_studio.engine.checkpoint import load_model

    say(f"loading the DiT from {ckpt}", 0.05)
    dit, info = load_model(ckpt, dtype=dtype, device=device, select=select)
    say("loading the VAE", 0.6)
    vae = load_vae(base_dir / "vae", dtype=dtype, device=device)
    say("loading the umT5 text encoder", 0.75)
    text = load_text_encoder(base_dir, device=text_device,
                             dtype=torch.float32 if torch.device(text_device).type == "cpu" else dtype,
                             text_len=dit.cfg.text_len)
    text.check_compatible(dit.cfg.text_dim, dit.cfg.text_len)
    say("models loaded", 1.0)
    return ModelBundle(f"{info.preset} ({info.layout}, {ckpt.name})", dit, vae, text, untrained=False,
                       default_size=(480, 832))
