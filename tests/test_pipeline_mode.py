"""Scratch: StreamPipeline.set_mode (would belong in tests/test_pipeline.py)."""

import numpy as np
import pytest

from engine.io.pattern import TestPatternSource
from engine.models import tiny_bundle
from engine.pipeline import Controls, StreamPipeline
from engine.text import PromptCache

SIZE = (128, 128)


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.fixture(scope="module")
def clip():
    src = TestPatternSource(size=SIZE, fps=16)
    return np.stack([src.frame(i) for i in range(41)])


def make(bundle, steps=3, batch=True):
    return StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text), size=SIZE, controls=Controls(steps=steps),
                          batch=batch)


def run(pipe, frames, switch=None):
    out, i, k = [], 0, 0
    while i + pipe.frames_needed <= len(frames):
        if switch and k in switch:
            pipe.set_mode(switch[k])
        n = pipe.frames_needed
        out += pipe.process(frames[i:i + n])
        i, k = i + n, k + 1
    return out + pipe.flush()


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("switch", [{3: False}, {3: False, 6: True}, {2: True}, {4: True, 5: False, 7: True}])
def test_every_frame_comes_out_across_mode_switches(bundle, clip, steps, switch):
    start = not next(iter(switch.values()))  # start in the other mode than the first switch
    pipe = make(bundle, steps, batch=start)
    out = run(pipe, clip, switch)
    assert len(out) == len(clip)
    assert pipe.batch == list(switch.values())[-1]
    assert pipe.slots == (steps if pipe.batch else 1) and pipe.cache.B == pipe.slots


def test_switch_before_the_first_chunk_is_a_fresh_stream(bundle, clip):
    a = run(make(bundle, 3, batch=False), clip[:13])
    b = run(make(bundle, 3, batch=True), clip[:13], switch={0: False})
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_set_mode_same_mode_is_a_no_op(bundle, clip):
    a = run(make(bundle, 2), clip[:13])
    b = run(make(bundle, 2), clip[:13], switch={1: True, 2: True})
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
