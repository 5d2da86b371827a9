"""Extension points: the floors above the engine add `sdv2` subcommands and `sdv2 doctor` checks here.

The engine imports neither the OBS bridge nor the app (an import-linter layers contract in CI). What they add to the
command line and to `doctor` they declare as entry points of the distribution (pyproject.toml):

    [project.entry-points."sdv2_studio.cli"]      name = "module:register_cli"   # register_cli(subparsers)
    [project.entry-points."sdv2_studio.doctor"]   name = "module:checks"         # checks() -> list[doctor.Check]
    [project.entry-points."sdv2_studio.bench"]    name = "module:register_bench" # register_bench(parser) ->
                                                  (help, run(args) -> exit code): `sdv2 bench NAME`, its flags added

Another installed distribution can add its own the same way. An extension that fails to load is reported as one
line and skipped; the engine's own commands keep working.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from typing import Any

CLI_GROUP = "sdv2_studio.cli"
DOCTOR_GROUP = "sdv2_studio.doctor"
BENCH_GROUP = "sdv2_studio.bench"


def load(group: str) -> tuple[list[tuple[str, Callable[..., Any]]], list[str]]:
    """The objects registered under `group`, sorted by name, and one line per extension that failed to load."""
    found, problems = [], []
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        try:
            found.append((ep.name, ep.load()))
        except Exception as e:  # a broken extension must not take the engine's own commands down
            problems.append(f"extension {ep.name!r} ({ep.value}) did not load: {type(e).__name__}: {e}")
    return found, problems


def register(group: str, target, reserved=()) -> dict[str, Any]:
    """Call each extension of `group` with `target` (argparse subparsers or a parser); {name: what it returned}.
    An extension that fails to load or to register, or takes a `reserved` name, is one warning on stderr and
    skipped (a name it registered before failing may stay behind; the engine's own commands keep working)."""
    found, problems = load(group)
    done = {}
    for name, hook in found:
        if name in reserved:
            problems.append(f"extension {name!r} of {group} takes a built-in name; skipped")
            continue
        try:
            done[name] = hook(target)
        except Exception as e:
            problems.append(f"extension {name!r} of {group} did not register: {type(e).__name__}: {e}")
    for problem in problems:
        print(f"sdv2: warning: {problem}", file=sys.stderr)
    return done
