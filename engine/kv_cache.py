"""The rolling KV cache of StreamDiffusionV2: fixed buffers, attention sinks, ring rolling, adaptive sink refresh.

One `KVCache` serves a contiguous range of DiT blocks (all of them on one GPU, a slice per pipeline rank) for B
stream-batch slots. Buffers are allocated once and never grow:

    k, v        [layers, B, H, S, D]   S = cache_frames * L tokens; keys stored after RoPE
    cross       per layer (k, v) [B, H, Lt, D]: the prompt's cross-attention K/V, replaced by `set_prompt`
                without touching k/v (a prompt switch does not restart the stream)

Slot rule (upstream's behaviour, reproduced exactly by default; see README "Streaming semantics"):
  * Filling phase: a chunk is written right after the previous one. The end offset of the *next* slot is queued
    for rolling when it lies past the sink region.
  * Full phase: the chunk overwrites the slot whose end offset is at the front of the eviction queue; that entry
    is popped (only on the chunk's last denoising step) and re-queued at the back if it is a rolling slot. So the
    first `sink_frames` slots stay fixed (the attention sinks) and the others rotate FIFO.
  * Adaptive sink refresh (single-frame chunks, tau > -1): before writing, for each sink frame the cosine
    similarity of its token-mean K with the new chunk's token-mean K is averaged with the same for V. If the
    minimum is below tau, the least similar sink slot goes to the FRONT of the queue, so the next full-phase write
    replaces it (and it leaves the rotation). Each layer decides for itself.
  * The chunk attends to every valid slot including the one just written (no mask inside the cache).

Host/device split (no host sync and no host-to-device copy in the hot path; engine/sync_check.py proves it with
fake tensors on a non-host device): everything that depends only on chunk positions (phase, fill offsets, queue
appends, attention lengths) is host bookkeeping in `plan()`, done once per forward. Its results live in
preallocated device tensors (`DeviceInts`) updated in place with scalar fills, only where a value changed: no
`torch.tensor(list, device=...)`.
The only data-dependent state, the sink-refresh decisions, lives on the device: per layer and slot a small stack of
pending sink refreshes (the queue's front part) and a pointer into the rolling FIFO (its back part). Targets are
chosen with `torch.where`, writes are `scatter_`.

`StreamClock` hands out chunk positions with the periodic RoPE refresh: once a chunk would start at temporal
frame >= rope_refresh (50), it starts at cache_frames - 1 instead and counting continues from there, so positions
stay bounded for hours. Cached keys keep the rotation they were written with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from sdv2_studio.engine.config import CacheConfig, ModelConfig
from sdv2_studio.engine.errors import EngineError

# Per-layer state tensors [layers, B, ...]: what a layer (block) and a slot of the cache consist of on the device.
_LAYER_STATE = ("k", "v", "cross_k", "cross_v", "stack", "stack_len", "ptr")


class DeviceInts:
    """A small preallocated device tensor of host-known integers (or bools), with a host mirror: `set` writes only
    the entries that changed, each with a scalar fill (a kernel argument, not a copy), so the device never waits for
    the host and the tensor's address never changes (CUDA-graph friendly)."""

    def __init__(self, shape: tuple[int, ...], *, device, dtype: torch.dtype = torch.long, fill: int = 0):
        self.t = torch.full(shape, fill, dtype=dtype, device=device)
        self._host = [[fill] * shape[-1] for _ in range(shape[0])] if len(shape) == 2 else [fill] * shape[0]

    def set(self, index: int, values: list[int] | int) -> None:
        """Row `index` (2-D) or element `index` (1-D) becomes `values`."""
        if isinstance(self._host[index], list):
            row, t = self._host[index], self.t[index]
            for j, v in enumerate(values):
                if row[j] != v:
                    row[j] = v
                    t[j].fill_(v)
        elif self._host[index] != values:
            self._host[index] = values
            self.t[index].fill_(values)

    def fill(self, value: int) -> None:
        """Every entry becomes `value` (a reset)."""
        self.t.fill_(value)
        self._host = [[value] * len(r) for r in self._host] if isinstance(self._host[0], list) \
            else [value] * len(self._host)


class StreamClock:
    """Temporal start frame of each successive chunk, with upstream's RoPE refresh."""

    def __init__(self, cache_cfg: CacheConfig):
        self.cfg = cache_cfg
        self.next_frame = 0
        self.chunks = 0

    def reset(self) -> None:
        self.next_frame, self.chunks = 0, 0

    def next(self, n_frames: int | None = None) -> int:
        """Start frame for the next chunk of `n_frames` latent frames (default: the configured chunk sizes)."""
        if n_frames is None:
            n_frames = self.cfg.first_chunk_frames if self.chunks == 0 else self.cfg.chunk_frames
        start = self.next_frame
        if start >= self.cfg.rope_refresh:
            start = self.cfg.cache_frames - 1
        self.next_frame = start + n_frames
        self.chunks += 1
        return start


@dataclass
class StepPlan:
    """Host-side decisions for one forward call, shared by every layer of the cache."""

    n: int  # new tokens per slot
    start_frames_dev: torch.Tensor  # [B] long, RoPE start frame per slot
    fill_end: torch.Tensor  # [B] long, write end offset for slots in the filling phase
    full: torch.Tensor  # [B] bool, slot is in the full (rolling) phase
    any_full: bool
    pop: torch.Tensor  # [B] bool, advance the eviction queue after the write
    sink_check: bool
    length: int  # tokens of cache attended (max over slots)
    mask: torch.Tensor | None  # [B, 1, 1, length] bool when slots have different valid lengths
    sl: slice = field(default_factory=lambda: slice(None))  # slots covered: all, or one (a pipeline micro-batch)


class KVCache:
    """Rolling self-attention cache + prompt cross-attention cache for `blocks` of a model, B slots."""

    def __init__(self, cfg: ModelConfig, cache_cfg: CacheConfig, batch: int, frame_tokens: int, *,
                 device: torch.device | str, dtype: torch.dtype, blocks: range | None = None):
        self.cfg, self.cc = cfg, cache_cfg
        self.blocks = range(cfg.num_layers) if blocks is None else blocks
        self.B, self.L = batch, frame_tokens
        self.S = cache_cfg.cache_frames * frame_tokens
        self.sink_tokens = cache_cfg.sink_frames * frame_tokens
        self.device, self.dtype = torch.device(device), dtype
        # Never inference tensors (a cache made inside inference_mode, e.g. on a control change mid-stream, would
        # otherwise differ from one made outside it, and a compiled step would recompile): updated in place only.
        with torch.inference_mode(False):
            nl, H, D = len(self.blocks), cfg.num_heads, cfg.head_dim
            self.k = torch.empty(nl, batch, H, self.S, D, device=device, dtype=dtype)  # zeroed once, by reset()
            self.v = torch.empty_like(self.k)
            self.cross_k = torch.zeros(nl, batch, H, cfg.text_len, D, device=device, dtype=dtype)
            self.cross_v = torch.zeros_like(self.cross_k)
            self.cross = [(self.cross_k[i], self.cross_v[i]) for i in range(nl)]
            R = max(1, cache_cfg.cache_frames - cache_cfg.sink_frames)  # rolling slots can never exceed this
            cap = cache_cfg.refresh_stack
            self.stack = torch.zeros(nl, batch, cap, dtype=torch.long, device=device)  # pending sink refreshes
            self.stack_len = torch.zeros(nl, batch, dtype=torch.long, device=device)
            self.ptr = torch.zeros(nl, batch, dtype=torch.long, device=device)  # head of the rolling FIFO
            self._fifo = DeviceInts((batch, R), device=device)  # the rolling FIFO's slot end offsets per slot
            self._fifo_len = DeviceInts((batch,), device=device, fill=1)
            # per-call plan values, one entry per slot (see `plan`)
            self._plan_start = DeviceInts((batch,), device=device)
            self._plan_fill_end = DeviceInts((batch,), device=device)
            self._plan_full = DeviceInts((batch,), device=device, dtype=torch.bool, fill=False)
            self._plan_pop = DeviceInts((batch,), device=device, dtype=torch.bool, fill=False)
            self._plan_length = DeviceInts((batch,), device=device)
            self._arange = torch.arange(self.S, device=device)
        self.total_steps = 1
        self.reset()

    # -- verbs -----------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the stream (keeps the prompt)."""
        self.k.zero_()
        self.v.zero_()
        self.stack.zero_()
        self.stack_len.zero_()
        self.ptr.zero_()
        self._fifo.fill(0)
        self._fifo_len.fill(1)
        self.local_end = [0] * self.B
        self.global_end = [0] * self.B
        self.fifo: list[list[int]] = [[] for _ in range(self.B)]
        self.sealed = [False] * self.B
        self.step_counter = self.total_steps  # upstream's kv_cache['current_step'] (B = 1 only)

    @torch.no_grad()
    def set_prompt(self, model, context: torch.Tensor) -> None:
        """Recompute the cross-attention K/V from umT5 output `context` [1 or B, Lt', text_dim]."""
        self.set_cross(model, model.embed_text(context.to(self.device)))

    @torch.no_grad()
    def set_cross(self, model, ctx: torch.Tensor) -> None:
        """Cross-attention K/V of this cache's blocks from the text-embedded prompt `ctx` [1 or B, Lt, C]."""
        for j, (k, v) in enumerate(model.cross_kv(ctx.to(self.device), self.blocks)):
            self.cross_k[j].copy_(k.expand(self.B, -1, -1, -1))
            self.cross_v[j].copy_(v.expand(self.B, -1, -1, -1))

    def cross_for(self, plan: StepPlan) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prompt K/V of the slots a call covers, per layer."""
        return [(k[plan.sl], v[plan.sl]) for k, v in self.cross]

    def set_steps(self, steps: int) -> None:
        """Denoising steps per chunk (only matters for ring_advance="upstream" with one slot)."""
        self.total_steps = self.step_counter = steps

    def copy_slot(self, src: int, dst: int) -> None:
        """Make slot `dst` a copy of slot `src` (Stream-Batch fill after a no-batch run, SLO mode switches)."""
        self._copy_slot(self, src, dst)

    def resized(self, slots: int) -> KVCache:
        """A new cache with `slots` slots; slot i continues from this cache's slot min(i, B - 1) (Stream-Batch depth
        change). Allocates: call it at a control change, never per chunk."""
        new = KVCache(self.cfg, self.cc, slots, self.L, device=self.device, dtype=self.dtype, blocks=self.blocks)
        new.set_steps(self.total_steps)
        for i in range(slots):
            new._copy_slot(self, min(i, self.B - 1), i)
        return new

    def _copy_slot(self, other: KVCache, src: int, dst: int) -> None:
        """Slot `dst` of this cache becomes a copy of slot `src` of `other` (same blocks)."""
        for name in _LAYER_STATE:
            getattr(self, name)[:, dst].copy_(getattr(other, name)[:, src])
        self._fifo.set(dst, other._fifo._host[src])
        self._fifo_len.set(dst, other._fifo_len._host[src])
        self.local_end[dst], self.global_end[dst] = other.local_end[src], other.global_end[src]
        self.sealed[dst], self.fifo[dst] = other.sealed[src], list(other.fifo[src])

    # -- layer moves (pipeline-parallel block rebalancing) -----------------------------------------------------------

    def for_blocks(self, blocks: range) -> KVCache:
        """A cache for `blocks` that continues this one's stream: the slot bookkeeping (positions, rolling FIFO, step
        counter) and the layers both caches hold are copied; layers new to it are filled with `import_layers`."""
        new = KVCache(self.cfg, self.cc, self.B, self.L, device=self.device, dtype=self.dtype, blocks=blocks)
        new.set_steps(self.total_steps)
        new.step_counter = self.step_counter
        new.local_end, new.global_end = list(self.local_end), list(self.global_end)
        new.sealed, new.fifo = list(self.sealed), [list(q) for q in self.fifo]
        for b in range(self.B):
            new._fifo.set(b, self._fifo._host[b])
            new._fifo_len.set(b, self._fifo_len._host[b])
        both = range(max(blocks.start, self.blocks.start), min(blocks.stop, self.blocks.stop))
        if len(both):
            new.import_layers(both, self.export_layers(both))
        return new

    def export_layers(self, blocks: range) -> list[torch.Tensor]:
        """The per-layer state of `blocks` (self-attention K/V, prompt K/V, pending sink refreshes, FIFO heads) as
        contiguous views, in the order `import_layers` takes."""
        sl = self._layers(blocks)
        return [getattr(self, name)[sl] for name in _LAYER_STATE]

    def import_layers(self, blocks: range, state: list[torch.Tensor]) -> None:
        """Overwrite the layers of `blocks` with `state` from `export_layers` of a cache of the same stream."""
        sl = self._layers(blocks)
        for name, t in zip(_LAYER_STATE, state, strict=True):
            getattr(self, name)[sl].copy_(t)

    def _layers(self, blocks: range) -> slice:
        if not (self.blocks.start <= blocks.start and blocks.stop <= self.blocks.stop):
            raise ValueError(f"blocks {blocks.start}-{blocks.stop - 1} are not all in this cache "
                             f"({self.blocks.start}-{self.blocks.stop - 1})")
        return slice(blocks.start - self.blocks.start, blocks.stop - self.blocks.start)

    def plan(self, start_frames: list[int], grid: tuple[int, int, int], advance: bool = True,
             slot: int | None = None) -> StepPlan:
        """Host bookkeeping for one call writing a chunk of grid (F, h, w) at `start_frames` (one per slot).

        `advance`: this call is the chunk's last denoising step (used by ring_advance="last_step"; with the default
        "upstream" rule one slot pops on upstream's step counter and several slots pop on every call).
        `slot`: the call covers only this slot (`start_frames` has one entry): pipeline-parallel micro-batches run
        the slots of a Stream-Batch call one at a time with exactly the same per-slot bookkeeping.
        """
        f, h, w = grid
        if h * w != self.L:
            raise EngineError(f"chunk has {h * w} tokens per frame but the cache was built for {self.L}; "
                              "rebuild the cache after changing the resolution")
        slots = range(self.B) if slot is None else range(slot, slot + 1)
        if len(start_frames) != len(slots):
            raise ValueError(f"need {len(slots)} start frames, got {len(start_frames)}")
        n = f * self.L
        if n > self.S:
            raise EngineError(f"a chunk of {f} latent frames does not fit a {self.cc.cache_frames}-frame cache")
        fill_end, full = [], []
        upstream = self.cc.ring_advance == "upstream"
        for b, sf in zip(slots, start_frames):
            start = sf * self.L
            end = start + n
            was_full = self.local_end[b] >= self.S if upstream else self.sealed[b]
            if end > self.S or was_full:  # full: overwrite the slot at the queue's front
                if not self.fifo[b]:
                    raise EngineError("the KV cache has no rolling slots for this chunk size; "
                                      "use more cache_frames or fewer sink_frames")
                self.local_end[b] = self.S
                full.append(True)
                fill_end.append(self.S)  # unused for full slots
            else:  # filling: append after the previous chunk
                self.local_end[b] += end - self.global_end[b]
                rolling_end = end + n
                if self.sink_tokens < rolling_end <= self.S and (not self.fifo[b] or self.fifo[b][-1] != rolling_end):
                    self.fifo[b].append(rolling_end)
                    R = self._fifo.t.shape[1]
                    self._fifo.set(b, self.fifo[b] + [0] * (R - len(self.fifo[b])))
                    self._fifo_len.set(b, max(1, len(self.fifo[b])))
                full.append(False)
                fill_end.append(self.local_end[b])
            self.global_end[b] = end
            if advance and self.local_end[b] >= self.S:
                self.sealed[b] = True  # "last_step": the cache is full once a whole chunk has been written
        lengths = [self.local_end[b] for b in slots]
        length = max(lengths)
        sl = slice(None) if slot is None else slice(slot, slot + 1)
        mask = None
        if min(lengths) != length:
            for b, n_valid in zip(slots, lengths):
                self._plan_length.set(b, n_valid)
            valid = self._plan_length.t[sl, None] > self._arange[:length]  # [B, length]
            mask = valid[:, None, None, :]
        if self.cc.ring_advance == "last_step":
            pop = [fl and advance for fl in full]
        elif self.B > 1:  # Stream-Batch: every slot advances on every call
            pop = list(full)
        else:
            pop = [False]
            if full[0]:
                if self.step_counter > 1:
                    self.step_counter -= 1
                else:
                    pop, self.step_counter = [True], self.total_steps
        for b, sf, fe, fl, p in zip(slots, start_frames, fill_end, full, pop):
            self._plan_start.set(b, sf)
            self._plan_fill_end.set(b, fe)
            self._plan_full.set(b, fl)
            self._plan_pop.set(b, p)
        return StepPlan(
            n=n, start_frames_dev=self._plan_start.t[sl], fill_end=self._plan_fill_end.t[sl],
            full=self._plan_full.t[sl], any_full=any(full), pop=self._plan_pop.t[sl],
            sink_check=(self.cc.sink_frames > 0 and self.cc.sink_tau > -1 and n <= self.L),
            length=length, mask=mask, sl=sl,
        )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, plan: StepPlan):
        """Write the chunk's roped k and v [B, H, n, D] for `layer`; return (k, v, mask) to attend over."""
        sl = plan.sl
        kb, vb = self.k[layer, sl], self.v[layer, sl]  # [B, H, S, D] (views)
        if plan.sink_check:
            self._sink_check(layer, k, v, sl)
        end = plan.fill_end
        if plan.any_full:
            end = torch.where(plan.full, self._front(layer, sl), end)
        B, H, n, D = k.shape
        idx = (end[:, None] - n + self._arange[:n])[:, None, :, None].expand(B, H, n, D)  # [B, H, n, D]
        kb.scatter_(2, idx, k.to(kb.dtype))
        vb.scatter_(2, idx, v.to(vb.dtype))
        self._pop(layer, plan.pop, sl)  # a no-op for slots not popping; unconditional: one compiled graph per shape
        return kb[:, :, :plan.length], vb[:, :, :plan.length], plan.mask

    # -- device-side eviction queue --------------------------------------------------------------------------------

    def _front(self, layer: int, sl: slice = slice(None)) -> torch.Tensor:
        """End offset [B] at the queue's front: the newest pending sink refresh, else the rolling FIFO head."""
        st, ln = self.stack[layer, sl], self.stack_len[layer, sl]
        top = st.gather(1, (ln - 1).clamp(min=0)[:, None])[:, 0]
        head = self._fifo.t[sl].gather(1, self.ptr[layer, sl][:, None])[:, 0]
        return torch.where(ln > 0, top, head)

    def _pop(self, layer: int, pop: torch.Tensor, sl: slice = slice(None)) -> None:
        ln, ptr = self.stack_len[layer, sl], self.ptr[layer, sl]
        has = ln > 0
        ln.sub_((pop & has).long())  # a refreshed sink leaves the rotation
        ptr.copy_(torch.where(pop & ~has, (ptr + 1) % self._fifo_len.t[sl], ptr))  # rolling slot to the back

    def _sink_check(self, layer: int, k: torch.Tensor, v: torch.Tensor, sl: slice = slice(None)) -> None:
        m, L = self.cc.sink_frames, self.L

        def sims(buf: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            sink = buf[:, :, : m * L].unflatten(2, (m, L)).mean(3)  # [B, H, m, D]
            sink = sink.transpose(1, 2).flatten(2)  # [B, m, H*D]
            cur = new.to(buf.dtype).mean(2).flatten(1)[:, None]  # [B, 1, H*D]
            return F.cosine_similarity(sink.float(), cur.float(), dim=-1)  # [B, m]

        avg = (sims(self.k[layer, sl], k) + sims(self.v[layer, sl], v)) / 2
        idx = avg.argmin(1)  # least similar sink frame
        push = avg.gather(1, idx[:, None])[:, 0] < self.cc.sink_tau  # [B]
        self._push(layer, push, (idx + 1) * L, sl)

    def _push(self, layer: int, push: torch.Tensor, val: torch.Tensor, sl: slice = slice(None)) -> None:
        st, ln = self.stack[layer, sl], self.stack_len[layer, sl]
        cap = st.shape[1]
        over = push & (ln >= cap)  # bounded: drop the oldest pending refresh
        st.copy_(torch.where(over[:, None], st.roll(-1, 1), st))
        ln.sub_(over.long())
        pos = ln.clamp(max=cap - 1)[:, None]
        st.scatter_(1, pos, torch.where(push, val, st.gather(1, pos)[:, 0])[:, None])
        ln.add_(push.long())

    def device_buffers(self) -> list[torch.Tensor]:
        """Every device tensor a step reads or updates in place (compiled steps pin their addresses)."""
        ints = (self._fifo, self._fifo_len, self._plan_start, self._plan_fill_end, self._plan_full, self._plan_pop,
                self._plan_length)
        return [getattr(self, name) for name in _LAYER_STATE] + [d.t for d in ints] + [self._arange]

    # -- introspection (tests, stats; these do sync) ------------------------------------------------------------------

    def queue(self, layer: int, slot: int = 0) -> list[int]:
        """The eviction queue of `layer`/`slot` as upstream's list of slot end offsets (front first)."""
        n = int(self.stack_len[layer, slot])
        stack = self.stack[layer, slot, :n].tolist()[::-1]
        q = self.fifo[slot]
        p = int(self.ptr[layer, slot]) % max(1, len(q))
        return stack + q[p:] + q[:p]

    def nbytes(self) -> int:
        return self.buffer_bytes(self.cfg, self.cc, self.B, self.L, len(self.blocks), self.dtype)

    @staticmethod
    def buffer_bytes(cfg: ModelConfig, cache_cfg: CacheConfig, batch: int, frame_tokens: int, layers: int,
                     dtype: torch.dtype) -> int:
        """Bytes of the k, v, cross_k and cross_v buffers of a cache of `layers` blocks and `batch` slots (the
        memory estimate, engine/memory.py, uses it before any cache exists)."""
        tokens = cache_cfg.cache_frames * frame_tokens + cfg.text_len  # self-attention cache + prompt
        return 2 * layers * batch * cfg.num_heads * tokens * cfg.head_dim * dtype.itemsize
