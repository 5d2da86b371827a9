"""The text encoder in its low-priority child process (engine/text_process.py), as live streams on the CPU run a
large encoder: the same contexts as in this process, the child at the lowest priority holding the only copy of the
weights, freed by `release`, a dead child reported in one line and replaced, and a live stream switching to an
uncached prompt encoded there. (Whether the chunks keep their pace meanwhile is measured by `sdv2 bench switch`,
not asserted here.)"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest
import torch
from helpers import wait_for
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.pipeline import StreamPipeline
from sdv2_studio.engine.text import PROCESS_MIN_PARAMS, PromptCache, load_text_encoder, tiny_text_encoder
from test_models import model_files, model_root  # noqa: F401 - fixtures: the tiny model in every layout

PROMPTS = ("ink drawing of a harbour", "a long prompt about a painted scene, " * 6)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_contexts_from_the_child_equal_this_process_and_it_runs_at_the_lowest_priority():
    enc = tiny_text_encoder(text_dim=64, text_len=64, seed=5, num_layers=3)
    here = [enc.encode(p) for p in PROMPTS]
    assert enc.use_process(True) and enc._worker is not None  # started at once, without weights
    assert torch.equal(enc.encode(PROMPTS[0]), here[0]) and enc.model is not None  # not a background thread: here
    enc.background_thread()  # this thread now encodes as a live stream's background thread does
    try:
        there = [enc.encode(p) for p in PROMPTS]
        pid = enc._worker.pid
        assert enc.model is None and enc.processes == 1 and not enc.released  # one copy, in the child
        if hasattr(os, "getpriority"):
            assert os.getpriority(os.PRIO_PROCESS, pid) == 19
        for a, b in zip(here, there):
            assert a.dtype == b.dtype and torch.equal(a, b)  # same weights, same threads: bitwise
        assert enc.calls == 5 and enc.reloads == 0
    finally:
        enc.close()
    assert wait_for(lambda: not alive(pid), 30) is not None
    assert torch.equal(enc.encode(PROMPTS[0]), here[0]) and enc.reloads == 1  # back in this process


def test_release_ends_the_child_and_the_next_prompt_starts_another():
    enc = tiny_text_encoder(text_dim=64, text_len=32)
    enc.use_process(True)
    enc.background_thread()
    first = enc.encode("pixel art")
    pid = enc._worker.pid
    assert enc.release() and enc.released
    assert wait_for(lambda: not alive(pid), 30) is not None
    assert torch.equal(enc.encode("pixel art"), first) and enc.processes == 2 and enc.reloads == 0
    enc.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_child_that_dies_is_one_line_and_is_replaced():
    enc = tiny_text_encoder(text_dim=64, text_len=32)
    enc.use_process(True)
    enc.background_thread()
    before = enc.encode("neon city")
    os.kill(enc._worker.pid, signal.SIGKILL)
    with pytest.raises(EngineError, match=r"the text encoder process ended \(exit code -9\) while encoding") as e:
        enc.encode("neon city at night")
    assert "\n" not in str(e.value)
    assert torch.equal(enc.encode("neon city"), before) and enc.processes == 2
    enc.close()


def test_a_child_that_cannot_load_the_weights_says_why(model_files, tmp_path):  # noqa: F811
    f = model_files
    te = tmp_path / "umt5.safetensors"
    te.write_bytes(f["te"].read_bytes())
    enc = load_text_encoder(te, tokenizer=f["tokenizer"], text_len=32)
    te.unlink()  # the file went away after the model was chosen
    enc.use_process(True)
    enc.background_thread()
    with pytest.raises(EngineError) as e:
        enc.encode("watercolor")
    assert str(te.name) in str(e.value) and "\n" not in str(e.value) and "Traceback" not in str(e.value)
    enc.close()


def test_only_large_encoders_on_the_cpu_use_a_process_by_default():
    enc = tiny_text_encoder(text_dim=64, text_len=32)
    assert enc.num_params < PROCESS_MIN_PARAMS and not enc.use_process(None)
    enc.num_params = PROCESS_MIN_PARAMS
    assert enc.use_process(None) and enc._worker is not None
    assert not enc.use_process(False) and enc._worker is None
    from sdv2_studio.engine.text import ByteTokenizer, TextEncoder

    plain = TextEncoder(enc._loaded(), ByteTokenizer(32), text_len=32, model_id="x")  # cannot be rebuilt elsewhere
    assert not plain.use_process(True)


def test_a_live_stream_takes_an_uncached_prompt_from_the_child(tmp_path):
    bundle = tiny_bundle()
    size = (64, 64)
    clip = np.stack([TestPatternSource(size=size, fps=16).frame(i) for i in range(13)])
    ref = PromptCache(bundle.text).encode("a prompt typed live")
    pipe = StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text, tmp_path / "p"), size=size,
                          controls=Controls(steps=1), background_prompts=True, text_process=True)
    try:
        pipe.process(clip[:5])
        pipe.set_controls(prompt="a prompt typed live", transition_chunks=0)  # taken at the next chunk boundary
        pipe.process(clip[5:9])  # the stream goes on with its prompt while the child encodes the new one
        assert pipe.prompt_pending and bundle.text.processes == 1
        encoding = pipe._encoding[0]
        # The child has the lowest priority: it runs when the engine waits for frames, as a paced stream does
        assert wait_for(encoding.done, 120) is not None
        pipe.process(clip[9:13])  # the first chunk after it is ready uses it
        assert not pipe.prompt_pending
        assert bundle.text.processes == 1 and bundle.text.model is None
        assert torch.equal(pipe._ctx.to(ref.dtype), ref)
    finally:
        pipe.close()
        bundle.text.close()
