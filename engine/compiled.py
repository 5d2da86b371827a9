"""The compiled hot path: torch.compile of the per-chunk device work, the DiT step and the VAE decode, for the
steady state.

`CausalWanModel.forward_chunk` = host bookkeeping (`KVCache.plan`) + `chunk_step` (device work only). Once the
cache is full every steady chunk has the same shapes (fixed cache buffers, a fixed number of tokens attended), the
same Python-level decisions and tensors at the same addresses (the plan lives in preallocated `DeviceInts`), so
`chunk_step` compiles to ONE graph per configuration (slots, latent frames per chunk, resolution, dtype) with
`fullgraph=True` (a graph break is an error) and does not recompile chunk to chunk: Inductor on the CPU; on CUDA
`mode="reduce-overhead"` (CUDA graphs: one launch per chunk; the cache buffers are marked as static addresses so
their in-place updates stay inside the graph). While the cache is filling (the stream's first chunks, whose
shapes differ chunk to chunk) the eager step runs: eager is always there and is the reference.

The streaming decoders (`WanVAE`, `TAEHVDecoder`) compile the same way: one pass over one latent frame (WanVAE) or
one group of latents (TAEHV) with their causal state, once the state is full (`steady_key`). Their state is handed
from pass to pass as new tensors, so on CUDA they run Inductor kernels without CUDA graphs.

Compiling takes seconds to minutes once per configuration; Inductor caches the result on disk (its FX graph cache,
under the user's cache folder) so later runs load it. `warm_up` and `compile_decoder` pay it before the stream
starts, so neither the first frame nor the first steady chunk waits for the compiler. Only warmed-up
configurations run compiled: a configuration first met mid-stream (a steps, mode or resolution change, e.g. by the
SLO scheduler) runs eager rather than stall the live stream for a compile.
"""

from __future__ import annotations

import os

import torch
from sdv2_studio.engine.kv_cache import KVCache, StepPlan, StreamClock

_MAX_WARM_UP_CALLS = 64  # a warm-up that meets no steady call by then is a bug, not a slow start


def _cache_dir() -> None:
    """Inductor's on-disk caches in the user's cache folder (kept across runs and reboots), unless set already."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        import platformdirs

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(platformdirs.user_cache_dir("sdv2-studio"), "inductor")


class CompiledCall:
    """`fn` compiled (fullgraph, static shapes) for the steady calls a warm-up compiled; eager for the others.

    `key(*args)`: what one graph serves, or None for a call that is not steady (eager). `arm()` makes the next
    steady call of a new key compile (the warm-ups do this before the stream); later new keys run eager.
    `cuda_graphs`: mode "reduce-overhead" on CUDA (the state must live in fixed buffers); Inductor alone otherwise.
    """

    def __init__(self, fn, device: torch.device | str, key, cuda_graphs: bool = True):
        _cache_dir()
        self.device = torch.device(device)
        self.eager, self.key = fn, key
        mode = "reduce-overhead" if self.device.type == "cuda" and cuda_graphs else None
        self.fn = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
        self.warmed: set[tuple] = set()  # keys compiled so far
        self.armed = False
        self.calls = self.compiled_calls = 0

    def arm(self) -> None:
        self.armed = True

    def __call__(self, *args):
        self.calls += 1
        key = self.key(*args)
        if key is None or (key not in self.warmed and not self.armed):
            return self.eager(*args)
        if key not in self.warmed:  # armed: compile (or load from disk) this key's graph now
            self.before_compile(*args)
            out = self.fn(*args)  # a compile that fails leaves the key eager (and raises)
            self.warmed.add(key)
            self.armed = False
        else:
            out = self.fn(*args)
        self.compiled_calls += 1
        return out

    def before_compile(self, *args) -> None:
        """Hook: what a subclass prepares before a key's first compiled call."""


class CompiledStep(CompiledCall):
    """`model.chunk_step` compiled for steady chunks, eager for the others; attach with `compile_model`."""

    def __init__(self, model, device: torch.device | str):
        super().__init__(model.chunk_step, device, self.steady_key)

    @staticmethod
    def steady_key(x: torch.Tensor, t: torch.Tensor, cache: KVCache, plan: StepPlan) -> tuple | None:
        """The input's shape and dtype, the cache's slots, blocks and dtype; None while the cache is filling."""
        if not (plan.any_full and plan.length == cache.S and plan.mask is None):
            return None
        return tuple(x.shape), x.dtype, cache.B, cache.S, cache.blocks, cache.dtype

    def before_compile(self, x: torch.Tensor, t: torch.Tensor, cache: KVCache, plan: StepPlan) -> None:
        if self.device.type == "cuda" and not getattr(cache, "static_marked", False):  # CUDA graphs: fixed addresses
            for buf in cache.device_buffers():
                torch._dynamo.mark_static_address(buf, guard=False)
            cache.static_marked = True


def compile_model(model, device: torch.device | str) -> CompiledStep:
    """Make `model.forward_chunk` run its steady chunks compiled, for the configurations `warm_up` compiled (see
    the module docstring); `model.compiled_step = None` detaches it."""
    model.compiled_step = CompiledStep(model, device)
    return model.compiled_step


def warm_up(model, cache: KVCache, frames: int, grid_hw: tuple[int, int], dtype: torch.dtype) -> None:
    """Compile the steady step for `cache`'s configuration now, before the stream: the cache is filled with eager
    chunks of zeros, the steady chunk is compiled and run once, and the cache is reset (its prompt is kept)."""
    step: CompiledStep = model.compiled_step
    clock, (h, w), cfg = StreamClock(cache.cc), grid_hw, model.cfg
    step.arm()
    with torch.inference_mode():  # as in the stream: inputs are inference tensors, the cache is not (KVCache)
        for _ in range(_MAX_WARM_UP_CALLS):
            n = frames if clock.chunks else cache.cc.first_chunk_frames
            x = torch.zeros(cache.B, cfg.in_dim, n, h, w, device=cache.device, dtype=dtype)
            t = torch.full((cache.B, n), 500.0, device=cache.device)
            model.forward_chunk(x, t, cache, [clock.next(n)] * cache.B)
            if not step.armed:
                break
        else:
            raise RuntimeError(f"the KV cache was not full after {_MAX_WARM_UP_CALLS} warm-up chunks")
    cache.reset()


def compile_decoder(decoder, device: torch.device | str, latent_shape: tuple[int, ...]) -> CompiledCall:
    """Compile the streaming decoder's steady pass (`WanVAE` or `TAEHVDecoder`; attached as
    `decoder.compiled_step`, None detaches it) for raw latents of `latent_shape` [B, 16, T, h, w], now, on a
    scratch stream of zeros (the decoder's own stream state is not touched)."""
    decoder.compiled_step = step = CompiledCall(decoder.decode_pass, device, decoder.steady_key, cuda_graphs=False)
    state, z = decoder.new_state(), torch.zeros(latent_shape, device=device, dtype=decoder.dtype)
    step.arm()
    with torch.inference_mode():
        for _ in range(_MAX_WARM_UP_CALLS):  # a few eager calls fill the state, then the steady pass compiles
            decoder.decode_stream(z, state)
            if not step.armed:
                return step
    raise RuntimeError(f"the decoder's stream state was not full after {_MAX_WARM_UP_CALLS} warm-up calls")
