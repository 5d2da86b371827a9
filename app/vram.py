"""How much GPU memory a setting needs, before anything is loaded (Qt-free, torch-free).

    DiT weights      parameters (exact count from the config) x bytes per parameter
    KV cache         layers x 2 (K and V) x slots x cache_frames x tokens per frame x dim x bytes
                     + the prompt's cross-attention K/V: layers x 2 x slots x text_len x dim x bytes
    activations      the biggest per-block temporaries of one forward: the FFN hidden state of the chunk's tokens
                     and, worst case (math attention), one layer's attention scores over the cache
    VAE              weights + decoder activations at the full resolution (5 frames, ~4 live feature maps)
    text encoder     umT5-XXL (5.7e9 parameters) only when it runs on the GPU (default: on the CPU)
    overhead         CUDA context and allocator slack

slots = denoising steps with Stream-Batch (one chunk in flight per step), else 1. With pipeline parallelism over
n GPUs the DiT (weights, cache, activations) is split n ways; the VAE sits on the first GPU, which is the one
that must fit. These are estimates (within roughly 15-25% of what CUDA reports); the warning threshold leaves
margin for that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdv2_studio.engine.config import PRESETS, CacheConfig, ModelConfig

GiB = 1024**3
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
VAE_PARAMS_WAN21 = 126_892_531  # Wan2.1 VAE (base_dim 96), counted from engine/vae.py on the meta device
UMT5_XXL_PARAMS = 5_680_000_000  # encoder only
CUDA_CONTEXT = int(0.6 * GiB)
SLACK = 0.10  # allocator fragmentation


def dit_params(cfg: ModelConfig) -> int:
    """Exact parameter count of engine.model.CausalWanModel(cfg) (checked against the model in the tests)."""
    d, p = cfg.dim, math.prod(cfg.patch_size)
    embed = cfg.in_dim * d * p + d  # patch_embedding
    embed += cfg.text_dim * d + d + d * d + d  # text_embedding
    embed += cfg.freq_dim * d + d + d * d + d  # time_embedding
    embed += d * 6 * d + 6 * d  # time_projection
    block = 8 * (d * d + d) + 6 * d  # q k v o for self and cross attention, norm_q/norm_k x 2, norm3 (affine)
    block += d * cfg.ffn_dim + cfg.ffn_dim + cfg.ffn_dim * d + d + 6 * d  # ffn + modulation
    head = d * p * cfg.out_dim + p * cfg.out_dim + 2 * d
    return embed + cfg.num_layers * block + head


@dataclass(frozen=True)
class VramEstimate:
    weights: int
    kv_cache: int
    activations: int
    vae: int
    text_encoder: int
    overhead: int
    gpus: int = 1

    @property
    def total(self) -> int:
        """Bytes needed on the fullest GPU."""
        return self.weights + self.kv_cache + self.activations + self.vae + self.text_encoder + self.overhead

    def breakdown(self) -> str:
        parts = [("model", self.weights), ("KV cache", self.kv_cache), ("activations", self.activations),
                 ("VAE", self.vae), ("text encoder", self.text_encoder), ("CUDA + slack", self.overhead)]
        per = " per GPU" if self.gpus > 1 else ""
        return f"~{gib(self.total)}{per}: " + ", ".join(f"{name} {gib(b)}" for name, b in parts if b)


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GB" if n >= 0.095 * GiB else f"{n / 2**20:.0f} MB"


def estimate_vram(model: str | ModelConfig = "wan2.1-1.3b", *, size: tuple[int, int] = (480, 832),
                  dtype: str = "bfloat16", steps: int = 2, batch: bool = True, cache: CacheConfig | None = None,
                  gpus: int = 1, text_on_gpu: bool = False, vae_base_dim: int = 96) -> VramEstimate:
    """Estimate the memory of the fullest GPU for one stream (see the module docstring)."""
    cfg = PRESETS[model] if isinstance(model, str) else model
    cache = cache or CacheConfig()
    b = DTYPE_BYTES.get(dtype, 2)
    h, w = size
    f = 8 * cfg.patch_size[1]
    tokens = (h // f) * (w // f)  # tokens per latent frame
    slots = steps if batch else 1
    n = max(1, gpus)
    share = math.ceil(cfg.num_layers / n) / cfg.num_layers  # the biggest rank's slice of the blocks

    weights = int(dit_params(cfg) * b * share)
    kv = cfg.num_layers * 2 * slots * cache.cache_frames * tokens * cfg.dim * b
    kv += cfg.num_layers * 2 * slots * cfg.text_len * cfg.dim * b
    kv = int(kv * share)
    chunk_tokens = slots * cache.first_chunk_frames * tokens  # the first chunk is the widest
    ffn = chunk_tokens * (3 * cfg.ffn_dim + 8 * cfg.dim) * b
    scores = slots * cfg.num_heads * (cache.first_chunk_frames * tokens) * (cache.cache_frames * tokens) * b
    activations = ffn + scores
    vae_params = VAE_PARAMS_WAN21 * (vae_base_dim / 96) ** 2
    vae_b = 4 if dtype in ("float16", "fp16") else b  # the VAE runs fp16 models in fp32
    vae = int(vae_params * vae_b + 5 * h * w * vae_base_dim * vae_b * 4)
    text = int(UMT5_XXL_PARAMS * b) if text_on_gpu else 0
    base = weights + kv + activations + vae + text
    return VramEstimate(weights, kv, activations, vae, text, int(CUDA_CONTEXT + SLACK * base), gpus=n)


def check_fit(est: VramEstimate, capacity: int | None) -> tuple[str, str]:
    """("ok" | "tight" | "no" | "unknown", one line for the user)."""
    if not capacity:
        return "unknown", f"needs {est.breakdown()}"
    need, have = est.total, capacity
    if need > have:
        return "no", (f"will not fit: needs ~{gib(need)}, the GPU has {gib(have)}. Lower the resolution, use fewer "
                      "steps, turn Stream-Batch off, or use more GPUs")
    if need > 0.85 * have:
        return "tight", f"tight: needs ~{gib(need)} of {gib(have)}; close other GPU apps (OBS, games, browsers)"
    return "ok", f"fits: needs ~{gib(need)} of {gib(have)}"
