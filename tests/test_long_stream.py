"""A long stream, compressed: 2,500 chunks through the tiny model keep memory flat and outputs finite.

At 16 fps and 4 frames per chunk, 2,500 chunks are ~10 minutes of video and ~55 RoPE refresh cycles; the work is
bounded by the chunk count (not wall time) and memory growth is bounded per chunk. The DiT loop runs at a tiny
latent size (4 tokens per frame) so the whole cache machinery (sinks, adaptive refresh, ring, RoPE refresh) cycles
many times within the test budget; a shorter full pipeline run (VAE included) checks the streaming VAE state too.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from sdv2_studio.engine.config import CacheConfig, Controls
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.kv_cache import KVCache, StreamClock
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.pipeline import StreamPipeline
from sdv2_studio.engine.schedule import FlowMatchGrid
from sdv2_studio.engine.text import PromptCache


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc for RSS")


@torch.inference_mode()
def test_2500_chunks_memory_flat_outputs_finite():
    b = tiny_bundle()
    model, grid, cc = b.dit, FlowMatchGrid(), CacheConfig()
    cache = KVCache(model.cfg, cc, 1, 4, device="cpu", dtype=torch.float32)
    cache.set_prompt(model, b.text.encode("watercolor"))
    clock = StreamClock(cc)
    ptrs = (cache.k.data_ptr(), cache.v.data_ptr(), cache.stack.data_ptr())
    gen = torch.Generator().manual_seed(0)
    t = torch.full((1, 1), 700.0)
    x = torch.randn(1, 16, 2, 4, 4, generator=gen)
    model.forward_chunk(x, torch.full((1, 2), 700.0), cache, [clock.next()])
    rss, starts, worst = {}, set(), 0.0
    for chunk in range(1, 2_500):
        x = torch.randn(1, 16, 1, 4, 4, generator=gen)
        start = clock.next()
        starts.add(start)
        x0 = grid.to_x0(model.forward_chunk(x, t, cache, [start]), x, t)
        if chunk % 250 == 0:
            assert torch.isfinite(x0).all()
            worst = max(worst, float(x0.abs().max()))
        if chunk in (500, 2_450):
            rss[chunk] = rss_mib()
    assert (cache.k.data_ptr(), cache.v.data_ptr(), cache.stack.data_ptr()) == ptrs  # no reallocation
    assert max(starts) < cc.rope_refresh  # positions bounded: the RoPE table is never exceeded
    assert rss[2_450] - rss[500] < 6, rss  # MiB over 1,950 chunks: < 3.2 KB per chunk, allocator noise aside
    assert worst < 1e3


@torch.inference_mode()
def test_full_pipeline_150_chunks_memory_flat():
    b = tiny_bundle()
    pipe = StreamPipeline(b.dit, b.vae, PromptCache(b.text), size=(32, 32), controls=Controls(steps=2))
    src = TestPatternSource(size=(32, 32), fps=16)
    frames = np.stack([src.frame(i) for i in range(64)])
    pipe.process(frames[:5])
    rss = {}
    for chunk in range(1, 150):
        i = (chunk * 4) % 60
        out = pipe.process(frames[i:i + 4])
        assert all(np.isfinite(o).all() for o in out)
        if chunk in (30, 145):
            rss[chunk] = rss_mib()
    assert rss[145] - rss[30] < 16, rss
