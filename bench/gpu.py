"""`sdv2 bench gpu`: the paper's configurations on the GPUs you have, in one command (for GPU owners).

For every combination of resolution, denoising steps (Stream-Batch), GPU count and eager/compiled, with random
weights of the real shapes (default the 1.3B DiT with the real Wan2.1 VAE shapes; nothing to download): start an
engine, measure the time to first frame (first push -> first styled frame), then the steady output rate over
`chunks` chunks with `torch.cuda.set_sync_debug_mode("error")` on (any implicit host sync in the steady state
fails the row), the VRAM peak per device, and the per-stage split from a second short run with profiling on
(profiling synchronises, so it is not timed for fps). Prints a table with the ratio to the paper's figure for the
same configuration where the paper has one (H100, RTX 4090; arXiv 2511.07399, bench/roofline.py paper_figures) and
saves JSON. Nothing here was measured by the authors of this repository on a GPU: see README.

On a machine without CUDA the same code runs on the CPU (the tests run it with the tiny model).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .roofline import SIZES, paper_figures


@dataclass
class GpuRow:
    size: str
    steps: int
    gpus: int
    compiled: bool
    fps: float | None = None
    ttff_s: float | None = None
    setup_s: float | None = None  # load (+ compile) before the stream
    vram_gib: list[float] | None = None
    stages_ms: dict | None = None  # per chunk, from the profiled run
    sync_free: bool | None = None  # steady state passed set_sync_debug_mode("error") (CUDA only)
    paper_fps: float | None = None
    ratio_to_paper: float | None = None
    error: str | None = None


def _size(name: str) -> tuple[int, int]:
    if name in SIZES:
        return SIZES[name]
    w, _, h = name.lower().partition("x")
    return int(h), int(w)


def _paper_fps(model: str, size: str, gpus: int, steps: int) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower()
    gpu = "h100" if "h100" in name else "4090" if "4090" in name else None
    key = "1.3b" if "1.3b" in model else "14b" if "14b" in model else None
    for f in paper_figures():
        if (f.model, f.size, f.gpu, f.ngpus, f.steps, f.batch) == (key, size, gpu, gpus, steps, True):
            return f.fps
    return None


def _run(cfg, frames, warmup_chunks: int, sync_check: bool):
    """(fps, ttff, setup_s, stats, engine stage timings) of one engine over `frames` (lossless)."""
    from sdv2_studio.engine.api import Engine

    eng = Engine(cfg)
    t0 = time.perf_counter()
    eng.start()
    setup = time.perf_counter() - t0
    stamps: list[float] = []
    checking = False
    try:
        t_first = time.perf_counter()
        for i, f in enumerate(frames):
            eng.push(f)
            while eng.pull() is not None:
                stamps.append(time.perf_counter())
            if sync_check and not checking and i >= 5 + 4 * warmup_chunks and torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("error")  # process-wide: covers the engine's worker thread
                checking = True
        eng.finish()
        while not eng.done():
            if eng.pull(timeout=0.5) is not None:
                stamps.append(time.perf_counter())
        stats = eng.stats()
    finally:
        if checking:
            torch.cuda.set_sync_debug_mode("default")
        timings = dict(eng.pipeline.timings) if eng.pipeline is not None else {}
        chunks = eng.pipeline.chunks if eng.pipeline is not None else 0
        eng.stop()
    steady = stamps[4 * warmup_chunks:]
    fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else None
    ttff = stamps[0] - t_first if stamps else None
    return fps, ttff, setup, stats, {k: v / max(1, chunks) * 1e3 for k, v in timings.items()}


def bench_gpu(model: str = "random:wan2.1-1.3b", sizes: tuple[str, ...] = ("480p", "512"),
              steps_list: tuple[int, ...] = (1, 2, 3, 4), gpu_counts: tuple[int, ...] | None = None,
              compiled: tuple[bool, ...] = (False, True), chunks: int = 30, warmup_chunks: int = 8,
              device: str = "auto", dtype: str = "auto", out: str | None = "bench/results/gpu.json",
              log=print) -> dict:
    from sdv2_studio.engine.api import EngineConfig
    from sdv2_studio.engine.config import Controls
    from sdv2_studio.engine.io.pattern import TestPatternSource

    cuda = torch.cuda.is_available() and device != "cpu"
    if gpu_counts is None:
        gpu_counts = tuple(range(1, torch.cuda.device_count() + 1)) if cuda else (1,)
    rows: list[GpuRow] = []
    log(f"bench gpu: {model}, {torch.cuda.get_device_name() if cuda else 'CPU (no CUDA)'}, sizes {', '.join(sizes)}, "
        f"steps {steps_list}, GPUs {gpu_counts}, {'eager/compiled' if len(compiled) > 1 else compiled[0]}")
    for size in sizes:
        h, w = _size(size)
        src = TestPatternSource(size=(h, w), fps=30)
        frames = [src.frame(i) for i in range(5 + 4 * (warmup_chunks + chunks))]
        for n in gpu_counts:
            for steps in steps_list:
                for comp in compiled:
                    if comp and n > 1:
                        continue  # --compile runs on one device (pipeline ranks run eager)
                    row = GpuRow(size, steps, n, comp)
                    dev = device if n == 1 else ",".join(f"cuda:{i}" for i in range(n))
                    base = dict(model=model, device=dev, dtype=dtype, ranks=n, size=(h, w), batch=True,
                                controls=Controls(steps=steps), lossless=True, prompt_cache_dir="", compile=comp)
                    try:
                        if cuda:
                            for i in range(n):
                                torch.cuda.reset_peak_memory_stats(i)
                        # the sync check covers one device: ranks read headers and frames back on purpose
                        check = cuda and n == 1
                        row.fps, row.ttff_s, row.setup_s, stats, _ = _run(EngineConfig(**base), frames,
                                                                          warmup_chunks, sync_check=check)
                        row.error = stats.error
                        row.sync_free = _sync_free(row.error) if check else None
                        if cuda:
                            row.vram_gib = [torch.cuda.max_memory_allocated(i) / 2**30 for i in range(n)]
                        *_, row.stages_ms = _run(EngineConfig(**base, profile=True), frames[:5 + 4 * warmup_chunks],
                                                 warmup_chunks // 2, sync_check=False)
                    except Exception as e:  # a row that fails is reported, the others still run
                        row.error = f"{type(e).__name__}: {e}"
                        row.sync_free = _sync_free(row.error) if cuda and n == 1 else None
                    row.paper_fps = _paper_fps(model, size, n, steps)
                    if row.fps and row.paper_fps:
                        row.ratio_to_paper = row.fps / row.paper_fps
                    rows.append(row)
                    log(_line(row))
    result = {"model": model, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "chunks": chunks, "rows": [asdict(r) for r in rows]}
    ok = [r.fps for r in rows if r.fps]
    if ok:
        log(f"median fps over {len(ok)} configurations: {statistics.median(ok):.2f}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        log(f"saved {out}")
    return result


def _sync_free(error: str | None) -> bool | None:
    """False when the run failed on the sync debug mode's error, True when it did not fail, None otherwise."""
    if error is None:
        return True
    return False if "synchroniz" in error.lower() else None


def _line(r: GpuRow) -> str:
    what = f"  {r.size:>7} {r.steps} step(s) {r.gpus} GPU(s) {'compiled' if r.compiled else 'eager':<8}"
    if r.error and r.fps is None:
        return f"{what} FAILED: {r.error}"
    stages = ", ".join(f"{k} {v:.0f} ms" for k, v in (r.stages_ms or {}).items())
    paper = f" | paper {r.paper_fps:.2f} fps, ratio {r.ratio_to_paper:.2f}" if r.ratio_to_paper else ""
    vram = f", VRAM {max(r.vram_gib):.1f} GiB" if r.vram_gib else ""
    sync = {True: ", sync-free", False: ", HOST SYNC", None: ""}[r.sync_free]
    return f"{what} {r.fps or 0:7.2f} fps, TTFF {r.ttff_s or 0:.2f} s{vram}{sync} | {stages}{paper}"
