"""Weighted prompt blends (issue 14, as Daydream Scope does): Controls carries (prompt, weight) pairs, the engine mixes
the prompts' text embeddings by normalised weight into the cross-attention K/V, a blend change uses the prompt
transition, and the CLI takes several --prompt TEXT:WEIGHT. One prompt stays exactly today's stream."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import test_pipeline
import torch
from PySide6.QtCore import Qt
from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.config import MAX_BLEND, Controls, InvalidControl, parse_weighted_prompt
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.pipeline import StreamPipeline
from sdv2_studio.engine.text import PromptCache
from test_pipeline import SIZE, make, run

bundle, clip = test_pipeline.bundle, test_pipeline.clip  # the pipeline tests' fixtures
A, B = "ink wash painting, bold brush strokes", "neon cyberpunk city at night"


def cross(pipe: StreamPipeline) -> tuple[torch.Tensor, torch.Tensor]:
    return pipe.cache.cross_k.clone(), pipe.cache.cross_v.clone()


def test_controls_normalise_weights_and_check_every_pair():
    c = Controls(prompt=A).with_prompts([(A, 3), [B, 1]])  # lists (JSON) become pairs
    assert c.prompt == A and c.prompt_weight == 3.0 and c.blend == ((B, 1.0),)
    assert c.weighted_prompts == ((A, 0.75), (B, 0.25))
    assert Controls(**json.loads(json.dumps(dataclasses.asdict(c)))) == c  # settings / API round trip
    assert Controls(prompt=A).weighted_prompts == ((A, 1.0),)
    assert c.with_prompts([(A, 0.0), (B, 2.0)]).weighted_prompts == ((B, 1.0),)  # weight 0 is left out
    assert Controls(prompt=A, prompt_weight=0.25).prompt_weight == 1.0  # no blend: the prompt alone, weight 1
    for bad, why in [([(A, -1), (B, 1)], "from 0 to"), ([(A, 0), (B, 0)], "all 0"), ([(A, 1), (" ", 1)], "empty"),
                     ([(A, 1), (B, float("nan"))], "from 0 to"), ([(A, 1)] * (MAX_BLEND + 1), "at most"),
                     ([(A, 1), (B, "1")], "from 0 to")]:
        with pytest.raises(InvalidControl, match=why) as err:
            Controls().with_prompts(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(InvalidControl, match="pairs"):
        Controls(blend=("just text",))
    assert parse_weighted_prompt("style: anime:0.7") == ("style: anime", 0.7)
    assert parse_weighted_prompt("ratio 16:9 frame") == ("ratio 16:9 frame", 1.0)
    assert parse_weighted_prompt("a:b") == ("a:b", 1.0) and parse_weighted_prompt("neon:2") == ("neon", 2.0)


def test_a_blend_of_one_prompt_is_that_prompt_bit_for_bit(bundle, clip):
    alone = make(bundle, controls=Controls(prompt=A))  # (the bundle's VAE streams are shared: one pipeline at a time)
    kv, frames = cross(alone), run(alone, clip)
    blend = make(bundle, controls=Controls().with_prompts([(A, 1.0), (B, 0.0)]))
    for x, y in zip(kv, cross(blend)):
        assert torch.equal(x, y)
    out = run(blend, clip)
    assert len(out) == len(frames) and all(np.array_equal(x, y) for x, y in zip(frames, out))


def test_a_blend_of_two_sets_the_weighted_sum_of_their_contexts(bundle):
    cache = PromptCache(bundle.text)
    blend = make(bundle, controls=Controls().with_prompts([(A, 0.7), (B, 0.3)]))
    ref = make(bundle, controls=Controls(prompt=A))
    ref.executor.set_prompt(0.7 * cache.encode(A, dtype=torch.float32) + 0.3 * cache.encode(B, dtype=torch.float32))
    for x, y in zip(cross(blend), cross(ref)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    only_a, only_b = cross(make(bundle, controls=Controls(prompt=A))), cross(make(bundle, controls=Controls(prompt=B)))
    assert not torch.allclose(cross(blend)[0], only_a[0]) and not torch.allclose(cross(blend)[0], only_b[0])


def test_a_weight_change_blends_in_over_the_transition(bundle, clip):
    start = Controls(prompt=A, transition_chunks=2).with_prompts([(A, 1.0), (B, 1.0)])
    pipe = make(bundle, controls=start)
    target = cross(make(bundle, controls=dataclasses.replace(start, prompt_weight=0.2)))
    seen = []

    def change_then_watch(p: StreamPipeline) -> None:
        if p.chunks == 2:
            p.set_controls(prompt_weight=0.2)  # only a weight changes
        seen.append(cross(p)[0])

    run(pipe, clip, on_chunk=change_then_watch)
    steps_after = seen[2:]
    assert not torch.allclose(steps_after[0], target[0])  # the chunk after the change: part way
    assert torch.allclose(seen[-1], target[0], atol=1e-6)  # after the transition: the new blend
    assert torch.allclose(seen[1], cross(make(bundle, controls=start))[0])  # before: the old one


def test_engine_controls_take_a_blend_as_json_gives_it(bundle):
    eng = Engine(EngineConfig(model="tiny", size=SIZE, controls=Controls(prompt=A)))
    new = eng.set_controls(prompt_weight=0.6, blend=[[B, 0.4]])
    assert new.weighted_prompts == ((A, 0.6), (B, 0.4))
    with pytest.raises(InvalidControl, match="blend"):
        eng.set_controls(blend=[[B]])


def _run_cli(*prompts) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdv2_studio.engine.cli", "run", "--model", "tiny", "--source",
                           "test:64x64@16", "--size", "64x64", "--frames", "9", "--out", "",
                           *(a for p in prompts for a in ("--prompt", p))], capture_output=True, text=True, timeout=600)


def test_cli_blends_several_prompts_by_weight():
    done = _run_cli(f"{A}:0.7", f"{B}:0.3")
    assert done.returncode == 0, done.stderr
    assert f"prompt blend: 70% {A!r}, 30% {B!r}" in done.stderr
    one = _run_cli("portrait, ratio 16:9")  # one prompt is taken as typed, colons and all
    assert one.returncode == 0 and "prompt blend" not in one.stderr
    bad = _run_cli(f"{A}:0.7", f"{B}:-3")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "from 0 to" in bad.stderr


def test_style_tab_edits_a_blend_live_and_a_preset_keeps_it(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    from sdv2_studio.app.preset_editor import PresetEditor
    from sdv2_studio.engine.presets import Preset, read_preset, save_preset

    ed = PresetEditor()
    qtbot.addWidget(ed)
    ed.setControls(Controls(prompt=A))
    assert ed.blend_rows == [] and ed.prompt_weight_row.isHidden()
    edited = []
    ed.controlsEdited.connect(edited.append)
    qtbot.mouseClick(ed.add_blend, Qt.LeftButton)
    row = ed.blend_rows[0]
    assert not ed.prompt_weight_row.isHidden() and edited == []  # an empty row changes nothing
    qtbot.keyClicks(row.text, B)
    qtbot.keyClick(row.text, Qt.Key_Return)  # Enter sends it (else the typing pause does)
    assert edited[-1].weighted_prompts == ((A, 0.5), (B, 0.5))
    row.weight.setValue(3.0)  # a weight goes live at once
    assert edited[-1].weighted_prompts == ((A, 0.25), (B, 0.75)) and not ed.modified.isHidden()
    ed.prompt_weight.setValue(0.0)
    assert edited[-1].weighted_prompts == ((B, 1.0),)
    row.weight.setValue(0.0)  # every weight 0: refused with a hint, the stream keeps the last blend
    assert edited[-1].blend == ((B, 3.0),) and "above 0" in ed.blend_hint.text() and not ed.blend_hint.isHidden()
    row.weight.setValue(1.0)
    ed.prompt_weight.setValue(1.0)
    assert ed.blend_hint.isHidden() and ed.controls().weighted_prompts == ((A, 0.5), (B, 0.5))

    saved = save_preset(Preset(id="mix", name="Mix", controls=ed.controls()), tmp_path)  # TOML keeps the blend
    assert "blend = [" in saved.path.read_text() and read_preset(saved.path).controls == ed.controls()
    ed.setControls(Controls(prompt=A))  # another style: the rows go
    assert ed.blend_rows == [] and ed.controls().blend == ()
    ed.setControls(read_preset(saved.path).controls)  # and come back with the preset
    assert [r.pair() for r in ed.blend_rows] == [(B, 1.0)] and ed.prompt_weight.value() == 1.0
    qtbot.mouseClick(ed.blend_rows[0].remove, Qt.LeftButton)
    assert edited[-1].blend == () and edited[-1].weighted_prompts == ((A, 1.0),)


def test_control_api_sets_a_blend_on_attach_and_says_what_is_wrong(bundle, tmp_path):
    from sdv2_studio.obs_bridge.control import ControlServer
    from sdv2_studio.obs_bridge.control_client import ControlClient, ControlError
    from sdv2_studio.obs_bridge.preset_book import PresetBook
    from sdv2_studio.obs_bridge.session import StreamSession

    session = StreamSession(EngineConfig(model="tiny", size=SIZE, prompt_cache_dir="", controls=Controls(prompt=A)),
                            open_source=lambda size: TestPatternSource(size, fps=30),
                            open_sinks=lambda source: {}, presets=PresetBook({}), bundle=bundle)
    server = ControlServer(session, control_path=tmp_path / "control.json").start()
    try:
        api = ControlClient(server.url, server.token)
        c = api.set_prompts([(A, 0.7), (B, 0.3)])["controls"]
        assert (c["prompt"], c["prompt_weight"], c["blend"]) == (A, 0.7, [[B, 0.3]])
        assert session.engine.controls.weighted_prompts == ((A, 0.7), (B, 0.3))
        assert api.request("POST", "/prompt", {"prompt": B})["controls"]["blend"] == []  # one prompt: no blend
        assert session.engine.controls.weighted_prompts == ((B, 1.0),)
        with pytest.raises(ControlError, match="from 0 to"):
            api.set_prompts([(A, 1.0), (B, -2)])
        with pytest.raises(ControlError, match="pairs"):
            api.request("POST", "/prompt", {"prompts": [A, B]})
    finally:
        server.stop()
        session.stop()


def test_obs_app_prompt_blends_in_the_running_app(qtbot, tmp_path):
    from test_app_control import app_cli
    from test_app_window import make_window, start, stop

    w = make_window(qtbot, tmp_path, tiny_bundle())
    try:
        start(qtbot, w)
        r = app_cli(qtbot, "prompt", f"{A}:0.7", f"{B}:0.3")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["controls"]["blend"] == [[B, 0.3]]
        assert [row.pair() for row in w.editor.blend_rows] == [(B, 0.3)] and w.editor.prompt_weight.value() == 0.7
        assert w.editor.controls().weighted_prompts == ((A, 0.7), (B, 0.3))
        qtbot.waitUntil(lambda: w.controller.engine.controls.weighted_prompts == ((A, 0.7), (B, 0.3)),
                        timeout=60_000)  # the running stream took it at a chunk boundary
        r = app_cli(qtbot, "prompt", f"{A}:0", f"{B}:0")
        assert r.returncode == 2 and "above 0" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        stop(qtbot, w)
    finally:
        w.close()
