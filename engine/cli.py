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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdv2", description="StreamDiffusionV2 Studio engine (headless).")
    sub = p.add_subparsers(dest="command", required=True)

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
