"""The engine API the CLI, the app and the OBS bridge share: queues, accounting, controls, errors, stats."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.slo import SLOConfig


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def frames(n: int, size=(90, 160)) -> list[np.ndarray]:
    src = TestPatternSource(size=size, fps=16)
    return [src.frame(i) for i in range(n)]


def stream(engine: Engine, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], object]:
    """Push every frame (pulling what is ready meanwhile), then finish: (all styled frames, final stats); stopped."""
    out = []
    for f in inputs:
        engine.push(f)
        while (g := engine.pull()) is not None:
            out.append(g)
    out += drain(engine)
    st = engine.stats()
    engine.stop()
    return out, st


def drain(engine: Engine) -> list[np.ndarray]:
    out = []
    engine.finish()
    while not engine.done():
        f = engine.pull(timeout=0.5)
        if f is not None:
            out.append(f)
    return out


def test_lossless_run_returns_every_frame_at_input_size(bundle):
    eng = Engine(EngineConfig(size=(64, 64), lossless=True, queue_frames=6, controls=Controls(steps=2)), bundle)
    out, st = stream(eng.start(), frames(23))  # 16:9 input, square model: fitted in, restored out
    assert len(out) == 23 and all(g.shape == (90, 160, 3) and g.dtype == np.uint8 for g in out)
    assert st.frames_in == st.frames_out == 23 and st.dropped_in == st.dropped_out == 0
    assert st.chunks == 6 and st.ttff is not None and st.latency_p50 > 0 and st.fps > 0
    assert st.untrained and "tiny" in st.model and st.mode == "stream-batch"


def test_live_mode_drops_oldest_and_accounts_for_every_frame(bundle):
    eng = Engine(EngineConfig(size=(64, 64), queue_frames=5, batch=False), bundle).start()
    ok = [eng.push(f, block=False) for f in frames(40)]  # much faster than the engine: the queue overflows
    out = drain(eng)
    st = eng.stats()
    eng.stop()
    assert not all(ok) and st.dropped_in > 0
    assert st.frames_in == 40
    assert len(out) == st.frames_out == 40 - st.dropped_in  # every frame is returned or counted as dropped


def test_controls_are_validated_immediately_and_applied_live(bundle):
    eng = Engine(EngineConfig(size=(64, 64), lossless=True, batch=False), bundle).start()
    with pytest.raises(EngineError, match="1 to 4"):
        eng.set_controls(steps=0)
    for f in frames(9):
        eng.push(f)
    eng.set_controls(prompt="pixel art, 16-bit game sprite", steps=1)
    for f in frames(8):
        eng.push(f)
    out = drain(eng)
    eng.stop()
    assert len(out) == 17
    assert eng.controls.prompt.startswith("pixel art") and eng.controls.steps == 1


def test_worker_failure_surfaces_as_engine_error(bundle):
    eng = Engine(EngineConfig(size=(64, 64), lossless=True), bundle).start()

    def boom(_frames):
        raise RuntimeError("CUDA out of memory (simulated)")

    eng.pipeline.process = boom
    for f in frames(5):
        eng.push(f)
    with pytest.raises(EngineError, match="out of memory"):
        for _ in range(100):
            eng.pull(timeout=0.1)
    with pytest.raises(EngineError):
        eng.push(frames(1)[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(EngineError, match="CUDA is not available"):
        Engine(EngineConfig(model="tiny", device="cuda:0")).start()


def test_bad_config_is_one_clear_line():
    with pytest.raises(EngineError, match="does not exist"):
        Engine(EngineConfig(model="/nonexistent/model.pt", device="cpu")).start()
    with pytest.raises(EngineError, match="multiple of 16"):
        Engine(EngineConfig(model="tiny", device="cpu", size=(100, 100))).start()
    with pytest.raises(EngineError, match="queue_frames >= 5"):  # lossless pushes would wait for each other forever
        Engine(EngineConfig(model="tiny", device="cpu", size=(64, 64), queue_frames=4, lossless=True)).start()


# -- SLO scheduler and output pacer ----------------------------------------------------------------------


def test_impossible_target_degrades_without_losing_frames(bundle):
    slo = SLOConfig(chunk_frames=(1,), window=4, min_samples=2, recover_after=1000)
    cfg = EngineConfig(size=(128, 128), lossless=True, queue_frames=32, controls=Controls(steps=3), target_fps=1000,
                       latency_budget=0.001, slo=slo)
    eng = Engine(cfg, bundle)
    out, st = stream(eng.start(), frames(81))
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


def test_lossless_push_without_pulls_ends_in_one_line_not_a_wait_forever(bundle):
    """Lossless, one thread that pushes and never pulls: both queues fill; push() says what to do instead of
    waiting for a worker that waits for a pull. (A push-then-pull loop is fine: test below.)"""
    import threading

    eng = Engine(EngineConfig(size=(64, 64), lossless=True, queue_frames=5), bundle)
    eng.start()
    result = {}

    def pusher():
        try:
            for i, f in enumerate(frames(200, size=(64, 64))):
                eng.push(f)
                result["pushed"] = i + 1
        except EngineError as e:
            result["error"] = str(e)

    t = threading.Thread(target=pusher, daemon=True)
    t.start()
    t.join(600)
    assert not t.is_alive(), "push() waited forever"
    assert "pull() the styled frames while pushing" in result.get("error", ""), result
    assert result["pushed"] < 200
    out = drain(eng)
    eng.stop()
    assert len(out) == result["pushed"]  # lossless still: every frame pushed comes out


def test_lossless_with_a_consumer_thread_that_stalls_loses_nothing(bundle):
    """Lossless with the pushing and pulling in two threads (as `Session` runs it): a consumer that stalls makes the
    pusher wait, however long, and then every frame comes out; nothing is refused or dropped."""
    import threading

    from helpers import wait_for

    eng = Engine(EngineConfig(size=(64, 64), lossless=True, queue_frames=5), bundle)
    eng.start()
    out, errors = [], []
    assert eng.pull() is None  # this thread is the consumer

    def pusher():
        try:
            for f in frames(40, size=(64, 64)):
                eng.push(f)
            eng.finish()
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=pusher, daemon=True)
    t.start()
    assert wait_for(lambda: eng.stats().frames_out >= 5, timeout=300)  # the output is full: the consumer stalls
    time.sleep(1.0)  # ... while the pusher and the worker wait for it
    while not eng.done():
        f = eng.pull(timeout=0.5)
        if f is not None:
            out.append(f)
    t.join(60)
    st = eng.stats()
    eng.stop()
    assert not errors and len(out) == 40 and st.dropped_out == 0 and st.dropped_in == 0, (errors, len(out))


def test_controls_changed_from_another_thread_during_a_drain_lose_no_frame(bundle):
    """Steps changes race the engine thread (a preset click while a Stream-Batch drain is under way): every frame
    still comes out once, and the stream ends with the last steps set."""
    import threading

    eng = Engine(EngineConfig(size=(64, 64), lossless=True, queue_frames=8, controls=Controls(steps=3)), bundle)
    eng.start()
    done = threading.Event()

    def clicker():
        k = 0
        while not done.is_set():
            eng.set_controls(steps=1 + k % 4)
            k += 1
            done.wait(0.003)

    t = threading.Thread(target=clicker)
    t.start()
    out = []
    try:
        for f in frames(61, size=(64, 64)):
            eng.push(f)
            while (g := eng.pull()) is not None:
                out.append(g)
    finally:
        done.set()
        t.join()
    eng.set_controls(steps=2)
    out += drain(eng)
    st = eng.stats()
    eng.stop()
    assert st.error is None and len(out) == 61 and st.frames_out == 61 and st.dropped_out == 0
    assert eng.controls.steps == 2


def test_start_progress_only_goes_forward():
    """The load's steps and the engine's own (prompt, compile, running) on one scale: never 100% then 90%."""
    seen = []
    eng = Engine(EngineConfig(model="tiny", size=(64, 64), prompt_cache_dir=""))
    eng.start(progress=lambda message, f: seen.append((f, message)))
    eng.stop()
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and seen[-1][1] == "running", seen
    assert any("tiny" in m for _, m in seen) and any("prompt" in m for _, m in seen)
