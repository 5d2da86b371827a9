"""StreamPipeline: pixel frames in, styled pixel frames out, one chunk at a time.

Per chunk (StreamDiffusionV2's v2v loop):
  1. motion-aware noise scale s and first timestep t0 from the frames (engine/schedule.py);
  2. streaming VAE encode (5 frames -> 2 latents for the first chunk, then 4 frames -> 1 latent);
  3. v2v noising x = s * noise + (1 - s) * z;
  4. denoise with the causal DiT against the rolling KV cache:
       no-batch: the steps [t0, 500, 400, 200][:n] run one after another on one cache slot;
       Stream-Batch: n slots each hold a chunk at a different step; one forward per chunk advances all of them
       (slot i -> i + 1, re-noised to the next timestep), so each call finishes one chunk, n - 1 chunks late;
  5. de-normalise and decode the clean latent with the streaming VAE (4 frames; 5 for the first chunk).
Controls (prompt with optional smooth transition, steps, noise scale, seed) are queued and applied at the next
chunk boundary; a prompt change only replaces the cross-attention K/V, never the stream's self-attention cache. A
weighted blend of prompts (Controls.weighted_prompts) is the weighted sum of their umT5 contexts
(PromptCache.encode_blend), set and transitioned like one prompt.

Where the DiT runs is the pipeline's denoise executor, composed from outside: `LocalDenoiser` (the default) runs
every block on this device; `engine.parallel.RingDenoiser` sends the work around pipeline ranks. The pipeline keeps
the stream (positions, timesteps, noise keys, the Stream-Batch fill, controls, the VAE); the executor keeps the KV
cache of the blocks it runs here and the contents of the Stream-Batch slots (`DenoiseExecutor` below).

Frames are uint8 [T, H, W, 3] numpy arrays at the model resolution (engine/io/frames.py fits camera frames).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from sdv2_studio.engine.config import CacheConfig, Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.kv_cache import KVCache, StreamClock
from sdv2_studio.engine.model import CausalWanModel
from sdv2_studio.engine.schedule import (
    FlowMatchGrid,
    MotionNoiseController,
    denoising_steps,
    frames_from_uint8,
    v2v_noise,
)
from sdv2_studio.engine.text import PromptCache
from sdv2_studio.engine.transfer import FrameDownloader, FrameUploader
from sdv2_studio.engine.vae import WanVAE

V2V_NOISE, RENOISE = 0, 1  # kinds of keyed noise
NO_LORAS = ("presets with LoRAs are not supported with pipeline ranks yet (each rank would have to merge them into "
            "its blocks); use one device, or a preset without loras")


def keyed_noise(shape, seed: int, chunk: int, kind: int, index: int, device) -> torch.Tensor:
    """Standard normal noise determined by (seed, chunk, kind, index) alone (float32), not by the order of draws,
    so a pipeline split across ranks draws exactly the same noise as one process."""
    key = (seed * 1_000_003 + chunk) * 97 + kind * 31 + index
    gen = torch.Generator(device=device).manual_seed(key & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)


def decode_latent(vae: WanVAE, decoder: torch.nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """A clean latent [1, 16, F, h, w] -> uint8 frames [T, H, W, 3] on its device, through the streaming decoder."""
    z = vae.denormalize(x0.float())  # upstream de-normalises before decoding
    px = decoder.decode_stream(z.to(decoder.dtype))  # [1, 3, T, H, W] in [-1, 1]
    return ((px[0].float().permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class DenoiseJob:
    """One chunk's denoising, as the pipeline hands it to its executor."""

    x: torch.Tensor  # the v2v-noised latent [1, 16, F, h, w]
    timesteps: list[int]  # t0, then the schedule: one per step (sequential) or per slot (Stream-Batch)
    chunk: int  # the chunk's number in the stream; with `seed` it keys the re-noising noise
    seed: int

    def renoise(self, shape, index: int, device) -> torch.Tensor:
        """The noise that re-noises the output of step (or slot) `index` (float32)."""
        return keyed_noise(shape, self.seed, self.chunk, RENOISE, index, device)


class DenoiseExecutor(Protocol):
    """Where a StreamPipeline's DiT runs: `LocalDenoiser` (this device) or `engine.parallel.RingDenoiser` (pipeline
    ranks over torch.distributed).

    It holds the KV cache of the blocks it runs on this device (built by the pipeline for `blocks`) and the contents
    of the Stream-Batch slots. `sequential` and `batch_step` return the clean latent of a finished chunk for the
    pipeline to decode, or None when nothing finished here: the ring decodes on its last rank and hands the frames
    back through `collect`.
    """

    blocks: range  # the DiT blocks run on this device
    cache: KVCache

    def reset(self, cache: KVCache) -> None:
        """A new stream on `cache` (empty; its prompt follows through `set_prompt`)."""

    def set_prompt(self, ctx: torch.Tensor) -> None:
        """The prompt's cross-attention K/V from umT5 output `ctx` [1, Lt, text_dim] (never the self-attention)."""

    def set_steps(self, steps: int) -> None:
        """Denoising steps per chunk (the cache's step counter)."""

    def resize(self, slots: int) -> None:
        """New Stream-Batch depth: slot i continues from old slot min(i, n_old - 1); slot contents are dropped."""

    def sequential(self, job: DenoiseJob, start: int, slots: int) -> torch.Tensor | None:
        """All steps of `job` one after another at temporal position `start`. `slots` > 1: the Stream-Batch
        prepare, after which every slot's cache holds this chunk."""

    def batch_step(self, job: DenoiseJob, starts: list[int], *, fresh: bool, finish: bool) -> torch.Tensor | None:
        """One Stream-Batch call over len(starts) slots: slot 0 takes `job.x`, slot j the re-noised output of slot
        j - 1 of the previous call (zeros when `fresh`), each at its timestep and start. `finish`: the last slot
        holds a real chunk (decode it); otherwise pipeline fill (drop it)."""

    def chunk_scope(self) -> contextlib.AbstractContextManager:
        """Context around each `process` call (the ring accounts its time and names failed ranks here)."""

    def collect(self, wait: bool = False) -> list[np.ndarray]:
        """Styled frames finished elsewhere since the last call, in order; `wait`: all that are in flight."""

    def utilisation(self) -> list[float]:
        """Busy fraction of wall time per device over the last seconds ([] when not measured)."""


class LocalDenoiser:
    """The DenoiseExecutor that runs every DiT block on this device."""

    def __init__(self, dit: CausalWanModel):
        self.dit = dit
        self.blocks = range(dit.cfg.num_layers)
        self.grid = FlowMatchGrid()
        self.cache: KVCache | None = None
        self._slots: torch.Tensor | None = None  # the last Stream-Batch call's re-noised outputs [n, 16, F, h, w]

    def reset(self, cache: KVCache) -> None:
        self.cache, self._slots = cache, None

    def set_prompt(self, ctx: torch.Tensor) -> None:
        self.cache.set_prompt(self.dit, ctx)

    def set_steps(self, steps: int) -> None:
        self.cache.set_steps(steps)

    def resize(self, slots: int) -> None:
        self.cache, self._slots = self.cache.resized(slots), None

    def sequential(self, job: DenoiseJob, start: int, slots: int) -> torch.Tensor:
        ts, dtype = job.timesteps, self.cache.dtype
        x = job.x.expand(slots, -1, -1, -1, -1)
        F = x.shape[2]
        x0 = x
        for i, t in enumerate(ts):
            tt = torch.full((slots, F), float(t), device=x.device)
            flow = self.dit.forward_chunk(x, tt, self.cache, [start] * slots, advance=i == len(ts) - 1)
            x0 = self.grid.to_x0(flow, x, tt)
            if i < len(ts) - 1:
                x = self.grid.add_noise(x0, job.renoise(x0[:1].shape, i, x.device).to(dtype).expand_as(x0), ts[i + 1])
        return x0[:1]

    def batch_step(self, job: DenoiseJob, starts: list[int], *, fresh: bool, finish: bool) -> torch.Tensor | None:
        ts, x, n = job.timesteps, job.x, len(starts)
        prev = x.new_zeros(n - 1, *x.shape[1:]) if fresh else self._slots[:-1]
        hidden = torch.cat([x, prev])  # slot i+1 continues slot i's chunk
        tt = x.new_empty(n, x.shape[2], dtype=torch.float32)  # [n, F]: scalar fills, no upload
        for i, t in enumerate(ts):
            tt[i].fill_(float(t))
        flow = self.dit.forward_chunk(hidden, tt, self.cache, starts)
        x0 = self.grid.to_x0(flow, hidden, tt)
        for i in range(n - 1):  # re-noise each unfinished chunk to its next timestep
            noise = job.renoise(x0[i:i + 1].shape, i, x.device).to(self.cache.dtype)
            x0[i:i + 1] = self.grid.add_noise(x0[i:i + 1], noise, ts[i + 1])
        self._slots = x0
        return x0[n - 1:] if finish else None

    def chunk_scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def collect(self, wait: bool = False) -> list[np.ndarray]:
        return []

    def utilisation(self) -> list[float]:
        return []


class ChunkedStream:
    """What every pipeline the engine runs shares (StreamPipeline, engine.passthrough.PassthroughPipeline): chunks
    of `first_pixels` frames, then `chunk_pixels`, and controls queued for the next chunk boundary."""

    first_pixels: int
    chunk_pixels: int
    size: tuple[int, int]  # (h, w) of its frames
    chunks: int  # chunks processed in this stream
    controls: Controls  # in effect
    _pending: Controls | None  # queued for the next chunk

    @property
    def frames_needed(self) -> int:
        """Pixel frames the next chunk consumes."""
        return self.first_pixels if self.chunks == 0 else self.chunk_pixels

    @property
    def next_controls(self) -> Controls:
        """The controls the next chunk runs with: the current ones with every queued change applied."""
        return self._pending or self.controls

    def set_controls(self, **changes) -> Controls:
        """Queue control changes; they apply at the next chunk boundary. Returns the validated result."""
        self._pending = dataclasses.replace(self.next_controls, **changes)
        return self._pending

    def check_chunk(self, frames: np.ndarray) -> None:
        """`frames` must be the next chunk: exactly `frames_needed` frames at the pipeline's `size`."""
        if len(frames) != self.frames_needed:
            raise ValueError(f"chunk needs {self.frames_needed} frames, got {len(frames)}")
        if tuple(frames.shape[1:3]) != self.size:
            raise EngineError(f"frames are {frames.shape[2]}x{frames.shape[1]} but the engine runs at "
                              f"{self.size[1]}x{self.size[0]}; fit frames with engine.io.frames.fit_frame")


class StreamPipeline(ChunkedStream):
    """The streaming v2v loop for one stream; its DiT runs on `executor` (default: all blocks on `device`)."""

    def __init__(self, dit: CausalWanModel, vae: WanVAE, prompts: PromptCache, *, size: tuple[int, int],
                 controls: Controls = Controls(), batch: bool = True, cache_cfg: CacheConfig = CacheConfig(),
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 decoder: torch.nn.Module | None = None, profile: bool = False,
                 executor: DenoiseExecutor | None = None, background_prompts: bool = False,
                 text_process: bool | None = None,
                 set_loras: Callable[[tuple[tuple[str, float], ...]], object] | None = None):
        """`decoder`: an alternative streaming decoder with the VAE's decode contract (TAEHV); `profile`:
        synchronise the device around each stage so `timings` are exact (costs a little on GPUs);
        `background_prompts` (live streams): a new prompt that is not cached yet is encoded on a background thread
        while the stream keeps the current one, and blends in (its transition) from the first chunk after it is
        ready, so a preset click never stalls the stream; the encoder's forward then runs in a child process at the
        lowest CPU priority (`TextEncoder.use_process(text_process)`: None = when the encoder is large and on the
        CPU), so the encode takes only CPU time the chunks leave. Off (files), the switch happens at the next chunk,
        which keeps a file run deterministic. `set_loras(controls.loras)` makes the DiT's weights carry the LoRAs the
        controls name (the Engine's: the bundle's LoRAMerger); it is called at the stream's start and at the chunk
        boundary where they change, on this thread. Without it, controls naming LoRAs are refused."""
        self.dit, self.vae, self.prompts = dit, vae, prompts
        self._set_loras = set_loras
        self.decoder = decoder or vae
        self.executor = executor or LocalDenoiser(dit)
        self.profile = profile
        self.timings: dict[str, float] = collections.defaultdict(float)
        self.device, self.dtype = torch.device(device), dtype
        h, w = size
        f = 8 * dit.cfg.patch_size[1]
        if h % f or w % f:
            raise EngineError(f"resolution {w}x{h} must be a multiple of {f} in both directions")
        self.size = (h, w)
        self.latent_hw = (h // 8, w // 8)
        self.frame_tokens = (h // f) * (w // f)
        self.cache_cfg = cache_cfg
        self.batch = batch
        self.controls = controls
        self.motion = MotionNoiseController(s0=self.controls.noise_scale)
        self.first_pixels, self.chunk_pixels = cache_cfg.first_pixels, cache_cfg.chunk_pixels  # 5, 4
        self._upload, self._download = FrameUploader(self.device), FrameDownloader(self.device)
        self._pending: Controls | None = None
        self._pending_batch: bool | None = None
        self._flushing = False  # controls that arrive during a flush wait for the next real chunk
        self.background_prompts = background_prompts
        self._text_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._encoding: tuple[concurrent.futures.Future, int] | None = None  # (context, transition) on its way
        self._warming: dict[str, concurrent.futures.Future] = {}  # warm_prompts not encoded yet
        self._warm: tuple[str, ...] = ()  # every prompt warm_prompts was given (the presets a user may click)
        # live streams: a large encoder's child process starts now, its weights move there when needed
        prompts.encoder.use_process(text_process if background_prompts else False)
        self.reset()

    # -- state --------------------------------------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        return self.controls.steps if self.batch else 1

    @property
    def cache(self) -> KVCache:
        """The KV cache of the blocks that run on this device."""
        return self.executor.cache

    def reset(self) -> None:
        """Start a new stream (new clip): caches, VAE streams, motion state, positions."""
        self._switch_loras(self.controls.loras)
        self.clock = StreamClock(self.cache_cfg)
        self.vae.reset_stream()
        if self.decoder is not self.vae:
            self.decoder.reset_stream()
        self.motion.reset()
        cache = KVCache(self.dit.cfg, self.cache_cfg, self.slots, self.frame_tokens, device=self.device,
                        dtype=self.dtype, blocks=self.executor.blocks)
        cache.set_steps(self.controls.steps)
        self.executor.reset(cache)
        self._encoding = None  # a new stream starts with its own prompt, encoded now
        self._ctx = self._encode_prompt(self.controls.weighted_prompts)
        self.executor.set_prompt(self._ctx)
        self._transition: tuple[torch.Tensor, torch.Tensor, int, int] | None = None
        self.chunks = 0
        self._starts: list[int] | None = None  # Stream-Batch slot positions; None: not prepared (or depth changed)
        self._fresh = False  # the Stream-Batch slots hold zeros (just prepared), not the previous call's outputs
        self._fill = 0  # Stream-Batch calls whose output is pipeline fill, not a real chunk

    @contextlib.contextmanager
    def _timed(self, stage: str):
        """Accumulate wall time per stage (encode, dit, decode, text) in `timings`."""
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[stage] += time.perf_counter() - t0

    def _encode_prompt(self, weighted: tuple[tuple[str, float], ...]) -> torch.Tensor:
        """The context of a prompt blend (Controls.weighted_prompts; one prompt: its own context)."""
        with self._timed("text"):
            ctx = self.prompts.encode_blend(weighted, device=self.device, dtype=torch.float32)  # [1, Lt, text_dim]
        if ctx.shape[-1] != self.dit.cfg.text_dim:
            raise EngineError(f"the text encoder gives {ctx.shape[-1]}-wide embeddings but the model expects "
                              f"{self.dit.cfg.text_dim}; use the text encoder that belongs to this model")
        return ctx

    @property
    def latency_chunks(self) -> int:
        """Chunks between a chunk's input and its output (Stream-Batch pipeline depth)."""
        return self.slots - 1

    # -- controls -----------------------------------------------------------------------------------------------------

    def set_controls(self, **changes) -> Controls:
        """Queue control changes (`ChunkedStream.set_controls`); LoRAs need a DiT that can switch them."""
        if changes.get("loras") and self._set_loras is None:
            raise EngineError(NO_LORAS)
        return super().set_controls(**changes)

    def _switch_loras(self, loras: tuple[tuple[str, float], ...]) -> None:
        """Make the DiT carry `loras` (Controls.loras) from the next forward pass on."""
        if self._set_loras is not None:
            self._set_loras(loras)
        elif loras:
            raise EngineError(NO_LORAS)

    def set_mode(self, batch: bool) -> None:
        """Queue a switch between Stream-Batch (True) and no-batch (False), applied at the next chunk boundary.

        Leaving Stream-Batch first finishes the chunks in flight (their frames come out of that `process` call);
        the single slot then continues slot 0's caches. Entering it copies slot 0's caches to every slot and restarts
        the pipeline fill (the next `steps - 1` calls return nothing), as upstream's SLO-adaptive demo does.
        """
        self._pending_batch = bool(batch)

    def _apply_mode(self, batch: bool | None) -> list[np.ndarray]:
        if batch is None or batch == self.batch:
            return []
        out = self.flush() if self.batch else []
        self.batch = batch
        if self.chunks == 0:  # nothing streamed yet: start over in the new mode
            self.reset()
        elif self.controls.steps > 1:
            self._resize_slots(self.slots)
        return out

    def _apply_controls(self) -> list[np.ndarray]:
        """Apply queued controls before a chunk; returns frames finished while draining (Stream-Batch steps)."""
        new, self._pending = self._pending, None
        if new is None or new == self.controls:
            return []
        old, out = self.controls, []
        if new.steps != old.steps:
            if self.batch:
                if self.chunks > 0:
                    out = self.flush()  # finish the chunks in flight with the old steps
                self._resize_slots(new.steps)
            self.executor.set_steps(new.steps)
        if new.noise_scale != old.noise_scale:
            self.motion.set_s0(new.noise_scale)
        if new.loras != old.loras:  # in place, exactly (engine.lora.LoRAMerger); the slots in flight go on with
            self._switch_loras(new.loras)  # the new weights, and the self-attention cache is kept (as for a prompt)
        self.controls = new
        if new.weighted_prompts != old.weighted_prompts:  # a new prompt or blend: its transition
            cached = all(p in self.prompts for p, _ in new.weighted_prompts)
            if self.background_prompts and self.chunks > 0 and not cached:
                # a newer prompt replaces one still on its way (that one is cached when done, nothing more); it
                # goes before the warm-up prompts still waiting
                waiting = [p for p, f in self._warming.items() if f.cancel()]
                if self._encoding is not None:
                    self._encoding[0].cancel()  # superseded: dropped unless it already started
                self._encoding = (self._pool().submit(self._encode_prompt, new.weighted_prompts),
                                  new.transition_chunks)
                self.warm_prompts(waiting)
            else:
                self._encoding = None
                self._switch_prompt(self._encode_prompt(new.weighted_prompts), new.transition_chunks)
        if new.loras != old.loras:  # the prompt's cross-attention K/V again, through the new weights
            self.executor.set_prompt(self._current_ctx())
        return out

    def close(self) -> None:
        """Drop the background prompt work still queued (an encode under way finishes on its own; the encoder's
        child process, shared by the pipelines of one stream, is ended by the Engine when the stream stops)."""
        pool, self._text_pool = self._text_pool, None
        self._warming, self._encoding = {}, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._text_pool is None:
            self._text_pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="sdv2-text", initializer=self.prompts.encoder.background_thread)
        return self._text_pool

    def warm_prompts(self, prompts) -> None:
        """Encode these prompts into the cache on the background thread, one after another (live streams: so a
        preset click is a cache hit). Prompts already cached or on their way are skipped."""
        self._warming = {p: f for p, f in self._warming.items() if not f.done()}
        self._warm = tuple(dict.fromkeys((*self._warm, *prompts)))
        for prompt in prompts:
            if prompt not in self._warming and prompt not in self.prompts:
                self._warming[prompt] = self._pool().submit(self.prompts.encode_trimmed, prompt)
        if self._warm and self.background_prompts:  # then, on the same thread: free the encoder if all are cached
            self._pool().submit(self._release_encoder)

    def _release_encoder(self) -> None:
        """Live streams: once the warm-up prompts and the prompts in use are cached, the text encoder's weights
        are freed (PromptCache.release_encoder); a prompt typed later loads them again in the background (and
        they are freed again after it)."""
        pending = self._pending.prompt_texts if self._pending is not None else ()
        self.prompts.release_encoder((*self._warm, *self.controls.prompt_texts, *pending))

    def _switch_prompt(self, target: torch.Tensor, transition_chunks: int) -> None:
        if transition_chunks > 0 and self.chunks > 0:
            self._transition = (self._current_ctx(), target, 0, transition_chunks)
        else:
            self._transition = None
            self._ctx = target
            self.executor.set_prompt(target)

    def _take_encoded_prompt(self) -> None:
        """At a chunk boundary: switch to a prompt encoded in the background once it is ready (its error, e.g. a
        text encoder that does not fit the model, surfaces here, on the engine thread)."""
        if self._encoding is not None and self._encoding[0].done():
            (future, transition), self._encoding = self._encoding, None
            self._switch_prompt(future.result(), transition)

    @property
    def prompt_pending(self) -> bool:
        """A new prompt is being encoded in the background; the stream still runs with the previous one."""
        return self._encoding is not None

    def _current_ctx(self) -> torch.Tensor:
        if self._transition is None:
            return self._ctx
        a, b, k, n = self._transition
        return torch.lerp(a, b, k / n)

    def _step_transition(self) -> None:
        if self._transition is None:
            return
        a, b, k, n = self._transition
        k += 1
        self._transition = None if k >= n else (a, b, k, n)
        self._ctx = b if k >= n else torch.lerp(a, b, k / n)
        self.executor.set_prompt(self._ctx)

    def _resize_slots(self, slots: int) -> None:
        """New Stream-Batch depth: slot i of the new cache continues from old slot min(i, n_old - 1)."""
        self.executor.resize(slots)
        self._starts = None

    # -- the chunk loop -----------------------------------------------------------------------------------------------

    def process(self, frames: np.ndarray) -> list[np.ndarray]:
        """Run one chunk of exactly `frames_needed` uint8 frames [T, H, W, 3]; returns the styled frames finished
        by this call (Stream-Batch returns a chunk n - 1 calls later; the first chunks return nothing)."""
        with self.executor.chunk_scope():
            out = self._process(frames)
        return out + self.executor.collect()

    @torch.inference_mode()
    def _process(self, frames: np.ndarray) -> list[np.ndarray]:
        out = []
        if not self._flushing and (self._pending is not None or self._pending_batch is not None):
            batch, self._pending_batch = self._pending_batch, None  # taken first: flushing re-enters process()
            out = self._apply_controls() if self._pending is not None else []
            out += self._apply_mode(batch)
        if not self._flushing:  # a blend starts on a real chunk, not on a drain's discarded fillers
            self._take_encoded_prompt()
        self.check_chunk(frames)
        self._last_input = frames[-1]
        # The motion statistic is read on the host from the host's frames (reading it from the device would make
        # the host wait for the GPU every chunk); the frames reach the device in one non_blocking upload.
        x_host = frames_from_uint8(frames)  # [1, 3, T, H, W] in [-1, 1]
        x = x_host if self.device.type == "cpu" else self._upload(frames)
        first = self.chunks == 0
        if first:
            self.motion.update(x_host[:, :, -1:])  # remember the last frame; the first chunk uses s0 as is
            s, t0 = self.motion.s_prev, self.motion.first_t
        else:
            s, t0 = self.motion.update(x_host)
        with self._timed("encode"):
            z = self.vae.encode_stream(x.to(self.vae.dtype)).to(self.dtype)  # raw means [1, 16, F, h, w]
        seed = self.controls.seed
        noise = keyed_noise(z.shape, seed, self.chunks, V2V_NOISE, 0, self.device).to(self.dtype)
        job = DenoiseJob(v2v_noise(z, noise, s), [t0] + denoising_steps(self.controls.steps)[1:], self.chunks, seed)
        with self._timed("dit"):
            if not self.batch:
                x0 = self._sequential(job, slots=1)
            elif first:
                x0 = self._sequential(job, slots=self.slots)  # prepare: every slot gets chunk 0
                self._fill = self.slots - 1
            else:
                x0 = self._batch_step(job)
        self.chunks += 1
        self._step_transition()
        if x0 is not None:
            out += self._decode(x0)
        return out

    def _sequential(self, job: DenoiseJob, slots: int) -> torch.Tensor | None:
        """All steps one after another (no-batch, and the Stream-Batch prepare on identical slots)."""
        x0 = self.executor.sequential(job, self.clock.next(job.x.shape[2]), slots)
        if slots > 1:  # Stream-Batch after prepare: empty slots positioned after chunk 0 (as upstream)
            self._starts, self._fresh = [self.clock.next_frame] * slots, True
        return x0

    def _batch_step(self, job: DenoiseJob) -> torch.Tensor | None:
        n = self.slots
        if self._starts is None:  # after a depth change: restart the fill from empty slots
            self._starts, self._fresh, self._fill = [self.clock.next_frame] * n, True, n - 1
        self._starts = [self.clock.next(job.x.shape[2])] + self._starts[:-1]
        x0 = self.executor.batch_step(job, self._starts, fresh=self._fresh, finish=self._fill == 0)
        self._fresh = False
        if self._fill > 0:
            self._fill -= 1
        return x0

    def _decode(self, x0: torch.Tensor) -> list[np.ndarray]:
        with self._timed("decode"):
            return list(self._download(decode_latent(self.vae, self.decoder, x0)))

    def flush(self) -> list[np.ndarray]:
        """Finish every chunk still in the Stream-Batch pipeline (feeding repeats of the last frame, whose outputs
        are discarded) and every frame still on its way back from the executor.

        The newest real chunk needs `slots - 1` more calls to come out; outputs of the pipeline fill still ahead
        of it are discarded by the `_fill` count as usual.
        """
        out: list[np.ndarray] = []
        in_flight = self.slots - 1 - self._fill  # real chunks in the slots
        if self.batch and self.chunks > 0 and self._starts is not None and in_flight > 0:
            filler = np.repeat(self._last_input[None], self.chunk_pixels, axis=0)
            # Controls set meanwhile (another thread may call set_controls/set_mode at any time) must not change the
            # depth in the middle of the drain: they stay queued for the next real chunk.
            self._flushing, outer = True, self._flushing
            try:
                for _ in range(self.slots - 1):
                    out += self.process(filler)
            finally:
                self._flushing = outer
            self._fill = self.slots - 1  # what is in the slots now is filler
        return out + self.executor.collect(wait=True)
