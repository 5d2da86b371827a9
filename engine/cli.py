"""`sdv2`: the headless command line. Every command goes through the same engine API as the GUI and OBS bridge.

User-facing problems raise `EngineError`; they are printed as one line (`sdv2: error: ...`) with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from sdv2_studio.engine import extensions
from sdv2_studio.engine.errors import EngineError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from sdv2_studio.engine.checkpoint import format_info, inspect_checkpoint

    print(format_info(inspect_checkpoint(args.path)))
    return 0


def _cmd_sources(args: argparse.Namespace) -> int:
    from sdv2_studio.engine.io.sources import list_cameras

    cams = list_cameras()
    if not cams:
        print("no cameras found (Linux: /dev/video*; check the camera is connected and you may read it)")
    for cam in cams:
        print(f"{cam.spec:<24} {cam.name}")
    print("also: test[:WxH[@FPS]], a video file, rtmp:// srt:// udp:// URLs")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "model":
        from sdv2_studio.engine.bench import bench_model

        points = tuple(int(p) for p in args.points.split(","))
        bench_model(args.preset, points=points, device=args.device, dtype=args.dtype,
                    out=args.out or "bench/results/model.json")
    elif args.what == "parallel":
        from sdv2_studio.engine.bench import bench_parallel

        model = args.model if args.model != "tiny" else "random:small"
        bench_parallel(model, size=_parse_size(args.size) or (256, 256),
                       chunks=args.chunks, steps=args.steps, out=args.out or "bench/results/parallel.json")
    elif args.what == "roofline":
        from sdv2_studio.engine.roofline import main_roofline

        return main_roofline(args)
    elif args.what == "pipeline":
        from sdv2_studio.engine.bench import bench_pipeline

        bench_pipeline(args.model, size=_parse_size(args.size) or (256, 256), chunks=args.chunks,
                       device=args.device, dtype=args.dtype, out=args.out or "bench/results/pipeline.json")
    return 0


def _parse_size(text: str | None) -> tuple[int, int] | None:
    from sdv2_studio.engine.io.frames import parse_size

    return parse_size(text)


def _run_torchrun_stage(args: argparse.Namespace) -> int:
    """A torchrun rank >= 1: build this rank's part from the same command line and serve until rank 0 stops."""
    from sdv2_studio.engine.api import resolve_dtype
    from sdv2_studio.engine.config import CacheConfig, get_preset
    from sdv2_studio.engine.parallel import StageSpec, rank_devices, split_blocks, stage_main

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    devices = rank_devices(args.device if "," in args.device else "auto", world)
    device = devices[local] if len(devices) > local else devices[-1]
    from sdv2_studio.engine.models import find_downloaded, random_preset

    model = args.model
    if model == "auto":
        found = find_downloaded()
        model = str(found[0]) if found else "tiny"
    if random_preset(model):
        layers = get_preset(random_preset(model)).num_layers
    else:
        from sdv2_studio.engine.checkpoint import inspect_checkpoint

        layers = inspect_checkpoint(model).config.num_layers
    size = _parse_size(args.size) or ((256, 256) if random_preset(model) else (480, 832))
    spec = StageSpec(rank=rank, world=world, port=0, device=str(device),
                     dtype=str(resolve_dtype(args.dtype, device)).removeprefix("torch."), model=model, base=args.base,
                     blocks=[(r.start, r.stop) for r in split_blocks(layers, world)], size=size,
                     slots=args.steps if not args.no_batch else 1, steps=args.steps, cache=CacheConfig(),
                     threads=max(1, (os.cpu_count() or 1) // world), taehv=args.taehv)
    stage_main(spec)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from sdv2_studio.engine.api import Engine, EngineConfig
    from sdv2_studio.engine.io.sinks import open_sink
    from sdv2_studio.engine.io.sources import open_source
    from sdv2_studio.engine.pipeline import Controls

    base = {}
    if args.preset:
        from sdv2_studio.engine.presets import find_preset, load_library

        base = find_preset(load_library()[0], args.preset).controls()
    given = {"prompt": args.prompt, "steps": args.steps, "noise_scale": args.noise_scale, "seed": args.seed,
             "transition_chunks": args.transition}
    controls = Controls(**{**base, **{k: v for k, v in given.items() if v is not None}}).validated()
    args.steps = controls.steps  # torchrun stages below read it
    spec = args.source
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0:
        return _run_torchrun_stage(args)  # launched by torchrun: ranks >= 1 serve their blocks
    cfg = EngineConfig(model=args.model, base=args.base, device=args.device, dtype=args.dtype, ranks=args.ranks,
                       size=_parse_size(args.size), batch=not args.no_batch, controls=controls,
                       latency_budget=args.latency_budget, taehv=args.taehv, target_fps=args.target_fps)
    engine = Engine(cfg)

    def progress(msg: str, frac: float) -> None:
        print(f"[{frac:4.0%}] {msg}", file=sys.stderr)

    engine.start(progress)
    if engine.bundle.untrained:
        print(f"NOTE: {engine.bundle.notice}", file=sys.stderr)
    h, w = engine.size
    if spec.lower() == "test":
        spec = f"test:{w}x{h}@16"
    source = open_source(spec, realtime=args.realtime)
    live = getattr(source, "kind", "test") in ("camera", "stream")
    engine.config.lossless = not live  # files and the test source: every frame; live: drop when behind
    limit = args.frames or (round(args.seconds * source.fps) if args.seconds else None)
    if limit is None and live:
        print("live source: press Ctrl-C to stop", file=sys.stderr)
    file_out = args.out and "://" not in args.out and args.out.lower() != "vcam" and not args.out.lower().startswith(
        ("vcam:", "vcam/", "spout:", "syphon:"))
    if file_out:
        Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
    sink = open_sink(args.out, fps=source.fps) if args.out else None
    print(f"model {engine.bundle.name} | {w}x{h} | {controls.steps} step(s) | "
          f"{'Stream-Batch' if cfg.batch else 'no-batch'} | source {source!r}", file=sys.stderr)
    written = 0
    t0 = time.perf_counter()
    total = limit or getattr(source, "frames", None) or None
    tty = sys.stderr.isatty()
    last_report = [0.0]

    def report(pushed: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - last_report[0] < (0.5 if tty else 5.0):
            return
        last_report[0] = now
        of = f"/{total}" if total else ""
        line = f"frames {pushed}{of} in, {written} out, {written / max(now - t0, 1e-9):.1f} fps"
        print(("\r" + line) if tty else line, end="\n" if final or not tty else "", file=sys.stderr, flush=True)

    def drain(wait: float) -> None:
        nonlocal written
        while (frame := engine.pull(timeout=wait)) is not None:
            if sink:
                sink.write(frame)
            written += 1
            wait = 0.0

    source_error: EngineError | None = None
    pushed = 0
    try:
        with source:
            for i, (frame, _pts) in enumerate(source):
                if limit is not None and i >= limit:
                    break
                engine.push(frame)
                pushed += 1
                drain(0.0)
                report(pushed)
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
    except EngineError as e:  # the source failed mid-stream: keep what was made so far
        source_error = e
    finally:
        engine.finish()
        while not engine.done():
            drain(0.2)
            report(pushed)
        drain(0.0)
        report(pushed, final=True)
        if sink:
            sink.close()
    wall = time.perf_counter() - t0
    st = engine.stats()
    engine.stop()
    ttff = f"{st.ttff:.2f} s" if st.ttff is not None else "-"
    print(f"frames in {st.frames_in}, out {written} (dropped {st.dropped_in} in / {st.dropped_out} out) "
          f"in {wall:.1f} s")
    print(f"throughput {written / wall:.2f} fps | latency p50 {st.latency_p50 * 1e3:.0f} ms, "
          f"p99 {st.latency_p99 * 1e3:.0f} ms | time to first frame {ttff} | {st.chunk_ms:.0f} ms per chunk")
    if st.slo is not None:
        print(f"SLO: plan {st.slo.plan.label()} (yours: {st.slo.user_plan.label()}), {st.slo.changes} change(s), "
              f"{st.slo.misses} missed chunk(s) of {st.slo.chunks}" + (f"; last: {st.slo.last_reason}"
                                                                     if st.slo.last_reason else ""))
    if engine.config.lossless and not args.realtime:
        print("(offline run: input was queued faster than real time, so latency includes queueing; "
              "add --realtime to measure live latency)")
    if args.out:
        print(f"wrote {args.out}")
    if source_error is not None:
        kept = f"; the {written} styled frames made before it are in {args.out}" if args.out and written else ""
        raise EngineError(f"the source stopped mid-stream: {source_error}{kept}")
    if engine.bundle.untrained:
        print("(untrained tiny test model: the output is noise-like by design; "
              "`sdv2 models download` gets the real model)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdv2", description="StreamDiffusionV2 Studio engine (headless).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="stylise a video stream: a camera, a file, a URL or the built-in test source")
    s.add_argument("--source", default="test",
                   help="test[:WxH[@FPS]], a video file, camera:NAME or /dev/videoN, rtmp:// srt:// udp:// URLs")
    s.add_argument("--out", default="out/styled.mp4", help="output .mp4 ('' for none)")
    s.add_argument("--seconds", type=float, default=None,
                   help="stop after this much source time (default: 3 s for the test source, else the whole input)")
    s.add_argument("--frames", type=int, default=None, help="stop after this many input frames")
    s.add_argument("--model", default="auto", help="auto (downloaded model, else tiny), tiny, or a checkpoint path")
    s.add_argument("--base", default=None, help="Wan2.1 diffusers base folder (VAE, text encoder)")
    s.add_argument("--preset", default=None, help="start from a style preset (`sdv2 presets list`); the options "
                   "below override its fields")
    s.add_argument("--prompt", default=None, help=f"default: {Controls_default('prompt')!r}")
    s.add_argument("--steps", type=int, default=None, help="denoising steps 1-4 (default 2)")
    s.add_argument("--noise-scale", type=float, default=None, help="(0, 1] (default 0.8)")
    s.add_argument("--seed", type=int, default=None, help="default 0")
    s.add_argument("--transition", type=int, default=None,
                   help="chunks over which a prompt change blends in (default 0)")
    s.add_argument("--size", default=None, help="model resolution WIDTHxHEIGHT (multiples of 16)")
    s.add_argument("--no-batch", action="store_true", help="run steps in sequence instead of Stream-Batch")
    s.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N, or a list for pipeline ranks: cuda:0,1,2,3")
    s.add_argument("--ranks", type=int, default=1,
                   help="pipeline-parallel stages: GPUs when that many exist, else CPU processes (gloo)")
    s.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    s.add_argument("--latency-budget", type=float, default=None, help="seconds; slower frames count as misses")
    s.add_argument("--target-fps", type=float, default=None,
                   help="SLO scheduling: adapt Stream-Batch/no-batch, steps and resolution to reach this rate")
    s.add_argument("--realtime", action="store_true", help="pace files and the test source at their frame rate")
    s.add_argument("--taehv", default=None, metavar="PATH", help="decode with the TAEHV tiny decoder (taew2_1.pth)")
    s.set_defaults(fn=_cmd_run)

    s = sub.add_parser("inspect", help="show a checkpoint's layout, model preset, parameter count and dtype")
    s.add_argument("path", help="a .safetensors/.pt/.pth file or a model folder")
    s.set_defaults(fn=_cmd_inspect)

    s = sub.add_parser("bench", help="benchmarks that print ratios and save JSON")
    s.add_argument("what", choices=["model", "pipeline", "parallel", "roofline"],
                   help="model: streaming DiT forward (flat cost, cache speedup, FLOP/s); "
                        "pipeline: stage split, fps and latency for 1-4 steps, Stream-Batch vs no-batch; "
                        "parallel: 1 vs 2 CPU pipeline ranks (one thread each), scaling efficiency; "
                        "roofline: predicted fps/TTFF/VRAM on H100 and RTX 4090 for 1-4 GPUs vs the paper")
    s.add_argument("--steps", type=int, default=2, help="parallel: denoising steps")
    s.add_argument("--preset", default="small", help="model: DiT preset (default: small, dim 512 x 4 layers)")
    s.add_argument("--points", default="10,1000,10000", help="model: chunk indices to measure")
    s.add_argument("--model", default="tiny", help="pipeline: auto, tiny or a checkpoint path")
    s.add_argument("--size", default=None, help="pipeline: WIDTHxHEIGHT (default 256x256)")
    s.add_argument("--chunks", type=int, default=10, help="pipeline: chunks measured per configuration")
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    s.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    s.add_argument("--out", default=None, help="JSON output path (default bench/results/<what>.json)")
    s.set_defaults(fn=_cmd_bench)

    s = sub.add_parser("sources", help="list the cameras found on this system")
    s.set_defaults(fn=_cmd_sources)

    from sdv2_studio.engine.doctor import register_cli as register_doctor
    from sdv2_studio.engine.hub import register_cli as register_models
    from sdv2_studio.engine.presets import register_cli as register_presets

    register_models(sub)
    register_presets(sub)
    register_doctor(sub)
    found, problems = extensions.load(extensions.CLI_GROUP)  # `sdv2 obs ...` from the OBS bridge, and others
    for _, register in found:
        register(sub)
    for problem in problems:
        print(f"sdv2: warning: {problem}", file=sys.stderr)
    return p


def Controls_default(name: str):
    from sdv2_studio.engine.pipeline import Controls

    return getattr(Controls(), name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "run" and args.seconds is None and args.frames is None \
            and args.source.lower().startswith("test"):
        args.seconds = 3.0
    try:
        return args.fn(args)
    except EngineError as e:
        print(f"sdv2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdv2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
