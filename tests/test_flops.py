"""The analytic FLOP count (bench/flops.py) equals what FlopCounterMode sees for the matmuls of a real forward."""

import torch
import torch.nn.functional as F
from sdv2_studio.engine.cli import load_bench
from sdv2_studio.engine.config import PRESETS, CacheConfig
from sdv2_studio.engine.kv_cache import KVCache, StreamClock
from sdv2_studio.engine.model import CausalWanModel
from torch.utils.flop_counter import FlopCounterMode

forward_flops = load_bench("flops").forward_flops
CFG = PRESETS["tiny"]


def _no_sdpa(monkeypatch):
    """SDPA kernels on CPU are not counted by FlopCounterMode: count the linears only, attention analytically."""
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, attn_mask=None: q)


@torch.no_grad()
def test_streaming_linear_flops_match_counter(monkeypatch):
    torch.manual_seed(0)
    m = CausalWanModel(CFG).eval()
    cc = CacheConfig()
    cache = KVCache(CFG, cc, 1, 16, device="cpu", dtype=torch.float32)
    cache.set_prompt(m, torch.randn(1, 8, CFG.text_dim))
    clock = StreamClock(cc)
    m.forward_chunk(torch.randn(1, 16, 2, 8, 8), torch.full((1, 2), 700.0), cache, [clock.next()])
    _no_sdpa(monkeypatch)
    with FlopCounterMode(display=False) as counter:
        m.forward_chunk(torch.randn(1, 16, 1, 8, 8), torch.full((1, 1), 700.0), cache, [clock.next()])
    expected = forward_flops(CFG, tokens=16, kv_tokens=48, frames=1, cross_cached=True)
    assert counter.get_total_flops() == expected.linear


@torch.no_grad()
def test_full_forward_linear_flops_match_counter(monkeypatch):
    m = CausalWanModel(CFG).eval()
    _no_sdpa(monkeypatch)
    with FlopCounterMode(display=False) as counter:
        m(torch.randn(1, 16, 3, 8, 8), torch.full((1,), 500.0), torch.randn(1, CFG.text_len, CFG.text_dim))
    expected = forward_flops(CFG, tokens=48, kv_tokens=48, frames=3, cross_cached=False)
    assert counter.get_total_flops() == expected.linear
