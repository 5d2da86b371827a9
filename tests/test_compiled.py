"""The compiled hot path (engine/compiled.py) against eager, the reference: one graph per configuration, no
recompiles across a long stream, equal outputs and identical discrete cache decisions (Inductor on this CPU)."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from helpers import random_taehv
from sdv2_studio.engine import cli
from sdv2_studio.engine.compiled import compile_decoder, compile_model, warm_up
from sdv2_studio.engine.config import CacheConfig, get_preset
from sdv2_studio.engine.kv_cache import KVCache, StreamClock
from sdv2_studio.engine.model import CausalWanModel, fuse_qkv
from sdv2_studio.engine.models import tiny_vae

CFG = get_preset("tiny")
H = W = 8  # latents: 64x64 pixels, 16 tokens per frame
SLOTS = 2


@pytest.fixture(autouse=True)
def shared_inductor_cache(tmp_path_factory, monkeypatch):
    """One Inductor cache for this file: the CLI run below loads the kernels the first test compiled."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "inductor"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def stream(model, xs, ctx, compiled: bool = False):
    cache = KVCache(CFG, CacheConfig(), SLOTS, (H // 2) * (W // 2), device="cpu", dtype=torch.float32)
    cache.set_prompt(model, ctx)
    if compiled:  # compiled for this configuration before the stream, on the stream's own cache
        compile_model(model, "cpu")
        warm_up(model, cache, 1, (H, W), torch.float32)
        model.compiled_step.calls = model.compiled_step.compiled_calls = 0  # count the stream's calls only
    clock = StreamClock(CacheConfig())
    outs, queues, starts = [], [], []
    with torch.inference_mode():
        for x in xs:
            s = clock.next()
            starts.append(s)
            x = x.clone()  # an inference tensor, as the pipeline's inputs are (a normal tensor recompiles)
            outs.append(model.forward_chunk(x, torch.full((SLOTS, x.shape[2]), 600.0), cache, [s] * SLOTS))
            queues.append([cache.queue(layer, b) for layer in range(CFG.num_layers) for b in range(SLOTS)])
    return outs, queues, starts


def test_compiled_equals_eager_over_a_long_stream(monkeypatch):
    torch.manual_seed(0)
    model = CausalWanModel(CFG).eval()
    fuse_qkv(model)  # as every loaded model runs (load_model, tiny_dit): the CLI run below compiles this graph too
    ctx = torch.randn(1, 20, CFG.text_dim)
    xs = [torch.randn(SLOTS, 16, 2 if i == 0 else 1, H, W) for i in range(100)]
    pushes, push = [], KVCache._push
    with monkeypatch.context() as m:  # count the adaptive sink refreshes of the eager run
        m.setattr(KVCache, "_push", lambda self, layer, p, *a: (pushes.append(int(p.sum())), push(self, layer, p, *a)))
        ref, ref_queues, starts = stream(model, xs, ctx)
    out, queues, _ = stream(model, xs, ctx, compiled=True)
    step = model.compiled_step

    assert starts.index(CacheConfig().cache_frames - 1, 10) < 100  # a RoPE refresh happened in the stream
    assert sum(pushes) > 10  # and sink refreshes
    assert queues == ref_queues  # every discrete cache decision equal, chunk by chunk
    assert step.compiled_calls >= 90 and step.calls == 100  # all steady chunks compiled, the filling ones eager
    assert torch.equal(ref[0], out[0])  # the warm-up left nothing behind in the cache (first chunk: eager both)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one graph, no recompiles
    worst = max((a - b).abs().max().item() for a, b in zip(ref, out))
    assert worst < 1e-5, worst  # fp32: Inductor reorders reductions; tolerance 1e-5 on O(1) flows
    print(f"compiled vs eager over 100 chunks: max |diff| {worst:.2e}")


@pytest.mark.parametrize("kind", ["wan-vae", "taehv"])
def test_compiled_decoder_equals_eager_over_a_stream(kind):
    """The streaming decoder's steady pass compiles to one graph (warmed on a scratch state before the stream) and
    decodes a stream as eager does; the first passes, while its causal state fills, run eager."""
    if kind == "wan-vae":
        decoder = tiny_vae()
    else:
        decoder = random_taehv()
    gen = torch.Generator().manual_seed(1)
    latents = [torch.randn(1, 16, 1, H, W, generator=gen) for _ in range(8)]
    with torch.inference_mode():
        state = decoder.new_state()
        ref = [decoder.decode_stream(z, state) for z in latents]
        step = compile_decoder(decoder, "cpu", (1, 16, 1, H, W))
        out = [decoder.decode_stream(z) for z in latents]
    assert step.compiled_calls - 1 >= len(latents) - 3  # the stream's steady passes compiled (after <= 3 eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one graph: warm-up's, no recompiles
    worst = max((a - b).abs().max().item() for a, b in zip(ref, out))
    assert all(a.shape == b.shape for a, b in zip(ref, out)) and worst < 1e-4, worst  # fp32, outputs in [-1, 1]
    decoder.compiled_step = None


def test_run_compile_through_the_cli(tmp_path):
    outs = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / f"styled{len(flag)}.mp4"
        argv = ["run", "--model", "tiny", "--size", "64x64", "--steps", "2", "--frames", "41", "--out", str(out)]
        assert cli.main(argv + flag) == 0
        with av.open(str(out)) as f:
            outs[len(flag)] = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
        if flag:  # the engine compiled before streaming (the DiT step; the VAE pass on CUDA only), nothing more
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    eager, compiled = outs[0].astype(int), outs[1].astype(int)
    assert eager.shape == compiled.shape and len(eager) == 41
    assert np.abs(eager - compiled).mean() < 1.0  # the same video up to a few codec steps
