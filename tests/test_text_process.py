"""The text encoder in its low-priority child process (engine/text_process.py), as live streams on the CPU run a
large encoder: the same contexts as in this process, the child at the lowest priority holding the only copy of the
weights, freed by `release` and ended by `Engine.stop`, a dead child replaced (also mid-stream), a load failure in
one line each time, and a live stream switching to an uncached prompt encoded there. (Whether the chunks keep their
pace meanwhile is measured by `sdv2 bench switch`, not asserted here.) Children here run at normal priority except
in the priority test: an idle-class child waits without end on a machine other work keeps busy."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest
import torch
from helpers import wait_for
from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.pipeline import StreamPipeline
from sdv2_studio.engine.text import PROCESS_MIN_PARAMS, PromptCache, load_text_encoder, tiny_text_encoder
from test_models import model_files, model_root  # noqa: F401 - fixtures: the tiny model in every layout

PROMPTS = ("ink drawing of a harbour", "a long prompt about a painted scene, " * 6)
SIZE = (64, 64)


def encoder(**kw):
    enc = tiny_text_encoder(**{"text_dim": 64, "text_len": 32, **kw})
    enc.child_lowest_priority = False
    return enc


@pytest.fixture
def in_child():
    """A tiny encoder whose encodes on this thread go to its child process (as a live stream's background thread);
    the child ends with the test."""
    enc = encoder()
    assert enc.use_process(True)
    enc.background_thread()
    yield enc
    enc.close()


def child(enc):
    return enc._worker._proc  # the multiprocessing.Process


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux scheduling classes")
def test_the_child_starts_at_the_lowest_priority_without_weights():
    enc = tiny_text_encoder(text_dim=64, text_len=32)
    try:
        assert enc.use_process(True) and enc.model is not None  # started, the weights still here
        pid = enc._worker.pid
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19 and os.sched_getscheduler(pid) == os.SCHED_IDLE
    finally:
        enc.close()


def test_contexts_from_the_child_equal_this_process_and_the_weights_are_held_once():
    enc = encoder(text_len=64, seed=5, num_layers=3)
    here = [enc.encode(p) for p in PROMPTS]
    try:
        assert enc.use_process(True)
        assert torch.equal(enc.encode(PROMPTS[0]), here[0]) and enc.model is not None  # not a background thread
        enc.background_thread()  # this thread now encodes as a live stream's background thread does
        there = [enc.encode(p) for p in PROMPTS]
        proc = child(enc)
        assert enc.model is None and enc.processes == 1 and not enc.released  # one copy, in the child
        for a, b in zip(here, there):
            assert a.dtype == b.dtype and torch.equal(a, b)  # same weights, same threads: bitwise
        assert enc.calls == 5 and enc.reloads == 0
    finally:
        enc.close()
    assert wait_for(lambda: not proc.is_alive(), 30) is not None
    assert torch.equal(enc.encode(PROMPTS[0]), here[0]) and enc.reloads == 1  # back in this process


def test_a_foreground_encode_brings_the_weights_back_and_ends_the_child(in_child):
    enc = in_child
    ref = enc.encode("pixel art")
    proc = child(enc)
    enc._background.on = False  # a stream's first prompt, on the engine thread
    assert torch.equal(enc.encode("pixel art"), ref) and enc.model is not None and enc._worker is None
    assert wait_for(lambda: not proc.is_alive(), 30) is not None  # never two copies


def test_release_ends_the_child_and_the_next_prompt_starts_another(in_child):
    enc = in_child
    first = enc.encode("pixel art")
    proc = child(enc)
    assert enc.release() and enc.released
    assert wait_for(lambda: not proc.is_alive(), 30) is not None
    assert torch.equal(enc.encode("pixel art"), first) and enc.processes == 2 and enc.reloads == 0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_child_that_dies_is_one_line_and_is_replaced(in_child):
    enc = in_child
    before = enc.encode("neon city")
    os.kill(enc._worker.pid, signal.SIGKILL)
    with pytest.raises(EngineError, match=r"the text encoder process ended \(exit code -9\) while encoding") as e:
        enc.encode("neon city at night")
    assert "\n" not in str(e.value) and "out of memory" in str(e.value)
    assert torch.equal(enc.encode("neon city"), before) and enc.processes == 2


def test_a_child_that_cannot_load_the_weights_says_why_every_time(model_files, tmp_path):  # noqa: F811
    f = model_files
    te = tmp_path / "umt5.safetensors"
    te.write_bytes(f["te"].read_bytes())
    enc = load_text_encoder(te, tokenizer=f["tokenizer"], text_len=32)
    enc.child_lowest_priority = False
    te.unlink()  # the file went away after the model was chosen
    try:
        enc.use_process(True)
        enc.background_thread()
        for _ in range(2):  # the same line again, not a second-hand one about the child
            with pytest.raises(EngineError) as e:
                enc.encode("watercolor")
            assert te.name in str(e.value) and "\n" not in str(e.value) and "exit code" not in str(e.value)
    finally:
        enc.close()


def test_only_large_encoders_on_the_cpu_use_a_process_by_default():
    enc = encoder()
    try:
        assert enc.num_params < PROCESS_MIN_PARAMS and not enc.use_process(None)
        enc.num_params = PROCESS_MIN_PARAMS
        assert enc.use_process(None) and enc._worker is not None
        assert not enc.use_process(False) and enc._worker is None
    finally:
        enc.close()
    from sdv2_studio.engine.text import ByteTokenizer, TextEncoder

    plain = TextEncoder(enc._loaded(), ByteTokenizer(32), text_len=32, model_id="x")  # cannot be rebuilt elsewhere
    assert not plain.use_process(True)


def live_pipeline(bundle, tmp_path):
    bundle.text.child_lowest_priority = False
    return StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text, tmp_path / "p"), size=SIZE,
                          controls=Controls(steps=1), background_prompts=True, text_process=True)


def switch(pipe, clip, prompt: str) -> None:
    """Set an uncached prompt, keep streaming while the child encodes it, and take it at the next chunk."""
    pipe.set_controls(prompt=prompt, transition_chunks=0)  # taken at the next chunk boundary
    pipe.process(clip[:4])  # the stream goes on with its prompt while the child encodes the new one
    assert pipe.prompt_pending
    assert wait_for(pipe._encoding[0].done, 120) is not None  # (a paced stream waits for frames meanwhile)
    pipe.process(clip[4:8])  # the first chunk after it is ready uses it
    assert not pipe.prompt_pending


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_live_stream_takes_uncached_prompts_from_the_child_even_after_it_died(tmp_path):
    bundle = tiny_bundle()
    clip = np.stack([TestPatternSource(size=SIZE, fps=16).frame(i) for i in range(13)])
    ref = [PromptCache(bundle.text).encode(p) for p in ("a prompt typed live", "another one")]
    pipe = live_pipeline(bundle, tmp_path)
    try:
        pipe.process(clip[:5])
        switch(pipe, clip[5:], "a prompt typed live")
        assert bundle.text.processes == 1 and bundle.text.model is None
        assert torch.equal(pipe._ctx.to(ref[0].dtype), ref[0])
        os.kill(bundle.text._worker.pid, signal.SIGKILL)  # e.g. the OOM killer, between two prompts
        assert wait_for(lambda: not bundle.text._worker.alive, 30) is not None
        switch(pipe, clip[5:], "another one")  # a new child; the stream never stopped
        assert bundle.text.processes == 2 and torch.equal(pipe._ctx.to(ref[1].dtype), ref[1])
    finally:
        pipe.close()
        bundle.text.close()


def test_engine_stop_ends_the_child_and_a_file_run_keeps_the_encoder_here(tmp_path):
    bundle = tiny_bundle()
    bundle.text.num_params = PROCESS_MIN_PARAMS  # as large as a real umT5 (by the size rule)
    bundle.text.child_lowest_priority = False
    eng = Engine(EngineConfig(size=SIZE, prompt_cache_dir=""), bundle).start()  # live: background prompts
    proc = child(bundle.text)
    assert proc.is_alive()
    eng.stop()
    assert wait_for(lambda: not proc.is_alive(), 30) is not None and bundle.text._worker is None
    files = StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text), size=SIZE, background_prompts=False)
    assert bundle.text._worker is None and not bundle.text._in_process  # files: encoded here, deterministic
    files.close()
