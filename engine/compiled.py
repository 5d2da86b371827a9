"""The compiled hot path: torch.compile of the DiT's per-chunk device step, for the steady state.

`CausalWanModel.forward_chunk` = host bookkeeping (`KVCache.plan`) + `chunk_step` (device work only). Once the
cache is full every steady chunk has the same shapes (fixed cache buffers, a fixed number of tokens attended), the
same Python-level decisions and tensors at the same addresses (the plan lives in preallocated `DeviceInts`), so
`chunk_step` compiles to ONE graph per configuration (slots, latent frames per chunk, resolution, dtype) with
`fullgraph=True` (a graph break is an error) and never recompiles: Inductor on the CPU, and on CUDA
`mode="reduce-overhead"` (CUDA graphs: one launch per chunk; the cache buffers are marked as static addresses so
their in-place updates stay inside the graph). While the cache is filling (the stream's first chunks, whose
shapes differ chunk to chunk) the eager step runs: eager is always there and is the reference.

Compiling takes seconds to minutes once per configuration; Inductor caches the result on disk (its FX graph cache,
under the user's cache folder) so later runs load it. `warm_up` pays it before the stream starts, so neither the
first frame nor the first steady chunk waits for the compiler.
"""

from __future__ import annotations

import os

import torch
from sdv2_studio.engine.kv_cache import KVCache, StepPlan, StreamClock


def _cache_dir() -> None:
    """Inductor's on-disk caches in the user's cache folder (kept across runs and reboots), unless set already."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        import platformdirs

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(platformdirs.user_cache_dir("sdv2-studio"), "inductor")


class CompiledStep:
    """`model.chunk_step` compiled for steady chunks, eager for the others; attach with `compile_model`."""

    def __init__(self, model, device: torch.device | str):
        _cache_dir()
        self.device = torch.device(device)
        self.eager = model.chunk_step
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self.fn = torch.compile(model.chunk_step, fullgraph=True, dynamic=False, mode=mode)
        self._static: set[int] = set()  # caches whose buffers are marked as static addresses
        self.calls = self.compiled_calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cache: KVCache, plan: StepPlan) -> torch.Tensor:
        self.calls += 1
        if not plan.any_full or plan.length != cache.S or plan.mask is not None:  # filling: shapes change
            return self.eager(x, t, cache, plan)
        if self.device.type == "cuda" and id(cache) not in self._static:  # CUDA graphs replay fixed addresses
            for buf in cache.device_buffers():
                torch._dynamo.mark_static_address(buf)
            self._static.add(id(cache))
        self.compiled_calls += 1
        return self.fn(x, t, cache, plan)


def compile_model(model, device: torch.device | str) -> CompiledStep:
    """Make `model.forward_chunk` run its steady chunks compiled (see the module docstring)."""
    model.compiled_step = CompiledStep(model, device)
    return model.compiled_step


def warm_up(model, cache_like: KVCache, frames: int, grid_hw: tuple[int, int], dtype: torch.dtype) -> None:
    """Compile the steady step for `cache_like`'s configuration now, on a throwaway cache of the same shape filled
    with eager chunks of zeros (the stream's own cache is untouched)."""
    cache = KVCache(cache_like.cfg, cache_like.cc, cache_like.B, cache_like.L, device=cache_like.device,
                    dtype=cache_like.dtype, blocks=cache_like.blocks)
    cache.cross_k.copy_(cache_like.cross_k)
    cache.cross_v.copy_(cache_like.cross_v)
    clock, (h, w) = StreamClock(cache.cc), grid_hw
    cfg = model.cfg
    with torch.inference_mode():  # as in the stream: inputs are inference tensors, the cache is not (KVCache)
        while True:
            n = frames if clock.chunks else cache.cc.first_chunk_frames
            x = torch.zeros(cache.B, cfg.in_dim, n, h, w, device=cache.device, dtype=dtype)
            t = torch.full((cache.B, n), 500.0, device=cache.device)
            steady = all(e >= cache.S for e in cache.local_end)
            model.forward_chunk(x, t, cache, [clock.next(n)] * cache.B)
            if steady:
                return
