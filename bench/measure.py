"""`sdv2 bench model`: the streaming DiT forward measured side by side, printed as ratios and saved as JSON.

1. Flat cost over a long stream: per-chunk latency and memory at chunk 10, 1,000 and 10,000 (ratios ~1.0).
2. The streaming forward (one new latent frame against the rolling cache, prompt K/V cached) vs recomputing the
   whole 6-frame window without a cache, diffusers-style (text embedding, prompt K/V and all 6 frames every call).
3. Achieved FLOP/s of the streaming forward (flops.py) vs this machine's dense GEMM FLOP/s, measured in the
   same run with the same threads and dtype.
4. The hot path's variants side by side (`hot_path`): eager vs compiled (engine/compiled.py) x float32 vs bfloat16,
   steady-state ms per chunk, the ratio to eager float32, the output's relative error against eager float32, the
   first (2-frame) chunk's time, and aten ops per steady chunk (engine/sync_check.OpCounter); and the streaming
   VAE decode of the same resolution, eager vs compiled (`decode`).
Timings are medians of repeated runs; nothing here is asserted (benchmarks are not tests).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from sdv2_studio.engine.config import CacheConfig, get_preset
from sdv2_studio.engine.kv_cache import KVCache, StreamClock
from sdv2_studio.engine.model import CausalWanModel, cast_model, fuse_qkv

from .flops import forward_flops


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
                out: str | None = "bench/results/model.json", log=print, hot_path: bool = True) -> dict:
    """Run the benchmark; `frame_hw` is the latent size (32x32 latents = 256 tokens per frame)."""
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    cfg = get_preset(preset)
    cc = CacheConfig()
    torch.manual_seed(0)
    with torch.device(dev):
        model = cast_model(CausalWanModel(cfg).eval(), dt)
    fuse_qkv(model)  # as loaded
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
    if hot_path:
        results["hot_path"] = bench_hot_path(cfg, frame_hw, dev, log=log)
        results["decode"] = bench_decode(preset, frame_hw, dev, log=log)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2, default=str))
        log(f"saved {out}")
    return results


def bench_hot_path(cfg, frame_hw: tuple[int, int], device: torch.device, chunks: int = 20, log=print) -> dict:
    """Eager vs compiled x float32 vs bfloat16 on the same weights and inputs (section 4 of the module docstring)."""
    from sdv2_studio.engine.compiled import compile_model, warm_up
    from sdv2_studio.engine.sync_check import OpCounter

    cc = CacheConfig()
    h, w = frame_hw
    L = (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
    torch.manual_seed(0)
    base = CausalWanModel(cfg).eval().to(device)
    fuse_qkv(base)  # as loaded (copies and casts keep it)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device=device)
    xs = [torch.randn(1, cfg.in_dim, 2 if i == 0 else 1, h, w, device=device) for i in range(cc.cache_frames + chunks)]
    rows, ref = {}, None
    for dtype in (torch.float32, torch.bfloat16):
        model = cast_model(copy.deepcopy(base), dtype)  # the same weights, cast (fp32 islands kept)
        for compiled in (False, True):
            name = f"{'compiled' if compiled else 'eager'} {str(dtype).removeprefix('torch.')}"
            cache = KVCache(cfg, cc, 1, L, device=device, dtype=dtype)
            cache.set_prompt(model, ctx)
            clock = StreamClock(cc)
            t_compile = 0.0
            with torch.inference_mode():
                if compiled:
                    t0 = time.perf_counter()
                    compile_model(model, device)
                    warm_up(model, cache, cc.chunk_frames, (h, w), dtype)
                    t_compile = time.perf_counter() - t0
                times, out = [], None
                for x in xs:
                    t = torch.full((1, x.shape[2]), 700.0, device=device)
                    _sync(device)
                    t0 = time.perf_counter()
                    x = x.to(dtype, copy=True)  # an inference tensor, as in the stream
                    out = model.forward_chunk(x, t, cache, [clock.next(x.shape[2])])
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                if not compiled:
                    with OpCounter() as ops:  # one more steady chunk, counted
                        model.forward_chunk(xs[-1].to(dtype, copy=True), t, cache, [clock.next(1)])
            model.compiled_step = None
            out = out.float()
            ref = out if ref is None else ref
            row = {"ms": statistics.median(times[cc.cache_frames:]) * 1e3, "first_chunk_ms": times[0] * 1e3,
                   "rel_err": ((out - ref).norm() / ref.norm()).item(), "compile_s": t_compile}
            if not compiled:
                row.update(ops=sum(ops.ops.values()), kernels=ops.kernels)
            rows[name] = row
    eager32 = rows["eager float32"]["ms"]
    log(f"hot path, side by side ({chunks} steady chunks each, same weights and inputs):")
    log(f"  {'variant':<18}{'ms/chunk':>10}{'vs eager fp32':>15}{'rel err':>10}{'first chunk':>13}"
        f"{'ops (kernels)':>16}")
    for name, r in rows.items():
        r["speedup"] = eager32 / r["ms"]
        ops = f"{r['ops']} ({r['kernels']})" if "ops" in r else "fused"
        log(f"  {name:<18}{r['ms']:>10.1f}{r['speedup']:>14.2f}x{r['rel_err']:>10.1e}{r['first_chunk_ms']:>11.1f}ms"
            f"{ops:>16}" + (f"  (compiled in {r['compile_s']:.0f} s, before streaming)" if r["compile_s"] else ""))
    return rows


def bench_decode(preset: str, latent_hw: tuple[int, int], device: torch.device, passes: int = 10,
                 log=print) -> dict:
    """The streaming VAE decode (the random models' VAE for `preset`) of one latent frame per call, eager vs compiled
    (engine/compiled.py `compile_decoder`), float32, side by side on the same weights, latents and stream."""
    from sdv2_studio.engine.compiled import compile_decoder
    from sdv2_studio.engine.models import tiny_vae

    vae = tiny_vae(device, torch.float32, dit_preset=preset)
    gen = torch.Generator().manual_seed(0)
    latents = [torch.randn(1, 16, 1, *latent_hw, generator=gen).to(device) for _ in range(passes + 3)]
    rows, outs = {}, {}
    for name in ("eager", "compiled"):
        t_compile = 0.0
        if name == "compiled":
            t0 = time.perf_counter()
            compile_decoder(vae, device, (1, 16, 1, *latent_hw))
            t_compile = time.perf_counter() - t0
        state, times, outs[name] = vae.new_state(), [], []
        with torch.inference_mode():
            for z in latents:
                _sync(device)
                t0 = time.perf_counter()
                outs[name].append(vae.decode_stream(z, state))
                _sync(device)
                times.append(time.perf_counter() - t0)
        rows[name] = {"ms": statistics.median(times[3:]) * 1e3, "compile_s": t_compile}
    vae.compiled_step = None
    worst = max((a - b).abs().max().item() for a, b in zip(outs["eager"], outs["compiled"]))
    rows["compiled"].update(speedup=rows["eager"]["ms"] / rows["compiled"]["ms"], max_abs_diff=worst)
    h, w = (n * vae.cfg.spatial_factor for n in latent_hw)
    log(f"VAE decode ({vae.cfg.name}, {h}x{w}, 4 frames per call, {passes} steady calls): eager "
        f"{rows['eager']['ms']:.1f} ms, compiled {rows['compiled']['ms']:.1f} ms "
        f"({rows['compiled']['speedup']:.2f}x, max |diff| {worst:.1e}, compiled in {t_compile:.0f} s)")
    return rows


def bench_pipeline(model: str = "tiny", size: tuple[int, int] = (256, 256), chunks: int = 10,
                   steps_list: tuple[int, ...] = (1, 2, 3, 4), device: str = "auto", dtype: str = "auto",
                   out: str | None = "bench/results/pipeline.json", log=print) -> dict:
    """Per-stage split (VAE encode, DiT, VAE decode, text, I/O), fps and latency for 1-4 steps, Stream-Batch vs
    no-batch, on the test source. Latency is the compute latency of a chunk (its frames enter -> its styled frames
    leave) plus the time to capture a chunk's frames at the source rate (4 frames at 16 fps = 0.25 s)."""
    import numpy as np
    from sdv2_studio.engine.api import resolve_device, resolve_dtype
    from sdv2_studio.engine.config import Controls
    from sdv2_studio.engine.io.pattern import TestPatternSource
    from sdv2_studio.engine.models import load_bundle
    from sdv2_studio.engine.pipeline import StreamPipeline
    from sdv2_studio.engine.text import PromptCache

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    bundle = load_bundle(model, device=dev, dtype=dt)
    h, w = size
    src_fps = 16.0
    src = TestPatternSource(size=(h, w), fps=src_fps)
    rows = []
    log(f"bench pipeline: {bundle.name}, {w}x{h}, {dt} on {dev}, {chunks} chunks per run, "
        f"{torch.get_num_threads()} threads")
    for batch in (True, False):
        for steps in steps_list:
            pipe = StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text), size=(h, w), batch=batch,
                                  controls=Controls(steps=steps), device=dev, dtype=dt, profile=True)
            pipe.process(np.stack([src.frame(i) for i in range(5)]))  # warm-up: chunk 0 and the prompt
            for k in list(pipe.timings):
                pipe.timings[k] = 0.0
            frame_i, t_in, lat, n_out, io = 5, [], [], 0, 0.0
            t_start = time.perf_counter()
            for _ in range(chunks + pipe.latency_chunks):
                t0 = time.perf_counter()
                frames = np.stack([src.frame(frame_i + j) for j in range(4)])
                io += time.perf_counter() - t0
                frame_i += 4
                t_in.append(time.perf_counter())
                outs = pipe.process(frames)
                if outs:
                    lat.append(time.perf_counter() - t_in[n_out // 4] + 4 / src_fps)
                    n_out += len(outs)
            wall = time.perf_counter() - t_start
            tm = dict(pipe.timings)
            row = {"mode": "stream-batch" if batch else "no-batch", "steps": steps, "fps": n_out / wall,
                   "latency_s": statistics.median(lat) if lat else None,
                   "encode_ms": tm.get("encode", 0) / chunks * 1e3, "dit_ms": tm.get("dit", 0) / chunks * 1e3,
                   "decode_ms": tm.get("decode", 0) / chunks * 1e3, "text_ms": tm.get("text", 0) * 1e3,
                   "io_ms": io / chunks * 1e3, "frames_out": n_out}
            rows.append(row)
            log(f"  {row['mode']:<12} {steps} step(s): {row['fps']:6.2f} fps, latency {row['latency_s']:.2f} s | "
                f"per chunk: encode {row['encode_ms']:.0f} ms, DiT {row['dit_ms']:.0f} ms, decode "
                f"{row['decode_ms']:.0f} ms, I/O {row['io_ms']:.1f} ms")
    base = {r["steps"]: r for r in rows if r["mode"] == "no-batch"}
    for r in rows:
        if r["mode"] == "stream-batch" and r["steps"] in base:
            r["fps_vs_no_batch"] = r["fps"] / base[r["steps"]]["fps"]
    log("Stream-Batch / no-batch throughput: " + ", ".join(
        f"{r['steps']} step(s) {r['fps_vs_no_batch']:.2f}x" for r in rows if "fps_vs_no_batch" in r))
    result = {"model": bundle.name, "size": [h, w], "device": str(dev), "dtype": str(dt), "chunks": chunks,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        log(f"saved {out}")
    return result


def _run_engine(cfg, frames: list, pace_fps: float | None = None, skip: int = 0) -> tuple[float, object]:
    """Push `frames` through an engine (lossless); returns (steady-state output fps over the frames after the
    first `skip` outputs, stats)."""
    from sdv2_studio.engine.api import Engine

    eng = Engine(cfg)
    eng.start()
    try:
        stamps: list[float] = []
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            if pace_fps:
                delay = t0 + i / pace_fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            eng.push(f)
            while eng.pull() is not None:
                stamps.append(time.perf_counter())
        eng.finish()
        while not eng.done():
            if eng.pull(timeout=0.2) is not None:
                stamps.append(time.perf_counter())
        steady = stamps[skip:]
        fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
        st = eng.stats()
    finally:
        eng.stop()
    return fps, st


def bench_parallel(model: str = "random:small", size: tuple[int, int] = (256, 256), chunks: int = 12, steps: int = 2,
                   ranks: tuple[int, ...] = (1, 2), out: str | None = "bench/results/parallel.json", log=print) -> dict:
    """Throughput and per-frame latency with 1 vs N CPU pipeline ranks (one thread per rank), side by side.

    Scaling efficiency = fps(N) / (N * fps(1)). Throughput: steady-state output rate with frames pushed as fast as
    the engine takes them, after warm-up and the one-off block rebalance (first 6 chunks excluded); latency: a
    second run paced at 90% of that throughput (so queueing does not dominate)."""
    from sdv2_studio.engine.api import EngineConfig
    from sdv2_studio.engine.config import Controls
    from sdv2_studio.engine.io.pattern import TestPatternSource

    h, w = size
    src = TestPatternSource(size=(h, w), fps=16)
    frames = [src.frame(i) for i in range(5 + 4 * chunks)]
    threads_before = torch.get_num_threads()
    rows = []
    log(f"bench parallel: {model} DiT + tiny VAE, {w}x{h}, {steps} step(s) Stream-Batch, {chunks} chunks, "
        "one CPU thread per rank")
    try:
        for n in ranks:
            torch.set_num_threads(1)
            cfg = EngineConfig(model=model, device="cpu", size=(h, w), lossless=True, ranks=n, threads_per_rank=1,
                               controls=Controls(steps=steps), prompt_cache_dir="", rebalance_after=3 if n > 1 else 0)
            fps, st = _run_engine(cfg, frames, skip=5 + 4 * 5)
            _, paced = _run_engine(cfg, frames, pace_fps=0.9 * fps)
            rows.append({"ranks": n, "fps": fps, "latency_p50_s": paced.latency_p50,
                         "latency_p99_s": paced.latency_p99, "ttff_s": st.ttff, "chunk_ms": st.chunk_ms})
            log(f"  {n} rank(s): {fps:6.2f} fps | paced latency p50 {paced.latency_p50 * 1e3:.0f} ms, "
                f"p99 {paced.latency_p99 * 1e3:.0f} ms | TTFF {st.ttff:.2f} s")
    finally:
        torch.set_num_threads(threads_before)
    base = rows[0]["fps"]
    for r in rows[1:]:
        r["scaling_efficiency"] = r["fps"] / (r["ranks"] * base)
        log(f"scaling efficiency {r['ranks']} ranks: fps({r['ranks']}) / ({r['ranks']} x fps(1)) = "
            f"{r['scaling_efficiency']:.2f} (goal >= 0.85)")
    result = {"model": model, "size": [h, w], "steps": steps, "chunks": chunks, "torch": torch.__version__,
              "cpus": os.cpu_count(), "rows": rows}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        log(f"saved {out}")
    return result
