"""The compiled hot path: torch.compile of the DiT's per-chunk device step, for the steady state.

`CausalWanModel.forward_chunk` = host bookkeeping (`KVCache.plan`) + `chunk_step` (device work only). Once the
cache is full every steady chunk has the same shapes (fixed cache buffers, a fixed number of tokens attended), the
same Python-level decisions and tensors at the same addresses (the plan lives in preallocated `DeviceInts`), so
`chunk_step` compiles to ONE graph per configuration (slots, latent frames per chunk, resolution, dtype) with
`fullgraph=True` (a graph break is an error) and does not recompile chunk to chunk: Inductor on the CPU; on CUDA
`mode="reduce-overhead"` (CUDA graphs: one launch per chunk; the cache buffers are marked as static addresses so
their in-place updates stay inside the graph). While the cache is filling (the stream's first chunks, whose
shapes differ chunk to chunk) the eager step runs: eager is always there and is the reference.

Compiling takes seconds to minutes once per configuration; Inductor caches the result on disk (its FX graph cache,
under the user's cache folder) so later runs load it. `warm_up` pays it before the stream starts, on the stream's
own cache (no second cache in memory), so neither the first frame nor the first steady chunk waits for the
compiler. Only warmed-up configurations run compiled: a configuration first met mid-stream (a steps, mode or
resolution change, e.g. by the SLO scheduler) runs eager rather than stall the live stream for a compile.
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
        self.warmed: set[tuple] = set()  # configurations compiled by `warm_up`
        self.calls = self.compiled_calls = 0

    @staticmethod
    def key(x: torch.Tensor, cache: KVCache) -> tuple:
        """What one compiled graph serves: the input's shape and dtype, the cache's slots, blocks and dtype."""
        return tuple(x.shape), x.dtype, cache.B, cache.S, cache.blocks, cache.dtype

    def steady(self, plan: StepPlan, cache: KVCache) -> bool:
        """The cache is full: fixed shapes from here on (while filling they change every chunk)."""
        return plan.any_full and plan.length == cache.S and plan.mask is None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cache: KVCache, plan: StepPlan) -> torch.Tensor:
        self.calls += 1
        if not self.steady(plan, cache) or self.key(x, cache) not in self.warmed:
            return self.eager(x, t, cache, plan)
        self.compiled_calls += 1
        return self.fn(x, t, cache, plan)

    def compile_for(self, x: torch.Tensor, t: torch.Tensor, cache: KVCache, plan: StepPlan) -> torch.Tensor:
        """Compile (or load from disk) the graph for this steady call and run it (`warm_up`)."""
        if self.device.type == "cuda" and not getattr(cache, "static_marked", False):  # CUDA graphs: fixed addresses
            for buf in cache.device_buffers():
                torch._dynamo.mark_static_address(buf, guard=False)
            cache.static_marked = True
        self.warmed.add(self.key(x, cache))
        return self.fn(x, t, cache, plan)


def compile_model(model, device: torch.device | str) -> CompiledStep:
    """Make `model.forward_chunk` run its steady chunks compiled, for the configurations `warm_up` compiled (see
    the module docstring); `model.compiled_step = None` detaches it."""
    model.compiled_step = CompiledStep(model, device)
    return model.compiled_step


def warm_up(model, cache: KVCache, frames: int, grid_hw: tuple[int, int], dtype: torch.dtype) -> None:
    """Compile the steady step for `cache`'s configuration now, before the stream: the cache is filled with eager
    chunks of zeros, the steady chunk is compiled and run once, and the cache is reset (its prompt is kept)."""
    step: CompiledStep = model.compiled_step
    clock, (h, w) = StreamClock(cache.cc), grid_hw
    cfg = model.cfg
    with torch.inference_mode():  # as in the stream: inputs are inference tensors, the cache is not (KVCache)
        while True:
            n = frames if clock.chunks else cache.cc.first_chunk_frames
            x = torch.zeros(cache.B, cfg.in_dim, n, h, w, device=cache.device, dtype=dtype)
            t = torch.full((cache.B, n), 500.0, device=cache.device)
            pt, ph, pw = cfg.patch_size
            plan = cache.plan([clock.next(n)] * cache.B, (n // pt, h // ph, w // pw))
            if step.steady(plan, cache):
                step.compile_for(x, t, cache, plan)
                break
            step.eager(x, t, cache, plan)
    cache.reset()
