"""How much memory a stream needs, before anything is loaded: the one estimator behind the app's memory warning,
`sdv2 doctor`'s VRAM advice and the roofline tool (bench/roofline.py).

What one device holds (`device_memory`), in bytes:
    dit           the DiT parameters on the device (embeddings, its blocks, the head) in the model dtype with the
                  fp32 islands, counted on the meta device from engine/model.py
    text_encoder  umT5 (`t5_encoder_params` of its architecture) when it runs on this device; bf16 on a CPU
    vae           the VAE parameters, in the model dtype, where it encodes or decodes
    kv_cache      `KVCache.buffer_bytes`: per block and Stream-Batch slot the self-attention K/V of cache_frames x
                  tokens per frame and the prompt's cross-attention K/V
    vae_state     the streaming VAE's causal-conv context (vae.CausalCache in steady state), per pixel in
                  elements: 14.5625 x base_dim + 6 in the encoder, 24.625 x base_dim + 0.5 in the decoder (the
                  last 1-2 input frames of every causal conv, level by level)
    activations   temporaries of the larger of one DiT forward and one VAE call, x 1.15 for allocator slack.
                  DiT, per token of the widest chunk (first_chunk_frames x tokens per frame x micro-batch):
                  1.5 x ffn_dim + 6 x dim elements and 5 x dim bytes of fp32 temporaries. VAE, per pixel:
                  22 x base_dim elements (32 x base_dim in half precision: its RMSNorms compute in fp32)
    reserve       CUDA context and cuBLAS/cuDNN workspaces: 1 GiB on a GPU, nothing on the CPU

The activation coefficients are measured by counting the live tensors of the eager modules on the meta device
(bench/roofline.py's tracer): the VAE's hold at every size that is a multiple of 8, the DiT's within 10% for the
tiny, small, 1.3B and 14B presets in float32 and bfloat16; tests/test_memory.py checks the whole estimate against
the real allocation of the tiny and small models on the CPU. Attention counts as one fused kernel (flash or
memory-efficient on CUDA, the flash kernel on the CPU): its scores never reach memory. Not counted: umT5's
activations (one prompt at a time), frame queues (a few MB), TAEHV (smaller than the decoder it replaces).

`estimate` applies this to the engine's layout: one device holds everything; with N pipeline ranks rank 0 holds the
embeddings, the first ceil(layers / N) blocks, umT5 when it is on the GPU and the VAE (it encodes), the last rank
the head, its blocks and the VAE (it decodes), and every job between ranks is a batch-1 micro-batch.
`for_settings` is the one mapping from the app's engine settings to `estimate` (the Engine tab and `doctor` use it);
`reference` is the default download at its trained size (what `doctor` and the first-run dialog quote);
`check_fit` turns an estimate and a device's capacity into the app's warning.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch
from sdv2_studio.engine.config import CacheConfig, ModelConfig, get_preset
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.kv_cache import KVCache
from sdv2_studio.engine.model import CausalWanModel, cast_model
from sdv2_studio.engine.models import DOWNLOAD_PRESET, REAL_SIZE, UMT5_XXL
from sdv2_studio.engine.vae import WanVAE, get_vae_preset

GiB = 1024**3
RESERVE = GiB  # CUDA context + library workspaces, per GPU
SLACK = 1.15  # the caching allocator's fragmentation on transient tensors
VAE_STATE = {"encode": (14.5625, 6.0), "decode": (24.625, 0.5)}  # elements per pixel: (x base_dim, + constant)
VAE_WORK = {False: 22.0, True: 32.0}  # transient elements per pixel x base_dim; True: half precision
LABELS = {"dit": "DiT", "text_encoder": "text encoder", "vae": "VAE", "kv_cache": "KV cache",
          "vae_state": "VAE state", "activations": "activations", "reserve": "CUDA reserve"}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one device needs, by item (see the module docstring); `ranks`: the pipeline ranks the stream is split
    over (an `estimate` is the fullest rank's share)."""

    dit: int = 0
    text_encoder: int = 0
    vae: int = 0
    kv_cache: int = 0
    vae_state: int = 0
    activations: int = 0
    reserve: int = 0
    ranks: int = 1

    def items(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in LABELS}

    @property
    def total(self) -> int:
        return sum(self.items().values())

    def breakdown(self) -> str:
        per = " per GPU" if self.ranks > 1 else ""
        return f"~{gib(self.total)}{per}: " + ", ".join(f"{LABELS[k]} {gib(v)}" for k, v in self.items().items() if v)


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GB" if n >= 0.095 * GiB else f"{n / 2**20:.0f} MB"


def t5_encoder_params(arch: Mapping) -> int:
    """Parameters of a (u)mT5 encoder from its config.json fields: shared embedding, then per layer the attention
    projections, the relative-position bias (umT5 has one per layer), two norms and the (gated) FFN."""
    d, inner, ff = arch["d_model"], arch["num_heads"] * arch["d_kv"], arch["d_ff"]
    ffn = (3 if str(arch.get("feed_forward_proj", "relu")).startswith("gated") else 2) * d * ff
    layer = 4 * d * inner + arch["relative_attention_num_buckets"] * arch["num_heads"] + 2 * d + ffn
    return arch["vocab_size"] * d + arch["num_layers"] * layer + d


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
    if name not in ("bfloat16", "float16", "float32"):
        raise EngineError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    return getattr(torch, name)


@functools.cache
def dit_bytes(cfg: ModelConfig, dtype: torch.dtype) -> tuple[int, int, int]:
    """(embeddings, one block, head) parameter bytes of the DiT cast to `dtype` (fp32 islands kept)."""
    with torch.device("meta"):
        m = cast_model(CausalWanModel(cfg.replace(num_layers=1)), dtype)

    def size(module: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    return size(m) - size(m.blocks) - size(m.head), size(m.blocks), size(m.head)


@functools.cache
def vae_params(preset: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in WanVAE(get_vae_preset(preset)).parameters())


def frame_tokens(cfg: ModelConfig, size: tuple[int, int]) -> int:
    """DiT tokens per latent frame at pixel size (h, w): the VAE's 8x, then the patch."""
    return (size[0] // (8 * cfg.patch_size[1])) * (size[1] // (8 * cfg.patch_size[2]))


def dit_work_bytes(cfg: ModelConfig, tokens: int, dtype: str | torch.dtype) -> int:
    """Temporaries of one DiT forward over `tokens` tokens (all samples of the batch together); 7 x dim includes the
    fused q/k/v GEMM's [N, 3C] output, alive while q and k are normed."""
    return int(tokens * ((1.5 * cfg.ffn_dim + 7 * cfg.dim) * as_dtype(dtype).itemsize + 5 * cfg.dim))


def vae_state_bytes(vae: str, size: tuple[int, int], dtype: str | torch.dtype, *, encode: bool = True,
                    decode: bool = True) -> int:
    """The streaming encoder's and/or decoder's causal-conv context at pixel size (h, w)."""
    base_dim, kinds = get_vae_preset(vae).base_dim, [k for k, on in (("encode", encode), ("decode", decode)) if on]
    per_pixel = sum(k * base_dim + c for k, c in (VAE_STATE[kind] for kind in kinds))
    return int(size[0] * size[1] * per_pixel * as_dtype(dtype).itemsize)


def vae_work_bytes(vae: str, size: tuple[int, int], dtype: str | torch.dtype) -> int:
    """Temporaries of one streaming VAE call (encode or decode: the same at full resolution) at (h, w)."""
    b = as_dtype(dtype).itemsize
    return int(size[0] * size[1] * get_vae_preset(vae).base_dim * VAE_WORK[b == 2] * b)


def device_memory(cfg: ModelConfig, size: tuple[int, int], *, dtype: str | torch.dtype, slots: int, blocks: int,
                  micro_batch: int | None = None, embed: bool = True, head: bool = True, encode: bool = True,
                  decode: bool = True, text: Mapping | None = None, vae: str = "wan2.1",
                  cache: CacheConfig = CacheConfig(), gpu: bool = True,
                  text_dtype: str | torch.dtype | None = None) -> MemoryEstimate:
    """What one device holds: `blocks` DiT blocks with their KV cache for `slots` Stream-Batch slots, the embeddings
    (`embed`) and the head (`head`), the VAE when it encodes or decodes here, and umT5 of architecture `text` when
    it runs here, in `text_dtype` (default: `dtype` on a GPU, bf16 on a CPU; `ResolvedModel.text_dtype_cpu`).
    `micro_batch`: samples per DiT forward (default `slots`; 1 between pipeline ranks)."""
    dt = as_dtype(dtype)
    text_dt = as_dtype(text_dtype) if text_dtype is not None else (dt if gpu else torch.bfloat16)
    emb_b, blk_b, head_b = dit_bytes(cfg, dt)
    tokens = frame_tokens(cfg, size)
    widest = max(cache.first_chunk_frames, cache.chunk_frames) * tokens * (micro_batch or slots)
    vae_here = encode or decode
    work = max(dit_work_bytes(cfg, widest, dt) if blocks else 0, vae_work_bytes(vae, size, dt) if vae_here else 0)
    return MemoryEstimate(
        dit=blk_b * blocks + (emb_b if embed else 0) + (head_b if head else 0),
        text_encoder=t5_encoder_params(text) * text_dt.itemsize if text is not None else 0,
        vae=vae_params(vae) * dt.itemsize if vae_here else 0,
        kv_cache=KVCache.buffer_bytes(cfg, cache, slots, tokens, blocks, dt),
        vae_state=vae_state_bytes(vae, size, dt, encode=encode, decode=decode),
        activations=int(SLACK * work),
        reserve=RESERVE if gpu else 0)


def estimate(cfg: ModelConfig, size: tuple[int, int], *, dtype: str | torch.dtype = "bfloat16", steps: int = 2,
             batch: bool = True, ranks: int = 1, gpu: bool = True, text_here: bool = False,
             text: Mapping = UMT5_XXL, vae: str = "wan2.1", cache: CacheConfig = CacheConfig(),
             text_dtype: str | torch.dtype | None = None) -> MemoryEstimate:
    """The fullest device of a stream of model `cfg` at (h, w) `size` with `steps` denoising steps (one slot each
    with Stream-Batch), split over `ranks` pipeline ranks (GPUs when `gpu`), umT5 (architecture `text`) on the
    first device when `text_here`, the VAE preset `vae` (see the module docstring for the layout)."""
    if not 1 <= ranks <= cfg.num_layers:
        raise EngineError(f"cannot split {cfg.num_layers} blocks over {ranks} ranks; use 1 to {cfg.num_layers}")
    share = dict(dtype=dtype, slots=steps if batch else 1, vae=vae, cache=cache, gpu=gpu, text_dtype=text_dtype)
    here = text if text_here else None
    if ranks == 1:
        return device_memory(cfg, size, blocks=cfg.num_layers, text=here, **share)
    first = device_memory(cfg, size, blocks=math.ceil(cfg.num_layers / ranks), micro_batch=1, head=False,
                          decode=False, text=here, **share)
    last = device_memory(cfg, size, blocks=cfg.num_layers // ranks, micro_batch=1, embed=False, encode=False,
                         **share)
    return replace(max(first, last, key=lambda m: m.total), ranks=ranks)


def for_settings(model, size: tuple[int, int], *, gpu: bool, dtype: str = "auto", steps: int = 2,
                 batch: bool = True, gpus: int = 1, text_on_gpu: bool = False) -> MemoryEstimate:
    """The estimate for a stream of the resolved model `model` (engine.models.ResolvedModel: the model that will
    actually run, the tiny one for "auto" with nothing downloaded) as the app's Engine tab and `sdv2 doctor` set it
    up: on a GPU when `gpu` (split over `gpus` pipeline ranks), else the CPU with umT5 beside the DiT; `dtype`
    "auto" is bfloat16 on a GPU and float32 on the CPU."""
    dt = dtype if dtype != "auto" else ("bfloat16" if gpu else "float32")
    return estimate(model.config, size, dtype=dt, steps=steps, batch=batch, ranks=gpus if gpu else 1, gpu=gpu,
                    text_here=text_on_gpu or not gpu, text=model.text_config, vae=model.vae,
                    text_dtype=None if gpu else model.text_dtype_cpu)


def reference(steps: int = 2, batch: bool = True, size: tuple[int, int] = REAL_SIZE) -> MemoryEstimate:
    """One GPU streaming the default download (StreamDiffusionV2 1.3B) in bfloat16 with umT5 on the CPU, by default
    at the size it was trained at."""
    return estimate(get_preset(DOWNLOAD_PRESET), size, dtype="bfloat16", steps=steps, batch=batch)


def available_host_memory() -> int | None:
    """Bytes of RAM the OS can give this process now without swapping (Linux MemAvailable; elsewhere the free
    physical pages), None when the OS does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fit(est: MemoryEstimate, capacity: int | None) -> tuple[str, str]:
    """("ok" | "tight" | "no" | "unknown", one line for the user)."""
    if not capacity:
        return "unknown", f"needs {est.breakdown()}"
    need, have = est.total, capacity
    if need > have:
        return "no", (f"will not fit: needs ~{gib(need)}, the device has {gib(have)}. Lower the resolution, use "
                      "fewer steps, turn Stream-Batch off, or use more GPUs")
    if need > 0.85 * have:
        return "tight", f"tight: needs ~{gib(need)} of {gib(have)}; close other GPU apps (OBS, games, browsers)"
    return "ok", f"fits: needs ~{gib(need)} of {gib(have)}"
