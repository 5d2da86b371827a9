"""The VRAM estimator behind the engine settings' warning (Qt-free)."""

from __future__ import annotations

import pytest
import torch
from sdv2_studio.app.vram import GiB, check_fit, dit_params, estimate_vram
from sdv2_studio.engine.config import PRESETS, CacheConfig
from sdv2_studio.engine.model import CausalWanModel


@pytest.mark.parametrize("name", ["tiny", "small", "wan2.1-1.3b"])
def test_parameter_count_matches_the_model(name):
    with torch.device("meta"):
        model = CausalWanModel(PRESETS[name])
    assert dit_params(PRESETS[name]) == sum(p.numel() for p in model.parameters())


def test_kv_cache_formula():
    cfg = PRESETS["wan2.1-1.3b"]
    est = estimate_vram(cfg, size=(480, 832), dtype="bfloat16", steps=2, batch=True, cache=CacheConfig())
    tokens = (480 // 16) * (832 // 16)
    expected = cfg.num_layers * 2 * 2 * 6 * tokens * cfg.dim * 2 + cfg.num_layers * 2 * 2 * cfg.text_len * cfg.dim * 2
    assert est.kv_cache == expected
    assert est.weights == dit_params(cfg) * 2


def test_estimates_move_the_right_way_and_land_in_a_plausible_range():
    base = estimate_vram()
    assert 8 * GiB < base.total < 14 * GiB  # 1.3B, 480x832, bf16, 2-step Stream-Batch, umT5 on the CPU
    assert estimate_vram(steps=4).total > base.total > estimate_vram(batch=False).total
    assert estimate_vram(size=(256, 256)).total < base.total
    assert estimate_vram(dtype="float32").total > base.total
    assert estimate_vram(text_on_gpu=True).total - base.total > 10 * GiB
    four = estimate_vram("wan2.1-14b", gpus=4)
    assert four.total < estimate_vram("wan2.1-14b").total and "per GPU" in four.breakdown()
    assert estimate_vram("tiny", size=(128, 128), dtype="float32", vae_base_dim=16).total < 1 * GiB


def test_fit_levels():
    est = estimate_vram()
    assert check_fit(est, 24 * GiB)[0] == "ok"
    assert check_fit(est, int(est.total / 0.9))[0] == "tight"
    level, text = check_fit(est, 8 * GiB)
    assert level == "no" and "will not fit" in text and "resolution" in text
    assert check_fit(est, None)[0] == "unknown"
