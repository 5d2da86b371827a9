"""engine.vae against diffusers' AutoencoderKLWan (an independent implementation); loading; streaming state.

All models are the Wan2.1 structure at base_dim 8 with random weights; norms and biases are perturbed away
from their 1/0 defaults so that a wrong key mapping or a skipped layer shows up in the numbers.
"""

from __future__ import annotations

import pytest
import torch
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.vae import (
    CausalCache,
    VAEConfig,
    WanVAE,
    diffusers_to_wan,
    get_vae_preset,
    load_vae,
    wan_to_diffusers_key,
)

diffusers = pytest.importorskip("diffusers")

CFG = VAEConfig(name="test", base_dim=8)  # Wan2.1 structure (2 res blocks, 4x T, 8x H/W, z 16), 1/12 width
B, H, W = 2, 32, 48  # non-square, so a swapped H/W shows up


def _diffusers_vae(num_res_blocks: int = 2, base_dim: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKLWan(base_dim=base_dim, z_dim=16, dim_mult=[1, 2, 4, 4],
                                     num_res_blocks=num_res_blocks, temperal_downsample=[False, True, True])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return ref.eval()


def _ours(state_dict, cfg: VAEConfig = CFG, dtype=torch.float32) -> WanVAE:
    model = WanVAE(cfg).eval()
    model.load_state_dict(state_dict, strict=True)
    return model.to(dtype)


def _frames(t: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, t, H, W, generator=g) * 2 - 1


def _latents(t: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 16, t, H // 8, W // 8, generator=g)


@pytest.fixture(scope="module")
def ref():
    return _diffusers_vae()


@pytest.fixture(scope="module")
def sd(ref):
    return diffusers_to_wan(ref.state_dict(), CFG)


# --------------------------------------------------------------------------------- numerics vs diffusers


def test_streaming_decode_matches_diffusers(ref, sd):
    z = _latents(4)
    with torch.no_grad():
        expected = ref.decode(z).sample  # whole clip: [B, 3, 13, H, W]
    vae = _ours(sd)
    out = torch.cat([vae.decode_stream(z[:, :, t : t + 1]) for t in range(4)], dim=2)  # 1 latent per call
    assert out.shape == expected.shape == (B, 3, 13, H, W)
    assert (out.abs() < 1).float().mean() > 0.9  # mostly unclamped: the comparison is meaningful
    assert (out - expected).abs().max() < 1e-4


def test_streaming_encode_matches_diffusers(ref, sd):
    x = _frames(13)
    with torch.no_grad():
        expected = ref.encode(x).latent_dist.mean  # whole clip: [B, 16, 4, H/8, W/8]
    vae = _ours(sd)
    out = torch.cat([vae.encode_stream(x[:, :, a:b]) for a, b in ((0, 5), (5, 9), (9, 13))], dim=2)
    assert out.shape == expected.shape == (B, 16, 4, H // 8, W // 8)
    assert expected.abs().max() > 0.1
    assert (out - expected).abs().max() < 1e-4


def test_whole_clip_equals_any_streaming_split(sd):
    vae, x, z = _ours(sd), _frames(13), _latents(4)
    enc = torch.cat([vae.encode_stream(x[:, :, :9]), vae.encode_stream(x[:, :, 9:])], dim=2)  # 9 + 4 frames
    torch.testing.assert_close(enc, vae.encode(x), atol=1e-6, rtol=0)
    dec = torch.cat([vae.decode_stream(z[:, :, :2]), vae.decode_stream(z[:, :, 2:])], dim=2)  # 2 + 2 latents
    torch.testing.assert_close(dec, vae.decode(z), atol=1e-6, rtol=0)
    assert vae.encode(x[:, :, :5]).shape[2] == 2 and vae.decode(z[:, :, :2]).shape[2] == 5


def test_reset_stream_matches_fresh_model(sd):
    used, fresh = _ours(sd), _ours(sd)
    x, z = _frames(9, seed=5), _latents(3, seed=6)
    used.encode_stream(_frames(5)), used.encode_stream(_frames(4, seed=3))
    used.decode_stream(_latents(2)), used.decode_stream(_latents(1, seed=4))
    used.reset_stream()
    for chunk in (x[:, :, :5], x[:, :, 5:]):
        torch.testing.assert_close(used.encode_stream(chunk), fresh.encode_stream(chunk), atol=0, rtol=0)
    for t in range(3):
        zt = z[:, :, t : t + 1]
        torch.testing.assert_close(used.decode_stream(zt), fresh.decode_stream(zt), atol=0, rtol=0)


def test_independent_caches_share_weights(sd):
    vae, x = _ours(sd), _frames(9)
    a, b = CausalCache(), CausalCache()
    first = vae.encode_stream(x[:, :, :5], a)
    torch.testing.assert_close(vae.encode_stream(x[:, :, :5], b), first, atol=0, rtol=0)
    vae.encode_stream(x[:, :, 5:], a)
    a.reset()
    torch.testing.assert_close(vae.encode_stream(x[:, :, :5], a), first, atol=0, rtol=0)


def test_encode_stream_rejects_bad_chunks(sd):
    vae = _ours(sd)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode_stream(_frames(4))
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode_stream(torch.zeros(1, 3, 5, 30, 32))
    vae.encode_stream(_frames(5))
    with pytest.raises(ValueError, match="4k frames after"):
        vae.encode_stream(_frames(5))


def test_normalize_denormalize(sd):
    vae = _ours(sd)
    z = _latents(2)
    n = vae.normalize(z)
    mean, std = CFG.latents_mean[3], CFG.latents_std[3]
    torch.testing.assert_close(n[:, 3], (z[:, 3] - mean) / std)
    torch.testing.assert_close(vae.denormalize(n), z)
    assert vae.normalize(z.bfloat16()).dtype == torch.bfloat16


def test_bf16_smoke(sd):
    # bf16 has an 8-bit mantissa: ~0.4% per op, a few % after ~40 layers. Tolerance: relative L2 error < 5e-2.
    fp32, bf16 = _ours(sd), _ours(sd, dtype=torch.bfloat16)
    x, z = _frames(5), _latents(2)
    for f in ("encode", "decode"):
        inp = x if f == "encode" else z
        want, got = getattr(fp32, f)(inp), getattr(bf16, f)(inp)
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        rel = (got.float() - want).norm() / want.norm()
        assert rel < 5e-2, f"{f}: relative error {rel:.3g}"


# ------------------------------------------------------------------------------------------- checkpoints


def test_original_key_names_match_diffusers_converter():
    """Our names are the original Wan2.1_VAE.pth keys: diffusers' own converter maps them onto its model."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    cfg = get_vae_preset("wan2.1")
    with torch.device("meta"):
        ours, theirs = WanVAE(cfg).state_dict(), diffusers.AutoencoderKLWan().state_dict()
    converted = convert_wan_vae_to_diffusers(ours)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in theirs.items()}
    assert all(converted[wan_to_diffusers_key(k, cfg)] is v for k, v in ours.items())  # same mapping as ours
    assert "decoder.upsamples.4.shortcut.weight" in ours and "encoder.downsamples.8.time_conv.weight" in ours


@pytest.mark.parametrize("num_res_blocks", [1, 3])
def test_diffusers_mapping_other_depths(num_res_blocks):
    cfg = CFG.replace(num_res_blocks=num_res_blocks)
    with torch.device("meta"):
        theirs = diffusers.AutoencoderKLWan(base_dim=8, num_res_blocks=num_res_blocks).state_dict()
        ours = WanVAE(cfg).state_dict()
    converted = diffusers_to_wan(theirs, cfg)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.items()}


def test_pth_round_trip(tmp_path, sd):
    vae = _ours(sd)
    torch.save(vae.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    for path, cfg in ((tmp_path / "Wan2.1_VAE.pth", CFG), (tmp_path, None)):  # file+config, folder+inferred
        loaded = load_vae(path, dtype=torch.float32, device="cpu", config=cfg)
        assert loaded.cfg.base_dim == 8 and not loaded.training
        for k, v in vae.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    assert load_vae(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_diffusers_folder_loads(tmp_path, ref):
    ref.save_pretrained(tmp_path / "vae")  # config.json + diffusion_pytorch_model.safetensors
    vae = load_vae(tmp_path)
    assert vae.cfg.num_res_blocks == 2 and vae.cfg.latents_std == tuple(ref.config.latents_std)
    z = _latents(2)
    with torch.no_grad():
        expected = ref.decode(z).sample
    assert (vae.decode(z) - expected).abs().max() < 1e-4


# file name -> (how the file stores the reference weights, the dtype to load in). Original names: Wan2.1_VAE.pth,
# ComfyUI's wan_2.1_vae.safetensors (bf16 here), Kijai's Wan2_1_VAE_fp32 (its loader accepts a `model.` prefix);
# diffusers names: the vae/ folder's safetensors as a single file, without its config.json.
LAYOUTS = {
    "Wan2.1_VAE.pth": ("wan", lambda k, v: (k, v), torch.float32),
    "wan_2.1_vae.safetensors": ("wan", lambda k, v: (k, v.bfloat16()), torch.bfloat16),
    "Wan2_1_VAE_fp32.safetensors": ("wan", lambda k, v: (f"model.{k}", v), torch.float32),
    "diffusion_pytorch_model.safetensors": ("diffusers", lambda k, v: (k, v), torch.float32),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_layout_decodes_like_the_reference(tmp_path, ref, sd, name):
    """Shapes decide the size and names the layout: no config, no renaming; output bitwise the reference's."""
    from safetensors.torch import save_file

    layout, store, dtype = LAYOUTS[name]
    weights = sd if layout == "wan" else ref.state_dict()
    stored = dict(store(k, v.contiguous()) for k, v in weights.items())
    (torch.save if name.endswith(".pth") else save_file)(stored, tmp_path / name)
    vae = load_vae(tmp_path / name, dtype=dtype)
    assert (vae.cfg.base_dim, vae.dtype, vae.cfg.name) == (8, dtype, "custom")
    want = _ours(sd, CFG.replace(name="custom"), dtype)
    z = _latents(2).to(dtype)
    assert torch.equal(vae.decode(z), want.decode(z)), name


def test_meta_build_and_assign_load(sd):
    with torch.device("meta"):
        vae = WanVAE(CFG)
    assert not list(vae.buffers())  # nothing for to_empty to lose
    vae.load_state_dict(sd, strict=True, assign=True)
    torch.testing.assert_close(vae.decode(_latents(2)), _ours(sd).decode(_latents(2)), atol=0, rtol=0)
    with torch.device("meta"):
        empty = WanVAE(CFG)
    assert empty.to_empty(device="cpu").conv1.weight.device.type == "cpu"


def _error(path, **kw) -> str:
    with pytest.raises(EngineError) as info:
        load_vae(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_load_errors_are_one_clear_line(tmp_path, sd):
    assert "not found" in _error(tmp_path / "nope.pth")
    assert "no VAE weights in folder" in _error(tmp_path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "cannot read" in _error(tmp_path / "junk.pth")
    torch.save({"blocks.0.weight": torch.zeros(1)}, tmp_path / "dit.pth")
    assert "not a Wan VAE" in _error(tmp_path / "dit.pth")

    broken = dict(sd)
    del broken["decoder.head.2.bias"]
    broken["decoder.head.3.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    msg = _error(tmp_path / "broken.pth", config=CFG)
    assert "missing keys: decoder.head.2.bias" in msg and "unexpected keys: decoder.head.3.weight" in msg

    msg = _error(tmp_path / "broken.pth", config=CFG.replace(num_res_blocks=1))  # wrong config
    assert "unexpected keys" in msg and "total)" in msg  # long lists are cut to a few names + a count

    wan22 = dict(sd, **{"conv2.weight": torch.zeros(48, 48, 1, 1, 1)})
    torch.save(wan22, tmp_path / "wan22.pth")
    assert "Wan2.2" in _error(tmp_path / "wan22.pth")
