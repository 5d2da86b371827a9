"""The streaming v2v pipeline on the tiny model: frame accounting, both denoising modes, live controls."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.pipeline import LocalDenoiser, StreamPipeline
from sdv2_studio.engine.text import PromptCache

SIZE = (64, 64)  # the smallest size the model takes: the frame accounting does not depend on it


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.fixture(scope="module")
def clip():
    src = TestPatternSource(size=SIZE, fps=16)
    return np.stack([src.frame(i) for i in range(41)])


def make(bundle, **kw) -> StreamPipeline:
    controls = kw.pop("controls", Controls(steps=2))
    return StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text), size=SIZE, controls=controls, **kw)


def run(pipe: StreamPipeline, frames: np.ndarray, on_chunk=None) -> list[np.ndarray]:
    out, i = [], 0
    while i + pipe.frames_needed <= len(frames):
        n = pipe.frames_needed
        out += pipe.process(frames[i:i + n])
        i += n
        if on_chunk:
            on_chunk(pipe)
    return out + pipe.flush()


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("steps", [1, 3])
def test_every_frame_comes_out(bundle, clip, batch, steps):
    pipe = make(bundle, batch=batch, controls=Controls(steps=steps))
    out = run(pipe, clip)
    assert len(out) == len(clip)  # 5 + 9 * 4 = 41: none lost to the Stream-Batch fill
    assert all(f.shape == (*SIZE, 3) and f.dtype == np.uint8 for f in out)
    assert pipe.chunks == 10 + (steps - 1 if batch else 0)  # flushing feeds steps-1 filler chunks
    assert len({f.tobytes() for f in out}) > len(out) // 2  # frames differ: not a constant image


def test_deterministic_for_a_seed(bundle, clip):
    a = run(make(bundle, batch=True), clip[:13])
    b = run(make(bundle, batch=True), clip[:13])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = run(make(bundle, batch=True, controls=Controls(steps=2, seed=7)), clip[:13])
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_one_step_stream_batch_equals_no_batch(bundle, clip):
    """With one step Stream-Batch has one slot and must reduce exactly to the sequential loop."""
    a = run(make(bundle, batch=True, controls=Controls(steps=1)), clip[:21])
    b = run(make(bundle, batch=False, controls=Controls(steps=1)), clip[:21])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_stream_batch_latency_is_steps_minus_one_chunks(bundle, clip):
    pipe = make(bundle, batch=True, controls=Controls(steps=3))
    counts = [len(pipe.process(clip[:5]))]
    for k in range(4):
        counts.append(len(pipe.process(clip[5 + 4 * k:9 + 4 * k])))
    assert counts == [5, 0, 0, 4, 4]  # chunk 0 is prepared directly; chunk 1 leaves two calls later


def test_prompt_switch_keeps_the_stream(bundle, clip):
    pipe = make(bundle, batch=False)
    run_chunks = [clip[:5], clip[5:9], clip[9:13]]
    for c in run_chunks:
        pipe.process(c)
    k_before = pipe.cache.k.clone()
    cross_before = pipe.cache.cross_k.clone()
    pipe.set_controls(prompt="watercolor painting, soft paper texture", transition_chunks=0)  # at once
    assert torch.equal(pipe.cache.cross_k, cross_before)  # queued, not applied yet
    pipe._apply_controls()
    assert torch.equal(pipe.cache.k, k_before)  # the self-attention cache survives the prompt change
    assert not torch.allclose(pipe.cache.cross_k, cross_before)
    assert pipe.chunks == 3 and pipe.clock.next_frame == 4


def test_smooth_prompt_transition_interpolates(bundle, clip):
    pipe = make(bundle, batch=False)
    pipe.process(clip[:5])
    a = pipe._ctx.clone()
    b = pipe._encode_prompt((("oil painting, thick brush strokes", 1.0),))
    pipe.set_controls(prompt="oil painting, thick brush strokes", transition_chunks=4)
    seen = []
    for k in range(5):
        pipe.process(clip[5 + 4 * k:9 + 4 * k])
        seen.append(pipe._ctx.clone())
    for k in range(3):
        assert torch.allclose(seen[k], torch.lerp(a, b, (k + 1) / 4), atol=1e-6)
    assert torch.equal(seen[3], b) and torch.equal(seen[4], b)


def test_step_change_mid_stream_loses_no_frames(bundle, clip):
    pipe = make(bundle, batch=True, controls=Controls(steps=2))

    def change(p):
        if p.chunks == 4:
            p.set_controls(steps=4)
        if p.chunks == 7:
            p.set_controls(steps=1)

    out = run(pipe, clip, on_chunk=change)
    assert len(out) == len(clip)
    assert pipe.controls.steps == 1 and pipe.cache.B == 1


def test_step_change_before_the_first_chunk_starts_with_the_new_depth(bundle, clip):
    pipe = make(bundle, batch=True, controls=Controls(steps=2))
    pipe.set_controls(steps=3)
    assert pipe.next_controls.steps == 3 and pipe.controls.steps == 2  # queued, not applied yet
    out = run(pipe, clip[:13])
    assert pipe.cache.B == 3
    ref = run(make(bundle, batch=True, controls=Controls(steps=3)), clip[:13])
    assert len(out) == 13 and all(np.array_equal(x, y) for x, y in zip(out, ref))


class Recording(LocalDenoiser):
    """The local executor, recording how the pipeline drives it."""

    def __init__(self, dit):
        super().__init__(dit)
        self.calls: list[tuple] = []

    def sequential(self, job, start, slots):
        self.calls.append(("sequential", start, slots, job.chunk))
        return super().sequential(job, start, slots)

    def batch_step(self, job, starts, *, fresh, finish):
        self.calls.append(("batch", starts, fresh, finish, job.chunk))
        return super().batch_step(job, starts, fresh=fresh, finish=finish)


def test_stream_batch_drives_its_executor_slot_by_slot(bundle, clip):
    """The pipeline keeps positions and the fill; the executor gets slot starts, empty-slot and finish flags."""
    rec = Recording(bundle.dit)
    pipe = make(bundle, batch=True, controls=Controls(steps=3), executor=rec)
    out = run(pipe, clip[:21])  # chunk 0 (5 frames) + 4 chunks, then two filler calls finish the last two
    assert len(out) == 21 and pipe.cache is rec.cache
    assert rec.calls == [("sequential", 0, 3, 0),  # prepare: every slot gets chunk 0 (latent frames 0-1)
                         ("batch", [2, 2, 2], True, False, 1),  # empty slots after the prepare: pipeline fill
                         ("batch", [3, 2, 2], False, False, 2),
                         ("batch", [4, 3, 2], False, True, 3),  # chunk 1 leaves the last slot
                         ("batch", [5, 4, 3], False, True, 4),
                         ("batch", [6, 5, 4], False, True, 5), ("batch", [7, 6, 5], False, True, 6)]  # flush
    default = run(make(bundle, batch=True, controls=Controls(steps=3)), clip[:21])
    assert all(np.array_equal(x, y) for x, y in zip(out, default))


def test_noise_scale_and_seed_apply_at_chunk_boundary(bundle, clip):
    pipe = make(bundle, batch=False)
    pipe.process(clip[:5])
    pipe.set_controls(noise_scale=0.6, seed=3)
    assert pipe.motion.s0 == 0.8  # not yet
    pipe.process(clip[5:9])
    assert pipe.motion.s0 == 0.6 and pipe.controls.seed == 3


def test_static_scene_keeps_first_timestep_700(bundle, clip):
    pipe = make(bundle, batch=False)
    still = np.repeat(clip[:1], 13, axis=0)
    pipe.process(still[:5])
    pipe.process(still[5:9])
    assert pipe.motion.first_t == 700
    pipe.process(clip[9:13][::-1].copy())  # big jump in content: motion lowers the noise
    assert pipe.motion.first_t < 700


def test_bad_controls_and_frames_are_clear_errors(bundle, clip):
    pipe = make(bundle, batch=False)
    with pytest.raises(EngineError, match="1 to 4"):
        pipe.set_controls(steps=5)
    with pytest.raises(EngineError, match="noise scale"):
        pipe.set_controls(noise_scale=1.5)
    with pytest.raises(EngineError, match="prompt is empty"):
        pipe.set_controls(prompt="  ")
    with pytest.raises(EngineError, match="fit frames"):
        pipe.process(np.zeros((5, 96, 64, 3), np.uint8))  # not the engine size
    with pytest.raises(EngineError, match="multiple of 16"):
        StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text), size=(120, 128))


def test_bf16_pipeline_runs_close_to_fp32(clip):
    ref = run(make(tiny_bundle(), batch=False), clip[:9])
    b16 = tiny_bundle(dtype=torch.bfloat16)
    pipe = StreamPipeline(b16.dit, b16.vae, PromptCache(b16.text), size=SIZE, controls=Controls(steps=2),
                          batch=False, dtype=torch.bfloat16)
    out = run(pipe, clip[:9])
    assert len(out) == 9
    err = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(ref, out)])
    assert err < 6.0, err  # mean abs pixel error (0-255) of the whole bf16 chain vs fp32; measured ~1-2


# -- Stream-Batch <-> no-batch switches (the SLO scheduler's lever) -------------------------------------


def run_switching(pipe, frames, switch=None):
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
    pipe = make(bundle, batch=start, controls=Controls(steps=steps))
    out = run_switching(pipe, clip, switch)
    assert len(out) == len(clip)
    assert pipe.batch == list(switch.values())[-1]
    assert pipe.slots == (steps if pipe.batch else 1) and pipe.cache.B == pipe.slots


def test_switch_before_the_first_chunk_is_a_fresh_stream(bundle, clip):
    a = run_switching(make(bundle, batch=False, controls=Controls(steps=3)), clip[:13])
    b = run_switching(make(bundle, batch=True, controls=Controls(steps=3)), clip[:13], switch={0: False})
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_set_mode_same_mode_is_a_no_op(bundle, clip):
    a = run_switching(make(bundle, batch=True), clip[:13])
    b = run_switching(make(bundle, batch=True), clip[:13], switch={1: True, 2: True})
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


class GatedText:
    """The tiny text encoder, except that prompts containing "slow" wait for `gate` (a big encoder, on demand)."""

    def __init__(self, text, gate: threading.Event):
        self.text, self.gate, self.started = text, gate, threading.Event()

    def __getattr__(self, name):
        return getattr(self.text, name)

    def encode_trimmed(self, prompt: str) -> torch.Tensor:
        if "slow" in prompt:
            self.started.set()
            assert self.gate.wait(120), "the gate was never opened"
        return self.text.encode_trimmed(prompt)


def test_uncached_prompt_is_encoded_in_the_background_while_the_stream_goes_on(bundle, clip):
    """Live streams: a new prompt's encode does not hold up the chunks (they run while it is blocked), the
    stream keeps the previous prompt meanwhile, then blends into the new one once it is ready."""
    gate = threading.Event()
    text = GatedText(bundle.text, gate)
    pipe = StreamPipeline(bundle.dit, bundle.vae, PromptCache(text), size=SIZE, background_prompts=True,
                          controls=Controls(steps=2, transition_chunks=2))
    chunks = iter([clip[:5], *(clip[i:i + 4] for i in range(5, 41, 4))])
    for _ in range(2):
        pipe.process(next(chunks))
    before = pipe._ctx.clone()
    pipe.set_controls(prompt="a slow new style")
    for _ in range(3):  # with the encode on the engine thread, the first of these would wait for the gate
        pipe.process(next(chunks))
    assert text.started.is_set() and pipe.prompt_pending and pipe.controls.prompt == "a slow new style"
    assert torch.equal(pipe._ctx, before)  # still the previous prompt
    gate.set()
    pipe._encoding[0].result(timeout=120)
    pipe.process(next(chunks))
    assert not pipe.prompt_pending and pipe._transition is not None  # blending in over 2 chunks
    for _ in range(2):
        pipe.process(next(chunks))
    want = PromptCache(bundle.text).encode("a slow new style", dtype=torch.float32)
    assert pipe._transition is None and torch.equal(pipe._ctx, want)


def test_warm_prompts_are_encoded_in_the_background_and_a_click_on_one_is_a_cache_hit(bundle, clip):
    cache = PromptCache(bundle.text)
    pipe = StreamPipeline(bundle.dit, bundle.vae, cache, size=SIZE, background_prompts=True)
    presets = ["watercolor, soft edges", "ink drawing", "pixel art"]
    pipe.warm_prompts(presets)
    for future in pipe._warming.values():
        future.result(timeout=120)
    assert all(p in cache for p in presets) and cache.stats["computed"] == 1 + len(presets)  # + the start prompt
    pipe.process(clip[:5])
    pipe.set_controls(prompt="ink drawing")
    pipe.process(clip[5:9])
    assert not pipe.prompt_pending and cache.stats["computed"] == 1 + len(presets)  # switched at once, no encode
