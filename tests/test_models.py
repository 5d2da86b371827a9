"""resolve_model: the one place "auto", "tiny", "random:PRESET" and checkpoint paths become files and shapes."""

from __future__ import annotations

import pytest
import torch
from sdv2_studio.engine.config import get_preset
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.models import (
    BASE_DIR,
    CAUSAL_DIR,
    REAL_SIZE,
    TINY_NOTICE,
    UMT5_XXL,
    load_bundle,
    models_dir,
    resolve_model,
    tiny_dit,
)
from sdv2_studio.engine.text import tiny_text_config


def _checkpoint(folder, name="model.pt"):
    """A causal-layout checkpoint of the tiny DiT (the dict itself pickled, as some releases ship it)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_dit().state_dict(), folder / name)
    return folder / name


def _base(folder):
    for sub in ("vae", "text_encoder", "tokenizer"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


def test_auto_without_a_download_is_the_tiny_model():
    m = resolve_model("auto")
    assert m == resolve_model("tiny")
    assert (m.spec, m.config, m.checkpoint, m.base) == ("tiny", get_preset("tiny"), None, None)
    assert m.untrained and m.notice == TINY_NOTICE and m.default_size == (256, 256)
    assert (m.vae, m.text_config, m.num_layers) == ("tiny", tiny_text_config(64), 4)


def test_random_presets_for_benchmarks():
    m = resolve_model("random:small")
    assert m.spec == "random:small" and m.config == get_preset("small") and m.untrained
    assert m.text_config == tiny_text_config(get_preset("small").text_dim) and "benchmark" in m.name
    with pytest.raises(EngineError, match="unknown model preset"):
        resolve_model("random:nope")


def test_auto_finds_the_download_and_its_base():
    ckpt = _checkpoint(models_dir() / CAUSAL_DIR).parent
    base = _base(models_dir() / BASE_DIR)
    m = resolve_model("auto")
    assert (m.spec, m.checkpoint, m.base) == (str(ckpt), ckpt, base)
    assert not m.untrained and m.notice == "" and m.default_size == REAL_SIZE
    assert m.config.dim == get_preset("tiny").dim and m.num_layers == 4  # inspected from the file, not loaded
    assert (m.vae, m.text_config) == ("wan2.1", UMT5_XXL)
    assert "model.pt" in m.name or ckpt.name in m.name


def test_a_checkpoint_path_and_its_base_folder(tmp_path):
    ckpt = _checkpoint(tmp_path / "mine")
    with pytest.raises(EngineError, match="no Wan2.1 base folder.*--base"):
        resolve_model(str(ckpt))
    with pytest.raises(EngineError, match="does not exist"):
        resolve_model(str(ckpt), base=tmp_path / "nowhere")
    beside = _base(tmp_path / "mine")
    assert resolve_model(str(ckpt)).base == beside
    other = _base(tmp_path / "other")
    assert resolve_model(str(ckpt), base=other).base == other
    with pytest.raises(EngineError, match="does not exist.*sdv2 models download"):
        resolve_model(str(tmp_path / "missing.pt"))


def test_load_bundle_takes_a_resolved_model():
    m = resolve_model("tiny")
    bundle = load_bundle(m)
    assert bundle.model == m and bundle.untrained and bundle.name == m.name and bundle.default_size == (256, 256)
    assert bundle.dit.cfg == m.config and bundle.text.text_dim == m.config.text_dim


def test_a_torchrun_stage_resolves_the_model_like_the_engine(monkeypatch):
    """`sdv2 run` under torchrun, rank >= 1: the stage it serves comes from the same resolution as rank 0's."""
    from sdv2_studio.engine import cli, parallel

    served = []
    monkeypatch.setattr(parallel, "stage_main", served.append)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = cli.build_parser().parse_args(["run", "--model", "random:small", "--steps", "3", "--device", "cpu"])
    assert cli._run_torchrun_stage(args) == 0
    [spec] = served
    model = resolve_model("random:small")
    assert (spec.model, spec.base, spec.size) == (model.spec, None, model.default_size)
    assert spec.blocks == [(0, 2), (2, 4)] and spec.slots == 3 and spec.dtype == "float32"
