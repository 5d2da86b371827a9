"""StreamPipeline: pixel frames in, styled pixel frames out, one chunk at a time (single device).

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
chunk boundary; a prompt change only replaces the cross-attention K/V, never the stream's self-attention cache.

Frames are uint8 [T, H, W, 3] numpy arrays at the model resolution (engine/io/frames.py fits camera frames).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from sdv2_studio.engine.config import CacheConfig
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
from sdv2_studio.engine.vae import WanVAE


@dataclass(frozen=True)
class Controls:
    """What a preset or the user changes live."""

    prompt: str = "a high quality anime illustration, clean cel shading, vibrant colors"
    steps: int = 2  # denoising steps 1-4
    noise_scale: float = 0.8  # s0 of the motion-aware controller; more = stronger restyle
    seed: int = 0
    transition_chunks: int = 0  # >0: interpolate the prompt embedding over this many chunks

    def validated(self) -> Controls:
        denoising_steps(self.steps)
        if not 0.0 < self.noise_scale <= 1.0:
            raise EngineError(f"noise scale must be in (0, 1], not {self.noise_scale}")
        if self.transition_chunks < 0:
            raise EngineError("transition length must be >= 0 chunks")
        if not self.prompt.strip():
            raise EngineError("the prompt is empty; type what the stream should look like")
        return self


def keyed_noise(shape, seed: int, chunk: int, kind: int, index: int, device) -> torch.Tensor:
    """Standard normal noise determined by (seed, chunk, kind, index) alone (float32)."""
    key = (seed * 1_000_003 + chunk) * 97 + kind * 31 + index
    gen = torch.Generator(device=device).manual_seed(key & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)


class StreamPipeline:
    """The streaming v2v loop for one stream on one device."""

    def __init__(self, dit: CausalWanModel, vae: WanVAE, prompts: PromptCache, *, size: tuple[int, int],
                 controls: Controls = Controls(), batch: bool = True, cache_cfg: CacheConfig = CacheConfig(),
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 decoder: torch.nn.Module | None = None, profile: bool = False):
        """`decoder`: an alternative streaming decoder with the VAE's decode contract (TAEHV); `profile`:
        synchronise the device around each stage so `timings` are exact (costs a little on GPUs)."""
        self.dit, self.vae, self.prompts = dit, vae, prompts
        self.decoder = decoder or vae
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
        self.controls = controls.validated()
        self.grid = FlowMatchGrid()
        self.motion = MotionNoiseController(s0=self.controls.noise_scale)
        self.first_pixels = 1 + 4 * (cache_cfg.first_chunk_frames - 1)  # 5
        self.chunk_pixels = 4 * cache_cfg.chunk_frames  # 4
        self._pending: Controls | None = None
        self._pending_batch: bool | None = None
        self.cache: KVCache | None = None
        self.reset()

    # -- state --------------------------------------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        return self.controls.steps if self.batch else 1

    def reset(self) -> None:
        """Start a new stream (new clip): caches, VAE streams, motion state, positions."""
        self.clock = StreamClock(self.cache_cfg)
        self.vae.reset_stream()
        if self.decoder is not self.vae:
            self.decoder.reset_stream()
        self.motion.reset()
        self._new_cache(self.slots)
        self._ctx = self._encode_prompt(self.controls.prompt)
        self._set_prompt(self._ctx)
        self._transition: tuple[torch.Tensor, torch.Tensor, int, int] | None = None
        self.chunks = 0
        self._hidden: torch.Tensor | None = None  # Stream-Batch slots [n, 16, F, h, w]
        self._starts: list[int] = []
        self._fill = 0  # Stream-Batch calls whose output is pipeline fill, not a real chunk

    def _new_cache(self, slots: int) -> None:
        self.cache = KVCache(self.dit.cfg, self.cache_cfg, slots, self.frame_tokens, device=self.device,
                             dtype=self.dtype)
        self.cache.set_steps(self.controls.steps)

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

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        with self._timed("text"):
            ctx = self.prompts.encode(prompt, device=self.device, dtype=torch.float32)  # [1, Lt, text_dim]
        if ctx.shape[-1] != self.dit.cfg.text_dim:
            raise EngineError(f"the text encoder gives {ctx.shape[-1]}-wide embeddings but the model expects "
                              f"{self.dit.cfg.text_dim}; use the text encoder that belongs to this model")
        return ctx

    @property
    def frames_needed(self) -> int:
        """Pixel frames the next chunk consumes."""
        return self.first_pixels if self.chunks == 0 else self.chunk_pixels

    @property
    def latency_chunks(self) -> int:
        """Chunks between a chunk's input and its output (Stream-Batch pipeline depth)."""
        return self.slots - 1

    # -- controls -----------------------------------------------------------------------------------------------------

    def set_controls(self, **changes) -> Controls:
        """Queue control changes; they apply at the next chunk boundary. Returns the validated result."""
        base = self._pending or self.controls
        new = dataclasses.replace(base, **changes).validated()
        self._pending = new
        return new

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
            if self.batch and self.chunks > 0:
                out = self.flush()  # finish the chunks in flight with the old steps
                self._resize_slots(new.steps)
            self._set_steps(new.steps)
        if new.noise_scale != old.noise_scale:
            self.motion.set_s0(new.noise_scale)
        self.controls = new
        if new.prompt != old.prompt:
            target = self._encode_prompt(new.prompt)
            if new.transition_chunks > 0 and self.chunks > 0:
                self._transition = (self._current_ctx(), target, 0, new.transition_chunks)
            else:
                self._transition = None
                self._ctx = target
                self._set_prompt(target)
        return out

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
        self._set_prompt(self._ctx)

    def _resize_slots(self, slots: int) -> None:
        """New Stream-Batch depth: slot i of the new cache continues from old slot min(i, n_old - 1)."""
        self.cache = self.cache.resized(slots)
        self._hidden = None

    def _set_prompt(self, ctx: torch.Tensor) -> None:
        """Replace the prompt's cross-attention K/V (never the self-attention cache)."""
        self.cache.set_prompt(self.dit, ctx)

    def _set_steps(self, steps: int) -> None:
        self.cache.set_steps(steps)

    # -- the chunk loop -----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def process(self, frames: np.ndarray) -> list[np.ndarray]:
        """Run one chunk of exactly `frames_needed` uint8 frames [T, H, W, 3]; returns the styled frames finished
        by this call (Stream-Batch returns a chunk n - 1 calls later; the first chunks return nothing)."""
        out = []
        if self._pending is not None or self._pending_batch is not None:
            batch, self._pending_batch = self._pending_batch, None  # taken first: flushing re-enters process()
            out = self._apply_controls() if self._pending is not None else []
            out += self._apply_mode(batch)
        if len(frames) != self.frames_needed:
            raise ValueError(f"chunk needs {self.frames_needed} frames, got {len(frames)}")
        if tuple(frames.shape[1:3]) != self.size:
            raise EngineError(f"frames are {frames.shape[2]}x{frames.shape[1]} but the engine runs at "
                              f"{self.size[1]}x{self.size[0]}; fit frames with engine.io.frames.fit_frame")
        self._last_input = frames[-1]
        x = frames_from_uint8(frames).to(self.device)  # [1, 3, T, H, W] in [-1, 1]
        first = self.chunks == 0
        if first:
            self.motion.update(x[:, :, -1:])  # remember the last frame; the first chunk uses s0 as is
            s, t0 = self.motion.s_prev, self.motion.first_t
        else:
            s, t0 = self.motion.update(x)
        with self._timed("encode"):
            z = self.vae.encode_stream(x.to(self.vae.dtype)).to(self.dtype)  # raw means [1, 16, F, h, w]
        noisy = v2v_noise(z, self._randn(z.shape, 0), s)
        ts = [t0] + denoising_steps(self.controls.steps)[1:]
        with self._timed("dit"):
            if not self.batch:
                x0 = self._denoise_sequential(noisy, ts, slots=1)
            elif first:
                x0 = self._denoise_sequential(noisy, ts, slots=self.slots)  # prepare: every slot gets chunk 0
                self._fill = self.slots - 1
            else:
                x0 = self._stream_batch_step(noisy, ts)
        self.chunks += 1
        self._step_transition()
        if x0 is not None:
            out += self._decode(x0)
        return out

    def _randn(self, shape, kind: int, index: int = 0) -> torch.Tensor:
        """Keyed noise: a function of (seed, chunk, kind, index) only, not of the order of draws, so a pipeline
        split across ranks draws exactly the same noise as one process. kind 0 = v2v noise, 1 = re-noising."""
        return keyed_noise(shape, self.controls.seed, self.chunks, kind, index, self.device).to(self.dtype)

    def _denoise_sequential(self, x: torch.Tensor, ts: list[int], slots: int) -> torch.Tensor:
        """All steps one after another (no-batch, and the Stream-Batch prepare on identical slots)."""
        F = x.shape[2]
        start = self.clock.next(F)
        x = x.expand(slots, -1, -1, -1, -1)
        x0 = x
        for i, t in enumerate(ts):
            tt = torch.full((slots, F), float(t), device=self.device)
            flow = self.dit.forward_chunk(x, tt, self.cache, [start] * slots, advance=i == len(ts) - 1)
            x0 = self.grid.to_x0(flow, x, tt)
            if i < len(ts) - 1:
                x = self.grid.add_noise(x0, self._randn(x0[:1].shape, 1, i).expand_as(x0), ts[i + 1])
        if slots > 1:  # Stream-Batch after prepare: empty slots positioned after chunk 0 (as upstream)
            h, w = x0.shape[-2:]
            self._hidden = x0.new_zeros(slots, x0.shape[1], self.cache_cfg.chunk_frames, h, w)
            self._starts = [self.clock.next_frame] * slots
        return x0[:1]

    def _stream_batch_step(self, noisy: torch.Tensor, ts: list[int]) -> torch.Tensor | None:
        n = self.slots
        if self._hidden is None:  # after a depth change: restart the fill from empty slots
            self._hidden = torch.zeros((n, *noisy.shape[1:]), device=self.device, dtype=self.dtype)
            self._starts = [self.clock.next_frame] * n
            self._fill = n - 1
        start = self.clock.next(noisy.shape[2])
        hidden = torch.cat([noisy, self._hidden[:-1]])  # slot i+1 continues slot i's chunk
        self._starts = [start] + self._starts[:-1]
        tt = torch.tensor(ts, device=self.device, dtype=torch.float32)[:, None].expand(n, noisy.shape[2])
        flow = self.dit.forward_chunk(hidden, tt, self.cache, self._starts)
        x0 = self.grid.to_x0(flow, hidden, tt)
        for i in range(n - 1):  # re-noise each unfinished chunk to its next timestep
            x0[i:i + 1] = self.grid.add_noise(x0[i:i + 1], self._randn(x0[i:i + 1].shape, 1, i), ts[i + 1])
        self._hidden = x0
        if self._fill > 0:
            self._fill -= 1
            return None
        return x0[n - 1:]

    def _decode(self, x0: torch.Tensor) -> list[np.ndarray]:
        with self._timed("decode"):
            z = self.vae.denormalize(x0.float())  # upstream de-normalises before decoding
            px = self.decoder.decode_stream(z.to(self.decoder.dtype))  # [1, 3, T, H, W] in [-1, 1]
            u8 = ((px[0].float().permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            return list(u8.cpu().numpy())

    def flush(self) -> list[np.ndarray]:
        """Finish every chunk still in the Stream-Batch pipeline (feeding repeats of the last frame, whose outputs
        are discarded). No-op in no-batch mode.

        The newest real chunk needs `slots - 1` more calls to come out; outputs of the pipeline fill still ahead
        of it are discarded by the `_fill` count as usual.
        """
        if not self.batch or self.chunks == 0 or self._hidden is None:
            return []
        if self.slots - 1 - self._fill <= 0:  # nothing real in flight
            return []
        out: list[np.ndarray] = []
        filler = np.repeat(self._last_input[None], self.chunk_pixels, axis=0)
        for _ in range(self.slots - 1):
            out += self.process(filler)
        self._fill = self.slots - 1  # what is in the slots now is filler
        return out
