"""The `passthrough` model: no network, frames out exactly as they went in, through the engine's usual loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import wait_for
from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.cli import main
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.frames import fit_frame, restore_frame
from sdv2_studio.engine.io.pattern import TestPatternSource, read_counter
from sdv2_studio.engine.io.shm import ShmFrameReader, segment_name
from sdv2_studio.engine.models import PASSTHROUGH_NOTICE, REAL_SIZE, load_bundle, resolve_model
from sdv2_studio.engine.passthrough import PassthroughPipeline


def test_passthrough_resolves_and_loads_nothing(tmp_path):
    m = resolve_model("passthrough")
    assert m.passthrough and not m.untrained and m.notice == PASSTHROUGH_NOTICE
    assert m.default_size == REAL_SIZE and "passthrough" in m.name
    said = []
    bundle = load_bundle(m, progress=lambda msg, frac: said.append(msg))
    assert (bundle.dit, bundle.vae, bundle.text) == (None, None, None) and said == ["passthrough: no model to load"]
    assert not resolve_model("tiny").passthrough
    weights = tmp_path / "style.safetensors"
    weights.write_bytes(b"x")
    for kwargs, flag in (({"vae": str(weights)}, "--vae"), ({"loras": (str(weights),)}, "--lora")):
        with pytest.raises(EngineError, match=f"{flag} cannot be used with the built-in passthrough model"):
            resolve_model("passthrough", **kwargs)


def test_the_engine_returns_the_input_frames_bitwise_with_its_usual_chunks_and_stats():
    pattern = TestPatternSource((96, 128), fps=30)
    with Engine(EngineConfig(model="passthrough", size=(96, 128), lossless=True,
                             controls=Controls(prompt="ink wash", steps=3))) as engine:
        engine.start()
        assert isinstance(engine.pipeline, PassthroughPipeline) and engine.bundle.notice == PASSTHROUGH_NOTICE
        assert engine.pipeline.frames_needed == 5  # the first chunk, as the model's
        engine.set_controls(prompt="neon city")  # accepted and ignored
        for i in range(13):
            engine.push(pattern.frame(i), pts=i / 30)
        engine.finish()
        out = []
        while not engine.done():
            got = engine.pull_timed(timeout=1.0)
            if got is not None:
                out.append(got)
        stats = engine.stats()
    assert [pts for _, pts in out] == [i / 30 for i in range(13)]
    assert all(np.array_equal(frame, pattern.frame(i)) for i, (frame, _) in enumerate(out))
    assert stats.frames_out == 13 and stats.chunks == 3 and stats.latency_p50 > 0  # 5 + 4 + 4 (the last padded)
    assert not stats.untrained and stats.model.startswith("passthrough")
    assert engine.controls.prompt == "neon city"


def test_frames_of_another_size_come_back_through_the_same_resizing_as_a_models():
    frame = TestPatternSource((90, 200), fps=30).frame(7)
    for fit in ("crop", "bars"):
        with Engine(EngineConfig(model="passthrough", size=(64, 96), fit=fit, lossless=True)) as engine:
            engine.start()
            for _ in range(5):
                engine.push(frame)
            engine.finish()
            got = engine.pull(timeout=30)
        expected = restore_frame(fit_frame(frame, (64, 96), fit), frame.shape, fit=fit)
        assert got.shape == frame.shape and np.array_equal(got, expected)


def test_passthrough_refuses_what_needs_a_network():
    with pytest.raises(EngineError, match="passthrough model runs no network"):
        Engine(EngineConfig(model="passthrough", compile=True)).start()
    with pytest.raises(EngineError, match="passthrough model runs no network"):
        Engine(EngineConfig(model="passthrough", ranks=2, device="cpu")).start()


def test_cli_passthrough_into_obs_source_shared_memory_is_lossless(tmp_path):
    """`sdv2 run --model passthrough --out obs-source:CH`: the frames the plugin would show are the test frames."""
    channel = f"pt{os.getpid() % 100000}"
    h, w = REAL_SIZE
    run = subprocess.Popen([sys.executable, "-m", "sdv2_studio.engine.cli", "run", "--model", "passthrough",
                            "--source", f"test:{w}x{h}@30", "--realtime", "--seconds", "600", "--prompt", "ignored",
                            "--out", f"obs-source:{channel}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    reader, seen = ShmFrameReader(segment_name(channel, "sty")), {}
    pattern = TestPatternSource((h, w), fps=30)

    def read() -> bool:
        got = reader.poll()
        if got is not None:
            seen[read_counter(got[0])] = np.array_equal(got[0], pattern.frame(read_counter(got[0])))
        return len(seen) >= 10 or run.poll() is not None

    try:
        wait_for(read, 300, poll=0.01)
    finally:
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert len(seen) >= 10 and all(seen.values()), seen
    assert err.count(PASSTHROUGH_NOTICE) == 1  # said once, not per frame
    assert "model passthrough" in err and "latency p50" in out


def test_cli_passthrough_with_a_lora_is_one_line(tmp_path, capsys):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"x")
    assert main(["run", "--model", "passthrough", "--lora", str(lora)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lora cannot be used with the built-in passthrough model" in err[0]
