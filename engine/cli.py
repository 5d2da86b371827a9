"""`sdv2`: the headless command line. Every command goes through the same engine API as the GUI and OBS bridge.

User-facing problems raise `EngineError`; they are printed as one line (`sdv2: error: ...`) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from engine.errors import EngineError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from engine.checkpoint import format_info, inspect_checkpoint

    print(format_info(inspect_checkpoint(args.path)))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "model":
        from engine.bench import bench_model

        points = tuple(int(p) for p in args.points.split(","))
        bench_model(args.preset, points=points, device=args.device, dtype=args.dtype, out=args.out)
    return 0


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EngineError(f"bad size {text!r}: use WIDTHxHEIGHT, e.g. 512x512") from None
    return h, w


def _cmd_run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from engine.api import Engine, EngineConfig
    from engine.io.sinks import open_sink
    from engine.io.sources import open_source
    from engine.pipeline import Controls

    controls = Controls(prompt=args.prompt, steps=args.steps, noise_scale=args.noise_scale, seed=args.seed,
                        transition_chunks=args.transition).validated()
    spec = args.source
    cfg = EngineConfig(model=args.model, base=args.base, device=args.device, dtype=args.dtype,
                       size=_parse_size(args.size), batch=not args.no_batch, controls=controls,
                       latency_budget=args.latency_budget)
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
    if args.out:
        Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
    sink = open_sink(args.out, fps=source.fps) if args.out else None
    print(f"model {engine.bundle.name} | {w}x{h} | {controls.steps} step(s) | "
          f"{'Stream-Batch' if cfg.batch else 'no-batch'} | source {source!r}", file=sys.stderr)
    written = 0
    t0 = time.perf_counter()

    def drain(wait: float) -> None:
        nonlocal written
        while (frame := engine.pull(timeout=wait)) is not None:
            if sink:
                sink.write(frame)
            written += 1
            wait = 0.0

    try:
        with source:
            for i, (frame, _pts) in enumerate(source):
                if limit is not None and i >= limit:
                    break
                engine.push(frame)
                drain(0.0)
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
    finally:
        engine.finish()
        while not engine.done():
            drain(0.2)
        drain(0.0)
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
    if engine.config.lossless and not args.realtime:
        print("(offline run: input was queued faster than real time, so latency includes queueing; "
              "add --realtime to measure live latency)")
    if args.out:
        print(f"wrote {args.out}")
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
    s.add_argument("--prompt", default=Controls_default("prompt"))
    s.add_argument("--steps", type=int, default=Controls_default("steps"), help="denoising steps 1-4")
    s.add_argument("--noise-scale", type=float, default=Controls_default("noise_scale"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--transition", type=int, default=0, help="chunks over which a prompt change blends in")
    s.add_argument("--size", default=None, help="model resolution WIDTHxHEIGHT (multiples of 16)")
    s.add_argument("--no-batch", action="store_true", help="run steps in sequence instead of Stream-Batch")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    s.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    s.add_argument("--latency-budget", type=float, default=None, help="seconds; slower frames count as misses")
    s.add_argument("--realtime", action="store_true", help="pace files and the test source at their frame rate")
    s.set_defaults(fn=_cmd_run)

    s = sub.add_parser("inspect", help="show a checkpoint's layout, model preset, parameter count and dtype")
    s.add_argument("path", help="a .safetensors/.pt/.pth file or a model folder")
    s.set_defaults(fn=_cmd_inspect)

    s = sub.add_parser("bench", help="benchmarks that print ratios and save JSON")
    s.add_argument("what", choices=["model"], help="model: streaming DiT forward (flat cost, cache speedup, FLOP/s)")
    s.add_argument("--preset", default="small", help="model preset (default: small, dim 512 x 4 layers)")
    s.add_argument("--points", default="10,1000,10000", help="chunk indices to measure (default 10,1000,10000)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    s.add_argument("--out", default="bench/results/model.json", help="JSON output path")
    s.set_defaults(fn=_cmd_bench)
    return p


def Controls_default(name: str):
    from engine.pipeline import Controls

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
