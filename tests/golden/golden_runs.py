"""Golden outputs of `sdv2 run --model tiny`, frozen before the "one house" redesign (issue 9).

`python tests/golden/golden_runs.py` (re)writes `tests/golden/runs.npz` and `tests/golden/round_trips.json`;
`tests/test_golden.py` runs the same commands and compares. Frames are captured through a registered sink, so the
whole CLI path (argument parsing, preset lookup, controls, engine, session loop, flush) is exercised.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import av
import numpy as np

try:  # the generator ran once before the packages moved under sdv2_studio (issue 9)
    import sdv2_studio.engine  # noqa: F401

    PKG = "sdv2_studio.engine"
except ImportError:
    PKG = "engine"

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs.npz"
ROUND_TRIPS = HERE / "round_trips.json"

# name -> sdv2 run arguments (after --source/--out, which the runner adds)
CASES: dict[str, list[str]] = {
    **{f"test-s{s}-batch": ["--steps", str(s)] for s in (1, 2, 3, 4)},
    **{f"test-s{s}-nobatch": ["--steps", str(s), "--no-batch"] for s in (1, 2, 3, 4)},
    "test-seed7-batch": ["--steps", "2", "--seed", "7"],
    "test-seed7-nobatch": ["--steps", "2", "--seed", "7", "--no-batch"],
    "test-preset-watercolor": ["--preset", "watercolor"],
    "test-noise-transition": ["--steps", "3", "--noise-scale", "0.5", "--transition", "2", "--prompt", "ink"],
    "test-2ranks": ["--steps", "2", "--ranks", "2"],
    "clip-s2-batch": ["--steps", "2"],
    "clip-s3-nobatch": ["--steps", "3", "--no-batch", "--seed", "3"],
}
FRAMES = 13  # 5 + 4 + 4: three chunks
SIZE = "64x64"


def write_clip(path: Path, frames: int = FRAMES, h: int = 72, w: int = 96) -> Path:
    """A deterministic lossless clip (FFV1 in Matroska): decoded frames equal what was written."""
    rng = np.random.default_rng(1234)
    base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as c:
        st = c.add_stream("ffv1", rate=16)
        st.width, st.height, st.pix_fmt = w, h, "bgr0"
        for i in range(frames):
            img = np.roll(base, 2 * i, axis=1)
            for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="bgr0")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


def run_case(name: str, args: list[str], workdir: Path) -> np.ndarray:
    """Run `sdv2 run` in-process with a capture sink; returns the styled frames [T, H, W, 3] uint8."""
    import importlib

    main = importlib.import_module(f"{PKG}.cli").main
    register_sink = importlib.import_module(f"{PKG}.io.sinks").register_sink

    frames: list[np.ndarray] = []

    class Capture:
        def __init__(self, spec, **kw):
            pass

        def write(self, frame, pts_seconds=None):
            frames.append(np.array(frame, copy=True))

        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    register_sink("capture:", lambda spec, **kw: Capture(spec, **kw))
    if name.startswith("clip"):
        clip = workdir / "clip.mkv"
        if not clip.exists():
            write_clip(clip)
        source = str(clip)
    else:
        source = "test:96x72@16"
    argv = ["run", "--model", "tiny", "--source", source, "--frames", str(FRAMES), "--size", SIZE,
            "--out", "capture:", "--device", "cpu", *args]
    rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"sdv2 {' '.join(argv)} exited {rc}")
    return np.stack(frames)


def round_trips() -> dict:
    """Shipped presets -> controls, and app settings defaults, as plain values."""
    import importlib

    load_library = importlib.import_module(f"{PKG}.presets").load_library

    presets, errors = load_library()
    assert not errors, errors
    out = {"presets": {}}
    for p in presets:
        c = p.controls() if callable(p.controls) else p.controls  # a method before issue 9, a Controls after
        c = c if isinstance(c, dict) else dataclasses.asdict(c)
        out["presets"][p.id] = {k: c[k] for k in ("prompt", "steps", "noise_scale", "seed", "transition_chunks")
                                if k in c}
    return out


def main() -> int:
    import tempfile

    import torch

    torch.set_num_threads(2)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name, args in CASES.items():
            results[name] = run_case(name, args, Path(d))
            print(name, results[name].shape, file=sys.stderr)
    np.savez_compressed(RUNS, **results)
    ROUND_TRIPS.write_text(json.dumps(round_trips(), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
