"""The roofline cost model (bench/roofline.py): meta-device FLOP counting, agreement with bench/flops.py, sane
predictions, and the traces that back the memory estimator's coefficients (engine/memory.py)."""

import argparse
import io
import json

import pytest
import torch
from sdv2_studio.engine import memory
from sdv2_studio.engine.cli import load_bench
from sdv2_studio.engine.config import CacheConfig, get_preset
from sdv2_studio.engine.models import UMT5_XXL
from torch.utils.flop_counter import FlopCounterMode

R = load_bench("roofline")
forward_flops = load_bench("flops").forward_flops


def test_vae_flops_counted_on_meta_scale_with_pixels():
    small, big = R.vae_trace((128, 128), "encode"), R.vae_trace((256, 256), "encode")
    assert small.counted_flops > 0 and small.work.ops > 100
    # convs are linear in pixels; the mid-block attention (per-frame, quadratic) is a small part at these sizes
    assert 3.9 < big.counted_flops / small.counted_flops < 4.3
    dec_s, dec_b = R.vae_trace((128, 128), "decode"), R.vae_trace((256, 256), "decode")
    assert 3.9 < dec_b.counted_flops / dec_s.counted_flops < 4.3
    assert dec_s.counted_flops > small.counted_flops  # the decoder is the heavier half (more res blocks)
    assert big.peak_bytes > small.peak_bytes > 0 and big.state_bytes > small.state_bytes > 0


def test_streaming_vae_count_equals_whole_clip_difference():
    """The steady-state streaming call (4 frames after a first call of 5) costs what a 1+8-frame clip costs more
    than a 1+4-frame clip: the causal cache on meta gives the real streaming cost."""
    from sdv2_studio.engine.vae import WanVAE, get_vae_preset

    H = W = 128
    with torch.device("meta"):
        vae = WanVAE(get_vae_preset("wan2.1")).to(torch.bfloat16)

    def clip_flops(frames: int) -> int:
        with FlopCounterMode(display=False) as fc:
            vae.encode(torch.empty(1, 3, frames, H, W, device="meta", dtype=torch.bfloat16))
        return fc.get_total_flops()

    steady = R.vae_trace((H, W), "encode")
    first = R.vae_trace((H, W), "encode", first=True)
    assert steady.counted_flops == clip_flops(9) - clip_flops(5)
    assert first.counted_flops == clip_flops(5)


@pytest.mark.parametrize("model,size", [("1.3b", (480, 832)), ("14b", (512, 512))])
def test_dit_flops_match_engine_flops(model, size):
    cfg = get_preset(R.MODELS[model])
    L = R.frame_tokens(cfg, size)
    assert L == (size[0] // 16) * (size[1] // 16)
    S = CacheConfig().cache_frames * L
    # the traced real model (2 blocks, steady state, fused attention) == the analytic count for 2 blocks
    traced = R.dit_trace(model, size)
    assert traced.counted_flops == forward_flops(cfg.replace(num_layers=2), L, S).total
    # what predict() uses, per slot and for a Stream-Batch of n
    d = R.dit_work(model, size)
    assert d.forward(cfg.num_layers).flops == forward_flops(cfg, L, S).total
    assert d.forward(cfg.num_layers, 3).flops == forward_flops(cfg, L, S, batch=3).total
    p = R.predict(model, size, 2, "h100", 1)
    assert p.detail["dit_flops_per_slot"] == forward_flops(cfg, L, S).total


def test_bytes_model():
    cfg = get_preset("wan2.1-1.3b")
    d = R.dit_work("1.3b", (480, 832))
    blk, outside = R.dit_param_bytes("1.3b")
    # weights: bf16 (+ small fp32 islands), ~1.4 B params for the 1.3B preset; read once per forward
    total_w = blk * cfg.num_layers + outside
    assert 2.7e9 < total_w < 3.0e9
    one, four = d.forward(cfg.num_layers, 1), d.forward(cfg.num_layers, 4)
    assert four.weight_bytes == one.weight_bytes and four.flops == 4 * one.flops
    # read per forward: everything but the prompt's cross k/v projections and the text embedding (cached)
    cross_kv = cfg.num_layers * 2 * (cfg.dim * cfg.dim + cfg.dim) * 2
    assert one.weight_bytes == pytest.approx(total_w - cross_kv - (cfg.text_dim * cfg.dim + cfg.dim * cfg.dim) * 2,
                                             rel=0.01)
    # per block the KV reads (6 frames) are in the GEMM/attention bytes; elementwise traffic is ~100-300
    # passes over the [L, dim] bf16 activations (fp32 norms, modulation, gates, casts of our eager model)
    assert d.block.io_bytes > 2 * 6 * 1560 * cfg.dim * 2
    assert 100 < d.block.elem_bytes / (1560 * cfg.dim * 2) < 300


def test_hardware_table():
    h, g = R.GPUS["h100"], R.GPUS["4090"]
    assert h.bf16_flops == pytest.approx(1979e12 / 2, rel=0.01)  # dense = sparse / 2
    assert g.bf16_flops == pytest.approx(165.2e12) and g.vram_gb == 24
    assert h.link_bw > 10 * g.link_bw


def test_predictions_monotone():
    for model in ("1.3b", "14b"):
        for size in ("480p", "512"):
            for gpu in ("h100", "4090"):
                for N in range(1, 5):
                    fps = [R.predict(model, size, n, gpu, N).fps for n in range(1, 5)]
                    assert all(a >= b for a, b in zip(fps, fps[1:])), (model, size, gpu, N, fps)
                for n in range(1, 5):
                    prev = None
                    for N in range(1, 5):
                        p = R.predict(model, size, n, gpu, N)
                        if prev is not None and p.bound not in ("comm", "bubble"):
                            assert p.fps >= prev.fps * 0.999, (model, size, gpu, n, N)
                        prev = p
                    small = R.predict("1.3b", size, n, gpu, 1)
                    if model == "14b":
                        assert R.predict(model, size, n, gpu, 1).fps < small.fps
    # 480p costs more than 512x512 (1,560 vs 1,024 tokens per frame)
    assert R.predict("1.3b", "480p", 1, "h100", 1).fps < R.predict("1.3b", "512", 1, "h100", 1).fps
    # H100 beats the 4090
    assert R.predict("1.3b", "512", 1, "h100", 1).fps > R.predict("1.3b", "512", 1, "4090", 1).fps


def test_step_dependency_bubble():
    """Our scheme: full utilisation needs steps + 1 >= N (or 1 step); 2 steps on 4 GPUs leaves a bubble."""
    p = R.predict("14b", "480p", 2, "h100", 4)
    assert p.bound == "bubble" and p.detail["bubble_ms"] >= max(p.stage_ms) * 0.999
    for n in (1, 3, 4):
        assert R.predict("14b", "480p", n, "h100", 4).bound != "bubble"
    # the paper's scheme has no such dependency (stale slot inputs): never slower in this model
    assert R.predict("14b", "480p", 2, "h100", 4, scheme="upstream").fps >= p.fps


def test_memory_feasibility():
    # issue #7 upstream: 24 GB 4090, 480p, 2 steps Stream-Batch with everything (umT5 too) on the GPU: OOM
    oom = R.predict("1.3b", "480p", 2, "4090", 1, t5_on_gpu=True)
    assert not oom.fits and oom.vram_gb > 24
    # our default keeps umT5 on the CPU: the same run fits
    ok = R.predict("1.3b", "480p", 2, "4090", 1)
    umt5 = memory.t5_encoder_params(UMT5_XXL) * 2
    assert ok.fits and oom.vram_gb - ok.vram_gb == pytest.approx(umt5 / 1e9, rel=1e-6)
    # the 14B does not fit one 4090 at all; over 4 ranks each holds ~1/4 of the blocks
    assert not R.predict("14b", "512", 1, "4090", 1).fits
    p4 = R.predict("14b", "512", 1, "4090", 4)
    blk, _ = R.dit_param_bytes("14b")
    assert max(p4.blocks) < 40 / 2 and p4.fits
    assert p4.detail["memory_gb"]["dit"] * 1e9 < blk * 40 / 2
    # Stream-Batch multiplies the KV cache by the steps
    m1, m4 = R.predict("1.3b", "480p", 1, "h100", 1), R.predict("1.3b", "480p", 4, "h100", 1)
    assert m4.detail["memory_gb"]["kv_cache"] == pytest.approx(4 * m1.detail["memory_gb"]["kv_cache"], abs=0.02)


def test_paper_figures_data():
    figs = R.paper_figures()
    key = {(f.model, f.size, f.gpu, f.ngpus, f.steps, f.batch): f.fps for f in figs}
    assert key[("1.3b", "512", "h100", 4, 1, True)] == 64.52
    assert key[("1.3b", "512", "h100", 4, 4, True)] == 61.57
    assert key[("14b", "512", "h100", 4, 1, True)] == 58.28
    assert key[("1.3b", "480p", "h100", 1, 1, True)] == 20.47
    assert {t["ttff_s"] for t in R.PAPER_TTFF} == {0.47, 0.37}


def test_report_writes_json(tmp_path):
    out = tmp_path / "roofline.json"
    buf = io.StringIO()
    data = R.report(out, file=buf)
    text = buf.getvalue()
    assert "64.52" in text and "first frame" in text and "issue #7" in text
    saved = json.loads(out.read_text())
    assert len(saved["comparisons"]) == len(R.paper_figures())
    assert all(c["ratio"] > 0 for c in saved["comparisons"])
    assert saved["grid"] and saved["ttff"] and data["constants"]["eta_dit"] == R.DEFAULT_EFF.eta_dit
    # the CLI entry point (as `sdv2 bench roofline` calls it) writes the same file
    out2 = tmp_path / "cli.json"
    assert R.main_roofline(argparse.Namespace(out=str(out2))) == 0
    assert json.loads(out2.read_text())["comparisons"]


@pytest.mark.parametrize("size", [(480, 832), (512, 512)])
def test_memory_estimator_coefficients_agree_with_the_traced_modules(size):
    """engine/memory.py's VAE state and working set and its DiT temporaries, against the live tensors counted while
    the real Wan2.1 VAE and the 1.3B / 14B DiTs run on the meta device (bf16)."""
    for kind in ("encode", "decode"):
        t = R.vae_trace(size, kind)
        state = memory.vae_state_bytes("wan2.1", size, torch.bfloat16, encode=kind == "encode",
                                       decode=kind == "decode")
        assert t.state_bytes == state  # exact: the last frames of every causal conv
        assert state + memory.vae_work_bytes("wan2.1", size, torch.bfloat16) == pytest.approx(t.peak_bytes, rel=0.02)
    cc = CacheConfig()
    for model in ("1.3b", "14b"):
        cfg = R.resolve_model(model)
        first = R.dit_trace(model, size, first=True)  # the widest chunk: first_chunk_frames latent frames
        tokens = cc.first_chunk_frames * R.frame_tokens(cfg, size)
        assert memory.dit_work_bytes(cfg, tokens, torch.bfloat16) == pytest.approx(first.peak_bytes, rel=0.10)


def test_bench_tools_load_from_a_source_checkout_only(monkeypatch, tmp_path, capsys):
    """`sdv2 bench` imports bench/ from the checkout it runs from; an install without one gets one line."""
    from sdv2_studio.engine import cli

    assert cli.load_bench("roofline") is R and R.__name__ == "sdv2_bench.roofline"
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "sdv2_studio" / "engine" / "cli.py"))  # a wheel install
    assert cli.main(["bench", "roofline"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "needs a source checkout" in line
