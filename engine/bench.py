"""`sdv2 bench model`: the streaming DiT forward measured side by side, printed as ratios and saved as JSON.

1. Flat cost over a long stream: per-chunk latency and memory at chunk 10, 1,000 and 10,000 (ratios ~1.0).
2. The streaming forward (one new latent frame against the rolling cache, prompt K/V cached) vs recomputing the
   whole 6-frame window without a cache, diffusers-style (text embedding, prompt K/V and all 6 frames every call).
3. Achieved FLOP/s of the streaming forward (engine/flops.py) vs this machine's dense GEMM FLOP/s, measured in the
   same run with the same threads and dtype.
Timings are medians of repeated runs; nothing here is asserted (benchmarks are not tests).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from engine.config import CacheConfig, get_preset
from engine.flops import forward_flops
from engine.kv_cache import KVCache, StreamClock
from engine.model import CausalWanModel, cast_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gemm_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Best dense GEMM FLOP/s over a few n x n x n products (the machine's practical peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def bench_model(preset: str = "small", points: tuple[int, ...] = (10, 1000, 10000), window: int = 10,
                frame_hw: tuple[int, int] = (32, 32), device: str = "cpu", dtype: str = "float32",
                out: str | None = "bench/results/model.json", log=print) -> dict:
    """Run the benchmark; `frame_hw` is the latent size (32x32 latents = 256 tokens per frame)."""
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    cfg = get_preset(preset)
    cc = CacheConfig()
    torch.manual_seed(0)
    with torch.device(dev):
        model = cast_model(CausalWanModel(cfg).eval(), dt)
    h, w = frame_hw
    L = (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device=dev)
    log(f"bench model: preset {cfg.name}, {L} tokens/frame, {cc.cache_frames}-frame cache, {dtype} on {device}, "
        f"{torch.get_num_threads()} threads")

    # -- 1. a long stream -----------------------------------------------------------------------------------------
    cache = KVCache(cfg, cc, 1, L, device=dev, dtype=dt)
    cache.set_prompt(model, ctx)
    clock = StreamClock(cc)
    t_step = torch.full((1, 1), 700.0, device=dev)
    x = torch.randn(1, cfg.in_dim, 1, h, w, device=dev, dtype=dt)
    results: dict = {"points": {}}
    last = max(points) + window
    t_start = time.perf_counter()
    with torch.inference_mode():
        model.forward_chunk(torch.randn(1, cfg.in_dim, 2, h, w, device=dev, dtype=dt),
                            torch.full((1, 2), 700.0, device=dev), cache, [clock.next()])
        chunk, times = 1, []
        while chunk < last:
            measure = any(p <= chunk < p + window for p in points)
            _sync(dev)
            t0 = time.perf_counter()
            model.forward_chunk(x, t_step, cache, [clock.next()])
            _sync(dev)
            if measure:
                times.append(time.perf_counter() - t0)
            for p in points:
                if chunk == p + window - 1:
                    results["points"][p] = {"ms": statistics.median(times) * 1e3, "rss_mib": _rss_mib(),
                                            "cache_mib": cache.nbytes() / 2**20, "start_frame": clock.next_frame}
                    log(f"  chunk {p:>6}: {results['points'][p]['ms']:.1f} ms/chunk, RSS "
                        f"{results['points'][p]['rss_mib']:.0f} MiB ({time.perf_counter() - t_start:.0f} s)")
                    times = []
            chunk += 1
        stream_ms = statistics.median(v["ms"] for v in results["points"].values())

        # -- 2. recompute the 6-frame window, no cache --------------------------------------------------------------
        xs = torch.randn(1, cfg.in_dim, cc.cache_frames, h, w, device=dev, dtype=dt)
        ts = torch.full((1,), 700.0, device=dev)
        rec = []
        for i in range(window + 2):
            _sync(dev)
            t0 = time.perf_counter()
            model(xs, ts, ctx)
            _sync(dev)
            if i >= 2:
                rec.append(time.perf_counter() - t0)
        recompute_ms = statistics.median(rec) * 1e3

    # -- 3. FLOP/s vs GEMM peak ---------------------------------------------------------------------------------------
    flops = forward_flops(cfg, tokens=L, kv_tokens=cc.cache_frames * L, frames=1, cross_cached=True)
    achieved = flops.total / (stream_ms / 1e3)
    peak = gemm_flops(dev, dt)
    p0, p1 = points[0], points[-1]
    results.update({
        "preset": cfg.name, "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
        "tokens_per_frame": L, "cache_frames": cc.cache_frames, "torch": torch.__version__,
        "machine": platform.machine(), "python": sys.version.split()[0],
        "stream_ms": stream_ms, "recompute_ms": recompute_ms, "speedup_vs_recompute": recompute_ms / stream_ms,
        "cost_ratio_last_vs_first": results["points"][p1]["ms"] / results["points"][p0]["ms"],
        "rss_ratio_last_vs_first": results["points"][p1]["rss_mib"] / results["points"][p0]["rss_mib"],
        "flops_per_chunk": flops.total, "achieved_flops": achieved, "gemm_flops": peak,
        "fraction_of_gemm_peak": achieved / peak,
    })
    log(f"flat cost: chunk {p1} / chunk {p0} latency ratio {results['cost_ratio_last_vs_first']:.3f}, "
        f"RSS ratio {results['rss_ratio_last_vs_first']:.3f} (goal ~1.0)")
    log(f"streaming {stream_ms:.1f} ms vs recomputing the {cc.cache_frames}-frame window {recompute_ms:.1f} ms: "
        f"{results['speedup_vs_recompute']:.2f}x (goal >= 6x)")
    log(f"streaming forward {flops.total / 1e9:.2f} GFLOP/chunk -> {achieved / 1e9:.0f} GFLOP/s vs dense GEMM "
        f"{peak / 1e9:.0f} GFLOP/s: {results['fraction_of_gemm_peak']:.0%} of peak (goal >= 60%)")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2, default=str))
        log(f"saved {out}")
    return results
