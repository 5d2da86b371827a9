"""q, k and v of each self-attention in one GEMM (`SelfAttention.fuse`, done at load): the same stream as three
GEMMs, the same checkpoint names, and the three parameters stay views of the fused weight through LoRA merges,
casts, moves and copies (a stale fused weight would silently ignore a LoRA switch)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from sdv2_studio.engine.kv_cache import CacheConfig, KVCache, StreamClock
from sdv2_studio.engine.lora import LoRA, LoRAMerger
from sdv2_studio.engine.model import SelfAttention, cast_model, fuse_qkv
from sdv2_studio.engine.models import tiny_dit
from sdv2_studio.engine.sync_check import OpCounter


def _unfused(model):
    """The same weights with q, k, v as three separate GEMMs (as before loading fused them)."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, SelfAttention):
            for lin in (m.q, m.k, m.v):
                lin.weight = torch.nn.Parameter(lin.weight.clone(), requires_grad=False)
                lin.bias = torch.nn.Parameter(lin.bias.clone(), requires_grad=False)
            m.wqkv = m.bqkv = None
    return out


def _aliased(model) -> bool:
    attns = [m for m in model.modules() if isinstance(m, SelfAttention)]
    return bool(attns) and all(
        lin.weight.data_ptr() == a.wqkv[i * a.wqkv.shape[0] // 3].data_ptr()
        and lin.bias.data_ptr() == a.bqkv[i * a.bqkv.shape[0] // 3].data_ptr()
        for a in attns for i, lin in enumerate((a.q, a.k, a.v)))


def _stream(model, chunks: int = 8, seed: int = 0):
    """Flow of `chunks` streaming calls (past the cache filling), and the linear/addmm ops of the last one."""
    cfg, cc = model.cfg, CacheConfig()
    gen = torch.Generator().manual_seed(seed)
    cache = KVCache(cfg, cc, 1, 16, device="cpu", dtype=torch.float32)
    cache.set_prompt(model, torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen))
    clock, outs = StreamClock(cc), []
    with torch.inference_mode():
        for i in range(chunks):
            n = cc.first_chunk_frames if i == 0 else cc.chunk_frames
            x = torch.randn(1, cfg.in_dim, n, 8, 8, generator=gen)
            with OpCounter() as ops:
                outs.append(model.forward_chunk(x, torch.full((1, n), 600.0), cache, [clock.next(n)]))
    gemms = sum(c for op, c in ops.ops.items() if op in ("addmm", "mm", "bmm", "linear"))
    return torch.cat(outs, 2), gemms


def test_loading_fuses_qkv_and_keeps_the_checkpoint_names():
    model = tiny_dit()
    assert _aliased(model)
    plain = _unfused(model)
    assert list(model.state_dict()) == list(plain.state_dict())  # wqkv/bqkv are not saved
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def test_fused_stream_equals_three_gemms_with_two_fewer_gemms_per_layer():
    model = tiny_dit()
    fused, n_fused = _stream(model)
    plain, n_plain = _stream(_unfused(model))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)  # one GEMM may sum in another order
    assert n_plain - n_fused == 2 * model.cfg.num_layers


def test_a_lora_switch_reaches_the_fused_weight():
    model = tiny_dit()
    plain = _unfused(model)
    gen = torch.Generator().manual_seed(3)
    C, r = model.cfg.dim, 4
    pairs = {f"blocks.{i}.self_attn.{n}": (torch.randn(r, C, generator=gen) * 0.1,
                                           torch.randn(C, r, generator=gen) * 0.1, 1.0)
             for i in range(model.cfg.num_layers) for n in ("q", "v")}
    lora = LoRA(path=Path("test.safetensors"), style="peft", pairs=pairs)
    mergers = [LoRAMerger(m) for m in (model, plain)]
    for merger in mergers:
        merger.set([(lora, 0.7)])
    assert _aliased(model)
    torch.testing.assert_close(_stream(model)[0], _stream(plain)[0], rtol=1e-5, atol=1e-6)
    for merger in mergers:
        merger.clear()
    assert _aliased(model) and torch.equal(model.blocks[0].self_attn.wqkv, tiny_dit().blocks[0].self_attn.wqkv)


@pytest.mark.parametrize("how", ["deepcopy", "to", "cast", "share_memory", "load_assign", "load_copy"])
def test_copies_moves_casts_and_loads_keep_qkv_fused(how):
    model = tiny_dit()
    q_param = model.blocks[0].self_attn.q.weight  # what a LoRAMerger made before holds on to
    sd = {k: v.clone() + 1.0 for k, v in model.state_dict().items()}
    out = {"deepcopy": lambda m: copy.deepcopy(m), "to": lambda m: m.to(torch.float64),
           "cast": lambda m: cast_model(m, torch.bfloat16), "share_memory": lambda m: m.share_memory(),
           "load_assign": lambda m: (m.load_state_dict(sd, assign=True), m)[1],
           "load_copy": lambda m: (m.load_state_dict(sd), m)[1]}[how](model)
    assert _aliased(out)
    if how != "deepcopy" and how != "load_assign":
        assert out.blocks[0].self_attn.q.weight is q_param  # the same parameter object, now a view of wqkv
    if how == "share_memory":
        assert out.blocks[0].self_attn.wqkv.is_shared()
    if how.startswith("load"):
        assert torch.equal(out.blocks[0].self_attn.wqkv[: model.cfg.dim], sd["blocks.0.self_attn.q.weight"])
    a = next(m for m in out.modules() if isinstance(m, SelfAttention))
    assert a.wqkv.dtype == a.q.weight.dtype
    with torch.no_grad():
        a.k.weight.add_(1.0)  # an in-place edit of k shows in the fused weight
    C = a.wqkv.shape[0] // 3
    assert torch.equal(a.wqkv[C:2 * C], a.k.weight)


def test_layers_on_the_meta_device_stay_unfused():
    model = tiny_dit(select=lambda name: not name.startswith("blocks.1."))
    assert model.blocks[1].self_attn.wqkv is None and model.blocks[0].self_attn.wqkv is not None
    assert fuse_qkv(model) == model.cfg.num_layers - 1
