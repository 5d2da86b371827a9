"""`sdv2 bench transport`, registered into the engine's `sdv2 bench` (engine/extensions.py, BENCH_GROUP): the
measurement (bench/transport.py) drives OBS, so it belongs to this floor, not to the engine's command line."""

from __future__ import annotations

import argparse

from sdv2_studio.engine.errors import EngineError

HELP = ("one-way latency engine -> OBS through the passthrough model, the plugin (shared memory) vs the UDP Media "
        "Source, side by side (needs OBS with the plugin, or --headless)")


def register_bench(parser: argparse.ArgumentParser):
    """Add transport's flags to the `sdv2 bench` parser; (help line, run)."""
    parser.add_argument("--samples", type=int, default=150, help="transport: screenshots recognised per path")
    parser.add_argument("--headless", action="store_true", help="transport: start a private OBS under Xvfb with "
                        "the plugin built into its own config (Linux: obs-studio, xvfb, cmake, libobs-dev)")
    parser.add_argument("--host", default=None, help="transport: obs-websocket host (default: `sdv2 obs`'s setting)")
    parser.add_argument("--port", type=int, default=None, help="transport: obs-websocket port (default: `sdv2 "
                        "obs`'s)")
    return HELP, run


def run(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise EngineError(f"--samples must be 1 or more, not {args.samples}")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise EngineError(f"--port must be a TCP port (1-65535), not {args.port}; obs-websocket's default is 4455")
    from sdv2_studio.engine.cli import load_bench

    load_bench("transport").main_transport(args)
    return 0
