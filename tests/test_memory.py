"""The memory estimator (engine/memory.py) against the real allocation of the tiny and small models on the CPU.

Measured: the storage bytes of every CPU tensor alive after the stream reached its steady state (weights, KV cache,
the VAE's causal state, the stream's small buffers), and the peak of the tensors alive during one steady chunk
(tracked op by op). Tolerances: weights, KV cache and VAE state are exact (the same shapes, counted two ways);
everything resident within 5% (the small buffers the estimate leaves out); the transient peak within 15%.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from sdv2_studio.engine import memory
from sdv2_studio.engine.config import PRESETS, CacheConfig, Controls, get_preset
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.kv_cache import KVCache
from sdv2_studio.engine.memory import GiB, check_fit, estimate
from sdv2_studio.engine.model import CausalWanModel, cast_model
from sdv2_studio.engine.models import UMT5_XXL, load_bundle, resolve_model
from sdv2_studio.engine.pipeline import StreamPipeline
from sdv2_studio.engine.text import PromptCache, tiny_text_config, tiny_text_encoder
from torch._subclasses.fake_tensor import FakeTensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storages() -> dict[int, int]:
    """data_ptr -> bytes of the storage of every CPU tensor the garbage collector can see (fake tensors, e.g. those
    torch.compile keeps from an earlier test, hold no memory and are skipped)."""
    out = {}
    for o in gc.get_objects():
        if issubclass(type(o), torch.Tensor) and not issubclass(type(o), FakeTensor) and o.device.type == "cpu":
            st = o.untyped_storage()  # (type() above: no proxy's __class__)
            try:
                out[st.data_ptr()] = st.nbytes()
            except RuntimeError:  # another tensor subclass without data of its own
                continue
    return out


def _bytes(tensors) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


class LivePeak(TorchDispatchMode):
    """The peak bytes alive at once of the tensors given at the start (while they live) and those made inside
    (views and in-place ops make none)."""

    def __init__(self, live=()):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0
        self._track(list(live))

    def _track(self, tensors) -> None:
        for t in tensors:
            st = t.untyped_storage()
            self.live[st.data_ptr()] = (StorageWeakRef(st), st.nbytes())
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not (func.is_view or func._schema.is_mutable):
            self._track([t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)])
        return out


@pytest.mark.parametrize("spec,size", [("tiny", (64, 96)), ("random:small", (64, 64))])
def test_estimate_matches_the_real_allocation_on_the_cpu(spec, size):
    gc.collect()
    before = _storages()
    model = resolve_model(spec)
    bundle = load_bundle(model)  # CPU, float32
    pipe = StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text, None), size=size,
                          controls=Controls(steps=2), batch=True, device="cpu", dtype=torch.float32)
    src = TestPatternSource(size=size, fps=16)
    pipe.process(np.stack([src.frame(i) for i in range(5)]))
    chunks = [np.stack([src.frame(5 + 4 * k + j) for j in range(4)]) for k in range(8)]
    for frames in chunks[:-1]:  # fill the 6-frame KV cache, the Stream-Batch slots and the VAE's causal state
        pipe.process(frames)
    peak = LivePeak([*bundle.vae.enc_cache.frames.values(), *bundle.vae.dec_cache.frames.values()])
    with torch.no_grad(), peak:  # (no reference is held to the state: the call replaces it conv by conv)
        assert pipe.process(chunks[-1])  # a steady chunk that decodes frames
    gc.collect()
    resident = sum(n for ptr, n in _storages().items() if ptr not in before)
    [cache] = [o for o in gc.get_objects() if type(o) is KVCache and o.k.data_ptr() not in before]

    est = estimate(model.config, size, dtype=torch.float32, steps=2, batch=True, gpu=False, text_here=True,
                   text=model.text_config, vae=model.vae, text_dtype=model.text_dtype_cpu)
    assert est.dit == _bytes(bundle.dit.parameters())
    assert est.vae == _bytes(bundle.vae.parameters())
    assert est.text_encoder == _bytes(bundle.text.model.parameters())
    assert est.kv_cache == cache.nbytes() == _bytes([cache.k, cache.v, cache.cross_k, cache.cross_v])
    assert est.kv_cache == pytest.approx(_bytes(t for t in vars(cache).values() if isinstance(t, torch.Tensor)),
                                         rel=0.01)  # + the ring's bookkeeping
    assert est.vae_state == _bytes([*bundle.vae.enc_cache.frames.values(), *bundle.vae.dec_cache.frames.values()])
    assert est.reserve == 0  # no CUDA context on the CPU
    assert est.total - est.activations == pytest.approx(resident, rel=0.05)
    assert est.vae_state + est.activations / memory.SLACK == pytest.approx(peak.peak, rel=0.15)


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("first", [True, False])
def test_dit_temporaries_match_a_real_forward_on_the_cpu(preset, first):
    cfg, cc = get_preset(preset), CacheConfig()
    model = load_bundle("tiny" if preset == "tiny" else f"random:{preset}").dit
    h = w = 64
    tokens = memory.frame_tokens(cfg, (h, w))
    cache = KVCache(cfg, cc, 2, tokens, device="cpu", dtype=torch.float32)
    frames = cc.first_chunk_frames if first else cc.chunk_frames
    x = torch.randn(2, cfg.in_dim, frames, h // 8, w // 8)
    t = torch.full((2, frames), 700.0)
    with torch.no_grad():  # a first chunk before (on another cache when `first`): RoPE tables are made once
        model.forward_chunk(torch.randn(2, cfg.in_dim, cc.first_chunk_frames, h // 8, w // 8),
                            torch.full((2, cc.first_chunk_frames), 700.0),
                            KVCache(cfg, cc, 2, tokens, device="cpu", dtype=torch.float32) if first else cache, [0, 0])
        start = 0 if first else cc.first_chunk_frames
        with LivePeak() as peak:
            model.forward_chunk(x, t, cache, [start, start])
    assert memory.dit_work_bytes(cfg, 2 * frames * tokens, torch.float32) == pytest.approx(peak.peak, rel=0.15)


@pytest.mark.parametrize("name", ["tiny", "small", "wan2.1-1.3b", "wan2.1-14b"])
def test_dit_weights_count_the_fp32_islands(name):
    cfg = PRESETS[name]
    with torch.device("meta"):
        m = cast_model(CausalWanModel(cfg), torch.bfloat16)
    est = estimate(cfg, (256, 256), dtype="bfloat16", text=UMT5_XXL)
    assert est.dit == sum(p.numel() * p.element_size() for p in m.parameters())
    assert est.dit > 2 * sum(p.numel() for p in m.parameters())  # fp32 islands: more than 2 bytes a parameter


def test_umt5_parameter_count():
    assert memory.t5_encoder_params(UMT5_XXL) == 5_680_910_336  # umT5-XXL's encoder (Wan2.1's text encoder)
    text = tiny_text_encoder(text_dim=64)
    assert memory.t5_encoder_params(tiny_text_config(64)) == sum(p.numel() for p in text.model.parameters())


def test_kv_cache_per_slot_of_the_1_3b_model():
    cfg = get_preset("wan2.1-1.3b")
    one = estimate(cfg, (480, 832), steps=1, batch=False)
    self_kv = cfg.num_layers * 2 * 6 * 1560 * cfg.dim * 2  # 1.61 GiB at 480x832 (reference notes), bf16
    assert abs(self_kv / GiB - 1.61) < 0.01
    assert one.kv_cache == self_kv + cfg.num_layers * 2 * cfg.text_len * cfg.dim * 2  # + the prompt's cross K/V
    assert estimate(cfg, (480, 832), steps=3, batch=True).kv_cache == 3 * one.kv_cache


def test_estimates_move_the_right_way_and_land_in_a_plausible_range():
    cfg = get_preset("wan2.1-1.3b")
    base = memory.reference()
    assert base == estimate(cfg, (480, 832))  # 1.3B, 480x832, bf16, 2-step Stream-Batch, umT5 on the CPU
    assert 10 * GiB < base.total < 16 * GiB
    assert estimate(cfg, (480, 832), steps=4).total > base.total > estimate(cfg, (480, 832), batch=False).total
    assert estimate(cfg, (256, 256)).total < base.total
    assert estimate(cfg, (480, 832), dtype="float32").total > base.total
    with_text = estimate(cfg, (480, 832), text_here=True)
    assert with_text.total - base.total == memory.t5_encoder_params(UMT5_XXL) * 2
    big = get_preset("wan2.1-14b")
    four = estimate(big, (480, 832), ranks=4)
    assert four.total < estimate(big, (480, 832)).total and "per GPU" in four.breakdown()
    assert four.dit < estimate(big, (480, 832)).dit / 3
    tiny = resolve_model("tiny")
    cpu = estimate(tiny.config, (128, 128), dtype="float32", gpu=False, text_here=True, text=tiny.text_config,
                   vae=tiny.vae)
    assert cpu.total < 0.1 * GiB and cpu.reserve == 0


def test_fit_levels():
    est = memory.reference()
    assert check_fit(est, 24 * GiB)[0] == "ok"
    assert check_fit(est, int(est.total / 0.9))[0] == "tight"
    level, text = check_fit(est, 8 * GiB)
    assert level == "no" and "will not fit" in text and "resolution" in text
    assert check_fit(est, None)[0] == "unknown"
