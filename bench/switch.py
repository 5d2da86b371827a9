"""`sdv2 bench switch`: what a preset switch costs, printed and saved as JSON.

1. LoRAs (engine/lora.py, as a preset switches them): for a rank-r LoRA on every attention and FFN linear of each
   DiT preset measured (seeded random weights, CPU), the time of none -> A, A -> B, B -> A and A -> none switches,
   the first read of a LoRA file and a cached one, and the bytes held (factors, saved base weights); for the 1.3B
   DiT the same figures on paper, from its parameter shapes (engine.checkpoint.expected_shapes).
2. A preset switch to an uncached prompt (issue 10): chunk times of the small DiT while a umT5 made slow by size
   (umT5-XXL's 24 layers at the small model's width, 512 tokens) encodes the new prompt, in the background (live
   streams: the encoder in its low-priority child process, as at real size, and in a thread of the engine's process
   for comparison) and inline (files): the worst chunk while it encodes over the median chunk before the switch.
Timings are medians of repeated runs; nothing here is asserted (benchmarks are not tests).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from sdv2_studio.engine.checkpoint import expected_shapes
from sdv2_studio.engine.config import ModelConfig, get_preset


def style_linears(cfg: ModelConfig) -> list[str]:
    """The modules a typical style LoRA targets: q, k, v, o of both attentions and the FFN of every block."""
    return [f"blocks.{i}.{a}.{p}" for i in range(cfg.num_layers) for a in ("self_attn", "cross_attn") for p in "qkvo"
            ] + [f"blocks.{i}.ffn.{j}" for i in range(cfg.num_layers) for j in (0, 2)]


def lora_on_paper(cfg: ModelConfig, rank: int, dtype_bytes: int = 2) -> dict:
    """Parameter counts of a rank-`rank` LoRA on `style_linears(cfg)` and what merging it moves."""
    shapes = expected_shapes(cfg)
    outs_ins = [shapes[f"{m}.weight"] for m in style_linears(cfg)]
    touched = sum(o * i for o, i in outs_ins)
    factors = sum(rank * (o + i) for o, i in outs_ins)
    return {"touched_params": touched, "factor_params": factors, "factor_bytes": factors * dtype_bytes,
            "saved_bytes": touched * dtype_bytes, "written_bytes": touched * dtype_bytes,
            "gflop": 2 * rank * touched / 1e9}


def _write_lora(path: Path, cfg: ModelConfig, rank: int, seed: int) -> Path:
    from safetensors.torch import save_file

    shapes, g, tensors = expected_shapes(cfg), torch.Generator().manual_seed(seed), {}
    for m in style_linears(cfg):
        out, inp = shapes[f"{m}.weight"]
        key = f"diffusion_model.{m}"
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, inp, generator=g).to(torch.bfloat16)
        tensors[f"{key}.lora_up.weight"] = (0.01 * torch.randn(out, rank, generator=g)).to(torch.bfloat16)
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, path)
    return path


def bench_loras(preset: str, rank: int = 32, repeats: int = 5, log=print) -> dict:
    from sdv2_studio.engine.models import tiny_bundle

    bundle = tiny_bundle(preset=preset)
    merger = bundle.merger()
    with tempfile.TemporaryDirectory() as tmp:
        a_file, b_file = (_write_lora(Path(tmp) / f"{n}.safetensors", bundle.dit.cfg, rank, n) for n in (1, 2))
        t0 = time.perf_counter()
        a = merger.load([(a_file, 0.8)])
        read_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        merger.load([(a_file, 0.8)])
        cached_ms = (time.perf_counter() - t0) * 1e3
        b = merger.load([(b_file, 1.0)])
    times: dict[str, list[float]] = {"none->A": [], "A->B": [], "B->A": [], "A->none": []}
    for _ in range(repeats):
        for name, target in (("none->A", a), ("A->B", b), ("B->A", a), ("A->none", [])):
            st = merger.switch(target)
            times[name].append(st.seconds * 1e3)
            if name == "A->B":
                ab = st
    row = {"preset": preset, "rank": rank, "dit_params": bundle.dit.num_params(), "read_ms": read_ms,
           "cached_read_ms": cached_ms, "switch_ms": {k: statistics.median(v) for k, v in times.items()},
           "merged": ab.merged, "written_bytes": ab.bytes_written, "gflop": ab.flops / 1e9,
           "saved_bytes": ab.backup_bytes, "factor_bytes_held": ab.factor_bytes, "factor_bytes": a[0][0].nbytes}
    log(f"  {preset}: {row['dit_params'] / 1e6:.2f} M params; rank-{rank} LoRA on {ab.merged} linears: factors "
        f"{row['factor_bytes'] / 2**20:.2f} MiB (bf16), read {read_ms:.0f} ms (cached {cached_ms:.2f} ms); switch "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in row["switch_ms"].items())
        + f"; A->B {row['gflop']:.2f} GFLOP, {ab.bytes_written / 2**20:.1f} MiB written, saved weights "
        f"{ab.backup_bytes / 2**20:.1f} MiB")
    return row


def _prompt(k: int, text_len: int) -> str:
    return (f"style {k}: " + "a long and detailed description of a painted scene, " * 9)[:text_len - 1]


def _prompt_switches(pipe, src, switches: int, text_len: int, busy: float,
                     min_chunks: int = 1) -> tuple[list[float], list[float], list[int]]:
    """Per switch: (worst chunk from the switch until the new prompt is in use, over at least `min_chunks` chunks) /
    (median chunk before it), seconds until it is in use, chunks until it is in use. Chunks come as from a live
    source: one every (median chunk time / `busy`) seconds after a warm-up, so the engine is busy that fraction of
    the time, as a stream with headroom is."""
    import numpy as np

    n, times, period, due = 0, [], 0.0, time.perf_counter()

    def chunk() -> None:
        nonlocal n, due
        due += period
        time.sleep(max(0.0, due - time.perf_counter()))  # the source's next frames are not there before
        frames = np.stack([src.frame(n + i) for i in range(pipe.frames_needed)])
        n += len(frames)
        t0 = time.perf_counter()
        pipe.process(frames)
        times.append(time.perf_counter() - t0)

    for _ in range(10):
        chunk()
    period, due = statistics.median(times[2:]) / busy, time.perf_counter()
    ratios, encodes, counts = [], [], []
    for k in range(switches):
        before = statistics.median(times[-8:])
        t0 = time.perf_counter()
        pipe.set_controls(prompt=_prompt(k, text_len))
        first = len(times)
        chunk()
        while pipe.prompt_pending:
            chunk()
        encodes.append(time.perf_counter() - t0)
        counts.append(len(times) - first)
        while len(times) - first < min_chunks:
            chunk()
        ratios.append(max(times[first:]) / before)
        for _ in range(4):
            chunk()
    return ratios, encodes, counts


def bench_prompt_switch(size: tuple[int, int] = (64, 64), text_layers: int = 24, switches: int = 8,
                        busy: float = 0.6, log=print) -> dict:
    """Modes side by side: the encoder in its child process (live streams at real size), in a thread (live streams
    with a small encoder), inline (files), and the noise floor: switches to cached prompts (no encode at all) over
    as many chunks as the child took, so a ratio above it is the encode's doing, not the machine's."""
    from sdv2_studio.engine.config import Controls
    from sdv2_studio.engine.io.pattern import TestPatternSource
    from sdv2_studio.engine.models import tiny_bundle
    from sdv2_studio.engine.pipeline import StreamPipeline
    from sdv2_studio.engine.text import PromptCache, tiny_text_encoder

    bundle = tiny_bundle(preset="small")
    cfg = bundle.dit.cfg
    text = tiny_text_encoder(text_dim=cfg.text_dim, text_len=cfg.text_len, num_layers=text_layers)
    result, window = {}, 1
    modes = {"process": dict(background_prompts=True, text_process=True),  # live streams: the default at real size
             "thread": dict(background_prompts=True, text_process=False),  # the same, the encoder in a thread
             "inline": dict(background_prompts=False),  # files
             "cached": dict(background_prompts=True)}  # no encode: the machine's own chunk-to-chunk noise
    for mode, how in modes.items():
        text.close()  # each mode starts with the weights in this process
        cache = PromptCache(text)
        if mode == "cached":
            for k in range(switches):
                cache.encode_trimmed(_prompt(k, cfg.text_len))
        pipe = StreamPipeline(bundle.dit, bundle.vae, cache, size=size, controls=Controls(steps=2), **how)
        ratios, encodes, counts = _prompt_switches(pipe, TestPatternSource(size=size, fps=16), switches,
                                                   cfg.text_len, busy, min_chunks=window if mode == "cached" else 1)
        pipe.close()
        if mode == "process":
            window = round(statistics.median(counts))
        result[mode] = {"worst_over_median": max(ratios), "median_worst_over_median": statistics.median(ratios),
                        "ratios": ratios, "encode_s": encodes, "chunks": counts, "busy": busy}
        log(f"  {mode:<8}: worst chunk until the prompt is in use / median chunk before, per switch: "
            + ", ".join(f"{r:.2f}" for r in ratios) + f" (median {statistics.median(ratios):.2f}; "
            + (f"{window} chunks each)" if mode == "cached" else
               f"encode + switch {statistics.median(encodes):.2f} s, {statistics.median(counts):.0f} chunks)"))
    text.close()
    return result


def bench_switch(presets: tuple[str, ...] = ("tiny", "small"), rank: int = 32, text_layers: int = 24,
                 out: str | None = "bench/results/switch.json", log=print) -> dict:
    log(f"bench switch: LoRA switches (rank {rank}, float32, CPU, {torch.get_num_threads()} threads)")
    rows = [bench_loras(p, rank, log=log) for p in presets]
    paper = lora_on_paper(get_preset("wan2.1-1.3b"), rank)
    log(f"  wan2.1-1.3b on paper: {paper['touched_params'] / 1e9:.2f} G weights touched, factors "
        f"{paper['factor_params'] / 1e6:.1f} M ({paper['factor_bytes'] / 1e6:.0f} MB bf16), saved weights "
        f"{paper['saved_bytes'] / 1e9:.2f} GB bf16, {paper['gflop']:.0f} GFLOP + {paper['written_bytes'] / 1e9:.2f} GB "
        "written per switch")
    log(f"bench switch: an uncached prompt (small DiT, umT5 of {text_layers} layers at 512 tokens; chunks paced "
        "as a live stream that keeps the engine 60% busy)")
    prompts = bench_prompt_switch(text_layers=text_layers, log=log)
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__, "loras": rows,
              "wan2.1-1.3b_on_paper": paper, "uncached_prompt": prompts}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result
