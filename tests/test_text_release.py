"""The text encoder is freed once every prompt a live stream may need is cached, and loaded again (the same
weights) for a prompt typed later: steady host RAM without umT5's weights (11.4 GB in bf16 at real size)."""

from __future__ import annotations

import numpy as np
import torch
from helpers import wait_for
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.pipeline import StreamPipeline
from sdv2_studio.engine.text import PromptCache, load_text_encoder, tiny_text_encoder
from test_models import model_files, model_root  # noqa: F401 - fixtures: the tiny model in every layout

SIZE = (64, 64)


def test_release_and_reload_give_the_same_contexts():
    enc = tiny_text_encoder(text_dim=64, text_len=32, seed=3)
    before = enc.encode("ink drawing")
    assert enc.release() and enc.released and enc.model is None
    assert (enc.text_dim, enc.dtype, enc.cache_id) == (64, torch.float32, enc.cache_id)  # known without weights
    assert torch.equal(enc.encode("ink drawing"), before) and enc.reloads == 1 and not enc.released


def test_a_file_encoder_reloads_from_its_file(model_files):  # noqa: F811
    f = model_files
    enc = load_text_encoder(f["te"], tokenizer=f["tokenizer"], text_len=32)
    before = enc.encode("watercolor painting of a city at night")
    assert enc.release()
    assert torch.equal(enc.encode("watercolor painting of a city at night"), before) and enc.reloads == 1
    assert enc.dtype == torch.bfloat16


def test_a_live_stream_frees_the_encoder_once_the_presets_are_cached(tmp_path):
    bundle = tiny_bundle()
    cache = PromptCache(bundle.text, tmp_path / "prompts")
    pipe = StreamPipeline(bundle.dit, bundle.vae, cache, size=SIZE, controls=Controls(steps=1),
                          background_prompts=True)
    clip = np.stack([TestPatternSource(size=SIZE, fps=16).frame(i) for i in range(13)])
    presets = ["watercolor, soft edges", "ink drawing", "pixel art"]
    pipe.warm_prompts(presets)
    assert wait_for(lambda: bundle.text.released, timeout=120) is not None
    assert all(p in cache for p in presets)
    pipe.process(clip[:5])
    pipe.set_controls(prompt="ink drawing")  # a preset: a cache hit, the encoder stays freed
    pipe.process(clip[5:9])
    assert bundle.text.released and bundle.text.reloads == 0
    pipe.set_controls(prompt="a prompt typed live")  # not cached: loaded again in the background, then freed
    pipe.process(clip[9:13])
    assert wait_for(lambda: "a prompt typed live" in cache and bundle.text.released, timeout=120) is not None
    assert bundle.text.reloads == 1
    pipe.close()


def test_an_offline_run_keeps_the_encoder(tmp_path):
    bundle = tiny_bundle()
    pipe = StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text), size=SIZE, background_prompts=False)
    pipe.warm_prompts(["ink drawing"])
    for future in pipe._warming.values():
        future.result(timeout=120)
    pipe._pool().submit(lambda: None).result(timeout=120)  # everything queued on the text thread has run
    assert not bundle.text.released
    pipe.close()


def test_release_without_a_reload_is_refused():
    from sdv2_studio.engine.text import ByteTokenizer, TextEncoder

    enc = tiny_text_encoder(text_dim=64, text_len=32)
    plain = TextEncoder(enc.model, ByteTokenizer(32), text_len=32, model_id="x")
    assert not plain.release() and not plain.released
