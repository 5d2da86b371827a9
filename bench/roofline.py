"""Roofline cost model: predicted per-chunk time, FPS, time to first frame and VRAM for StreamDiffusionV2.

`sdv2 bench roofline` prints it beside the paper's figures (arXiv 2511.07399, reference notes section 9) so users
can size hardware: the 1.3B and 14B presets at 480x832 and 512x512, 1-4 denoising steps, Stream-Batch or not,
on H100 SXM and RTX 4090, over 1-4 GPUs.

Work per chunk (4 pixel frames -> 1 latent frame -> L = (H/16)(W/16) tokens; 6-frame KV cache):
  * DiT FLOPs: `flops.forward_flops` (bench/flops.py) per slot forward (matmuls + attention; verified against
    torch's FlopCounterMode in tests/test_flops.py and here by tracing).
  * DiT bytes: weights (read once per forward, whatever the batch), per slot the KV-cache reads (2 x layers x
    6L x dim x 2 bytes), the new K/V writes, the prompt's cross K/V, the GEMM inputs/outputs, and the memory-bound
    elementwise traffic of our eager implementation (norms and modulation in fp32, RoPE, gates, GELU, casts).
    The activation terms are not guessed: they are COUNTED by running the real `CausalWanModel` (2 blocks of the
    real width, steady state with a full cache) on the meta device under a dispatch mode that adds up the bytes
    of every kernel's inputs and outputs (views are free; weights are told apart by storage).
  * VAE encode (4 frames -> 1 latent) and decode (1 latent -> 4 frames): FLOPs counted by running the real
    `WanVAE(get_vae_preset("wan2.1"))` on the meta device under `FlopCounterMode` at the target resolution (meta
    tensors: no compute, no memory), with the same byte counter. The streaming cache works on meta, so the steady
    state is counted directly (a first call of 5 frames / 2 latents, then the counted call); tests check that it
    equals the difference of whole-clip encodes of 1+8 and 1+4 frames. Counts are cached per process (the whole
    set of traces takes ~4 s on 2 CPU cores).
  * Attention (`F.scaled_dot_product_attention`) is intercepted during tracing: on a GPU it is one fused kernel
    (flash / memory-efficient), so it counts 4*B*H*Nq*Nk*D FLOPs and the bytes of q, k, v and the output, not the
    math decomposition meta would run. `F.rms_norm` (the DiT's q/k norms) likewise counts as CUDA's fused kernel.
    The VAE's own RMSNorm is unfused eager code in fp32 and is counted op by op, as it runs.

Time per kernel class (eager PyTorch runs kernels one after another, so the classes add up):
  t_gpu = max(F / (peak_bf16_dense * eta_c), B_gemm / (HBM * eta_mem)) + B_elementwise / (HBM * eta_mem)
  t     = max(t_gpu, host), host = kernels x launch cost (eager, no CUDA graphs: the CPU can be the limit)
eta_c is `eta_dit` for the DiT's GEMM/attention mix and `eta_vae` for the VAE's 3D convs. See `Efficiency`.
A prediction's `bound` names what limits the chunk rate: compute, memory, host (kernel launches), comm (a link)
or bubble (the step dependency below).

Schemes:
  * 1 GPU: Stream-Batch = one DiT forward with batch n (n = steps) per chunk (weights read once, FLOPs x n);
    no-batch = n forwards of batch 1. Plus VAE encode and decode of the chunk.
  * "ours" (engine/parallel.py): every Stream-Batch slot is a micro-batch (batch 1) flowing through N ranks; rank 0
    encodes, the last rank decodes; blocks are rebalanced with the engine's own `balanced_split`. A rank's stage
    time per chunk = its work (n x its blocks + its VAE part), and each link carries n jobs ([1, L, dim] bf16 +
    e0/e/x_t) per chunk, overlapped with compute (isend). The step-dependency rule: job (k, j) needs job
    (k-1, j-1) back at rank 0, so per chunk T >= ((n-1) R + s_0 + enc) / n with R the round trip of one job;
    this binds (a "bubble") unless n = 1 or n + 1 >= N.
  * "upstream" (the paper's code, for comparison): each rank runs all n slots as one batch-n forward over its
    blocks, N calls circulate (stale slot inputs, so no dependency bubble), every rank holds all weights and T5.
Time to first frame: the first chunk (5 frames -> 2 latents) through all steps one after another (the cache is
empty: attention over 2 frames), then its decode; on N GPUs every step is a round trip through the ring. The
capture wait for those frames is added for a given source fps (the paper's TTFF includes it: 0.47 s at 16 fps,
0.37 s at 30 fps). Text encoding (umT5, once per prompt; on the CPU by default) is excluded.

Memory per GPU (`memory_per_rank`) is the engine's own estimate (engine/memory.py: weights, umT5 if kept on the
GPU, KV cache x slots, the VAE's causal-conv state, activations, the CUDA reserve) for each rank's share. The
traces here are what its activation and state coefficients were measured with (tests/test_roofline.py checks that
they still agree): a trace's `peak_bytes` is the peak of the live tensors, the VAE's state included.

Not modelled: frame upload/download and colour conversion (< 1 ms), the motion controller and scheduler step
(elementwise on a 16 x h x w latent), clock boost/throttling, NCCL protocol details, kernel-level overlap.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sdv2_studio.engine.config import MAX_STEPS, CacheConfig, ModelConfig, get_preset
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.memory import RESERVE, SLACK, GiB, MemoryEstimate, device_memory, frame_tokens
from sdv2_studio.engine.models import UMT5_XXL
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from .flops import forward_flops

# ------------------------------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    bf16_flops: float  # dense bf16 tensor-core peak, FLOP/s (no 2:4 sparsity)
    hbm_bw: float  # bytes/s
    vram_gb: float  # GB (1e9 bytes), as sold
    link: str
    link_bw: float  # bytes/s per direction between two GPUs (what one pipeline hop can use)
    link_latency_s: float  # per message
    source: str


GPUS: dict[str, GPU] = {
    # NVIDIA H100 datasheet (SXM5): 1,979 TFLOP/s bf16 is the 2:4-sparse figure; dense is half (989.4).
    # HBM3 3.35 TB/s, 80 GB. NVLink 4: 900 GB/s bidirectional total = 450 GB/s per direction.
    "h100": GPU("h100", "H100 SXM", 989.4e12, 3.35e12, 80.0, "NVLink 4", 450e9, 10e-6,
                "H100 datasheet: 1979 TFLOP/s bf16 is with sparsity, dense 989.4; 3.35 TB/s; NVLink 900 GB/s bidi"),
    # NVIDIA Ada whitepaper (appendix table for the RTX 4090): peak BF16 tensor TFLOPS with FP32 accumulate
    # 165.2 dense / 330.4 sparse (GeForce halves the fp32-accumulate rate; fp16-accumulate would be 330.3, but
    # PyTorch's bf16 GEMMs accumulate in fp32). GDDR6X 1,008 GB/s, 24 GB. No NVLink and no P2P on GeForce:
    # PCIe 4.0 x16 is 31.5 GB/s raw per direction, ~25 GB/s in practice (staged through host memory by NCCL).
    "4090": GPU("4090", "RTX 4090", 165.2e12, 1.008e12, 24.0, "PCIe 4.0 x16", 25e9, 30e-6,
                "Ada whitepaper: bf16 tensor 165.2 dense (330.4 sparse) with fp32 accumulate; 1008 GB/s; PCIe 4.0"),
}


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak a well-written eager kernel reaches. Chosen from general knowledge, NOT fitted to the
    paper; `report()` prints them and the ratios show how far the paper's code is from this model."""

    # DiT GEMMs + attention: cuBLAS bf16 reaches ~70-80% of dense peak on large square GEMMs, but a chunk is only
    # 1,024-1,560 tokens x 1,536-5,120 wide (tile quantisation, short K loops for the 1.3B) and FlashAttention-2/3
    # forward runs at ~35-60% of peak on H100 with head_dim 128 and a 6-frame KV: ~0.55 overall.
    eta_dit: float = 0.55
    # VAE 3D convs: implicit-GEMM convolutions with 96-384 channels (narrow N tiles), 3x3x3 kernels over only 1-4
    # frames with halo padding, and stride-2 resamplers; cuDNN typically reaches 25-40% of peak on such shapes.
    eta_vae: float = 0.30
    # Streaming kernels (elementwise, norms, copies, weight and KV reads) reach ~80% of HBM bandwidth.
    eta_mem: float = 0.80
    # NCCL point-to-point send/recv reaches ~80% of the link rate for MB-sized messages.
    eta_link: float = 0.80
    # Host cost of one eager aten op that launches a kernel (Python + dispatcher + cudaLaunchKernel): ~5 us on a
    # modern server CPU; a view op only runs the dispatcher (~1 us). Our engine uses no CUDA graphs.
    host_op_s: float = 5e-6
    host_view_s: float = 1e-6


DEFAULT_EFF = Efficiency()

MODELS = {"1.3b": "wan2.1-1.3b", "14b": "wan2.1-14b"}
SIZES = {"480p": (480, 832), "512": (512, 512)}  # (H, W); paper names: 480P (832x480) and 512x512
CHUNK_FRAMES = 4  # pixel frames per chunk (one latent frame)
FIRST_FRAMES = 5  # the first chunk: 5 pixel frames -> 2 latent frames


def resolve_model(model: str) -> ModelConfig:
    return get_preset(MODELS.get(model.lower(), model))


def resolve_size(size) -> tuple[int, int]:
    if isinstance(size, tuple):
        return size
    s = str(size).lower()
    if s in SIZES:
        return SIZES[s]
    try:
        w, h = (int(v) for v in s.split("x"))
    except ValueError:
        raise EngineError(f"bad size {size!r}: use 480p, 512 or WIDTHxHEIGHT") from None
    return h, w


def resolve_gpu(gpu: str | GPU) -> GPU:
    if isinstance(gpu, GPU):
        return gpu
    key = gpu.lower().replace("rtx", "").replace("-sxm", "").replace("_", "").strip()
    if key not in GPUS:
        raise EngineError(f"unknown GPU {gpu!r}; choose one of: {', '.join(GPUS)}")
    return GPUS[key]


# --------------------------------------------------------------------------------------------- work records


@dataclass(frozen=True)
class Work:
    """What a piece of work costs, independent of the hardware."""

    flops: float = 0.0  # tensor-core FLOPs (matmuls, convs, attention)
    weight_bytes: float = 0.0  # parameters read (once per forward, shared by the batch)
    io_bytes: float = 0.0  # other bytes of the GEMM/conv/attention kernels (activations, KV cache)
    elem_bytes: float = 0.0  # bytes of memory-bound kernels (elementwise, norms, copies)
    ops: float = 0.0  # kernel-launching ops
    views: float = 0.0  # view ops (host only)
    eta: str = "dit"  # which compute efficiency applies: "dit" or "vae"

    def __add__(self, o: Work) -> Work:
        return Work(self.flops + o.flops, self.weight_bytes + o.weight_bytes, self.io_bytes + o.io_bytes,
                    self.elem_bytes + o.elem_bytes, self.ops + o.ops, self.views + o.views, self.eta)

    def times(self, k: float) -> Work:
        """k repetitions (k forwards, or k layers)."""
        return Work(*(getattr(self, f) * k for f in ("flops", "weight_bytes", "io_bytes", "elem_bytes", "ops",
                                                       "views")), self.eta)

    def batched(self, b: int) -> Work:
        """One forward over a batch of b: weights and kernel launches once, everything else x b."""
        return replace(self, flops=self.flops * b, io_bytes=self.io_bytes * b, elem_bytes=self.elem_bytes * b)

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.io_bytes + self.elem_bytes


@dataclass(frozen=True)
class Cost:
    """Seconds of one piece of work on one GPU, split by what limits it."""

    compute_s: float  # GEMM/conv kernels limited by tensor-core FLOP/s
    memory_s: float  # kernels limited by HBM bandwidth (GEMMs that are, plus all elementwise)
    host_s: float  # CPU time to issue the kernels

    @property
    def gpu_s(self) -> float:
        return self.compute_s + self.memory_s

    @property
    def s(self) -> float:
        return max(self.gpu_s, self.host_s)

    @property
    def bound(self) -> str:
        if self.host_s > self.gpu_s:
            return "host"
        return "compute" if self.compute_s >= self.memory_s else "memory"

    def __add__(self, o: Cost) -> Cost:
        return Cost(self.compute_s + o.compute_s, self.memory_s + o.memory_s, self.host_s + o.host_s)


def cost(w: Work, gpu: GPU, eff: Efficiency = DEFAULT_EFF) -> Cost:
    eta = eff.eta_dit if w.eta == "dit" else eff.eta_vae
    t_flops = w.flops / (gpu.bf16_flops * eta)
    t_gemm_mem = (w.weight_bytes + w.io_bytes) / (gpu.hbm_bw * eff.eta_mem)
    t_elem = w.elem_bytes / (gpu.hbm_bw * eff.eta_mem)
    compute = t_flops if t_flops >= t_gemm_mem else 0.0
    memory = (t_gemm_mem if t_gemm_mem > t_flops else 0.0) + t_elem
    return Cost(compute, memory, w.ops * eff.host_op_s + w.views * eff.host_view_s)


# ---------------------------------------------------------------------------------------------- meta tracing

_GEMM = {"mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution", "matmul"}
_FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_local_scalar_dense", "detach",
         "lift_fresh", "alias"}


_SET_OPS = {"copy_", "fill_", "zero_", "scatter_", "index_put_", "masked_fill_", "index_copy_", "set_"}


def _nbytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches for this operand: an expanded (stride-0) view reads only its storage."""
    return min(t.numel(), t.untyped_storage().nbytes() // max(1, t.element_size())) * t.element_size()


class _Trace(TorchDispatchMode):
    """Adds up, per bucket, the bytes every aten op reads and writes, the ops launched and the peak of live
    tensors made during the trace. Views move nothing; weights are told apart by their storage."""

    def __init__(self, weights: set[int], live: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.weights = weights
        self.bucket = "all"
        self.data: dict[str, dict[str, float]] = {}
        self.live: list[tuple[StorageWeakRef, int]] = []
        self.peak = 0
        self._track(list(live))  # tensors made before (a streaming state) count while they are alive

    def _acc(self, key: str, v: float) -> None:
        d = self.data.setdefault(self.bucket, {})
        d[key] = d.get(key, 0.0) + v

    def fused(self, kind: str, inputs: list[torch.Tensor], out: torch.Tensor, flops: float = 0.0) -> torch.Tensor:
        """One fused GPU kernel that meta would decompose: reads its inputs once, writes its output once."""
        self._acc("flops", flops)
        moved = sum(_nbytes(t) for t in inputs) + _nbytes(out)
        self._acc(kind, moved)
        self._acc("ops", 1)
        self._track([out])
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view or name in _FREE:
            self._acc("views", 1)
            return out
        self._acc("ops", 1)
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        weight = 0
        if func._schema.is_mutable and ins:  # in place: read the other inputs, write (and maybe read) a region
            others = ins[1:]
            data = [t for t in others if t.is_floating_point()] or others
            region = max((t.numel() for t in data), default=ins[0].numel()) * ins[0].element_size()
            region = min(region, _nbytes(ins[0]))
            moved = sum(_nbytes(t) for t in others) + region * (1 if name in _SET_OPS else 2)
        else:
            weight = sum(_nbytes(t) for t in ins if t.untyped_storage()._cdata in self.weights)
            moved = sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs) - weight
            self._track(outs)
        if name in _GEMM:
            self._acc("weight_bytes", weight)
            self._acc("io_bytes", moved)
        else:
            self._acc("elem_bytes", moved + weight)
        return out

    def _track(self, outs: list[torch.Tensor]) -> None:
        self.live = [(r, n) for r, n in self.live if not r.expired()]
        for t in outs:
            self.live.append((StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes()))
        self.peak = max(self.peak, sum(n for _, n in self.live))


class _FusedKernels(TorchFunctionMode):
    """Functions that run as one kernel on a GPU but decompose on meta: attention (flash / memory-efficient:
    4*B*H*Nq*Nk*D FLOPs, q, k, v read and o written once; the scores never reach memory) and RMSNorm (CUDA's
    fused rms_norm)."""

    def __init__(self, trace: _Trace):
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            *lead, nq, d = q.shape
            out = torch.empty(*lead, nq, v.shape[-1], dtype=q.dtype, device=q.device)
            return self.trace.fused("io_bytes", [q, k, v], out, 4 * math.prod(lead) * nq * k.shape[-2] * d)
        if func is F.rms_norm:
            x = args[0]
            w = args[2] if len(args) > 2 else kwargs.get("weight")
            return self.trace.fused("elem_bytes", [x] + ([w] if w is not None else []), torch.empty_like(x))
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Traced:
    work: Work  # everything in the traced call
    blocks: Work  # the part inside DiT blocks (per block), else zeros
    counted_flops: float  # what FlopCounterMode saw (matmuls/convs) + the fused-attention FLOPs
    peak_bytes: int  # live tensors at their peak: those made during the call and the state it started with
    state_bytes: int = 0  # persistent streaming state (VAE causal cache)


def _weight_storages(module: nn.Module) -> set[int]:
    return {p.untyped_storage()._cdata for p in module.parameters()}


def _run_traced(module: nn.Module, fn, eta: str, blocks: list[nn.Module] | None = None, live=None) -> Traced:
    """Trace `fn()`; `live()` gives the tensors alive before it (a streaming state: no reference is kept to them)."""
    tr = _Trace(_weight_storages(module), tuple(live()) if live else ())
    hooks = []
    for b in blocks or []:
        hooks.append(b.register_forward_pre_hook(lambda *_: setattr(tr, "bucket", "block")))
        hooks.append(b.register_forward_hook(lambda *_: setattr(tr, "bucket", "all")))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc, tr, _FusedKernels(tr):
            fn()
    finally:
        for h in hooks:
            h.remove()
    keys = ("flops", "weight_bytes", "io_bytes", "elem_bytes", "ops", "views")
    per = {b: Work(**{k: d.get(k, 0.0) for k in keys}, eta=eta) for b, d in tr.data.items()}
    blk = per.get("block", Work(eta=eta))
    whole = per.get("all", Work(eta=eta)) + blk
    attn = whole.flops  # the fused attention FLOPs (FlopCounterMode never saw those kernels)
    counted = fc.get_total_flops() + attn
    whole = replace(whole, flops=counted)
    n_blocks = max(1, len(blocks or []))
    blk = replace(blk, flops=0.0).times(1 / n_blocks)  # FLOPs of blocks come from flops.py
    return Traced(whole, blk, counted, tr.peak)


# ------------------------------------------------------------------------------------------------------- VAE


@functools.cache
def vae_trace(size: tuple[int, int], kind: str, first: bool = False, preset: str = "wan2.1") -> Traced:
    """Count one streaming VAE call at `size` (H, W) on the meta device.

    kind "encode": steady state 4 frames -> 1 latent (first=True: the first call, 5 frames -> 2 latents);
    kind "decode": steady state 1 latent -> 4 frames (first=True: 2 latents -> 5 frames).
    """
    from sdv2_studio.engine.vae import CausalCache, WanVAE, get_vae_preset

    H, W = size
    with torch.device("meta"):
        vae = WanVAE(get_vae_preset(preset)).to(torch.bfloat16).eval()
    cache = CausalCache()
    meta = dict(device="meta", dtype=torch.bfloat16)
    if kind == "encode":
        first_in, steady_in, call = (torch.empty(1, 3, FIRST_FRAMES, H, W, **meta),
                                     torch.empty(1, 3, CHUNK_FRAMES, H, W, **meta), vae.encode_stream)
    elif kind == "decode":
        first_in, steady_in, call = (torch.empty(1, 16, 2, H // 8, W // 8, **meta),
                                     torch.empty(1, 16, 1, H // 8, W // 8, **meta), vae.decode_stream)
    else:
        raise ValueError(f"kind must be 'encode' or 'decode', not {kind!r}")
    if first:
        return _run_traced(vae, lambda: call(first_in, cache), "vae")
    with torch.no_grad():
        call(first_in, cache)  # the stream's first call fills the causal cache
    t = _run_traced(vae, lambda: call(steady_in, cache), "vae", live=cache.frames.values)
    state = sum(v.numel() * v.element_size() for v in cache.frames.values())
    return replace(t, state_bytes=state)


# ------------------------------------------------------------------------------------------------------- DiT


@functools.cache
def dit_trace(model: str, size: tuple[int, int], first: bool = False, blocks: int = 2) -> Traced:
    """Count one streaming DiT forward (batch 1) of the real model with `blocks` blocks of the preset's width on
    the meta device: the steady state (1 latent frame against a full 6-frame cache) or the first chunk (2 frames,
    empty cache). Returns per-block bytes/ops (`.blocks`) and the whole call."""
    from sdv2_studio.engine.kv_cache import KVCache, StreamClock
    from sdv2_studio.engine.model import CausalWanModel, cast_model

    cfg = resolve_model(model).replace(num_layers=blocks)
    cc = CacheConfig()
    L = frame_tokens(cfg, size)
    h, w = size[0] // 8, size[1] // 8
    with torch.device("meta"):
        m = cast_model(CausalWanModel(cfg), torch.bfloat16).eval()
    cache = KVCache(cfg, cc, 1, L, device="meta", dtype=torch.bfloat16)
    clock = StreamClock(cc)

    def chunk(frames: int):
        x = torch.empty(1, cfg.in_dim, frames, h, w, device="meta", dtype=torch.bfloat16)
        t = torch.full((1, frames), 700.0, device="meta")
        return lambda: m.forward_chunk(x, t, cache, [clock.next(frames)])

    blocks_list = list(m.blocks)
    if first:
        return _run_traced(m, chunk(cc.first_chunk_frames), "dit", blocks_list)
    with torch.no_grad(), _FusedKernels(_Trace(set())):  # fill the cache (fused attention: cheap on meta)
        chunk(cc.first_chunk_frames)()
        while clock.next_frame < cc.cache_frames:
            chunk(cc.chunk_frames)()
    return _run_traced(m, chunk(cc.chunk_frames), "dit", blocks_list)


def _layer_flops(cfg: ModelConfig, L: int, frames: int, kv_tokens: int) -> tuple[float, float]:
    """(per block, outside blocks) FLOPs of one batch-1 forward, from flops.py."""
    one = forward_flops(cfg.replace(num_layers=1), frames * L, kv_tokens, frames=frames).total
    two = forward_flops(cfg.replace(num_layers=2), frames * L, kv_tokens, frames=frames).total
    return two - one, one - (two - one)


@functools.cache
def dit_param_bytes(model: str) -> tuple[int, int]:
    """(bytes of one block, bytes outside the blocks) with the engine's dtypes (bf16, fp32 islands)."""
    from sdv2_studio.engine.model import CausalWanModel, cast_model

    cfg = resolve_model(model).replace(num_layers=1)
    with torch.device("meta"):
        m = cast_model(CausalWanModel(cfg), torch.bfloat16)
    blk = sum(p.numel() * p.element_size() for p in m.blocks.parameters())
    return blk, sum(p.numel() * p.element_size() for p in m.parameters()) - blk


@dataclass(frozen=True)
class DiTWork:
    """One batch-1 forward split into what one block costs and what runs outside the blocks."""

    block: Work
    outside: Work  # patch/time embedding (rank 0) and head + unpatchify (last rank), summed
    peak_bytes: int  # activations of one forward (batch 1)

    def forward(self, layers: int, batch: int = 1, outside: bool = True) -> Work:
        w = self.block.times(layers) + (self.outside if outside else Work())
        return w.batched(batch)


@functools.cache
def dit_work(model: str, size: tuple[int, int], first: bool = False) -> DiTWork:
    cfg = resolve_model(model)
    cc = CacheConfig()
    L = frame_tokens(cfg, size)
    frames = cc.first_chunk_frames if first else cc.chunk_frames
    kv = (cc.first_chunk_frames if first else cc.cache_frames) * L
    per_block_flops, outside_flops = _layer_flops(cfg, L, frames, kv)
    tr = dit_trace(model, size, first)
    # weights read per forward come from the trace: every block weight except the prompt's cross-attention k/v
    # projections (their output is cached), and outside the blocks no text embedding
    block = replace(tr.blocks, flops=per_block_flops)
    outside = tr.work + tr.blocks.times(-2)  # the trace ran 2 blocks
    outside = replace(outside, flops=outside_flops)
    return DiTWork(block, outside, tr.peak_bytes)


def dit_forward_flops(model: str, size, batch: int = 1) -> int:
    """flops.py for one steady-state forward over the batch (what the model uses)."""
    cfg = resolve_model(model)
    L = frame_tokens(cfg, resolve_size(size))
    return forward_flops(cfg, L, CacheConfig().cache_frames * L, batch=batch).total


# ------------------------------------------------------------------------------------------------ prediction


@dataclass
class Prediction:
    model: str
    size: str
    steps: int
    gpu: str
    ngpus: int
    scheme: str  # "single" (1 GPU), "ours" or "upstream"
    batch: bool  # Stream-Batch (else the steps run one after another)
    fps: float
    chunk_ms: float
    ttff_s: float  # processing only (first chunk through all steps + decode); add the capture wait, see ttff_at
    stage_ms: list[float]  # per rank, per chunk (busy time)
    bound: str  # compute / memory / host / comm / bubble
    fits: bool
    vram_gb: float  # the most loaded GPU, GB (1e9)
    blocks: list[int] = field(default_factory=list)  # DiT blocks per rank
    detail: dict = field(default_factory=dict)

    def ttff_at(self, source_fps: float) -> float:
        """TTFF including the wait for the first chunk's 5 frames from a live source."""
        return self.ttff_s + (FIRST_FRAMES - 1) / source_fps


def _comm_s(nbytes: float, gpu: GPU, eff: Efficiency, messages: int) -> float:
    return nbytes / (gpu.link_bw * eff.eta_link) + messages * gpu.link_latency_s


def _balance(layers: int, ngpus: int, fixed: list[float], per_block: float) -> list[int]:
    """Blocks per rank, as the engine's rebalancer would settle them (engine.parallel.balanced_split)."""
    from sdv2_studio.engine.parallel import balanced_split, split_blocks

    ranges = split_blocks(layers, ngpus)
    stage = [f + len(r) * per_block for f, r in zip(fixed, ranges)]
    return [len(r) for r in balanced_split(ranges, stage, [per_block] * ngpus)]


def memory_per_rank(model: str, size, slots: int, blocks: list[int], *, scheme: str = "ours",
                    t5_on_gpu: bool = False) -> list[MemoryEstimate]:
    """Bytes each rank needs, by item, from the engine's estimator (engine/memory.py), in bf16. Ours: rank 0 holds
    the embeddings, encodes (the VAE) and runs umT5 when it is on the GPU, the last rank holds the head and decodes,
    and over several ranks every job is a batch-1 micro-batch. Upstream: every rank loads the whole pipeline (all
    DiT weights, the VAE, umT5 when on the GPU) and runs batch-n forwards over its blocks."""
    cfg, hw = resolve_model(model), resolve_size(size)
    N, up = len(blocks), scheme == "upstream"
    out = []
    for r, nb in enumerate(blocks):
        first, last = r == 0, r == N - 1
        m = device_memory(cfg, hw, dtype=torch.bfloat16, slots=slots, blocks=nb,
                          micro_batch=slots if up or N == 1 else 1, embed=first, head=last, encode=first,
                          decode=last, text=UMT5_XXL if t5_on_gpu and (first or up) else None)
        if up:
            whole = device_memory(cfg, hw, dtype=torch.bfloat16, slots=slots, blocks=cfg.num_layers)
            m = replace(m, dit=whole.dit, vae=whole.vae)
        out.append(m)
    return out


def predict(model: str = "1.3b", size="480p", steps: int = 1, gpu: str | GPU = "h100", ngpus: int = 1, *,
            batch: bool = True, scheme: str = "ours", t5_on_gpu: bool | None = None,
            eff: Efficiency = DEFAULT_EFF) -> Prediction:
    """Predict one configuration. scheme: "ours" (engine/parallel.py) or "upstream" (the paper's code); with one
    GPU both are the single-GPU pipeline. batch=False runs the steps one after another (no Stream-Batch, 1 GPU).
    t5_on_gpu: keep umT5-XXL (~11.4 GB) on the GPU as upstream does (default: only for scheme "upstream" on
    several GPUs; our engine keeps it on the CPU)."""
    if not 1 <= steps <= MAX_STEPS:
        raise EngineError(f"steps must be 1-{MAX_STEPS}")
    if scheme not in ("ours", "upstream"):
        raise EngineError("scheme must be 'ours' or 'upstream'")
    g = resolve_gpu(gpu)
    hw = resolve_size(size)
    cfg = resolve_model(model)
    n, N = steps, ngpus
    if not 1 <= N <= cfg.num_layers:
        raise EngineError(f"ngpus must be 1-{cfg.num_layers}")
    d, d0 = dit_work(model, hw), dit_work(model, hw, first=True)
    enc, dec = cost(vae_trace(hw, "encode").work, g, eff), cost(vae_trace(hw, "decode").work, g, eff)
    enc0, dec0 = (cost(vae_trace(hw, "encode", True).work, g, eff),
                  cost(vae_trace(hw, "decode", True).work, g, eff))
    L = frame_tokens(cfg, hw)
    h, w = hw[0] // 8, hw[1] // 8
    job_bytes = L * cfg.dim * 2 + 7 * cfg.dim * 4 + cfg.in_dim * h * w * 2 + 24 * 8  # tokens, e0, e, x_t, header
    result_bytes = cfg.in_dim * h * w * 2 + 24 * 8
    frames_bytes = CHUNK_FRAMES * hw[0] * hw[1] * 3 + 24 * 8
    detail: dict = {"dit_flops_per_slot": dit_forward_flops(model, hw), "tokens_per_frame": L,
                    "vae_encode_flops": vae_trace(hw, "encode").counted_flops,
                    "vae_decode_flops": vae_trace(hw, "decode").counted_flops,
                    "dit_bytes_per_slot_forward": d.forward(cfg.num_layers).bytes,
                    "vae_encode_ms": enc.s * 1e3, "vae_decode_ms": dec.s * 1e3}
    slots = n if batch else 1

    if N == 1:
        dit = cost(d.forward(cfg.num_layers, n), g, eff) if batch else \
            cost(d.forward(cfg.num_layers, 1).times(n), g, eff)
        total = enc + dit + dec
        chunk = total.s
        stage, bound, blocks = [chunk], total.bound, [cfg.num_layers]
        first = cost(d0.forward(cfg.num_layers), g, eff)
        ttff = enc0.s + n * first.s + dec0.s
        detail.update(dit_ms=dit.s * 1e3, dit_bound=dit.bound)
    else:
        blk = cost(d.block, g, eff)
        outside = cost(d.outside, g, eff)
        if scheme == "ours":  # n micro-batches of batch 1 per chunk
            per_block = n * blk.s
            fixed = [0.0] * N
            fixed[0] += enc.s + n * outside.s / 2
            fixed[-1] += dec.s + n * outside.s / 2
            link = [_comm_s(n * job_bytes, g, eff, 5 * n)] * (N - 1)
            link.append(_comm_s((n - 1) * result_bytes + frames_bytes, g, eff, 2 * n))
        else:  # upstream: one batch-n forward per rank per call
            bw = cost(d.block.batched(n), g, eff)
            per_block = bw.s
            fixed = [0.0] * N
            fixed[0] += enc.s + cost(d.outside.batched(n), g, eff).s / 2
            fixed[-1] += dec.s + cost(d.outside.batched(n), g, eff).s / 2
            link = [_comm_s(n * job_bytes, g, eff, 5)] * (N - 1)
            link.append(_comm_s(n * result_bytes + frames_bytes, g, eff, 3))
        blocks = _balance(cfg.num_layers, N, fixed, per_block)
        stage = [f + b * per_block for f, b in zip(fixed, blocks)]
        crit = max(range(N), key=lambda r: stage[r])
        chunk = stage[crit]
        # what limits the critical rank: its VAE part or its blocks
        vae_part = enc if crit == 0 else dec if crit == N - 1 else None
        blocks_s = blocks[crit] * per_block
        bound = vae_part.bound if vae_part is not None and vae_part.s > blocks_s else blk.bound
        detail["critical_rank"] = crit
        if max(link) > chunk:
            chunk, bound = max(link), "comm"
        if scheme == "ours" and not batch:
            # no Stream-Batch: rank 0 waits for every step's result before the next one (engine/parallel.py
            # _denoise_sequential), so a chunk costs n round trips; only the decode overlaps the next chunk
            s_job = [b * blk.s for b in blocks]
            rt = sum(s_job) + outside.s + (N - 1) * _comm_s(job_bytes, g, eff, 5) + _comm_s(result_bytes, g, eff, 2)
            serial = enc.s + n * rt
            detail.update(round_trip_ms=rt * 1e3)
            if serial > chunk:
                chunk, bound = serial, "bubble"
        elif scheme == "ours" and n > 1:
            # step dependency: job (k, j) waits for job (k-1, j-1) to come back; R = one job's round trip
            s_job = [b * blk.s for b in blocks]
            s_job[0] += outside.s / 2
            s_job[-1] += outside.s / 2
            rt = sum(s_job) + (N - 1) * _comm_s(job_bytes, g, eff, 5) + _comm_s(result_bytes, g, eff, 2)
            bubble = ((n - 1) * rt + s_job[0] + enc.s) / n
            detail.update(round_trip_ms=rt * 1e3, bubble_ms=bubble * 1e3)
            if bubble > chunk:
                chunk, bound = bubble, "bubble"
        detail.update(link_ms=[x * 1e3 for x in link], block_ms=blk.s * 1e3, block_bound=blk.bound)
        # TTFF: first chunk, steps one after another, each a trip through the ring
        fb = cost(d0.block, g, eff).s
        fo = cost(d0.outside, g, eff).s
        first_job_bytes = 2 * job_bytes  # two latent frames
        trip = cfg.num_layers * fb + fo + (N - 1) * _comm_s(first_job_bytes, g, eff, 5) \
            + _comm_s(2 * result_bytes, g, eff, 2)
        ttff = enc0.s + n * trip + dec0.s + _comm_s(5 * hw[0] * hw[1] * 3, g, eff, 2)
    fps = CHUNK_FRAMES / chunk
    t5 = (scheme == "upstream" and N > 1) if t5_on_gpu is None else t5_on_gpu
    mem = memory_per_rank(model, hw, slots, blocks, scheme=scheme if N > 1 else "ours", t5_on_gpu=t5)
    worst = max(mem, key=lambda m: m.total)
    detail["memory_gb"] = {k: round(v / 1e9, 2) for k, v in worst.items().items()} | {"total": worst.total / 1e9}
    detail["t5_on_gpu"] = t5
    vram = worst.total
    return Prediction(model=model, size=_size_name(hw), steps=n, gpu=g.key, ngpus=N, scheme=scheme if N > 1 else
                      "single", batch=batch, fps=fps, chunk_ms=chunk * 1e3, ttff_s=ttff,
                      stage_ms=[s * 1e3 for s in stage], bound=bound, fits=vram <= g.vram_gb * 1e9,
                      vram_gb=vram / 1e9, blocks=blocks, detail=detail)


def _size_name(hw: tuple[int, int]) -> str:
    for k, v in SIZES.items():
        if v == hw:
            return k
    return f"{hw[1]}x{hw[0]}"


# ------------------------------------------------------------------------------------------- paper figures


@dataclass(frozen=True)
class PaperFigure:
    model: str  # "1.3b" / "14b"
    size: str  # "480p" / "512"
    gpu: str
    ngpus: int
    steps: int
    fps: float
    batch: bool = True  # Stream-Batch in the paper's run
    note: str = ""


def _series(model, size, gpu, ngpus, values, batch=True, note=""):
    return [PaperFigure(model, size, gpu, ngpus, i + 1, v, batch, note)
            for i, v in enumerate(values) if v is not None]


def paper_figures() -> list[PaperFigure]:
    """The paper's throughput figures (arXiv 2511.07399 v1, bf16, no TensorRT), as read in the reference notes
    (section 9). Where the notes say a series' GPU count is inferred, `note` says so."""
    inferred = "series order inferred in the reference notes"
    return [
        # 1.3B, Fig. 9. One GPU is Stream-Batch on H100; the 4090 runs are without Stream-Batch (memory).
        *_series("1.3b", "480p", "h100", 1, (20.47, 17.97, 15.68, 13.95), note=inferred),
        *_series("1.3b", "480p", "h100", 2, (39.77, 34.67, 30.69, 27.06), note=inferred),
        *_series("1.3b", "480p", "h100", 3, (43.88, 43.79, 41.13, 38.09), note=inferred),
        *_series("1.3b", "480p", "h100", 4, (44.38, 43.41, 43.08, 42.26), note=inferred),
        *_series("1.3b", "512", "h100", 1, (26.21, 24.02, 21.51, 19.43)),
        *_series("1.3b", "512", "h100", 2, (51.76, 46.92, 41.09, 37.49)),
        *_series("1.3b", "512", "h100", 3, (63.45, 62.76, 56.75, 54.09)),
        *_series("1.3b", "512", "h100", 4, (64.52, 63.99, 62.43, 61.57)),
        *_series("1.3b", "480p", "4090", 1, (8.58, 7.37, 6.27, 5.59), batch=False, note=inferred),
        *_series("1.3b", "480p", "4090", 2, (16.59, 14.75, 13.06, 7.76), note="three ~16.6 series; " + inferred),
        *_series("1.3b", "480p", "4090", 3, (16.66, 16.49, 16.17, 15.74), note="three ~16.6 series; " + inferred),
        *_series("1.3b", "480p", "4090", 4, (16.64, 16.42, 15.97, 15.73), note="three ~16.6 series; " + inferred),
        *_series("1.3b", "512", "4090", 1, (12.87, 11.76, 10.42, 7.87), batch=False, note=inferred),
        *_series("1.3b", "512", "4090", 2, (24.68, 22.13, 19.33, 17.98), note=inferred),
        *_series("1.3b", "512", "4090", 3, (25.64, 25.03, 24.58, 24.22), note=inferred),
        *_series("1.3b", "512", "4090", 4, (25.04, 24.77, 24.3, 23.97), note=inferred),
        # Stream-Batch ablation (Fig. 15): 1 H100, 1.3B, without Stream-Batch (1 step: same as with)
        *_series("1.3b", "480p", "h100", 1, (None, 15.50, 12.82, 10.86), batch=False),
        *_series("1.3b", "512", "h100", 1, (None, 19.15, 15.14, 12.43), batch=False),
        # 14B on H100 (NVLink), Fig. 11
        *_series("14b", "480p", "h100", 1, (12.68, 8.64, 6.49, 5.28), note="480p mapping inferred"),
        *_series("14b", "480p", "h100", 2, (25.39, 17.31, 13.23, 10.69), note="480p mapping inferred"),
        *_series("14b", "480p", "h100", 3, (37.55, 25.02, 19.12, 15.42), note="480p mapping inferred"),
        *_series("14b", "480p", "h100", 4, (39.24, 33.36, 25.02, 20.05), note="480p mapping inferred"),
        *_series("14b", "512", "h100", 1, (18.71, 13.01, 10.09, 8.26)),
        *_series("14b", "512", "h100", 2, (37.12, 25.72, 20.11, 16.65)),
        *_series("14b", "512", "h100", 3, (53.84, 37.47, 29.34, 24.35)),
        *_series("14b", "512", "h100", 4, (58.28, 51.09, 38.41, 31.62)),
    ]


# Time to first frame on one H100 (Fig. 10): SDV2 with 2 steps, 1.3B; resolution not stated (480p assumed, the
# default). The figure includes waiting for the first chunk's frames from a source at 16 or 30 fps.
PAPER_TTFF = ({"model": "1.3b", "size": "480p", "gpu": "h100", "ngpus": 1, "steps": 2, "source_fps": 16,
               "ttff_s": 0.47},
              {"model": "1.3b", "size": "480p", "gpu": "h100", "ngpus": 1, "steps": 2, "source_fps": 30,
               "ttff_s": 0.37})


# ------------------------------------------------------------------------------------------------- report


def _grid(eff: Efficiency) -> list[Prediction]:
    out = []
    for model in MODELS:
        for size in SIZES:
            for gpu in GPUS:
                for N in range(1, 5):
                    for n in range(1, 5):
                        out.append(predict(model, size, n, gpu, N, eff=eff))
                        if N == 1:
                            out.append(predict(model, size, n, gpu, N, batch=False, eff=eff))
    return out


def implied_eta_vae(fig: PaperFigure, eff: Efficiency = DEFAULT_EFF) -> float | None:
    """The VAE conv efficiency at which the model would match a paper figure (everything else unchanged), by
    bisection; None when no value in (0.02, 1] does. A diagnostic printed beside the table, never applied."""
    def fps(eta: float) -> float:
        return predict(fig.model, fig.size, fig.steps, fig.gpu, fig.ngpus, batch=fig.batch,
                       eff=replace(eff, eta_vae=eta)).fps

    lo, hi = 0.02, 1.0
    if not fps(lo) <= fig.fps <= fps(hi):
        return None
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fps(mid) < fig.fps else (lo, mid)
    return (lo + hi) / 2


def report(out: str | Path | None = "bench/results/roofline.json", eff: Efficiency = DEFAULT_EFF,
           file=None) -> dict:
    """Print predicted vs paper FPS (ratio = predicted / paper), TTFF, constants; save JSON; return the data."""
    file = file or sys.stdout
    p = functools.partial(print, file=file)
    figs = paper_figures()
    rows: dict[tuple, dict[int, tuple[Prediction, Prediction | None, PaperFigure]]] = {}
    comparisons = []
    for f in figs:
        ours = predict(f.model, f.size, f.steps, f.gpu, f.ngpus, batch=f.batch, eff=eff)
        up = predict(f.model, f.size, f.steps, f.gpu, f.ngpus, batch=f.batch, scheme="upstream", eff=eff) \
            if f.ngpus > 1 else None
        rows.setdefault((f.model, f.size, f.gpu, f.ngpus, f.batch), {})[f.steps] = (ours, up, f)
        comparisons.append({"paper": asdict(f), "predicted": asdict(ours),
                            "predicted_upstream_scheme": asdict(up) if up else None,
                            "ratio": ours.fps / f.fps, "ratio_upstream_scheme": up.fps / f.fps if up else None})

    p("Roofline cost model vs the paper (arXiv 2511.07399, Figs. 9, 11, 15). Cells: predicted / paper fps "
      "(ratio = predicted / paper).")
    p("Predictions are for OUR engine (per-slot micro-batches over N ranks, engine/parallel.py); 'up' = the same "
      "model of the paper's scheme (batch-n forwards per rank).")
    p(f"Constants (not fitted): eta_dit {eff.eta_dit}, eta_vae {eff.eta_vae}, eta_mem {eff.eta_mem}, "
      f"eta_link {eff.eta_link}, host {eff.host_op_s * 1e6:.0f} us/op + {eff.host_view_s * 1e6:.0f} us/view; "
      f"memory (engine/memory.py): reserve {RESERVE / GiB:.0f} GiB + {SLACK}x transient activations.")
    p("GPUs: " + "; ".join(f"{g.name} {g.bf16_flops / 1e12:.1f} TFLOP/s bf16 dense, {g.hbm_bw / 1e12:.2f} TB/s, "
                           f"{g.vram_gb:.0f} GB, {g.link} {g.link_bw / 1e9:.0f} GB/s" for g in GPUS.values()))
    head = f"{'config':<30}" + "".join(f"| {f'{n} step' + ('s' if n > 1 else ''):<24}" for n in range(1, 5)) \
        + "| bound (1/4 steps)        | GB/GPU (4 st) fits"
    p(head)
    p("-" * len(head))
    ratios = []
    for (model, size, gpu, N, batch), cells in rows.items():
        gname = "H100" if gpu == "h100" else GPUS[gpu].name.removeprefix("RTX ")
        name = f"{model.upper()} {size} {N}x{gname} {'SB' if batch else 'no-batch'}"
        line = f"{name:<30}"
        for n in range(1, 5):
            if n in cells:
                ours, up, f = cells[n]
                ratios.append(ours.fps / f.fps)
                cell = f"{ours.fps:5.1f}/{f.fps:5.2f}={ours.fps / f.fps:4.2f}"
                if up is not None:
                    cell += f" up{up.fps:4.0f}"
                line += f"| {cell:<24}"
            else:
                line += f"| {'-':<24}"
        present = sorted(cells)
        b1, b4 = cells[present[0]][0].bound, cells[present[-1]][0].bound
        last = cells[present[-1]][0]
        line += f"| {b1 + '/' + b4:<25}| {last.vram_gb:5.1f} {'yes' if last.fits else 'NO'}"
        p(line)
    gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    p(f"ratio predicted/paper over {len(ratios)} figures: geometric mean {gm:.2f}, min {min(ratios):.2f}, "
      f"max {max(ratios):.2f}")

    p("")
    p("Time to first frame (first chunk of 5 frames -> 2 latents through all steps one after another + decode; "
      "umT5 prompt encoding excluded; plus the wait for 5 frames from the source):")
    ttff = []
    for t in PAPER_TTFF:
        pr = predict(t["model"], t["size"], t["steps"], t["gpu"], t["ngpus"], eff=eff)
        pred = pr.ttff_at(t["source_fps"])
        ttff.append({**t, "predicted_s": pred, "processing_s": pr.ttff_s, "ratio": pred / t["ttff_s"]})
        p(f"  {t['model'].upper()} {t['size']} {t['ngpus']}x{t['gpu']} {t['steps']} steps @{t['source_fps']} fps "
          f"source: predicted {pred:.2f} s (processing {pr.ttff_s:.2f} s) / paper {t['ttff_s']:.2f} s = "
          f"{pred / t['ttff_s']:.2f}")

    p("")
    p("Diagnostics (not applied): VAE conv efficiency that would reproduce a VAE-bound paper figure:")
    implied = []
    for f in figs:
        if f.steps == 1 and f.model == "1.3b" and (f.ngpus == 4 or (f.ngpus == 1 and not f.batch)) \
                and f.size == "512":
            e = implied_eta_vae(f, eff)
            implied.append({"figure": asdict(f), "eta_vae": e})
            p(f"  1.3B 512 {f.ngpus}x{f.gpu} 1 step ({f.fps} fps): eta_vae = "
              f"{'n/a' if e is None else f'{e:.2f}'} (model default {eff.eta_vae})")

    p("")
    p("Memory (GB per GPU, most loaded rank; 24 GB RTX 4090):")
    mem_cases = [("1.3b", "480p", 2, "4090", 1, True, True, "issue #7: Stream-Batch 2 steps, umT5 on the GPU"),
                 ("1.3b", "480p", 1, "4090", 1, False, True, "1 step, umT5 on the GPU (upstream's layout)"),
                 ("1.3b", "480p", 4, "4090", 1, True, False, "Stream-Batch 4 steps, umT5 on the CPU (ours)"),
                 ("14b", "512", 4, "4090", 4, True, False, "14B on 4x4090, ours (1/N weights per rank)"),
                 ("14b", "480p", 4, "h100", 1, True, False, "14B Stream-Batch 4 steps on one H100")]
    memory = []
    for model, size, n, gpu, N, batch, t5, what in mem_cases:
        pr = predict(model, size, n, gpu, N, batch=batch, t5_on_gpu=t5, eff=eff)
        memory.append({"case": what, **asdict(pr)})
        p(f"  {what}: {pr.vram_gb:.1f} GB -> {'fits' if pr.fits else 'does NOT fit'} "
          f"({', '.join(f'{k} {v}' for k, v in pr.detail['memory_gb'].items() if v)})")

    p("  (The model is for OUR engine. Upstream ran 1 step on a 24 GB 4090 with umT5 on the GPU, 'almost full' per "
      "its issue #16: its VAE normalises in bf16, ours upcasts to fp32 (~1 GB more at the 480p decode peak). "
      "Keep umT5 on the CPU, our default.)")
    data = {"constants": asdict(eff), "gpus": {k: asdict(g) for k, g in GPUS.items()},
            "comparisons": comparisons, "ratio_geomean": gm, "ttff": ttff, "implied_eta_vae": implied,
            "memory": memory, "grid": [asdict(x) for x in _grid(eff)]}
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
        p(f"wrote {path}")
    return data


# ---------------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="JSON output path (default bench/results/roofline.json)")
    p.add_argument("--eta-dit", type=float, default=DEFAULT_EFF.eta_dit, help="DiT GEMM/attention efficiency")
    p.add_argument("--eta-vae", type=float, default=DEFAULT_EFF.eta_vae, help="VAE conv efficiency")
    p.add_argument("--eta-mem", type=float, default=DEFAULT_EFF.eta_mem, help="HBM bandwidth efficiency")


def main_roofline(args: argparse.Namespace) -> int:
    """`sdv2 bench roofline`: works with the bench parser's own arguments (only --out is read there)."""
    eff = replace(DEFAULT_EFF, eta_dit=getattr(args, "eta_dit", DEFAULT_EFF.eta_dit),
                  eta_vae=getattr(args, "eta_vae", DEFAULT_EFF.eta_vae),
                  eta_mem=getattr(args, "eta_mem", DEFAULT_EFF.eta_mem))
    report(getattr(args, "out", None) or "bench/results/roofline.json", eff)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.roofline [--out PATH] [--eta-...]` from the checkout root."""
    p = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.splitlines()[0])
    add_arguments(p)
    return main_roofline(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
