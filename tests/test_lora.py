"""engine/lora.py: every LoRA key style gives the reference weights with the LoRA merged by an independent
computation (float64, here, with module names from a table written out in this file); several LoRAs with
strengths; exact switching and removal without the base weights; one-line errors for LoRAs that do not fit."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import wait_for
from safetensors.torch import save_file
from sdv2_studio.engine import cli
from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.checkpoint import identify, load_model
from sdv2_studio.engine.config import PRESETS, Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.lora import LoRAMerger, check_lora, load_loras, parse_lora_spec, read_lora
from sdv2_studio.engine.model import CausalWanModel
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.presets import read_preset

TINY = PRESETS["tiny"]
RANK = 4
# Our module -> its diffusers WanTransformer3DModel name (a table, not the loader's code). time_projection.1 is an
# fp32 island; head.head and the embeddings sit outside the blocks.
DIFFUSERS = {"blocks.0.self_attn.q": "blocks.0.attn1.to_q", "blocks.0.cross_attn.o": "blocks.0.attn2.to_out.0",
             "blocks.1.ffn.0": "blocks.1.ffn.net.0.proj", "blocks.1.ffn.2": "blocks.1.ffn.net.2",
             "text_embedding.0": "condition_embedder.text_embedder.linear_1", "head.head": "proj_out",
             "time_projection.1": "condition_embedder.time_proj"}


@pytest.fixture(scope="module")
def base() -> dict[str, torch.Tensor]:
    """Reference weights of a tiny DiT, every tensor random."""
    torch.manual_seed(0)
    model = CausalWanModel(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def fresh(base, dtype=torch.float32) -> CausalWanModel:
    with torch.device("meta"):
        model = CausalWanModel(TINY)
    model.load_state_dict({k: v.clone() for k, v in base.items()}, assign=True)
    from sdv2_studio.engine.model import cast_model

    return cast_model(model, dtype).eval().requires_grad_(False)


def random_pairs(base, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for m in DIFFUSERS:
        out, inp = base[f"{m}.weight"].shape
        pairs[m] = (torch.randn(RANK, inp, generator=g) / inp ** 0.5, 0.1 * torch.randn(out, RANK, generator=g))
    return pairs


def write(path: Path, style: str, pairs, alpha: float | None, extras: dict | None = None) -> Path:
    """A LoRA file in one key style. alpha None: no alpha (PEFT without metadata: scale 1)."""
    t, meta = {}, {"format": "pt"}
    for m, (down, up) in pairs.items():
        if style == "comfy":
            key, d, u = f"diffusion_model.{m}", "lora_down.weight", "lora_up.weight"
        elif style == "musubi":
            key, d, u = "lora_unet_" + m.replace(".", "_"), "lora_down.weight", "lora_up.weight"
        elif style == "peft-diffusers":
            key, d, u = f"transformer.{DIFFUSERS[m]}", "lora_A.weight", "lora_B.weight"
        else:  # peft with Wan names
            key, d, u = f"diffusion_model.{m}", "lora_A.weight", "lora_B.weight"
        t[f"{key}.{d}"], t[f"{key}.{u}"] = down.clone(), up.clone()
        if alpha is not None and style in ("comfy", "musubi"):
            t[f"{key}.alpha"] = torch.tensor(alpha)
    if alpha is not None and style.startswith("peft"):
        meta["lora_adapter_metadata"] = json.dumps({"transformer.r": RANK, "transformer.lora_alpha": alpha})
    save_file(t | (extras or {}), path, metadata=meta)
    return path


def merged64(base, loras) -> dict[str, torch.Tensor]:
    """The reference: base + sum of strength * scale * up @ down (+ strength * diffs), in float64, cast to fp32."""
    out = {k: v.double() for k, v in base.items()}
    for pairs, scale, strength, diffs in loras:
        for m, (down, up) in pairs.items():
            out[f"{m}.weight"] += strength * scale * (up.double() @ down.double())
        for k, d in diffs.items():
            out[k] += strength * d.double()
    return {k: v.float() for k, v in out.items()}


def assert_weights(model, want, exact=False):
    got = model.state_dict()
    for k, v in want.items():
        if exact:
            assert torch.equal(got[k], v), k
        else:
            torch.testing.assert_close(got[k], v, rtol=2e-6, atol=1e-7, msg=k)


def output(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(1, TINY.in_dim, 2, 4, 4, generator=gen), torch.randn(1, 7, TINY.text_dim, generator=gen)
    with torch.no_grad():
        return model(x, torch.tensor([700.0]), ctx)


STYLES = {"comfy": 8.0, "musubi": 2.0, "peft-diffusers": 16.0, "peft-wan": None}  # style -> alpha


@pytest.mark.parametrize("style", list(STYLES))
def test_each_style_equals_the_reference_merge(tmp_path, base, style):
    pairs = random_pairs(base, seed=1)
    alpha = STYLES[style]
    diffs = {}
    extras = {}
    if style == "comfy":  # Kijai-style direct deltas: a norm weight and a bias
        diffs = {"blocks.0.norm3.weight": 0.01 * torch.randn(TINY.dim),
                 "blocks.1.ffn.2.bias": 0.01 * torch.randn(TINY.dim)}
        extras = {"diffusion_model.blocks.0.norm3.diff": diffs["blocks.0.norm3.weight"],
                  "diffusion_model.blocks.1.ffn.2.diff_b": diffs["blocks.1.ffn.2.bias"]}
    path = write(tmp_path / f"{style}.safetensors", style, pairs, alpha, extras)
    (lora, strength), = load_loras([f"{path}:0.7"], TINY)
    assert (lora.style, lora.rank, strength) == (style.split("-")[0], RANK, 0.7)
    model = fresh(base)
    LoRAMerger(model).set([(lora, strength)])
    want = merged64(base, [(pairs, (alpha or RANK) / RANK, 0.7, diffs)])
    assert_weights(model, want)
    reference = fresh(want)
    torch.testing.assert_close(output(model), output(reference), rtol=1e-5, atol=1e-6)
    assert identify(path).layout == lora.style


def test_several_loras_switch_and_clear_exactly(tmp_path, base):
    a = write(tmp_path / "a.safetensors", "comfy", random_pairs(base, 1), 4.0)
    b = write(tmp_path / "b.safetensors", "peft-diffusers", dict(list(random_pairs(base, 2).items())[:3]), 8.0)
    (la, _), (lb, _) = load_loras([a, (b, -0.5)], TINY)
    model = fresh(base)
    merger = LoRAMerger(model)
    stats = merger.set([(la, 1.0), (lb, -0.5)])
    want = merged64(base, [(random_pairs(base, 1), 1.0, 1.0, {}),
                           (dict(list(random_pairs(base, 2).items())[:3]), 2.0, -0.5, {})])
    assert_weights(model, want)
    touched = {f"{m}.weight" for m in DIFFUSERS}
    assert (stats.merged, stats.restored) == (len(touched), 0)
    assert stats.backup_bytes == sum(base[k].numel() * 4 for k in touched)
    assert stats.flops == 2 * RANK * sum(base[k].numel() for k in touched) + \
        2 * RANK * sum(base[f"{m}.weight"].numel() for m in list(DIFFUSERS)[:3])

    # switch to b alone: the weights only a touched are restored, bit for bit the same as a fresh merge of b
    stats = merger.set([(lb, 1.0)])
    alone = fresh(base)
    LoRAMerger(alone).set([(lb, 1.0)])
    assert_weights(model, alone.state_dict(), exact=True)
    assert (stats.merged, stats.restored) == (3, len(touched) - 3)
    # and off: the base weights, bit for bit, and no backup left
    stats = merger.clear()
    assert_weights(model, base, exact=True)
    assert (stats.merged, stats.restored, stats.backup_bytes, merger.active) == (0, 3, 0, [])
    # strength 0 changes nothing
    assert merger.set([(la, 0.0)]).merged == 0
    assert_weights(model, base, exact=True)


def test_bf16_model_with_fp32_islands(tmp_path, base):
    """Merged in float32 from the base value, then rounded once to the parameter's dtype; islands stay fp32."""
    pairs = random_pairs(base, 1)
    (lora, _), = load_loras([write(tmp_path / "a.safetensors", "comfy", pairs, 4.0)], TINY)
    model = fresh(base, torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = {k: id(p) for k, p in model.named_parameters()}
    merger = LoRAMerger(model)
    merger.set([(lora, 1.0)])
    want = merged64({k: v.float() for k, v in before.items()}, [(pairs, 1.0, 1.0, {})])
    got = model.state_dict()
    for m in DIFFUSERS:
        k = f"{m}.weight"
        island = m == "time_projection.1"
        assert got[k].dtype == (torch.float32 if island else torch.bfloat16), k
        rounding = 2e-6 if island else 2 ** -8  # unit roundoff of the parameter's dtype (bf16: 2^-8)
        # round to nearest: |rounded - exact| <= u * |rounded|; 1e-7 covers the float32 sum before rounding
        assert ((got[k].float() - want[k]).abs() <= got[k].float().abs() * rounding + 1e-7).all(), k
    assert {k: id(p) for k, p in model.named_parameters()} == ids  # merged in place
    merger.clear()
    assert_weights(model, before, exact=True)


def test_pipeline_rank_skips_meta_blocks(tmp_path, base):
    """A rank that holds only some blocks merges what it holds and leaves the rest on the meta device."""
    path = write(tmp_path / "a.safetensors", "comfy", random_pairs(base, 1), 4.0)
    from safetensors.torch import save_file as save

    save(base, tmp_path / "dit.safetensors")
    model, _ = load_model(tmp_path / "dit.safetensors", dtype=torch.float32,
                          select=lambda n: not n.startswith("blocks.1."))
    (lora, _), = load_loras([path], TINY)
    stats = LoRAMerger(model).set([(lora, 1.0)])
    assert stats.merged == len(DIFFUSERS) - 2 and model.blocks[1].ffn[0].weight.is_meta
    want = merged64(base, [(random_pairs(base, 1), 1.0, 1.0, {})])
    assert torch.allclose(model.blocks[0].self_attn.q.weight, want["blocks.0.self_attn.q.weight"], atol=1e-7)


# -- LoRAs that do not fit: one line naming what is wrong ---------------------------------------------------------


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(EngineError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def test_mismatched_loras(tmp_path, base):
    big = PRESETS["wan2.1-14b"].dim
    wide = {"blocks.0.self_attn.q": (torch.zeros(RANK, big), torch.zeros(big, RANK))}
    msg = _error(load_loras, [write(tmp_path / "14b.safetensors", "comfy", wide, 4.0)], TINY)
    assert f"is a LoRA for a dim-{big} DiT (wan2.1-14b)" in msg and "use one trained for tiny" in msg
    deep = {f"blocks.{TINY.num_layers + 5}.ffn.0": random_pairs(base, 1)["blocks.1.ffn.0"]}
    msg = _error(load_loras, [write(tmp_path / "deep.safetensors", "comfy", deep, 4.0)], TINY)
    assert f"more than {TINY.num_layers} blocks" in msg and "layers the loaded tiny DiT does not have" in msg
    i2v = {"blocks.0.cross_attn.k_img": random_pairs(base, 1)["blocks.0.self_attn.q"]}
    assert "image-to-video" in _error(load_loras, [write(tmp_path / "i2v.safetensors", "comfy", i2v, 4.0)], TINY)
    other = {"transformer_blocks.0.attn.to_q": random_pairs(base, 1)["blocks.0.self_attn.q"]}
    assert "another model" in _error(load_loras, [write(tmp_path / "flux.safetensors", "peft-wan", other, None)],
                                     TINY)
    pairs = random_pairs(base, 1)
    extras = {"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.ones(1, TINY.dim)}
    assert "DoRA" in _error(read_lora, write(tmp_path / "dora.safetensors", "comfy", pairs, 4.0, extras))
    extras = {"diffusion_model.blocks.0.self_attn.q.lokr_w1": torch.ones(2, 2)}
    assert "LoKr" in _error(read_lora, write(tmp_path / "lokr.safetensors", "comfy", pairs, 4.0, extras))
    save_file(base, tmp_path / "dit.safetensors")
    assert "is not a LoRA" in _error(read_lora, tmp_path / "dit.safetensors")
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(RANK, TINY.dim)},
              tmp_path / "half.safetensors")
    assert "without its partner" in _error(read_lora, tmp_path / "half.safetensors")
    assert "not found" in _error(read_lora, tmp_path / "missing.safetensors")
    # checking happens before anything is merged
    lora = read_lora(tmp_path / "14b.safetensors")
    model = fresh(base)
    _error(LoRAMerger(model).set, [(lora, 1.0)])
    assert_weights(model, base, exact=True)
    _error(check_lora, lora, TINY)


def test_parse_lora_spec():
    assert parse_lora_spec("style.safetensors:0.6") == (Path("style.safetensors"), 0.6)
    assert parse_lora_spec("style.safetensors") == (Path("style.safetensors"), 1.0)
    assert parse_lora_spec(r"C:\loras\style.safetensors") == (Path(r"C:\loras\style.safetensors"), 1.0)
    assert parse_lora_spec(r"C:\loras\style.safetensors:-1.5") == (Path(r"C:\loras\style.safetensors"), -1.5)
    assert math.isclose(parse_lora_spec("a:1e-1")[1], 0.1)


# -- presets name their LoRAs: switched at a chunk boundary, exactly, without reloading the base weights -----------


def linears(cfg=TINY) -> list[str]:
    """A typical style LoRA's targets: every attention and FFN linear of every block, and the text embedding (so
    that the prompt's cross-attention K/V change too)."""
    return [f"blocks.{i}.{a}.{p}" for i in range(cfg.num_layers) for a in ("self_attn", "cross_attn") for p in "qkvo"
            ] + [f"blocks.{i}.ffn.{j}" for i in range(cfg.num_layers) for j in (0, 2)] + ["text_embedding.0"]


def style_pairs(base, seed: int, modules=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for m in modules or linears():
        out, inp = base[f"{m}.weight"].shape
        pairs[m] = (torch.randn(RANK, inp, generator=g) / inp ** 0.5, 0.05 * torch.randn(out, RANK, generator=g))
    return pairs


def offline_merge(base, loras) -> dict[str, torch.Tensor]:
    """The reference, merged offline in float32: W = base + sum of strength * scale * B @ A."""
    out = {k: v.clone() for k, v in base.items()}
    for name in {f"{m}.weight" for pairs, _, _ in loras for m in pairs}:
        delta = torch.zeros_like(base[name])
        for pairs, scale, strength in loras:
            m = name.removesuffix(".weight")
            if m in pairs:
                down, up = pairs[m]
                delta += (up @ down) * (strength * scale)
        out[name] = base[name] + delta
    return out


@pytest.fixture
def lora_dir(tmp_path, monkeypatch):
    """The user's LoRA folder with two style LoRAs for the tiny model (a: Comfy alpha 8 = scale 2, b: PEFT)."""
    folder = tmp_path / "loras"
    folder.mkdir()
    monkeypatch.setenv("SDV2_LORAS", str(folder))
    base = tiny_bundle().dit.state_dict()
    write(folder / "a.safetensors", "comfy", style_pairs(base, 11), 8.0)
    (folder / "styles").mkdir()
    write(folder / "styles" / "b.safetensors", "peft-wan", style_pairs(base, 12, linears()[::3]), None)
    return folder


A = (("a.safetensors", 0.7),)
B = (("styles/b.safetensors", -0.5),)


def clip(n: int) -> list[np.ndarray]:
    src = TestPatternSource(size=(64, 64), fps=16)
    return [src.frame(i) for i in range(n)]


def run(engine: Engine, frames: list[np.ndarray], switches=None) -> list[np.ndarray]:
    """Push `frames` one chunk at a time (5, then 4 each), `switches[chunk](engine)` before that chunk; drain."""
    out, chunks = [], [frames[:5]] + [frames[i:i + 4] for i in range(5, len(frames), 4)]
    for i, chunk in enumerate(chunks):
        if switches and i in switches:
            switches[i](engine)
        for f in chunk:
            engine.push(f, block=True)
        assert wait_for(lambda n=i + 1: engine.stats().chunks == n or engine.stats().error, 300)
        while (got := engine.pull(0)) is not None:
            out.append(got)
    engine.finish()
    while not engine.done():
        if (got := engine.pull(0.05)) is not None:
            out.append(got)
    engine.stop()
    return out


def test_preset_with_loras_streams_the_offline_merged_model(lora_dir, tmp_path):
    """A preset naming two LoRAs (one in a subfolder of the LoRA folder) streams bitwise the frames of a model whose
    weights were merged offline (base + s * B @ A in float32), in Stream-Batch."""
    preset = tmp_path / "inked.toml"
    preset.write_text('schema = 2\nname = "Inked"\nprompt = "ink"\nsteps = 2\n'
                      'loras = [["a.safetensors", 0.7], ["styles/b.safetensors", -0.5]]\n', encoding="utf-8")
    controls = read_preset(preset).controls
    assert controls.loras == A + B
    frames = clip(13)
    base = tiny_bundle().dit.state_dict()
    want = offline_merge(base, [(style_pairs(base, 11), 2.0, 0.7), (style_pairs(base, 12, linears()[::3]), 1.0, -0.5)])
    merged64_ = merged64(base, [(style_pairs(base, 11), 2.0, 0.7, {}),
                                (style_pairs(base, 12, linears()[::3]), 1.0, -0.5, {})])
    for k in want:
        torch.testing.assert_close(want[k], merged64_[k], rtol=2e-6, atol=1e-7)  # the float32 reference is right

    bundle = tiny_bundle()
    engine = Engine(EngineConfig(size=(64, 64), lossless=True, controls=controls), bundle).start()
    got = run(engine, frames)
    assert_weights(bundle.dit, want, exact=True)
    reference = tiny_bundle()
    reference.dit.load_state_dict(want)
    expected = run(Engine(EngineConfig(size=(64, 64), lossless=True,
                                       controls=dataclasses.replace(controls, loras=())), reference).start(), frames)
    assert len(got) == len(expected) == 13
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    base_frames = run(Engine(EngineConfig(size=(64, 64), lossless=True,
                                          controls=dataclasses.replace(controls, loras=())), tiny_bundle()).start(),
                      frames)
    assert not all(np.array_equal(a, b) for a, b in zip(got, base_frames))  # the LoRAs change the picture


def test_switching_presets_switches_loras_exactly_at_chunk_boundaries(lora_dir):
    """Mid-stream switches (Stream-Batch) through Engine.set_controls: none -> A -> none restores the base bit for
    bit, A -> B -> A gives the base + A state bit for bit, the prompt's cross-attention K/V follow the weights, and
    parameters keep their storage (what compiled graphs and CUDA graphs hold on to)."""
    bundle = tiny_bundle()
    dit = bundle.dit
    base = {k: v.clone() for k, v in dit.state_dict().items()}
    ptrs = {k: p.data_ptr() for k, p in dit.named_parameters()}
    plain = Controls(prompt="ink", steps=2)
    states, cross = {}, {}

    def switch(loras, name):
        def at_chunk(engine):
            states[name] = None
            engine.set_controls(plain, loras=loras)
        return at_chunk

    def snapshot(name):
        def at_chunk(engine):  # the previous switch has been applied by the chunk before this one
            states[name] = {k: v.clone() for k, v in dit.state_dict().items()}
            cache = engine.pipeline.cache
            ctx = dit.embed_text(engine.pipeline._ctx)
            cross[name] = (cache.cross_k[0][:1].clone(), dit.cross_kv(ctx, range(1))[0][0].clone())
        return at_chunk

    engine = Engine(EngineConfig(size=(64, 64), lossless=True, controls=plain), bundle).start()
    steps = {1: switch(A, "a"), 2: snapshot("a"), 3: switch((), "none"), 4: snapshot("none"),
             5: switch(B, "b"), 6: snapshot("b"), 7: switch(A, "a again"), 8: snapshot("a again")}
    out = run(engine, clip(5 + 4 * 9), steps)
    assert len(out) == 41
    a_merge = offline_merge(base, [(style_pairs(base, 11), 2.0, 0.7)])
    b_merge = offline_merge(base, [(style_pairs(base, 12, linears()[::3]), 1.0, -0.5)])
    for k in base:
        assert torch.equal(states["a"][k], a_merge[k]), k
        assert torch.equal(states["none"][k], base[k]), k
        assert torch.equal(states["b"][k], b_merge[k]), k
        assert torch.equal(states["a again"][k], states["a"][k]), k
    assert not torch.equal(a_merge["blocks.0.self_attn.k.weight"], base["blocks.0.self_attn.k.weight"])
    for name, (cached, fresh_kv) in cross.items():
        assert torch.equal(cached, fresh_kv), name  # K/V of the prompt through the weights now merged
    assert {k: p.data_ptr() for k, p in dit.named_parameters()} == ptrs
    st = engine.stats().lora_switch
    assert st is not None and st.merged == len(linears()) and st.backup_bytes == \
        sum(base[f"{m}.weight"].nbytes for m in linears())

    # 50 more round trips A -> B -> A (the switch the engine makes between chunks): still bit for bit base + A
    merger = bundle.loras
    a, b = merger.load([(lora_dir / "a.safetensors", 0.7)]), merger.load([(lora_dir / "styles/b.safetensors", -0.5)])
    for _ in range(50):
        merger.switch(b)
        merger.switch(a)
    assert_weights(dit, states["a"], exact=True)
    merger.switch([])
    assert_weights(dit, base, exact=True)
    assert merger.base == {} and merger._files  # nothing saved while at the base; the factors stay cached


def test_lora_factor_cache_is_bounded_and_reads_a_file_once(lora_dir):
    bundle = tiny_bundle()
    merger = bundle.merger()
    a = lora_dir / "a.safetensors"
    first = merger.load([(a, 1.0)])[0][0]
    assert merger.load([(a, 0.5)])[0][0] is first  # cached: not read again
    size = first.nbytes
    merger.cache_bytes = size  # room for one
    other = merger.load([(lora_dir / "styles/b.safetensors", 1.0)])[0][0]
    assert [lora for lora in merger._files.values()] == [other]  # the older one was dropped
    merger.switch([(first, 1.0)])  # merged LoRAs are held (and counted) while they are merged
    assert merger.factor_bytes == size + other.nbytes
    os.utime(a, ns=(1, 1))  # a changed file is read again
    assert merger.load([(a, 1.0)])[0][0] is not first


def test_preset_lora_problems_are_one_line_and_the_stream_keeps_its_style(lora_dir):
    bundle = tiny_bundle()
    engine = Engine(EngineConfig(size=(64, 64), lossless=True), bundle).start()
    before = engine.config.controls
    assert "not found in the LoRA folder" in _error(engine.set_controls, loras=(("missing.safetensors", 1.0),))
    big = PRESETS["wan2.1-14b"].dim
    write(lora_dir / "14b.safetensors", "comfy", {"blocks.0.self_attn.q": (torch.zeros(RANK, big),
                                                                           torch.zeros(big, RANK))}, 4.0)
    assert "is a LoRA for a dim-5120 DiT" in _error(engine.set_controls, loras=(("14b.safetensors", 1.0),))
    from sdv2_studio.engine import memory

    real = memory.available_host_memory
    memory.available_host_memory = lambda: 64 * 1024  # the base values A changes would not fit in RAM
    try:
        assert "of weights whose base values are kept in RAM" in _error(engine.set_controls, loras=A)
    finally:
        memory.available_host_memory = real
    assert engine.config.controls == before and bundle.loras.active == []
    engine.finish()
    engine.stop()
    # pipeline ranks: refused before anything starts
    ranks = Engine(EngineConfig(model="tiny", ranks=2, device="cpu", controls=Controls(loras=A)))
    assert "pipeline ranks" in _error(ranks.start)
    assert "pipeline ranks" in _error(Engine(EngineConfig(model="tiny", ranks=2, device="cpu")).set_controls,
                                      Controls(loras=A))


@pytest.mark.parametrize("problem, message", [
    ("missing", "LoRA gone.safetensors not found in the LoRA folder"),
    ("wrong size", "is a LoRA for a dim-5120 DiT (wan2.1-14b)"),
    ("unknown keys", "layers the loaded tiny DiT does not have"),
])
def test_sdv2_run_preset_with_a_bad_lora_is_one_line_and_exit_2(lora_dir, tmp_path, monkeypatch, capsys, problem,
                                                                message):
    user = tmp_path / "user-presets"
    user.mkdir()
    monkeypatch.setenv("SDV2_USER_PRESETS", str(user))
    big = PRESETS["wan2.1-14b"].dim
    files = {"wrong size": {"blocks.0.self_attn.q": (torch.zeros(RANK, big), torch.zeros(big, RANK))},
             "unknown keys": {"blocks.0.attn.to_q": (torch.zeros(RANK, TINY.dim), torch.zeros(TINY.dim, RANK))}}
    name = "gone.safetensors"
    if problem in files:
        name = f"{problem.replace(' ', '-')}.safetensors"
        write(lora_dir / name, "comfy", files[problem], 4.0)
    (user / "bad-style.toml").write_text(f'schema = 2\nname = "Bad"\nprompt = "x"\nloras = [["{name}", 0.8]]\n',
                                         encoding="utf-8")
    out = tmp_path / "out.mp4"
    code = cli.main(["run", "--model", "tiny", "--preset", "bad-style", "--size", "64x64", "--frames", "5",
                     "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("sdv2: error: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_compiled_step_sees_switched_loras_without_recompiling(lora_dir, tmp_path_factory, monkeypatch):
    """The compiled steady step (engine/compiled.py) reads the parameters the switch updates in place: after a
    switch mid-stream its outputs follow the eager reference (same switch), and Dynamo compiled one graph only."""
    from sdv2_studio.engine.compiled import compile_model, warm_up
    from sdv2_studio.engine.config import CacheConfig
    from sdv2_studio.engine.kv_cache import KVCache, StreamClock

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "inductor"))  # test_compiled's
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    slots, hw = 2, (8, 8)
    xs = [torch.randn(slots, 16, 2 if i == 0 else 1, *hw, generator=torch.Generator().manual_seed(i))
          for i in range(14)]
    ctx = torch.randn(1, 7, TINY.text_dim, generator=torch.Generator().manual_seed(99))

    def stream(compiled: bool, switches: bool = True) -> tuple[list[torch.Tensor], object]:
        bundle = tiny_bundle()
        model, merger = bundle.dit, bundle.merger()
        a, b = merger.load([(lora_dir / "a.safetensors", 0.7)]), merger.load([(lora_dir / "styles/b.safetensors", 1)])
        cache = KVCache(TINY, CacheConfig(), slots, (hw[0] // 2) * (hw[1] // 2), device="cpu", dtype=torch.float32)
        cache.set_prompt(model, ctx)
        if compiled:
            compile_model(model, "cpu")
            warm_up(model, cache, 1, hw, torch.float32)
        clock, outs = StreamClock(CacheConfig()), []
        with torch.inference_mode():
            for i, x in enumerate(xs):
                if switches and i in (9, 11, 13):  # switches between steady chunks, as the pipeline makes them
                    merger.switch({9: a, 11: b, 13: a}[i])
                    cache.set_prompt(model, ctx)
                s = clock.next(x.shape[2])
                outs.append(model.forward_chunk(x.clone(), torch.full((slots, x.shape[2]), 600.0), cache, [s] * slots))
        return outs, model.compiled_step

    ref, _ = stream(compiled=False)
    unswitched, _ = stream(compiled=False, switches=False)
    out, step = stream(compiled=True)
    assert step.compiled_calls >= 8  # the steady chunks before and after the switches ran compiled
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # no recompile for in-place weight updates
    worst = max((a - b).abs().max().item() for a, b in zip(ref, out))
    assert worst < 1e-5, worst  # fp32: Inductor reorders reductions (as test_compiled)
    assert min((ref[i] - unswitched[i]).abs().max() for i in (9, 11, 13)) > 100 * worst  # switches change far more
    torch._dynamo.reset()


def test_bench_switch_figures():
    """`sdv2 bench switch`'s LoRA part: the 1.3B figures on paper from the parameter shapes, and a measured switch
    on the tiny model that touches every attention and FFN linear."""
    switch = cli.load_bench("switch")
    paper = switch.lora_on_paper(PRESETS["wan2.1-1.3b"], rank=32)
    blocks = 30 * (8 * 1536 * 1536 + 2 * 1536 * 8960)
    assert paper["touched_params"] == blocks and paper["saved_bytes"] == 2 * blocks
    assert paper["factor_params"] == 30 * 32 * (8 * 2 * 1536 + 2 * (1536 + 8960))
    assert round(paper["gflop"]) == 89
    row = switch.bench_loras("tiny", rank=4, repeats=1, log=lambda *_: None)
    assert row["merged"] == len(linears()) - 1 and row["saved_bytes"] == row["written_bytes"]  # no text embedding
    assert set(row["switch_ms"]) == {"none->A", "A->B", "B->A", "A->none"}
