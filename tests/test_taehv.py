"""engine.taehv: TAEHV tiny decoder layout, streaming exactness, loading and errors.

Weights are random (seeded) with He-scaled convs, so activations neither vanish nor saturate; the output
head is scaled so that decoded pixels stay mostly inside (0, 1) and a wrong layer shows up in the numbers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import random_taehv
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.taehv import (
    FRAMES_TO_TRIM,
    TAEW21_URL,
    MemBlock,
    TAEHVDecoder,
    TAEHVState,
    TGrow,
    load_taehv,
)
from sdv2_studio.engine.vae import WanVAE, get_vae_preset

B, h, w = 2, 4, 6  # latents 4x6 -> frames 32x48 (non-square, so a swapped H/W shows up)


def _raw_latents(T: int, seed: int = 1) -> torch.Tensor:
    """Raw (un-normalised) Wan2.1-like latents: unit noise through the Wan2.1 mean/std."""
    z = torch.randn(B, 16, T, h, w, generator=torch.Generator().manual_seed(seed))
    return WanVAE(get_vae_preset("tiny")).denormalize(z)


@pytest.fixture(scope="module")
def model() -> TAEHVDecoder:
    return random_taehv()


# ------------------------------------------------------------------------------------------- layout


def _upstream_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the published TAEHV decoder (taew2_1), written out by hand, not from build_decoder."""
    keys: dict[str, tuple[int, ...]] = {"decoder.1.weight": (256, 16, 3, 3), "decoder.1.bias": (256,)}
    stages = [(3, 256, 7, 1, 8, 128), (9, 128, 13, 2, 14, 64), (15, 64, 19, 2, 20, 64)]
    for first_mem, c, tgrow, stride, conv, cout in stages:
        for i in range(first_mem, first_mem + 3):
            keys[f"decoder.{i}.conv.0.weight"] = (c, 2 * c, 3, 3)
            keys[f"decoder.{i}.conv.2.weight"] = (c, c, 3, 3)
            keys[f"decoder.{i}.conv.4.weight"] = (c, c, 3, 3)
            for j in (0, 2, 4):
                keys[f"decoder.{i}.conv.{j}.bias"] = (c,)
        keys[f"decoder.{tgrow}.conv.weight"] = (c * stride, c, 1, 1)
        keys[f"decoder.{conv}.weight"] = (cout, c, 3, 3)
    keys["decoder.22.weight"] = (3, 64, 3, 3)
    keys["decoder.22.bias"] = (3,)
    return keys


def test_state_dict_matches_published_layout(model):
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _upstream_layout()


# ------------------------------------------------------------------------------ frame counts and numerics


def test_frame_counts_and_range(model):
    model.reset_stream()
    first = model.decode_stream(_raw_latents(1))
    assert first.shape == (B, 3, 1, 8 * h, 8 * w)
    later = model.decode_stream(_raw_latents(1, seed=2))
    assert later.shape == (B, 3, 4, 8 * h, 8 * w)
    assert model.decode_stream(_raw_latents(3, seed=3)).shape == (B, 3, 12, 8 * h, 8 * w)
    model.reset_stream()
    out = model.decode_stream(_raw_latents(3))  # first call with several latents: 1 + 4 * 2
    assert out.shape == (B, 3, 9, 8 * h, 8 * w)
    assert out.dtype == torch.float32 and out.min() >= -1 and out.max() <= 1
    assert ((out > -1) & (out < 1)).float().mean() > 0.9  # weights keep pixels unsaturated: tests see numbers
    with pytest.raises(ValueError):
        model.decode_stream(torch.zeros(B, 16, 0, h, w))
    with pytest.raises(ValueError):
        model.decode_stream(torch.zeros(B, 48, 1, h, w))
    model.reset_stream()


def _reference_decode(m: TAEHVDecoder, z: torch.Tensor) -> torch.Tensor:
    """Independent frame-by-frame definition of TAEHV decoding on normalised latents (depth-first in time).

    MemBlock: relu(conv(cat(x_t, x_{t-1})) + x_t) with zeros before the first frame; TGrow: the channel
    groups of its 1x1 conv are successive frames. Then clamp, drop the first 3 frames, map to [-1, 1].
    """
    layers, memory, out = list(m.decoder), {}, []

    def push(i: int, x: torch.Tensor) -> None:
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, MemBlock):
                past = memory.get(i, torch.zeros_like(x))
                memory[i] = x
                x = F.relu(layer.conv(torch.cat([x, past], dim=1)) + x)
            elif isinstance(layer, TGrow):
                for part in layer.conv(x).chunk(layer.stride, dim=1):
                    push(i + 1, part)
                return
            else:
                x = layer(x)
            i += 1
        out.append(x)

    with torch.no_grad():
        for t in range(z.shape[2]):
            push(0, z[:, :, t])
    return torch.stack(out, dim=2).clamp(0, 1)[:, :, FRAMES_TO_TRIM:] * 2 - 1


def test_matches_frame_by_frame_reference(model):
    raw = _raw_latents(3)
    ref = _reference_decode(model, model.normalize(raw))
    torch.testing.assert_close(model.decode(raw), ref, atol=1e-5, rtol=1e-5)


def test_streaming_equals_whole_clip(model):
    raw = _raw_latents(5)
    whole = model.decode(raw)
    assert whole.shape[2] == 1 + 4 * 4
    state = TAEHVState()
    one_by_one = torch.cat([model.decode_stream(raw[:, :, t : t + 1], state) for t in range(5)], dim=2)
    torch.testing.assert_close(one_by_one, whole, atol=1e-5, rtol=1e-5)
    state = TAEHVState()
    split = torch.cat([model.decode_stream(raw[:, :, :2], state), model.decode_stream(raw[:, :, 2:], state)], 2)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)
    one_pass = random_taehv(latents_per_pass=8)  # same weights, all 5 latents in one pass
    torch.testing.assert_close(one_pass.decode(raw), whole, atol=1e-5, rtol=1e-5)


def test_reset_and_separate_states(model):
    a, b = _raw_latents(2), _raw_latents(1, seed=5)
    model.reset_stream()
    model.decode_stream(a)
    after_a = model.decode_stream(b)
    model.reset_stream()
    fresh = model.decode_stream(b)
    assert fresh.shape[2] == 1 and after_a.shape[2] == 4  # reset restarts the frame-count contract
    torch.testing.assert_close(fresh, model.decode(b), atol=0, rtol=0)
    model.reset_stream()
    model.decode_stream(a)
    model.decode_stream(_raw_latents(3, seed=6), TAEHVState())  # another stream in between, own state
    torch.testing.assert_close(model.decode_stream(b), after_a, atol=0, rtol=0)
    model.reset_stream()


def test_raw_input_is_normalised_like_wan_vae(model):
    raw = _raw_latents(2)
    normalized = WanVAE(get_vae_preset("tiny")).normalize(raw)  # (z - mean) / std, engine.vae's own stats
    torch.testing.assert_close(model.decode(normalized, normalized=True), model.decode(raw), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.decode(raw, normalized=True), model.decode(raw), atol=1e-2)


def test_bf16_smoke():
    raw = _raw_latents(2)
    ref = random_taehv().decode(raw)
    low = random_taehv(dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16 and low.device.type == "cpu"
    out = low.decode(raw)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    # bf16 (~3 significant digits) through 23 layers; measured max 0.009, mean 0.002 on the [-1, 1] range.
    # Stated tolerance: max abs error 0.03, mean 0.005.
    err = (out.float() - ref).abs()
    assert err.max() < 0.03 and err.mean() < 0.005, (err.max().item(), err.mean().item())


# ---------------------------------------------------------------------------------------------- loading


def _save(sd: dict, path) -> str:
    torch.save(sd, path)
    return str(path)


def test_state_dict_round_trip(model, tmp_path):
    raw = _raw_latents(2)
    sd = model.state_dict()
    loaded = load_taehv(_save(sd, tmp_path / "taew2_1.pth"))
    assert not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded.decode(raw), model.decode(raw), atol=0, rtol=0)
    strict = TAEHVDecoder()
    strict.load_state_dict(loaded.state_dict(), strict=True)

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "taew2_1.safetensors"))
    st = load_taehv(tmp_path / "taew2_1.safetensors", dtype=torch.bfloat16)
    assert st.dtype == torch.bfloat16
    (tmp_path / "fp16").mkdir()  # a half-precision .safetensors in a folder, loaded in fp32
    save_file({k: v.half() for k, v in sd.items()}, str(tmp_path / "fp16" / "taew2_1.safetensors"))
    half = TAEHVDecoder()
    half.load_state_dict({k: v.half().float() for k, v in sd.items()})
    torch.testing.assert_close(load_taehv(tmp_path / "fp16").decode(raw), half.eval().decode(raw), atol=0, rtol=0)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    _save(sd, folder / "taew2_1.pth")
    torch.testing.assert_close(load_taehv(folder).decode(raw), model.decode(raw), atol=0, rtol=0)


def test_loads_full_upstream_checkpoint(model, tmp_path):
    """A file with encoder.* keys (the full TAEHV) and a wider TGrow weight, as the reference loader allows."""
    raw = _raw_latents(2)
    sd = dict(model.state_dict())
    sd["encoder.0.weight"] = torch.randn(64, 3, 3, 3)
    sd["encoder.2.conv.weight"] = torch.randn(64, 128, 1, 1)
    sd["decoder.7.conv.weight"] = torch.cat([torch.randn(256, 256, 1, 1), sd["decoder.7.conv.weight"]])
    loaded = load_taehv(_save(sd, tmp_path / "taew2_1.pth"))
    torch.testing.assert_close(loaded.decode(raw), model.decode(raw), atol=0, rtol=0)


def _error(path) -> str:
    with pytest.raises(EngineError) as info:
        load_taehv(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_bad_files(model, tmp_path):
    assert TAEW21_URL in _error(tmp_path / "missing" / "taew2_1.pth")
    assert TAEW21_URL in _error(tmp_path)  # a folder without the file
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    assert "cannot read" in _error(tmp_path / "garbage.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 32)
    assert "cannot read" in _error(tmp_path / "garbage.safetensors")
    assert "not a state dict" in _error(_save([1, 2, 3], tmp_path / "list.pth"))

    wan_vae = {"encoder.conv1.weight": torch.zeros(96, 3, 3, 3, 3), "conv2.weight": torch.zeros(16, 16, 1, 1, 1)}
    msg = _error(_save(wan_vae, tmp_path / "vae.pth"))
    assert "missing keys" in msg and "unexpected keys: conv2.weight" in msg

    sd = dict(model.state_dict())
    bad = {**sd, "decoder.1.weight": torch.zeros(256, 48, 3, 3)}
    assert "48-channel" in _error(_save(bad, tmp_path / "w22.pth"))
    bad = {**sd, "decoder.8.weight": torch.zeros(128, 256, 1, 1)}
    assert "wrong-shape keys: decoder.8.weight" in _error(_save(bad, tmp_path / "shape.pth"))
    bad = {k: v for k, v in sd.items() if k != "decoder.22.bias"}
    assert "missing keys: decoder.22.bias" in _error(_save(bad, tmp_path / "short.pth"))
    bad = {**sd, "decoder.23.weight": torch.zeros(3)}
    assert "unexpected keys: decoder.23.weight" in _error(_save(bad, tmp_path / "extra.pth"))
    assert "Hunyuan Video" in _error(_save(sd, tmp_path / "taehv.pth"))  # same shapes, other latent space
