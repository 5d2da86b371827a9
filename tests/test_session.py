"""The session (source -> engine -> outputs) end to end with the tiny model, and its pacer against fake clocks."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_for
from sdv2_studio.engine.api import EngineConfig
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.paced import OutputPacer
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.io.protocols import FrameSink
from sdv2_studio.engine.io.sinks import MP4Sink
from sdv2_studio.engine.io.sources import open_source
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.session import ERROR, RUNNING, STARTING, STOPPED, STOPPING, Session

INPUT = (72, 96)  # (h, w) of the source frames; the model runs at 64x64


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def config() -> EngineConfig:
    return EngineConfig(size=(64, 64), prompt_cache_dir="", queue_frames=8, controls=Controls(steps=1))


class Sink(FrameSink):
    """Keeps what it is given; raises on the write after ``fail_after`` frames; notes the session state at close."""

    def __init__(self, fail_after: int | None = None, session: Session | None = None) -> None:
        self.frames: list[np.ndarray] = []
        self.fail_after, self.session = fail_after, session
        self.closed_in: str | None = None

    def write(self, frame, pts_seconds=None) -> None:
        if self.fail_after is not None and len(self.frames) >= self.fail_after:
            raise OSError("the device went away")
        self.frames.append(frame)

    def close(self) -> None:
        self.closed_in = self.session.state if self.session is not None else "closed"


def live_session(bundle, **kw) -> Session:
    """An endless real-time test source: frames are dropped when the engine is behind."""
    return Session(config(), lambda size: TestPatternSource(INPUT, fps=30, realtime=True), live=True, bundle=bundle,
                   **kw)


def write_clip(path: Path, n: int) -> Path:
    src = TestPatternSource(INPUT, fps=16)
    with MP4Sink(path, fps=16) as sink:
        for i in range(n):
            sink.write(src.frame(i))
    return path


# -- the session ------------------------------------------------------------------------------------------------------


def test_a_file_gives_every_frame_to_every_output_and_a_raising_output_is_isolated(bundle, tmp_path):
    clip = write_clip(tmp_path / "in.mp4", 13)
    good, bad = Sink(), Sink(fail_after=2)
    session = Session(config(), lambda size: open_source(str(clip)), lambda source: {"good": good, "bad": bad},
                      bundle=bundle)
    session.start()
    assert session.wait(120)
    st = session.status()
    assert st.state == STOPPED and st.error is None and not st.live
    assert st.frames_in == st.frames_out == 13 == len(good.frames)
    assert all(f.shape == (*INPUT, 3) for f in good.frames)  # restored to the input's size
    assert st.engine.frames_out == 13 and st.engine.dropped_in == 0
    outputs = {o.name: o for o in st.outputs}
    assert outputs["good"].written == 13 and outputs["good"].error is None and good.closed_in
    assert outputs["bad"].written == 2 and "OSError: the device went away" in outputs["bad"].error
    assert len(bad.frames) == 2 and bad.closed_in  # closed when it failed; the stream went on


def test_latest_frames_and_a_frame_limit(bundle):
    received = Sink()
    session = Session(config(), lambda size: TestPatternSource(INPUT, fps=16), lambda source: {"out": received},
                      frames=9, bundle=bundle)
    assert session.latest_input() is None and session.latest_styled() is None
    session.start()
    assert session.wait(120) and session.status().frames_in == session.status().total == 9
    np.testing.assert_array_equal(session.latest_input(), TestPatternSource(INPUT, fps=16).frame(8))
    assert len(received.frames) == 9 and session.latest_styled() is received.frames[-1]


def test_outputs_added_mid_stream_receive_and_removed_ones_stop(bundle):
    first = Sink()
    session = live_session(bundle, open_sinks=lambda source: {"first": first})
    session.start()
    try:
        assert wait_for(lambda: len(first.frames) >= 4)
        late = Sink()
        session.add_sink("late", late)
        assert wait_for(lambda: len(late.frames) >= 4)
        session.remove_sink("late")
        n, m = len(late.frames), len(first.frames)
        assert late.closed_in and wait_for(lambda: len(first.frames) >= m + 4)
        assert len(late.frames) == n  # nothing after its removal
        assert [o.name for o in session.status().outputs] == ["first"]
    finally:
        session.stop()
    with pytest.raises(EngineError, match="not running"):
        session.add_sink("after", Sink())


def test_status_goes_through_the_states_and_a_restart_reuses_the_model(bundle):
    seen = []
    closing = Sink()
    session = closing.session = live_session(bundle, open_sinks=lambda source: {"out": closing})
    assert session.status().state == STOPPED and session.status().engine is None
    session.start(wait=False, progress=lambda msg, frac: seen.append(session.state))
    assert wait_for(lambda: session.state == RUNNING)
    assert seen and set(seen) == {STARTING}
    assert wait_for(lambda: session.status().frames_out >= 4)
    st = session.status()
    assert st.live and st.engine.running and st.engine.model.startswith("tiny") and st.frames_in >= st.frames_out
    model = session.engine.bundle
    session.stop()
    assert closing.closed_in == STOPPING and session.state == STOPPED and session.status().error is None
    session.start()  # again: a fresh engine on the same loaded model
    assert session.state == RUNNING and session.engine.bundle is model
    session.stop()

    def no_source(size):
        raise EngineError("no such video file: nope.mp4")

    broken = Session(config(), no_source, bundle=bundle)
    with pytest.raises(EngineError, match="no such video file"):
        broken.start()
    st = broken.status()
    assert (st.state, st.failed, st.error) == (ERROR, "start", "no such video file: nope.mp4")


def test_a_source_failing_mid_stream_keeps_what_was_made(bundle):
    class DyingSource(TestPatternSource):
        def __iter__(self):
            for i, item in enumerate(super().__iter__()):
                if i == 9:
                    raise EngineError("camera /dev/video9 disappeared: reconnect it")
                yield item

    kept = Sink()
    session = Session(config(), lambda size: DyingSource(INPUT, fps=16), lambda source: {"out": kept}, bundle=bundle)
    session.start()
    assert session.wait(120)
    st = session.status()
    assert st.state == ERROR and st.failed == "source"
    assert st.error == "the source stopped mid-stream: camera /dev/video9 disappeared: reconnect it"
    assert st.frames_in == 9 and len(kept.frames) == 9 and kept.closed_in  # every frame pushed came out


def test_an_engine_failure_ends_the_stream(bundle):
    out = Sink()
    session = live_session(bundle, open_sinks=lambda source: {"out": out})
    session.start()
    assert wait_for(lambda: len(out.frames) >= 1)

    def boom(frames):
        raise RuntimeError("boom")

    session.engine.pipeline.process = boom
    assert session.wait(120)
    st = session.status()
    assert st.state == ERROR and st.failed == "engine" and st.error == "the engine stopped: RuntimeError: boom"
    assert out.closed_in


def test_a_paced_session_delivers_through_the_pacer(bundle):
    out = Sink()
    session = live_session(bundle, open_sinks=lambda source: {"out": out}, paced=True)
    session.start()
    assert wait_for(lambda: len(out.frames) >= 8)
    session.stop()
    st = session.status()
    assert st.pacer is not None and st.pacer.delivered >= 8 and st.frames_out == len(out.frames)
    assert st.pacer.level == 0  # at the stop the rest went out at once
    assert st.frames_out + st.pacer.dropped == st.engine.frames_out  # every styled frame went out or was stale
    assert session.latest_styled() is out.frames[-1]


# -- the output pacer -------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 1e-4)


def drive(pacer: OutputPacer, clock: FakeClock, arrivals: list[float], burst: int, until: float,
          poll: float = 0.001, stall: tuple[float, float] | None = None):
    """Producer: `burst` frames at each arrival time; consumer: polls `get` every `poll` seconds except during
    `stall`. Returns the (time, frame id) deliveries and the highest buffer level seen."""
    out, k, fid, top = [], 0, 0, 0
    while clock.t < until:
        while k < len(arrivals) and arrivals[k] <= clock.t:
            pacer.put_many(list(range(fid, fid + burst)), arrivals[k])
            fid, k = fid + burst, k + 1
        top = max(top, pacer.stats().level)
        if not (stall and stall[0] <= clock.t < stall[1]):
            frame = pacer.get(clock.t)
            if frame is not None:
                out.append((clock.t, frame))
        clock.t += poll
    return out, top


def gaps(out):
    return [b[0] - a[0] for a, b in zip(out, out[1:])]


def std(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


@pytest.mark.parametrize("fps", [16, 24])
def test_pacer_steady_output_from_bursty_chunks(fps):
    rng = random.Random(fps)
    clock = FakeClock()
    pacer = OutputPacer(depth=2, fps=fps, clock=clock)  # fps is only the initial guess
    period = 4 / fps
    arrivals = [k * period + abs(rng.gauss(0, 0.015)) for k in range(int(20 / period))]  # 4 frames at once, jittered
    out, top = drive(pacer, clock, arrivals, burst=4, until=20.0)
    g = gaps(out)[8:]  # after the start-up
    assert std(g) < 0.002 and max(g) - min(g) < 0.01  # steady, to ~the 1 ms polling resolution
    s = pacer.stats()
    assert s.output_fps == pytest.approx(fps, rel=0.01) and s.input_fps == pytest.approx(fps, rel=0.02)
    assert s.jitter < 0.002 and s.underruns == 0 and s.dropped == 0
    assert [f for _, f in out] == list(range(len(out)))  # in order, none lost
    assert top <= s.capacity == 4 + 2 * 2
    assert s.delay < (4 + 2) / fps  # a burst plus the jitter allowance, at most


def test_pacer_follows_the_input_rate():
    clock = FakeClock()
    pacer = OutputPacer(depth=2, fps=30, clock=clock)  # the guess is wrong: the engine makes 16 fps
    arrivals = [k * 0.25 for k in range(80)]
    out, _ = drive(pacer, clock, arrivals, burst=4, until=20.0)
    assert pacer.stats().output_fps == pytest.approx(16, rel=0.01)
    later = [(t, f) for t, f in out if t > 10]
    assert 1 / (sum(gaps(later)) / len(gaps(later))) == pytest.approx(16, rel=0.01)
    clock2 = FakeClock()  # the engine slows from 24 to 12 fps mid-stream
    pacer2 = OutputPacer(depth=2, clock=clock2)
    arr = [k * 4 / 24 for k in range(60)]
    arr += [arr[-1] + (k + 1) * 4 / 12 for k in range(60)]
    out2, _ = drive(pacer2, clock2, arr, burst=4, until=arr[-1])
    tail = [x for x in out2 if x[0] > arr[-1] - 6]
    assert 1 / (sum(gaps(tail)) / len(gaps(tail))) == pytest.approx(12, rel=0.03)


def test_pacer_drops_stale_frames_when_the_consumer_stalls():
    clock = FakeClock()
    pacer = OutputPacer(depth=2, fps=16, clock=clock)
    arrivals = [k * 0.25 for k in range(60)]
    out, top = drive(pacer, clock, arrivals, burst=4, until=15.0, stall=(5.0, 8.0))
    s = pacer.stats()
    assert top <= s.capacity == 8  # bounded through the stall
    assert s.dropped >= 3 * 16 - 8  # what arrived during the stall beyond the buffer
    after = [(t, f) for t, f in out if t >= 8.0]
    newest_at_resume = max(f for t, f in out if t < 5.0)
    assert after[0][1] > newest_at_resume + 30  # it skipped ahead instead of replaying 3 s of old frames
    assert all(b[1] > a[1] for a, b in zip(out, out[1:]))
    assert std(gaps(after)[10:]) < 0.002  # and is steady again


def test_pacer_bounded_without_consumer_and_max_age():
    clock = FakeClock()
    pacer = OutputPacer(depth=3, fps=16, max_frames=10, clock=clock)
    for i in range(1000):
        pacer.put_many([i] * 8, i / 4)  # 8-frame chunks: burst + 2 * depth = 14, capped at max_frames
    s = pacer.stats()
    assert s.level == s.capacity == 10 and s.dropped == 7990
    aged = OutputPacer(depth=1, fps=10, max_age=0.2, clock=clock)
    clock.t = 0.0
    aged.put_many(["a", "b"], 0.0)
    assert aged.get(1.0) is None and aged.stats().dropped == 2  # too old to show


def test_pacer_next_blocks_on_a_fake_clock():
    clock = FakeClock()
    pacer = OutputPacer(depth=1, fps=10, clock=clock, sleep=clock.sleep)
    assert pacer.next(timeout=0.5) is None and clock.t == pytest.approx(0.5, abs=1e-3)  # empty: times out
    pacer.put_many(["a", "b", "c"], clock.t)
    t0 = clock.t
    assert pacer.next(timeout=1.0) == "a" and clock.t - t0 == pytest.approx(0.1, abs=2e-3)  # after `depth` periods
    assert pacer.next(timeout=1.0) == "b" and clock.t - t0 == pytest.approx(0.2, abs=2e-3)
    assert pacer.due_in() == pytest.approx(0.1, abs=2e-3)
    pacer.close()
    assert pacer.next(timeout=1.0) == "c"  # closing drains what is there without pacing
    assert pacer.next(timeout=None) is None


def test_pacer_underrun_restarts_buffering():
    clock = FakeClock()
    pacer = OutputPacer(depth=2, fps=16, clock=clock)
    arrivals = [k * 0.25 for k in range(20)] + [6.0 + k * 0.25 for k in range(20)]  # the engine pauses for 1.25 s
    out, _ = drive(pacer, clock, arrivals, burst=4, until=12.0)
    s = pacer.stats()
    assert s.underruns == 2 and s.dropped == 0 and len(out) == 160  # the pause, then the end of the input
    assert s.input_fps == pytest.approx(16)  # the pause is not taken for a slower engine
    g = gaps([x for x in out if x[0] > 6.5])
    assert std(g) < 0.001 and sum(g) / len(g) == pytest.approx(1 / 16, rel=0.01)


def test_pacer_drain_hands_out_the_rest_at_once():
    clock = FakeClock()
    pacer = OutputPacer(depth=2, fps=16, clock=clock)
    pacer.put_many(list("abcd"), 0.0)
    assert pacer.get(0.01) is None  # still prebuffering
    assert pacer.drain() == list("abcd") and pacer.get(10.0) is None
    s = pacer.stats()
    assert s.delivered == 4 and s.dropped == 0 and s.level == 0
