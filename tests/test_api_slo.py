"""Scratch: the Engine with the SLO scheduler and the output pacer (would belong in tests/test_api.py)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.api import Engine, EngineConfig
from engine.io.pattern import TestPatternSource
from engine.models import tiny_bundle
from engine.pipeline import Controls
from engine.slo import SLOConfig


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def frames(n: int, size=(90, 160)) -> list[np.ndarray]:
    src = TestPatternSource(size=size, fps=16)
    return [src.frame(i) for i in range(n)]


def drain(engine: Engine) -> list[np.ndarray]:
    out = []
    engine.finish()
    while not engine.done():
        f = engine.pull(timeout=0.5)
        if f is not None:
            out.append(f)
    return out


def test_impossible_target_degrades_without_losing_frames(bundle):
    slo = SLOConfig(chunk_frames=(1,), window=4, min_samples=2, recover_after=1000)
    cfg = EngineConfig(size=(128, 128), lossless=True, queue_frames=32, controls=Controls(steps=3), target_fps=1000,
                       latency_budget=0.001, slo=slo)
    eng = Engine(cfg, bundle).start()
    out = []
    for f in frames(81):
        eng.push(f)
        while (g := eng.pull()) is not None:
            out.append(g)
    out += drain(eng)
    st = eng.stats()
    eng.stop()
    assert len(out) == 81 and all(g.shape == (90, 160, 3) for g in out)  # across mode, steps and size changes
    kinds = [d.kind for d in eng.scheduler.decisions]
    print([(d.kind, str(d.to_plan)) for d in eng.scheduler.decisions])
    assert st.slo.degrades >= 3 and st.slo.plan.steps == 1 and st.slo.plan.size[0] < 128
    assert "degrade" in kinds and st.slo.misses > 0 and st.mode in ("stream-batch", "no-batch")
    assert eng.pipeline.size == st.slo.plan.size


def test_generous_target_keeps_the_plan(bundle):
    cfg = EngineConfig(size=(64, 64), lossless=True, controls=Controls(steps=2), target_fps=0.01, latency_budget=1e3)
    eng = Engine(cfg, bundle).start()
    for f in frames(41):
        eng.push(f)
    out = drain(eng)
    st = eng.stats()
    eng.stop()
    assert len(out) == 41 and st.slo.changes == 0 and st.slo.plan.batch and st.slo.plan.steps == 2


def test_paced_output(bundle):
    cfg = EngineConfig(size=(64, 64), controls=Controls(steps=1), pace_output=True, target_fps=16, queue_frames=64)
    eng = Engine(cfg, bundle).start()
    for f in frames(41):
        eng.push(f, block=True)
    out = drain(eng)
    st = eng.stats()
    eng.stop()
    print(st.pacer)
    assert st.pacer is not None and st.pacer.delivered == len(out) and len(out) + st.pacer.dropped == 41
    assert len(out) >= 30 and st.pacer.input_fps < 200
