"""engine/checkpoint.py: every accepted layout round-trips tensor by tensor, dtypes follow the fp32-island
rule, model sizes are detected from shapes, and every bad input is a one-line EngineError naming it."""

from __future__ import annotations

import json
import math
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sdv2_studio.engine.checkpoint import (
    CheckpointInfo,
    detect_config,
    expected_shapes,
    format_file_info,
    format_info,
    identify,
    inspect_checkpoint,
    load_model,
    save_model,
)
from sdv2_studio.engine.config import PRESETS
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.model import CausalWanModel, keep_fp32

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def source() -> CausalWanModel:
    """A tiny model with every parameter random, so that a swapped or dropped tensor cannot go unnoticed."""
    torch.manual_seed(0)
    model = CausalWanModel(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def sd(source) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in source.state_dict().items()}


def assert_same_weights(model: CausalWanModel, want: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == torch.float32, k
        assert torch.equal(got[k], v), k


def assert_same_outputs(model: CausalWanModel, source: CausalWanModel) -> None:
    """The loaded model runs (RoPE tables are real tensors, not meta) and matches the source exactly."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, TINY.in_dim, 2, 4, 4, generator=gen)
    ctx = torch.randn(1, 7, TINY.text_dim, generator=gen)
    t = torch.tensor([700.0])
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), source(x, t, ctx))


def write_shards(sd: dict[str, torch.Tensor], folder: Path, stem: str = "diffusion_pytorch_model",
                 parts: int = 3) -> Path:
    """Sharded safetensors, Hugging Face convention: stem-0000i-of-0000n.safetensors + stem.index.json."""
    keys = list(sd)
    weight_map = {}
    for i in range(parts):
        name = f"{stem}-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = keys[i::parts]
        save_file({k: sd[k].contiguous() for k in chunk}, folder / name)
        weight_map.update({k: name for k in chunk})
    index = folder / f"{stem}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


# ----------------------------------------------------------------------------------------------------------
# Original Wan layout


def test_save_and_load_safetensors(tmp_path, source, sd):
    path = save_model(source, tmp_path / "tiny.safetensors")
    model, info = load_model(path, dtype=torch.float32)
    assert_same_weights(model, sd)
    assert_same_outputs(model, source)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert isinstance(info, CheckpointInfo)
    assert (info.layout, info.preset, info.config, info.entry) == ("wan", "tiny", TINY, None)
    assert info.num_tensors == len(sd) == 27 * TINY.num_layers + 15
    assert info.num_params == source.num_params()
    assert info.dtypes == ("float32",)


def test_plain_safetensors_detects_preset_from_shapes(tmp_path, sd):
    save_file(sd, tmp_path / "w.safetensors")  # no metadata at all
    model, info = load_model(tmp_path / "w.safetensors", dtype=torch.float32)
    assert info.preset == "tiny" and info.config == TINY
    assert_same_weights(model, sd)


def test_custom_config_survives_save_model(tmp_path):
    """Heads and text_len are not in the shapes: save_model records them in the safetensors header."""
    cfg = TINY.replace(name="custom", num_heads=2, text_len=20)
    path = save_model(CausalWanModel(cfg), tmp_path / "c.safetensors")
    assert inspect_checkpoint(path).config == cfg


@pytest.mark.parametrize("target", ["folder", "index", "shard"])
def test_sharded_safetensors(tmp_path, source, sd, target):
    index = write_shards(sd, tmp_path)
    path = {"folder": tmp_path, "index": index,
            "shard": tmp_path / "diffusion_pytorch_model-00002-of-00003.safetensors"}[target]
    model, info = load_model(path, dtype=torch.float32)
    assert_same_weights(model, sd)
    assert (info.layout, info.preset, len(info.files), info.path) == ("wan", "tiny", 3, index)
    assert "(3 shards)" in format_info(info)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_pth(tmp_path, sd, zipped):
    path = tmp_path / "weights.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zipped)
    model, info = load_model(path, dtype=torch.float32)
    assert_same_weights(model, sd)
    assert (info.layout, info.entry) == ("wan", None)


# ----------------------------------------------------------------------------------------------------------
# diffusers layout


def diffusers_names(num_layers: int) -> dict[str, str]:
    """Our name -> diffusers WanTransformer3DModel name, written out as a table (not the loader's code)."""
    top = {
        "patch_embedding.weight": "patch_embedding.weight", "patch_embedding.bias": "patch_embedding.bias",
        "text_embedding.0": "condition_embedder.text_embedder.linear_1",
        "text_embedding.2": "condition_embedder.text_embedder.linear_2",
        "time_embedding.0": "condition_embedder.time_embedder.linear_1",
        "time_embedding.2": "condition_embedder.time_embedder.linear_2",
        "time_projection.1": "condition_embedder.time_proj",
        "head.head": "proj_out",
    }
    block = {"self_attn.o": "attn1.to_out.0", "cross_attn.o": "attn2.to_out.0", "norm3": "norm2",
             "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}
    for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2")):
        block.update({f"{ours}.{p}": f"{theirs}.to_{p}" for p in "qkv"})
    names = {"head.modulation": "scale_shift_table"}
    for a, b in top.items():
        names.update({a: b} if a.endswith(("weight", "bias")) else {f"{a}.weight": f"{b}.weight",
                                                                    f"{a}.bias": f"{b}.bias"})
    for n in range(num_layers):
        names[f"blocks.{n}.modulation"] = f"blocks.{n}.scale_shift_table"
        for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2")):
            for norm in ("norm_q", "norm_k"):
                names[f"blocks.{n}.{ours}.{norm}.weight"] = f"blocks.{n}.{theirs}.{norm}.weight"
        for a, b in block.items():
            names[f"blocks.{n}.{a}.weight"] = f"blocks.{n}.{b}.weight"
            names[f"blocks.{n}.{a}.bias"] = f"blocks.{n}.{b}.bias"
    return names


@pytest.fixture(scope="module")
def diffusers_model():
    diffusers = pytest.importorskip("diffusers")
    model = diffusers.WanTransformer3DModel(
        num_attention_heads=TINY.num_heads, attention_head_dim=TINY.head_dim, in_channels=TINY.in_dim,
        out_channels=TINY.out_dim, text_dim=TINY.text_dim, freq_dim=TINY.freq_dim, ffn_dim=TINY.ffn_dim,
        num_layers=TINY.num_layers)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("kind", ["folder", "sharded", "pipeline"])
def test_diffusers_folder(tmp_path, diffusers_model, kind):
    folder = tmp_path / "transformer" if kind == "pipeline" else tmp_path / "model"
    diffusers_model.save_pretrained(folder, max_shard_size="150KB" if kind == "sharded" else "10GB")
    if kind == "sharded":
        assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) > 1
    model, info = load_model(tmp_path if kind == "pipeline" else folder, dtype=torch.float32)
    theirs = diffusers_model.state_dict()
    names = diffusers_names(TINY.num_layers)
    assert set(names.values()) == set(theirs)  # the table covers every diffusers tensor
    assert_same_weights(model, {k: theirs[names[k]] for k in model.state_dict()})
    assert (info.layout, info.preset) == ("diffusers", "tiny")
    assert (len(info.files) > 1) == (kind == "sharded")


# ----------------------------------------------------------------------------------------------------------
# StreamDiffusionV2 / Self-Forcing / CausVid model.pt


def prefixed(sd: dict[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v * scale for k, v in sd.items()}


@pytest.mark.parametrize("entry", ["generator", "generator_ema", "state_dict", None])
def test_causal_model_pt(tmp_path, source, sd, entry):
    torch.save(prefixed(sd) if entry is None else {entry: prefixed(sd), "step": 1000}, tmp_path / "model.pt")
    model, info = load_model(tmp_path / "model.pt", dtype=torch.float32)
    assert_same_weights(model, sd)
    assert_same_outputs(model, source)
    assert (info.layout, info.entry, info.preset) == ("causal-wan", entry, "tiny")
    if entry is not None:
        assert f"entry '{entry}'" in format_info(info)


def test_causal_entry_order_follows_upstream(tmp_path, sd):
    """generator before generator_ema before state_dict, as upstream's load_generator_state_dict."""
    everything = {"state_dict": prefixed(sd, 3.0), "generator_ema": prefixed(sd, 2.0),
                  "generator": prefixed(sd)}
    torch.save(everything, tmp_path / "model.pt")
    model, info = load_model(tmp_path, dtype=torch.float32)  # a folder holding model.pt
    assert info.entry == "generator"
    assert_same_weights(model, sd)
    assert any("generator_ema" in n for n in info.notes)
    torch.save({"state_dict": prefixed(sd, 3.0), "generator_ema": prefixed(sd, 2.0)}, tmp_path / "model.pt")
    model, info = load_model(tmp_path, dtype=torch.float32)
    assert info.entry == "generator_ema"
    assert_same_weights(model, {k: v * 2.0 for k, v in sd.items()})


def test_training_wrappers_are_stripped(tmp_path, sd):
    torch.save({"generator": {f"model._orig_mod.{k}": v for k, v in sd.items()}}, tmp_path / "model.pt")
    model, _ = load_model(tmp_path, dtype=torch.float32)
    assert_same_weights(model, sd)


def test_comfyui_prefix_and_fp8_file(tmp_path, sd):
    """Single-file releases for ComfyUI prefix keys with `model.diffusion_model.` and may hold fp8 weights."""
    fp8 = {f"model.diffusion_model.{k}": v.to(torch.float8_e4m3fn) for k, v in sd.items()}
    path = tmp_path / "wan2.1_t2v_fp8_e4m3fn.safetensors"
    save_file(fp8, path)
    model, info = load_model(path, dtype=torch.bfloat16)
    assert (info.layout, info.preset, info.dtypes) == ("wan", "tiny", ("float8_e4m3fn",))
    want = sd["blocks.0.ffn.0.weight"].to(torch.float8_e4m3fn).bfloat16()
    assert torch.equal(model.blocks[0].ffn[0].weight, want)


FP8_MAX = 448.0  # largest float8_e4m3fn


def comfy_fp8_scaled(sd: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """ComfyUI's *_fp8_scaled layout (comfy/ops.py, model_detection.py): every linear weight stored as
    fp8(w / s) with its scale s = amax / 448 in `scale_weight` (and an fp8-matmul `scale_input`), everything else in
    bf16, and a `scaled_fp8` marker whose dtype names the format. Returns (file tensors, {weight: s})."""
    out = {f"{prefix}scaled_fp8": torch.empty(2, dtype=torch.float8_e4m3fn)}
    scales = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() == 2:
            s = float(v.abs().max()) / FP8_MAX
            out[prefix + k] = (v / s).to(torch.float8_e4m3fn)
            out[prefix + k.removesuffix("weight") + "scale_weight"] = torch.tensor(s)
            out[prefix + k.removesuffix("weight") + "scale_input"] = torch.tensor(1.0)
            scales[k] = s
        else:
            out[prefix + k] = v.bfloat16()
    return out, scales


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["diffusion_models", "checkpoint"])
def test_comfy_fp8_scaled(tmp_path, source, sd, prefix):
    """Dequantised per tensor into bf16 at load. Each weight within the e4m3 bound (2^-4 of its magnitude, or
    2^-10 * scale below the smallest normal) plus bf16 rounding; the output within 2^-4 (relative L2) of the bf16
    reference run."""
    tensors, scales = comfy_fp8_scaled(sd, prefix)
    path = tmp_path / "wan2.1_t2v_1.3B_fp8_scaled.safetensors"
    save_file(tensors, path)
    model, info = load_model(path, dtype=torch.bfloat16)
    assert (info.layout, info.preset, info.num_tensors) == ("wan", "tiny", len(sd))  # scales are not tensors
    assert info.dtypes == ("bfloat16", "float8_e4m3fn") and any("scaled fp8" in n for n in info.notes)
    got = model.state_dict()
    for k, v in sd.items():
        if k in scales:
            bound = torch.maximum(v.abs() * 2 ** -4, torch.tensor(2 ** -10 * scales[k])) * (1 + 2 ** -8)
            err = (got[k].float() - v).abs()
            assert (err <= bound + v.abs() * 2 ** -8).all() and err.max() > 0, k  # + bf16 roundoff
        else:  # stored in bf16: exactly the bf16 value
            assert torch.equal(got[k].float(), v.bfloat16().float()), k
    ref, _ = load_model(save_model(source, tmp_path / "ref.safetensors"), dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(1, TINY.in_dim, 2, 4, 4, generator=gen), torch.randn(1, 7, TINY.text_dim, generator=gen)
    with torch.no_grad():
        a, b = model(x, torch.tensor([700.0]), ctx).float(), ref(x, torch.tensor([700.0]), ctx).float()
    assert 0 < (a - b).norm() / b.norm() < 2 ** -4


def test_comfy_bf16_file_bitwise(tmp_path, source, sd):
    """ComfyUI's repackaged bf16 DiT (bare Wan names): the same model as the reference cast to bf16, bit for bit."""
    save_file({k: v.bfloat16() for k, v in sd.items()}, tmp_path / "wan2.1_t2v_1.3B_bf16.safetensors")
    model, info = load_model(tmp_path / "wan2.1_t2v_1.3B_bf16.safetensors", dtype=torch.bfloat16)
    ref, _ = load_model(save_model(source, tmp_path / "ref.safetensors"), dtype=torch.bfloat16)
    for name, p in ref.state_dict().items():  # fp32 islands hold the bf16-rounded values, as the file does
        assert torch.equal(model.state_dict()[name], p.bfloat16().to(p.dtype)), name
    x, ctx = torch.randn(1, TINY.in_dim, 1, 4, 4), torch.randn(1, 5, TINY.text_dim)
    with torch.no_grad():
        islands_rounded = {k: v.bfloat16().to(v.dtype) for k, v in ref.state_dict().items()}
        ref.load_state_dict(islands_rounded)
        assert torch.equal(model(x, torch.tensor([500.0]), ctx), ref(x, torch.tensor([500.0]), ctx))


# ----------------------------------------------------------------------------------------------------------
# dtype and device


def test_bf16_keeps_fp32_islands(tmp_path, source, sd):
    path = save_model(source, tmp_path / "w.safetensors")
    model, _ = load_model(path, dtype=torch.bfloat16, device="cpu")
    islands = 0
    for name, p in model.named_parameters():
        want = torch.float32 if keep_fp32(name) else torch.bfloat16
        islands += want == torch.float32
        assert (p.dtype, p.device.type) == (want, "cpu"), name
        assert torch.equal(p, sd[name].to(want)), name
    # time_embedding (4) + time_projection (2); per block modulation, 4 qk norms, norm3 (2); head.modulation
    assert islands == 6 + 7 * TINY.num_layers + 1
    with torch.no_grad():
        out = model(torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, TINY.text_dim))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bf16_file_loaded_as_fp32(tmp_path, sd):
    torch.save({"generator": prefixed({k: v.bfloat16() for k, v in sd.items()})}, tmp_path / "model.pt")
    model, info = load_model(tmp_path / "model.pt", dtype="float32")
    assert info.dtypes == ("bfloat16",)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.head.head.weight, sd["head.head.weight"].bfloat16().float())


# ----------------------------------------------------------------------------------------------------------
# Model size from shapes


def meta_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = CausalWanModel(PRESETS[name])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(PRESETS))
def test_detect_presets(name):
    assert detect_config(meta_shapes(name)) == PRESETS[name]
    assert detect_config(meta_shapes(name), preset=name) == PRESETS[name]


def test_detect_custom_and_hints():
    shapes = expected_shapes(TINY.replace(dim=256, num_heads=2, num_layers=3, ffn_dim=512))
    cfg = detect_config(shapes)
    assert (cfg.name, cfg.dim, cfg.num_heads, cfg.num_layers, cfg.ffn_dim, cfg.text_len) == \
        ("custom", 256, 2, 3, 512, 512)  # heads = dim / 128 as in every released Wan model
    assert detect_config(shapes, hints={"num_heads": 4, "text_len": 77}).num_heads == 4
    # hints that disagree with a preset give a custom config with the preset's shapes
    tiny = detect_config(expected_shapes(TINY), hints={"num_heads": 2})
    assert (tiny.name, tiny.num_heads, tiny.dim) == ("custom", 2, TINY.dim)
    # a dim no preset has and not a multiple of 128: the fix is config.json or a preset
    with pytest.raises(EngineError, match="config.json"):
        detect_config(expected_shapes(TINY.replace(dim=96, num_heads=3)))


def test_detect_rejects_wrong_preset():
    with pytest.raises(EngineError) as e:
        detect_config(meta_shapes("wan2.1-14b"), preset="wan2.1-1.3b")
    msg = str(e.value)
    assert "wan2.1-1.3b" in msg and "patch_embedding.weight" in msg and "(5120, 16, 1, 2, 2)" in msg
    assert "wan2.1-14b" in msg  # says what the file looks like
    more_layers = meta_shapes("tiny") | expected_shapes(TINY.replace(num_layers=TINY.num_layers + 1))
    with pytest.raises(EngineError, match=f"num_layers {TINY.num_layers + 1}"):
        detect_config(more_layers, preset="tiny")


@pytest.mark.parametrize("style", ["wan", "diffusers"])
def test_config_json_sets_heads(tmp_path, style):
    cfg = TINY.replace(name="custom", dim=192, num_heads=3)  # 192 is neither a preset width nor 128 * n
    sd = {k: torch.zeros(s) for k, s in expected_shapes(cfg).items()}
    save_file(sd, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(EngineError, match="config.json"):
        inspect_checkpoint(tmp_path)
    conf = {"dim": 192, "num_heads": 3, "text_len": 32} if style == "wan" else \
        {"num_attention_heads": 3, "attention_head_dim": 64}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    info = inspect_checkpoint(tmp_path)
    assert (info.config.num_heads, info.config.dim, info.preset) == (3, 192, "custom")


def test_config_json_of_another_model_is_ignored(tmp_path, sd):
    save_file(sd, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"dim": 1536, "num_heads": 12}))
    info = inspect_checkpoint(tmp_path)
    assert info.config == TINY and any("config.json" in n for n in info.notes)


def write_header_only(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "BF16") -> None:
    """A valid safetensors file whose data section is a sparse hole: real 1.3B shapes, no disk space."""
    header, offset = {}, 0
    for k, s in shapes.items():
        n = math.prod(s) * 2
        header[k] = {"dtype": dtype, "shape": list(s), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)


def test_inspect_real_size_headers(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    write_header_only(path, meta_shapes("wan2.1-1.3b"))
    info = inspect_checkpoint(tmp_path)
    assert (info.preset, info.layout, info.num_tensors, info.num_params, info.dtypes) == \
        ("wan2.1-1.3b", "wan", 825, 1_418_996_800, ("bfloat16",))
    text = format_info(info)
    expected = ("wan2.1-1.3b", "1,418,996,800", "825 tensors", "bfloat16", "12 heads x 128", "layout:  wan")
    for words in expected:
        assert words in text, text


# ----------------------------------------------------------------------------------------------------------
# identify / sdv2 inspect: every kind of model file


def _model_files(tmp: Path, source: CausalWanModel) -> dict[str, Path]:
    """One small file of each kind, in the layouts users have."""
    from sdv2_studio.engine.taehv import TAEHVDecoder
    from sdv2_studio.engine.text import tiny_text_encoder
    from sdv2_studio.engine.vae import VAEConfig, WanVAE, wan_to_diffusers_key

    files = {"dit": save_model(source, tmp / "dit.safetensors")}
    vae_cfg = VAEConfig(base_dim=8)
    vae = {k: v.bfloat16() for k, v in WanVAE(vae_cfg).state_dict().items()}
    save_file(vae, tmp / "wan_2.1_vae.safetensors")
    save_file({wan_to_diffusers_key(k, vae_cfg): v for k, v in vae.items()}, tmp / "vae_diffusers.safetensors")
    files |= {"vae-wan": tmp / "wan_2.1_vae.safetensors", "vae-diffusers": tmp / "vae_diffusers.safetensors"}
    te = {k: v for k, v in tiny_text_encoder(text_dim=32, text_len=8).model.state_dict().items()
          if k != "encoder.embed_tokens.weight"}
    scaled = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn),
              "spiece_model": torch.zeros(9, dtype=torch.uint8)}
    for k, v in te.items():
        scaled |= {k: v.to(torch.float8_e4m3fn), k.removesuffix("weight") + "scale_weight": torch.tensor(1.0)} \
            if "DenseReluDense" in k else {k: v.half()}
    save_file(scaled, tmp / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    wan_te = {"token_embedding.weight": (258, 32), "norm.weight": (32,), "blocks.0.norm1.weight": (32,),
              **{f"blocks.0.attn.{p}.weight": (32, 32) for p in "qkvo"}, "blocks.0.norm2.weight": (32,),
              "blocks.0.pos_embedding.embedding.weight": (32, 2), "blocks.0.ffn.gate.0.weight": (64, 32),
              "blocks.0.ffn.fc1.weight": (64, 32), "blocks.0.ffn.fc2.weight": (32, 64)}  # Wan's T5Encoder names
    torch.save({k: torch.zeros(s, dtype=torch.bfloat16) for k, s in wan_te.items()},
               tmp / "models_t5_umt5-xxl-enc-bf16.pth")
    files |= {"te-comfy": tmp / "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
              "te-wan": tmp / "models_t5_umt5-xxl-enc-bf16.pth"}
    lora = {}
    for m in ("blocks.0.self_attn.q", "blocks.1.ffn.0"):
        w = source.state_dict()[f"{m}.weight"]
        lora |= {f"diffusion_model.{m}.lora_down.weight": torch.zeros(4, w.shape[1]),
                 f"diffusion_model.{m}.lora_up.weight": torch.zeros(w.shape[0], 4),
                 f"diffusion_model.{m}.alpha": torch.tensor(4.0)}
    save_file(lora, tmp / "style_lora.safetensors")
    torch.save(TAEHVDecoder().state_dict(), tmp / "taew2_1.pth")
    return files | {"lora": tmp / "style_lora.safetensors", "taehv": tmp / "taew2_1.pth"}


IDENTIFIED = {  # file -> (kind, layout, words in the summary)
    "dit": ("dit", "wan", "text-to-video DiT, tiny"),
    "vae-wan": ("vae", "wan", "Wan2.1 video VAE (base_dim 8, z_dim 16)"),
    "vae-diffusers": ("vae", "diffusers", "Wan2.1 video VAE (base_dim 8, z_dim 16)"),
    "te-comfy": ("text-encoder", "transformers", "umT5 text encoder (d_model 32, 2 layers, 2 heads, vocab 258, "
                                                 "tokenizer embedded)"),
    "te-wan": ("text-encoder", "wan", "umT5 text encoder (d_model 32, 1 layer, 2 heads, vocab 258)"),
    "lora": ("lora", "comfy", f"LoRA for a dim-{TINY.dim} DiT (tiny): 2 layers at rank 4"),
    "taehv": ("taehv", "taehv", "TAEHV tiny video autoencoder for Wan2.1 (taew2_1), decoder only"),
}


def test_identify_every_kind(tmp_path, source):
    files = _model_files(tmp_path, source)
    for name, (kind, layout, words) in IDENTIFIED.items():
        info = identify(files[name])
        assert (info.kind, info.layout) == (kind, layout), name
        assert words in info.summary, (name, info.summary)
        text = format_file_info(info)
        assert f"kind:    {dict(dit='DiT', vae='VAE', lora='LoRA', taehv='TAEHV').get(kind, 'text encoder')}" in text
        assert f"{info.num_params:,} in {info.num_tensors} tensors" in text, text
    dit = identify(files["dit"])
    assert dit.checkpoint.config == TINY and dit.num_params == source.num_params()
    assert "layout:  wan" in format_file_info(dit) and "preset:  tiny" in format_file_info(dit)
    comfy = identify(files["te-comfy"])
    assert "float8_e4m3fn" in comfy.dtypes and any("scaled fp8" in n for n in comfy.notes)
    assert identify(tmp_path / "taew2_1.pth").num_params == sum(p.numel() for p in
                                                                 torch.load(files["taehv"]).values())


def test_identify_rejects_other_files(tmp_path, sd):
    save_file({"foo.weight": torch.zeros(3)}, tmp_path / "w.safetensors")
    with pytest.raises(EngineError, match="not a model file this app reads .* foo.weight"):
        identify(tmp_path / "w.safetensors")
    save_file(sd | {"img_emb.proj.0.weight": torch.zeros(2)}, tmp_path / "i2v.safetensors")
    with pytest.raises(EngineError, match="image-to-video"):
        identify(tmp_path / "i2v.safetensors")


# ----------------------------------------------------------------------------------------------------------
# Bad input: one readable line naming the problem


class Unpicklable:  # any non-tensor object makes weights_only loading refuse the file
    pass


def _corrupt(sd, tmp, kind):
    if kind == "missing-file":
        return tmp / "nope.safetensors"
    if kind == "missing-folder":
        return tmp / "nope"
    if kind == "empty-folder":
        (tmp / "empty").mkdir()
        return tmp / "empty"
    if kind in ("onnx", "gguf"):
        (tmp / f"w.{kind}").write_bytes(b"xx")
        return tmp / f"w.{kind}"
    if kind == "random-tensors":
        save_file({"foo.weight": torch.zeros(3), "bar": torch.zeros(2, 2)}, tmp / "w.safetensors")
        return tmp / "w.safetensors"
    if kind == "vae":
        torch.save({"encoder.conv1.weight": torch.zeros(1), "decoder.conv1.weight": torch.zeros(1),
                    "conv1.weight": torch.zeros(1)}, tmp / "Wan2.1_VAE.pth")
        return tmp / "Wan2.1_VAE.pth"
    if kind == "t5":
        torch.save({"token_embedding.weight": torch.zeros(1), "blocks.0.attn.q.weight": torch.zeros(1)},
                   tmp / "models_t5_umt5-xxl-enc-bf16.pth")
        return tmp / "models_t5_umt5-xxl-enc-bf16.pth"
    if kind == "lora":
        save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 2)}, tmp / "lora.safetensors")
        return tmp / "lora.safetensors"
    if kind == "i2v":
        save_file(sd | {"img_emb.proj.0.weight": torch.zeros(2)}, tmp / "i2v.safetensors")
        return tmp / "i2v.safetensors"
    if kind == "missing-unexpected":
        bad = {k: v for k, v in sd.items() if k not in ("head.modulation", "blocks.1.ffn.2.bias")}
        save_file(bad | {"blocks.0.extra.weight": torch.zeros(2)}, tmp / "w.safetensors")
        return tmp / "w.safetensors"
    if kind == "shape":
        save_file(sd | {"blocks.1.cross_attn.k.weight": torch.zeros(128, 64)}, tmp / "w.safetensors")
        return tmp / "w.safetensors"
    if kind in ("truncated-safetensors", "truncated-pt"):
        path = tmp / ("w.safetensors" if kind == "truncated-safetensors" else "model.pt")
        save_file(sd, path) if path.suffix == ".safetensors" else torch.save({"generator": sd}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        return path
    if kind == "junk-pt":
        (tmp / "model.pt").write_bytes(b"\x80\x02this is not a pickle" * 20)
        return tmp / "model.pt"
    if kind == "empty-pt":
        (tmp / "model.pt").write_bytes(b"")
        return tmp / "model.pt"
    if kind == "objects":
        torch.save({"generator": sd, "config": Unpicklable()}, tmp / "model.pt")
        return tmp / "model.pt"
    if kind == "list":
        torch.save([sd], tmp / "model.pt")
        return tmp / "model.pt"
    if kind == "no-tensors":
        torch.save({"step": 5, "config": {"lr": 0.1}}, tmp / "model.pt")
        return tmp / "model.pt"
    if kind == "missing-shard":
        write_shards(sd, tmp)
        (tmp / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
        return tmp
    if kind == "bad-index":
        (tmp / "w.safetensors.index.json").write_text("{not json")
        return tmp / "w.safetensors.index.json"
    raise AssertionError(kind)


BAD = {
    "missing-file": ["not found", "nope.safetensors"],
    "missing-folder": ["not found"],
    "empty-folder": ["no DiT weights", "model.pt"],
    "onnx": ["unsupported file type '.onnx'"],
    "gguf": ["GGUF"],
    "random-tensors": ["not a Wan2.1 DiT", "foo.weight"],
    "vae": ["not a Wan2.1 DiT", "VAE"],
    "t5": ["not a Wan2.1 DiT", "text encoder"],
    "lora": ["LoRA"],
    "i2v": ["image-to-video"],
    "missing-unexpected": ["2 missing tensors", "head.modulation", "blocks.1.ffn.2.bias",
                           "1 unexpected tensor (", "blocks.0.extra.weight"],
    "shape": ["blocks.1.cross_attn.k.weight", "(128, 64)", "(128, 128)"],
    "truncated-safetensors": ["truncated", "download it again"],
    "truncated-pt": ["truncated", "download it again"],
    "junk-pt": ["download it again"],
    "empty-pt": ["empty"],
    "objects": ["Python objects"],
    "list": ["not a state dict"],
    "no-tensors": ["no tensors", "step"],
    "missing-shard": ["1 of 3 shards", "00002-of-00003", "missing"],
    "bad-index": ["not a valid safetensors index"],
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input(tmp_path, sd, kind):
    path = _corrupt(sd, tmp_path, kind)
    for fn in (load_model, inspect_checkpoint):
        with pytest.raises(EngineError) as e:
            fn(path)
        msg = str(e.value)
        assert "\n" not in msg and msg.strip() == msg and len(msg) < 400, msg
        for words in BAD[kind]:
            assert words in msg, (words, msg)
        assert e.value.__cause__ is None or not isinstance(e.value.__cause__, pickle.UnpicklingError)


def test_bad_arguments(tmp_path, source):
    path = save_model(source, tmp_path / "w.safetensors")
    with pytest.raises(EngineError, match="cannot load the model in"):
        load_model(path, dtype=torch.int8)
    with pytest.raises(EngineError, match="unknown dtype"):
        load_model(path, dtype="float8")
    with pytest.raises(EngineError, match="unknown model preset"):
        load_model(path, preset="wan2.2-5b")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            load_model(path, device="cuda")
