"""engine.schedule: the flow-matching grid, x0 / re-noising, step lists, v2v noising, the motion controller."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.schedule import (
    FlowMatchGrid,
    MotionNoiseController,
    denoising_steps,
    frames_from_uint8,
    v2v_noise,
)

GRID = FlowMatchGrid()


# -- grid --------------------------------------------------------------------------------------------------------


def test_t700_maps_to_upstream_sigma():
    """Measured on upstream c5a0f20: t = 700 -> grid timestep 700.2324, sigma 0.7002323865890503 (float64)."""
    assert GRID.sigma(700).double().item() == 0.7002323865890503
    assert GRID.sigma(torch.tensor([700])).double().item() == 0.7002323865890503
    assert abs(GRID.grid_timestep(700).item() - 700.2324) < 1e-4
    assert int(GRID.grid_index(700)) == 774


def test_grid_shape_and_monotone():
    assert GRID.sigmas.dtype == torch.float32 and GRID.sigmas.shape == (1000,)
    assert GRID.sigmas[0].item() == 1.0 and GRID.timesteps[0].item() == 1000.0
    assert (GRID.sigmas[1:] < GRID.sigmas[:-1]).all()
    assert (GRID.timesteps[1:] < GRID.timesteps[:-1]).all()
    assert 0 < GRID.sigmas[-1].item() < 0.01  # sigma_min 0 is dropped (extra_one_step); shift 8 lifts the rest
    s = GRID.sigma_for_t
    assert s.shape == (1001,) and (s[1:] >= s[:-1]).all()  # larger t -> no smaller sigma


def test_integer_table_equals_nearest_neighbour_search():
    t = torch.arange(1001)
    brute = (GRID.timesteps.double()[None] - t.double()[:, None]).abs().argmin(1)
    assert torch.equal(GRID.grid_index(t), brute)
    assert torch.equal(GRID.sigma(t), GRID.sigmas[brute])
    assert torch.equal(GRID.sigma(t.double()), GRID.sigma(t))  # float path (argmin) == table path
    assert torch.equal(GRID.sigma(t.to(torch.int32)), GRID.sigma(t))
    # out of range: the nearest grid point is the end of the grid either way
    assert GRID.sigma(5000).item() == GRID.sigma(torch.tensor(5000.0)).item() == 1.0
    assert GRID.sigma(-3).item() == GRID.sigma(torch.tensor(-3.0)).item() == GRID.sigmas[-1].item()


def _reference_sigma(t: int) -> float:
    """Independent pure-Python float64 version of the grid lookup."""
    grid = [(1 - i / 1000) for i in range(1000)]
    grid = [8 * s / (1 + 7 * s) for s in grid]
    return min(grid, key=lambda s: abs(s * 1000 - t))


def test_step_sigmas_are_not_t_over_1000():
    steps = [700, 500, 400, 200]
    sig = GRID.sigma(torch.tensor(steps)).double().tolist()
    assert sig == pytest.approx([_reference_sigma(t) for t in steps], abs=1e-7)
    assert sig == pytest.approx([0.7002324, 0.4997186, 0.4002599, 0.1983471], abs=1e-7)


def test_grid_validation():
    with pytest.raises(EngineError):
        FlowMatchGrid(shift=0)
    with pytest.raises(EngineError):
        FlowMatchGrid(train_steps=0)
    g = FlowMatchGrid(shift=1.0, extra_one_step=False, train_steps=10)
    assert torch.allclose(g.sigmas, torch.linspace(1, 0, 10))


# -- x0 conversion and re-noising --------------------------------------------------------------------------------


def _latents(shape=(2, 16, 3, 4, 6), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def test_to_x0_add_noise_round_trip_fp32():
    x0, noise = _latents(seed=0), _latents(seed=1)
    for t in (700, torch.tensor([700, 500]), torch.tensor([[700, 500, 400], [200, 0, 1000]])):
        x_t = GRID.add_noise(x0, noise, t)
        flow = noise - x0
        rec = GRID.to_x0(flow, x_t, t)
        assert rec.dtype == torch.float32
        assert (rec - x0).abs().max().item() < 1e-6


def test_to_x0_is_float64_with_grid_sigma():
    x_t, flow = _latents(seed=2), _latents(seed=3)
    out = GRID.to_x0(flow, x_t, torch.tensor([700, 700]))
    ref = (x_t.double() - 0.7002323865890503 * flow.double()).float()
    assert torch.equal(out, ref)


def test_per_frame_timesteps_broadcast():
    x0, noise = _latents(seed=4), _latents(seed=5)
    t = torch.tensor([[700, 500, 400], [200, 700, 500]])
    out = GRID.add_noise(x0, noise, t)
    for b in range(2):
        for f in range(3):
            ref = GRID.add_noise(x0[b:b + 1, :, f:f + 1], noise[b:b + 1, :, f:f + 1], t[b, f])
            assert torch.equal(out[b:b + 1, :, f:f + 1], ref)
    with pytest.raises(EngineError):
        GRID.add_noise(x0, noise, torch.zeros(2, 3, 1, dtype=torch.long))


def test_add_noise_formula_and_dtype():
    x0, noise = _latents(seed=6), _latents(seed=7)
    out = GRID.add_noise(x0, noise, 500)
    s = GRID.sigma(500)
    assert torch.equal(out, (1 - s) * x0 + s * noise)
    out16 = GRID.add_noise(x0.bfloat16(), noise.bfloat16(), 500)
    assert out16.dtype == torch.bfloat16
    assert (out16.float() - out).abs().max().item() < 0.05
    assert GRID.add_noise(x0.bfloat16(), noise, 500).dtype == torch.float32  # noise dtype wins


def test_bf16_inputs():
    x0, noise = _latents(seed=8, dtype=torch.bfloat16), _latents(seed=9, dtype=torch.bfloat16)
    t = torch.tensor([700, 400])
    x_t = GRID.add_noise(x0, noise, t)
    rec = GRID.to_x0(noise.float() - x0.float(), x_t, t)
    assert x_t.dtype == rec.dtype == torch.bfloat16
    assert (rec.float() - x0.float()).abs().max().item() < 0.05


# -- steps and v2v noising ---------------------------------------------------------------------------------------


def test_denoising_steps():
    assert denoising_steps(1) == [700]
    assert denoising_steps(2) == [700, 500]
    assert denoising_steps(3) == [700, 500, 400]
    assert denoising_steps(4) == [700, 500, 400, 200]
    assert denoising_steps(2, base=(1000, 750, 500, 250)) == [1000, 750]
    for bad in (0, 5, -1, 2.0, True, "2"):
        with pytest.raises(EngineError, match="1 to 4"):
            denoising_steps(bad)


def test_v2v_noise():
    z, n = _latents(seed=10), _latents(seed=11)
    assert torch.allclose(v2v_noise(z, n, 0.8), 0.8 * n + 0.2 * z)
    assert torch.equal(v2v_noise(z, n, 0.0), z)
    assert torch.equal(v2v_noise(z, n, 1.0), n)


# -- motion controller -------------------------------------------------------------------------------------------


def _static(t=4, value=0.1, hw=(8, 10)):
    return torch.full((1, 3, t, *hw), value)


def _alternating(t=4, hw=(8, 10), start=-1.0):
    """Frames flipping between -1 and 1: d_t = 2 for every pair, the maximum motion."""
    sign = torch.tensor([start * (-1) ** i for i in range(t)]).view(1, 1, t, 1, 1)
    return sign.expand(1, 3, t, *hw).clone()


def test_static_scene_gives_700():
    c = MotionNoiseController()
    assert c.first_t == 700
    for t in (5, 4, 4, 4):
        s, first_t = c.update(_static(t))
        assert s == 0.8 and first_t == 700
    assert c.last_motion == 0.0


def test_max_motion_converges_to_600():
    c = MotionNoiseController()
    seq = []
    for _ in range(40):
        s, first_t = c.update(_alternating())
        seq.append((s, first_t))
    assert seq[0][0] == pytest.approx(0.9 * 0.7 + 0.1 * 0.8)  # 0.71
    assert seq[0][1] == 610
    assert all(a[0] > b[0] for a, b in zip(seq[:8], seq[1:9]))  # monotone descent towards s_min
    assert seq[-1][0] == pytest.approx(0.7, abs=1e-12)
    assert 599 <= seq[-1][1] <= 600  # int() truncation of 1000 * 0.7000...x


def test_ema_hand_computed_sequence():
    """Chunks with RMS differences 0.05, 0.4 (clipped), 0.1 and 0 relative to the previous frame."""
    c = MotionNoiseController()
    hw = (4, 4)
    base = torch.zeros(1, 3, 1, *hw)
    chunks = [torch.cat([base, base + 0.05], dim=2),  # first chunk: internal difference only, d = 0.05
              base + 0.05 + 0.4,  # vs previous last frame (0.05): d = 0.4 -> motion clipped at 1
              base + 0.45 + 0.1,  # d = 0.1 -> motion 0.5
              base + 0.55]  # static
    motions = [0.25, 1.0, 0.5, 0.0]
    s_prev, expected = 0.8, []
    for m in motions:
        s_prev = (0.8 - 0.1 * m) * 0.9 + s_prev * 0.1  # upstream's formula
        expected.append((s_prev, int(1000 * s_prev) - 100))
    for x, m, (s_exp, t_exp) in zip(chunks, motions, expected):
        s, first_t = c.update(x)
        assert c.last_motion == pytest.approx(m, abs=1e-6)
        assert s == pytest.approx(s_exp, abs=1e-7)
        assert first_t == t_exp
    assert [t for _, t in expected] == [677, 607, 645, 694]


def test_motion_uses_max_over_frames_and_previous_frame():
    c = MotionNoiseController()
    x = torch.zeros(1, 3, 4, 2, 2)
    x[:, :, 2:] = 0.1  # one jump of 0.1 inside the chunk
    assert c.motion(x) == pytest.approx(0.5)
    prev = torch.full((1, 3, 2, 2), -0.1)  # 0.1 below frame 0
    assert c.motion(x, prev) == pytest.approx(0.5)
    assert c.motion(x, torch.full((1, 3, 1, 2, 2), 0.2)) == pytest.approx(1.0)
    assert c.motion(torch.zeros(1, 3, 1, 2, 2)) == 0.0  # single frame, no previous: no motion
    with pytest.raises(EngineError):
        c.motion(x, torch.zeros(1, 3, 3, 3))
    with pytest.raises(EngineError):
        c.motion(torch.zeros(3, 4, 2, 2))


def test_explicit_prev_last_frame_and_reset():
    c = MotionNoiseController()
    c.update(_static(5, value=0.0))
    # remembered last frame 0.0 vs a chunk at 0.2: d = 0.2 -> full motion
    s, _ = c.update(_static(4, value=0.2))
    assert c.last_motion == 1.0
    # explicit previous frame overrides the remembered one
    c.update(_static(4, value=0.2), prev_last_frame=torch.full((1, 3, 8, 10), 0.2))
    assert c.last_motion == 0.0
    c.reset()
    assert c.s_prev == 0.8
    s, first_t = c.update(_static(4, value=-0.5))  # no previous frame after reset
    assert (s, first_t, c.last_motion) == (0.8, 700, 0.0)


def test_live_noise_scale_keeps_ema_continuity():
    c = MotionNoiseController()
    c.update(_static(5))
    c.set_s0(0.6)
    s, first_t = c.update(_static(4))
    assert s == pytest.approx(0.9 * 0.6 + 0.1 * 0.8)
    assert first_t == int(1000 * ((0.6 - 0.0) * 0.9 + 0.8 * 0.1)) - 100
    for _ in range(30):
        s, first_t = c.update(_static(4))
    assert s == pytest.approx(0.6) and first_t in (499, 500)
    with pytest.raises(EngineError, match="noise scale"):
        c.set_s0(1.5)
    with pytest.raises(EngineError):
        MotionNoiseController(s0=0.0)


def test_configurable_constants():
    c = MotionNoiseController(s0=0.7, motion_scale=0.5, ema=1.0, motion_drop=0.2, t_offset=50)
    s, first_t = c.update(_alternating())  # d = 2 -> motion 1
    assert s == pytest.approx(0.5) and first_t == int(1000 * s) - 50


def test_bf16_frames_and_uint8_helper():
    c = MotionNoiseController()
    s, first_t = c.update(_alternating().bfloat16())
    assert (c.last_motion, first_t) == (1.0, 610)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 6, 8, 3), dtype=np.uint8)
    x = frames_from_uint8(frames)
    assert x.shape == (1, 3, 4, 6, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x[0, 1, 2, 3, 4].item() == pytest.approx(frames[2, 3, 4, 1] / 127.5 - 1)
    assert torch.equal(frames_from_uint8(list(frames)), x)
    c2 = MotionNoiseController()
    assert c2.update_uint8(frames) == MotionNoiseController().update(x)
    with pytest.raises(EngineError, match="uint8"):
        frames_from_uint8(frames.astype(np.float32))
    with pytest.raises(EngineError):
        frames_from_uint8(np.zeros((2, 4, 4), dtype=np.uint8))
