"""The one controls type (engine/config.py): validation on construction, MAX_STEPS from the step schedule, and the
Engine as the owner of controls set before start."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.config import CONTROL_FIELDS, MAX_STEPS, MAX_TRANSITION, Controls, InvalidControl
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.schedule import DEFAULT_TIMESTEPS, denoising_steps


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def test_max_steps_is_the_length_of_the_step_schedule():
    assert MAX_STEPS == len(DEFAULT_TIMESTEPS) == 4
    assert Controls(steps=MAX_STEPS).steps == MAX_STEPS
    assert denoising_steps(MAX_STEPS) == list(DEFAULT_TIMESTEPS)
    with pytest.raises(EngineError):
        denoising_steps(MAX_STEPS + 1)
    with pytest.raises(InvalidControl, match=f"from 1 to {MAX_STEPS}"):
        Controls(steps=MAX_STEPS + 1)


@pytest.mark.parametrize("change, field", [
    ({"steps": 0}, "steps"),
    ({"steps": "2"}, "steps"),
    ({"steps": 2.0}, "steps"),
    ({"steps": True}, "steps"),
    ({"noise_scale": 0}, "noise_scale"),
    ({"noise_scale": 1.01}, "noise_scale"),
    ({"noise_scale": "0.5"}, "noise_scale"),
    ({"noise_scale": float("nan")}, "noise_scale"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"transition_chunks": -1}, "transition_chunks"),
    ({"transition_chunks": MAX_TRANSITION + 1}, "transition_chunks"),
    ({"prompt": "  \n"}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"loras": "ink.safetensors"}, "loras"),
    ({"loras": [["../escape.safetensors", 1.0]]}, "loras"),
    ({"loras": [["sub/../../escape.safetensors", 1.0]]}, "loras"),
    ({"loras": [["ink.safetensors", 10.5]]}, "loras"),
    ({"loras": [["ink.safetensors", float("nan")]]}, "loras"),
    ({"loras": [["ink.safetensors", True]]}, "loras"),
    ({"loras": [["ink.safetensors", "0.8"]]}, "loras"),
    ({"loras": [[7, 1.0]]}, "loras"),
    ({"loras": [["  ", 1.0]]}, "loras"),
    ({"loras": [["a", 1.0, 2.0]]}, "loras"),
    ({"loras": [[f"{i}.safetensors", 1.0] for i in range(9)]}, "loras"),
])
def test_a_wrong_type_or_value_is_one_line_naming_the_field(change, field):
    with pytest.raises(InvalidControl) as err:
        Controls(**change)
    assert err.value.field == field and isinstance(err.value, EngineError)
    msg = str(err.value)
    assert msg.startswith(field.replace("_", " ")) and "\n" not in msg
    with pytest.raises(InvalidControl):  # replace() checks too: no Controls is ever invalid
        dataclasses.replace(Controls(), **change)


def test_values_are_normalised_to_the_declared_types():
    c = Controls(steps=np.int64(3), noise_scale=1, seed=np.uint8(5), transition_chunks=np.int32(0))
    assert (c.steps, c.noise_scale, c.seed, c.transition_chunks) == (3, 1.0, 5, 0)
    assert [type(getattr(c, f)) for f in CONTROL_FIELDS] == [str, int, float, int, int, float, tuple, tuple]
    loras = Controls(loras=[["ink.safetensors", 1], "sub/glow.safetensors", ("/abs/x.safetensors", np.float32(-2))])
    assert loras.loras == (("ink.safetensors", 1.0), ("sub/glow.safetensors", 1.0), ("/abs/x.safetensors", -2.0))
    assert Controls().transition_chunks == 2  # one default for the engine, presets, settings and the CLI


def test_the_config_module_is_torch_free():
    """Presets (read inside OBS's own Python) and the app's settings embed Controls."""
    code = ("import sys; import sdv2_studio.engine.config, sdv2_studio.engine.presets; "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_engine_owns_controls_set_before_start_and_starts_with_them(bundle):
    eng = Engine(EngineConfig(size=(64, 64), lossless=True, batch=False, controls=Controls(steps=2)), bundle)
    preset = Controls(prompt="ukiyo-e woodblock print", steps=3, noise_scale=0.6, seed=11, transition_chunks=5)
    assert eng.set_controls(preset) == preset  # a whole Controls (a preset)
    assert eng.set_controls(steps=1) == dataclasses.replace(preset, steps=1)  # changes on top of the latest
    with pytest.raises(InvalidControl, match="noise scale"):
        eng.set_controls(noise_scale=2.0)
    with pytest.raises(EngineError, match="unknown control colour"):
        eng.set_controls(colour="red")
    want = dataclasses.replace(preset, steps=1)
    assert eng.controls == eng.config.controls == want  # refused changes left nothing behind
    eng.start()
    try:
        assert eng.pipeline.controls == want
        src = TestPatternSource(size=(64, 64), fps=16)
        for i in range(9):
            eng.push(src.frame(i))
        eng.set_controls(seed=12)  # running: applied at the next chunk boundary
        for i in range(9, 13):
            eng.push(src.frame(i))
        eng.finish()
        while not eng.done():
            eng.pull(timeout=0.5)
        assert eng.controls == dataclasses.replace(want, seed=12)
    finally:
        eng.stop()


def test_running_changes_reach_the_pipeline_as_only_what_changed(bundle):
    """Steps the SLO plan lowered stay lowered when the user changes something else."""
    eng = Engine(EngineConfig(size=(64, 64), lossless=True, batch=False, controls=Controls(steps=3)), bundle).start()
    try:
        eng.pipeline.set_controls(steps=1)  # what the SLO scheduler's plan does to the pipeline
        assert eng.set_controls(prompt="oil painting").steps == 3  # the user's controls keep the user's steps
        src = TestPatternSource(size=(64, 64), fps=16)
        for i in range(5):
            eng.push(src.frame(i))
        eng.finish()
        while not eng.done():
            eng.pull(timeout=0.5)
        assert (eng.controls.prompt, eng.controls.steps) == ("oil painting", 1)
    finally:
        eng.stop()
