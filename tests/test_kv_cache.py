"""The rolling KV cache: block-causal equivalence, slot rules (sinks, ring, refresh quirks), bounded state."""

from __future__ import annotations

import contextlib

import pytest
import torch
from sdv2_studio.engine.config import PRESETS, CacheConfig
from sdv2_studio.engine.kv_cache import KVCache, StreamClock
from sdv2_studio.engine.model import CausalWanModel, cast_model

CFG = PRESETS["tiny"]
H, W = 8, 8  # latent size -> 4x4 = 16 tokens per frame
L = (H // 2) * (W // 2)


def random_model(seed: int = 0) -> CausalWanModel:
    torch.manual_seed(seed)
    m = CausalWanModel(CFG).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1 if p.dim() > 1 else 0.3)
    return m


DEFAULT = CacheConfig()


def stream(model, x, t, ctx, chunks, cache_cfg=DEFAULT, dtype=torch.float32):
    B = x.shape[0]
    cache = KVCache(model.cfg, cache_cfg, B, L, device="cpu", dtype=dtype)
    cache.set_prompt(model, ctx)
    clock, outs, f0 = StreamClock(cache_cfg), [], 0
    for n in chunks:
        s = clock.next(n)
        outs.append(model.forward_chunk(x[:, :, f0:f0 + n], t[:, f0:f0 + n], cache, [s] * B))
        f0 += n
    return torch.cat(outs, 2), cache


@torch.no_grad()
def test_streaming_equals_block_causal_forward():
    model = random_model()
    torch.manual_seed(1)
    x = torch.randn(2, 16, 6, H, W)
    t = torch.randint(50, 950, (2, 6)).float()  # per-frame timesteps
    ctx = torch.randn(2, 20, CFG.text_dim)
    chunks = [2, 1, 1, 1, 1]  # 6 frames: the cache is exactly full, nothing evicted yet
    full = model(x, t, ctx, frame_blocks=chunks)
    streamed, _ = stream(model, x, t, ctx, chunks)
    assert streamed.shape == full.shape == (2, 16, 6, H, W)
    err = (streamed - full).abs().max().item()
    assert err < 2e-5, err  # fp32; measured ~2e-6
    # The mask matters: a bidirectional forward differs from the causal stream.
    assert (model(x, t, ctx) - full).abs().max().item() > 1e-2


@torch.no_grad()
def test_streaming_bf16_close_to_fp32():
    model = random_model()
    torch.manual_seed(2)
    x, t, ctx = torch.randn(1, 16, 5, H, W), torch.full((1, 5), 700.0), torch.randn(1, 20, CFG.text_dim)
    ref, _ = stream(model, x, t, ctx, [2, 1, 1, 1])
    bf = cast_model(random_model(), torch.bfloat16)
    assert bf.time_projection[1].weight.dtype == torch.float32  # fp32 island
    assert bf.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    out, cache = stream(bf, x, t, ctx, [2, 1, 1, 1], dtype=torch.bfloat16)
    assert cache.k.dtype == torch.bfloat16
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 3e-2, rel  # bf16 weights/activations vs fp32: measured ~1e-2


@torch.no_grad()
def test_stream_batch_slots_are_independent():
    model = random_model()
    torch.manual_seed(3)
    x, t, ctx = torch.randn(2, 16, 9, H, W), torch.rand(2, 9) * 900, torch.randn(1, 20, CFG.text_dim)
    chunks = [2] + [1] * 7  # past the first eviction
    both, _ = stream(model, x, t, ctx, chunks)
    for b in range(2):
        one, _ = stream(model, x[b:b + 1], t[b:b + 1], ctx, chunks)
        assert (both[b:b + 1] - one).abs().max().item() < 2e-5


# -- slot rules with a synthetic driver: K/V of stream frame i are filled with a recognisable pattern ------------


class Driver:
    """Feeds the cache one chunk at a time with hand-made K/V, as one layer of the model would."""

    def __init__(self, cache_cfg=DEFAULT, batch=1, layers=1, steps=1):
        cfg = CFG.replace(num_layers=layers)
        self.cache = KVCache(cfg, cache_cfg, batch, L, device="cpu", dtype=torch.float32)
        self.cache.set_steps(steps)
        self.steps = steps
        self.clock = StreamClock(cache_cfg)
        self.frame = 0
        self.hd = (cfg.num_heads, cfg.head_dim)

    def kv_for(self, frame: int, direction: torch.Tensor | None = None) -> torch.Tensor:
        Hh, D = self.hd
        if direction is None:
            direction = torch.ones(Hh * D)
        return (direction / direction.norm() * (frame + 1)).view(Hh, 1, D).expand(Hh, L, D)  # [H, L, D]

    def push(self, n=None, directions=None):
        steps = self.steps
        n = n or (self.cache.cc.first_chunk_frames if self.clock.chunks == 0 else self.cache.cc.chunk_frames)
        start = self.clock.next(n)
        for s in range(steps):
            plan = self.cache.plan([start] * self.cache.B, (n, H // 2, W // 2), advance=(s == steps - 1))
            frames = [self.kv_for(self.frame + i, None if directions is None else directions[i]) for i in range(n)]
            kv = torch.cat(frames, 1)[None].expand(self.cache.B, -1, -1, -1).contiguous()  # [B, H, n*L, D]
            for layer in range(len(self.cache.blocks)):
                self.cache.update(layer, kv, kv, plan)
        self.frame += n
        return start

    def slots(self, layer=0, slot=0) -> list[int]:
        """Stream frame index held by each cache slot (-1 = empty)."""
        k = self.cache.k[layer, slot].unflatten(1, (-1, L))[:, :, 0]  # [H, slots, D]: first token of each slot
        norms = k.transpose(0, 1).flatten(1).norm(dim=1)  # a frame's vectors have norm frame + 1
        return [int(round(v)) - 1 for v in norms.tolist()]


def test_unfilled_sink_slot_quirk_and_ring_rotation():
    d = Driver()
    d.push()  # chunk 0: frames 0, 1 -> slots 0, 1
    d.push()  # chunk 1: frame 2; sink slot 2 is still zeros -> cos 0 < tau -> queued for refresh
    assert d.cache.queue(0) == [3 * L, 4 * L]
    for _ in range(3):
        d.push()
    assert d.slots() == [0, 1, 2, 3, 4, 5]
    d.push()  # frame 6: first full-phase write lands in sink slot 2, not rolling slot 3 (upstream behaviour)
    assert d.slots() == [0, 1, 6, 3, 4, 5]
    for _ in range(4):
        d.push()  # frames 7..10 rotate through rolling slots 3, 4, 5, 3
    assert d.slots() == [0, 1, 6, 10, 8, 9]
    assert d.cache.queue(0) == [5 * L, 6 * L, 4 * L]


def test_tau_minus_one_disables_refresh():
    d = Driver(CacheConfig(sink_tau=-1))
    for _ in range(7):
        d.push()
    assert d.slots() == [0, 1, 2, 6, 7, 5]  # sinks are frames 0, 1, 2; the ring starts at slot 3


def test_adaptive_refresh_replaces_least_similar_sink():
    Hh, D = CFG.num_heads, CFG.head_dim
    basis = torch.eye(Hh * D)
    # Sinks point along e0, e1, e2 (frames 0 and 1 arrive together in chunk 0).
    d = Driver()
    d.push(directions=[basis[0], basis[1]])
    d.push(directions=[basis[0] + basis[1] + basis[2]])  # fills sink 2; its check saw an empty slot: queued
    for _ in range(3):
        d.push(directions=[basis[0] + basis[1] + basis[2]])  # similar to all sinks (cos 0.58 > tau)
    d.push(directions=[basis[0] + basis[1] + basis[2]])  # frame 6 consumes the stale entry -> slot 2
    assert d.slots()[:3] == [0, 1, 6]
    assert d.cache.queue(0)[0] > 3 * L  # no pending sink refresh
    # Frame 7 is orthogonal to sink 1 (e1) only: avg cos = 0 < 0.2 for that sink -> it is replaced.
    d.push(directions=[basis[0] + basis[2]])
    assert d.slots()[:3] == [0, 7, 6]
    # Similar frames afterwards do not touch the sinks and rotate through the ring.
    for _ in range(3):
        d.push(directions=[basis[0] + basis[1] + basis[2]])
    assert d.slots()[:3] == [0, 7, 6]


def test_layers_decide_independently():
    Hh, D = CFG.num_heads, CFG.head_dim
    d = Driver(layers=2)
    for _ in range(6):
        d.push()
    # Make layer 1's sink 0 dissimilar: flip its sign in place, then push a normal frame.
    d.cache.k[1, :, :, :L] *= -1
    d.cache.v[1, :, :, :L] *= -1
    d.push()
    assert d.slots(layer=0)[0] == 0
    assert d.slots(layer=1)[0] == 7
    del Hh, D


def test_multistep_no_batch_upstream_step_counter():
    # Upstream's counter starts at the first full-phase call, which is step 2 of the chunk that fills the cache:
    # steps 2-3 of frame 5 land in rolling slot 3, and from then on the pointer moves after each chunk's FIRST step.
    d = Driver(CacheConfig(sink_tau=-1), steps=3)
    for _ in range(5):
        d.push()
    assert d.slots() == [0, 1, 2, 5, 4, 5]
    d.push()
    assert d.slots() == [0, 1, 2, 6, 6, 5]
    d.push()
    assert d.slots() == [0, 1, 2, 6, 7, 7]


def test_multistep_no_batch_last_step_rule():
    d = Driver(CacheConfig(sink_tau=-1, ring_advance="last_step"), steps=3)
    for _ in range(6):
        d.push()
    assert d.slots() == [0, 1, 2, 6, 4, 5]
    d.push()
    assert d.slots() == [0, 1, 2, 6, 7, 5]  # the pointer moved once per chunk, after its last step
    assert d.cache.queue(0) == [6 * L, 4 * L, 5 * L]


def test_buffers_fixed_and_positions_bounded_over_a_long_stream():
    d = Driver(CacheConfig(), batch=2)
    ptrs = (d.cache.k.data_ptr(), d.cache.v.data_ptr(), d.cache.stack.data_ptr())
    shape = d.cache.k.shape
    starts = [d.push() for _ in range(400)]
    assert (d.cache.k.data_ptr(), d.cache.v.data_ptr(), d.cache.stack.data_ptr()) == ptrs
    assert d.cache.k.shape == shape
    assert max(starts) < CacheConfig().rope_refresh  # temporal positions stay bounded
    assert starts[:3] == [0, 2, 3]
    assert starts[48:50] == [49, 5]  # refresh: a chunk that would start at frame 50 starts at 5
    assert starts[50:52] == [6, 7]
    assert d.slots()[:2] == [0, 1]  # the first two sinks survive hundreds of chunks
    assert len(d.cache.queue(0)) <= d.cache.stack.shape[-1] + 3


def test_refresh_stack_is_bounded():
    cache = Driver(CacheConfig(refresh_stack=4)).cache
    yes = torch.tensor([True])
    for i in range(7):  # more pending refreshes than the stack holds: the oldest are dropped
        cache._push(0, yes, torch.tensor([i]))
    assert int(cache.stack_len[0, 0]) == 4
    assert cache.queue(0)[:4] == [6, 5, 4, 3]
    cache._push(0, torch.tensor([False]), torch.tensor([99]))
    assert cache.queue(0)[:4] == [6, 5, 4, 3]


@torch.no_grad()
def test_prompt_switch_keeps_self_attention_cache():
    model = random_model()
    torch.manual_seed(4)
    x, t = torch.randn(1, 16, 4, H, W), torch.full((1, 4), 500.0)
    ctx_a, ctx_b = torch.randn(1, 20, CFG.text_dim), torch.randn(1, 20, CFG.text_dim)
    _, cache = stream(model, x, t, ctx_a, [2, 1, 1])
    k_before, v_before, cross_before = cache.k.clone(), cache.v.clone(), cache.cross_k.clone()
    cache.set_prompt(model, ctx_b)
    assert torch.equal(cache.k, k_before) and torch.equal(cache.v, v_before)
    assert not torch.allclose(cache.cross_k, cross_before)
    assert cache.cross_k.data_ptr() == cross_before.data_ptr() or cache.cross_k.shape == cross_before.shape


@contextlib.contextmanager
def forbid_host_sync():
    """Make every tensor->host read raise, to prove the hot path never waits for the device."""

    def boom(*_a, **_k):
        raise AssertionError("host sync in the hot path")

    names = ["item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"]
    saved = {n: getattr(torch.Tensor, n) for n in names}
    try:
        for n in names:
            setattr(torch.Tensor, n, boom)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@torch.no_grad()
def test_no_host_sync_per_chunk():
    model = random_model()
    cc = CacheConfig()
    cache = KVCache(CFG, cc, 2, L, device="cpu", dtype=torch.float32)
    cache.set_prompt(model, torch.randn(1, 20, CFG.text_dim))
    clock = StreamClock(cc)
    model.forward_chunk(torch.randn(2, 16, 2, H, W), torch.full((2, 2), 700.0), cache, [clock.next()] * 2)
    with forbid_host_sync():  # filling, first eviction with the sink refresh, rolling, mixed phases
        for i in range(8):
            s = clock.next()
            model.forward_chunk(torch.randn(2, 16, 1, H, W), torch.full((2, 1), 700.0), cache, [s, max(2, s - 1)],
                                advance=i % 2 == 0)
    with pytest.raises(AssertionError, match="host sync"), forbid_host_sync():
        torch.ones(1).item()


@torch.no_grad()
def test_per_slot_micro_batches_equal_the_batched_call():
    """Pipeline ranks run a Stream-Batch call slot by slot; the cache state and outputs must not change."""
    model = random_model()
    torch.manual_seed(5)
    B, chunks = 3, 9
    ctx = torch.randn(1, 20, CFG.text_dim)
    caches = []
    for _ in range(2):
        c = KVCache(CFG, DEFAULT, B, L, device="cpu", dtype=torch.float32)
        c.set_prompt(model, ctx)
        caches.append(c)
    xs = [torch.randn(B, 16, 2 if i == 0 else 1, H, W) for i in range(chunks)]
    for i, x in enumerate(xs):
        starts = [0] * B if i == 0 else [i + 1 - b if i + 1 - b >= 2 else 2 for b in range(B)]
        t = torch.rand(B, x.shape[2]) * 900
        batched = model.forward_chunk(x, t, caches[0], starts)
        sliced = torch.cat([model.forward_chunk(x[j:j + 1], t[j:j + 1], caches[1], [starts[j]], slot=j)
                            for j in range(B)])
        assert (batched - sliced).abs().max().item() < 2e-5
    assert torch.allclose(caches[0].k, caches[1].k, atol=2e-5)
    assert torch.equal(caches[0].stack_len, caches[1].stack_len) and torch.equal(caches[0].ptr, caches[1].ptr)
    assert caches[0].local_end == caches[1].local_end and caches[0].fifo == caches[1].fifo


def split_forward(model, x, t, caches, starts):
    """forward_chunk with the blocks spread over several caches (consecutive ranges), as pipeline ranks run them."""
    tokens, e, e0, grid = model.embed(x, t)
    for cache in caches:
        plan = cache.plan(starts, grid)
        rope = model.rope.tables(grid, plan.start_frames_dev)
        tokens = model.run_blocks(tokens, e0, rope, cache.cross_for(plan), blocks=cache.blocks, cache=cache, plan=plan)
    return model.unembed(tokens, e, grid)


@torch.no_grad()
def test_layer_moves_continue_the_stream_exactly():
    """Rebalancing: layers exported from one cache and imported into another carry the stream on bit for bit."""
    model = random_model()
    torch.manual_seed(6)
    B, chunks = 2, [2, 1, 1, 1, 1, 1, 1, 1]  # past the first eviction, with sink refreshes
    x = torch.randn(B, 16, sum(chunks), H, W)
    t = torch.rand(B, sum(chunks)) * 900
    ctx = torch.randn(1, 20, CFG.text_dim)
    whole = KVCache(CFG, DEFAULT, B, L, device="cpu", dtype=torch.float32)
    whole.set_prompt(model, ctx)
    clock, f0 = StreamClock(DEFAULT), 0
    for n in chunks[:4]:
        s = clock.next(n)
        model.forward_chunk(x[:, :, f0:f0 + n], t[:, f0:f0 + n], whole, [s] * B)
        f0 += n
    # two ranks hold blocks 0-1 and 2-3; then block 2 moves to the first
    first, second = whole.for_blocks(range(0, 2)), whole.for_blocks(range(2, 4))
    first, moved = first.for_blocks(range(0, 3)), second.export_layers(range(2, 3))
    first.import_layers(range(2, 3), moved)
    second = second.for_blocks(range(3, 4))
    assert first.blocks == range(0, 3) and second.blocks == range(3, 4)
    for n in chunks[4:]:
        s = clock.next(n)
        xs, ts = x[:, :, f0:f0 + n], t[:, f0:f0 + n]
        assert torch.equal(model.forward_chunk(xs, ts, whole, [s] * B), split_forward(model, xs, ts, [first, second],
                                                                                          [s] * B))
        f0 += n
    assert torch.equal(whole.k[:3], first.k) and torch.equal(whole.v[3:], second.v)
    assert torch.equal(whole.stack_len[:3], first.stack_len) and torch.equal(whole.ptr[3:], second.ptr)
    assert first.fifo == second.fifo == whole.fifo and first.local_end == whole.local_end
    with pytest.raises(ValueError, match="not all in this cache"):
        second.import_layers(range(2, 4), moved)
