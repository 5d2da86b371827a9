"""resolve_model: the one place "auto", "tiny", "random:PRESET" and checkpoint paths become files and shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import refused
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
from test_text import model_root  # noqa: F401 - the fixture building a umT5 tokenizer folder


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


# ----------------------------------------------------------------------------------------------------------
# Every part named on the command line, in the layouts users have (tiny size, written here; nothing downloaded)

PROMPT = "watercolor painting of a city at night"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, model_root):  # noqa: F811 - the fixture imported above
    """The tiny model written as users have it: single files (a DiT .safetensors, the original Wan2.1_VAE.pth, a
    Kijai umT5 bf16 .safetensors, a tokenizer folder, a PEFT LoRA), the original Wan2.1 release folder and the
    diffusers Wan2.1 folder. umT5 weights are bf16 values in every file, so every layout loads the same weights."""
    import shutil

    from safetensors.torch import save_file
    from sdv2_studio.engine.checkpoint import save_model
    from sdv2_studio.engine.models import tiny_vae
    from sdv2_studio.engine.text import tiny_text_encoder
    from sdv2_studio.engine.vae import get_vae_preset, wan_to_diffusers_key
    from test_lora import random_pairs, write
    from test_text import wan_names

    root = tmp_path_factory.mktemp("model_files")
    tokenizer = model_root[0] / "tokenizer"  # a umT5-style sentencepiece tokenizer (test_text builds it)
    dit = tiny_dit()
    vae = tiny_vae().state_dict()
    te = {k: v.bfloat16().float() for k, v in tiny_text_encoder(text_dim=64, text_len=32, seed=5).model.state_dict()
          .items() if k != "encoder.embed_tokens.weight"}
    wan_te = {k: v.bfloat16() for k, v in wan_names(te).items()}
    files = root / "files"
    files.mkdir()
    f = {"dit": save_model(dit, files / "wan2.1_t2v_tiny.safetensors"), "vae": files / "Wan2.1_VAE.pth",
         "te": files / "umt5-xxl-enc-bf16.safetensors", "tokenizer": tokenizer}
    torch.save(vae, f["vae"])
    save_file(wan_te, f["te"])
    f["lora"] = write(files / "style_lora.safetensors", "peft-diffusers", random_pairs(dit.state_dict(), seed=1),
                      alpha=16.0)
    f["lora2"] = write(files / "comfy_lora.safetensors", "comfy", random_pairs(dit.state_dict(), seed=2), alpha=2.0)
    from sdv2_studio.engine.config import get_preset
    from sdv2_studio.engine.model import CausalWanModel

    with torch.device("meta"):
        small = CausalWanModel(get_preset("small")).state_dict()
    out, inp = small["blocks.0.self_attn.q.weight"].shape  # a LoRA for the dim-512 DiT
    f["lora_small"] = write(files / "small_lora.safetensors", "comfy",
                            {"blocks.0.self_attn.q": (torch.zeros(4, inp), torch.zeros(out, 4))}, 4.0)
    original = root / "Wan2.1-T2V-1.3B"  # the original release: DiT, VAE .pth, umT5 .pth, google/umt5-xxl/
    original.mkdir()
    shutil.copy(f["dit"], original / "diffusion_pytorch_model.safetensors")
    shutil.copy(f["vae"], original / "Wan2.1_VAE.pth")
    torch.save(wan_te, original / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copytree(tokenizer, original / "google" / "umt5-xxl")
    diffusers = root / "Wan2.1-T2V-1.3B-Diffusers"  # vae/, text_encoder/, tokenizer/
    (diffusers / "vae").mkdir(parents=True)
    save_file({wan_to_diffusers_key(k, get_vae_preset("tiny")): v for k, v in vae.items()},
              diffusers / "vae" / "diffusion_pytorch_model.safetensors")
    (diffusers / "text_encoder").mkdir()
    (diffusers / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "umt5",
                                                                        **tiny_text_config(64)}))
    save_file(te, diffusers / "text_encoder" / "model.safetensors")
    shutil.copytree(tokenizer, diffusers / "tokenizer")
    return f | {"original": original, "diffusers": diffusers}


_RUNS: dict[tuple[str, ...], np.ndarray] = {}


def run_frames(tmp_path, *model_args: str) -> np.ndarray:
    """The frames `sdv2 run` writes for these model flags (same source, prompt and size every time)."""
    import av
    from sdv2_studio.engine.cli import main

    if model_args not in _RUNS:
        out = tmp_path / f"run{len(_RUNS)}.mp4"
        argv = ["run", *model_args, "--source", "test:64x64@16", "--frames", "9", "--size", "64x64",
                "--prompt", PROMPT, "--device", "cpu", "--out", str(out)]
        assert main(argv) == 0
        with av.open(str(out)) as c:
            _RUNS[model_args] = np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)])
    return _RUNS[model_args]


def test_run_with_each_part_named_and_a_lora(model_files, tmp_path, capsys):
    """`sdv2 run --model DIT --vae VAE --text-encoder TE --tokenizer TOK --lora FILE:S`: single files in their real
    layouts give the frames of the original release folder; the LoRA changes them."""
    f = model_files
    parts = ("--model", str(f["dit"]), "--vae", str(f["vae"]), "--text-encoder", str(f["te"]),
             "--tokenizer", str(f["tokenizer"]))
    plain = run_frames(tmp_path, *parts)
    assert "wan2.1_t2v_tiny" in capsys.readouterr().err
    styled = run_frames(tmp_path, *parts, "--lora", f"{f['lora']}:0.5")
    assert "LoRA style_lora x0.5" in capsys.readouterr().err
    both = run_frames(tmp_path, *parts, "--lora", f"{f['lora']}:0.5", "--lora", str(f["lora2"]))
    assert "LoRA style_lora x0.5 + LoRA comfy_lora |" in capsys.readouterr().err  # strength 1 unless given
    folder = run_frames(tmp_path, "--model", str(f["original"]))  # one folder provides every part
    assert plain.shape == (9, 64, 64, 3)
    assert np.array_equal(plain, folder)
    assert np.abs(styled.astype(int) - plain.astype(int)).mean() > 1.0
    assert np.abs(both.astype(int) - styled.astype(int)).mean() > 1.0


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_base_folder_of_either_release(model_files, tmp_path, layout):
    """`--base` takes the original Wan2.1 folder or the diffusers one; both give the frames of the single files."""
    f = model_files
    parts = run_frames(tmp_path, "--model", str(f["dit"]), "--vae", str(f["vae"]), "--text-encoder", str(f["te"]),
                       "--tokenizer", str(f["tokenizer"]))
    assert np.array_equal(run_frames(tmp_path, "--model", str(f["dit"]), "--base", str(f[layout])), parts)
    m = resolve_model(str(f["dit"]), f[layout])
    assert m.base == f[layout] and m.vae_file.exists() and m.text_file.exists() and m.tokenizer.is_dir()
    beside = tmp_path / "beside"  # found without --base: a base folder beside the checkpoint
    beside.mkdir()
    (beside / f[layout].name).symlink_to(f[layout], target_is_directory=True)
    (beside / "ckpt").mkdir()
    (beside / "ckpt" / "dit.safetensors").symlink_to(f["dit"])
    assert resolve_model(str(beside / "ckpt" / "dit.safetensors")).base is not None


def test_a_part_named_overrides_the_folders(model_files):
    f = model_files
    m = resolve_model(str(f["original"]), vae=str(f["vae"]), tokenizer=str(f["tokenizer"]))
    assert (m.vae_file, m.text_file, m.tokenizer) == (f["vae"], f["original"] / "models_t5_umt5-xxl-enc-bf16.pth",
                                                      f["tokenizer"])
    m = resolve_model(str(f["dit"]), vae=str(f["vae"]), text_encoder=str(f["te"]), loras=[str(f["lora"])])
    assert m.base is None and m.tokenizer is None and m.loras == ((str(f["lora"]), 1.0),)


@pytest.mark.parametrize("flags, words", [
    (["--vae", "{tmp}/nope.pth"], "VAE {tmp}/nope.pth does not exist (--vae); pass Wan2.1_VAE.pth"),
    (["--text-encoder", "{tmp}/nope"], "does not exist (--text-encoder)"),
    (["--lora", "{lora}:99"], "LoRA strength for style_lora.safetensors must be a number from -10 to 10"),
    (["--lora", "{lora}:abc"], "LoRA strength 'abc' is not a number (--lora FILE:STRENGTH"),
    (["--lora", "{lora_small}"], "it is a LoRA for a dim-512 DiT (small), use one trained for"),
    (["--base", "{tmp}"], "is not a Wan2.1 base folder"),
])
def test_bad_model_files_are_one_line(model_files, tmp_path, capsys, flags, words):
    fill = {"tmp": tmp_path, "lora": model_files["lora"], "lora_small": model_files["lora_small"]}
    flags = [a.format(**fill) for a in flags]
    model = ["--model", str(model_files["dit"])] + ([] if "--base" in flags else
                                                     ["--base", str(model_files["original"])])
    refused(["run", *model, *flags, "--source", "test:64x64@16", "--frames", "5", "--size", "64x64", "--out", ""],
            words.format(**fill), capsys)


def test_built_in_models_take_no_parts(model_files):
    from sdv2_studio.engine.api import EngineConfig

    with pytest.raises(EngineError, match="--vae cannot be used with the built-in tiny model"):
        EngineConfig(model="tiny", vae=str(model_files["vae"]))
    assert EngineConfig(model="tiny", loras=[str(model_files["lora"])]).loras == ((str(model_files["lora"]), 1.0),)


def test_pipeline_ranks_load_the_parts_of_an_original_release_folder(model_files, tmp_path, capsys):
    """Two CPU pipeline ranks: the last one loads the VAE from the same resolution (Wan2.1_VAE.pth, no vae/)."""
    from sdv2_studio.engine.cli import main

    one = run_frames(tmp_path, "--model", str(model_files["original"]))
    two = run_frames(tmp_path, "--model", str(model_files["original"]), "--ranks", "2")
    assert one.shape == two.shape and np.abs(one.astype(int) - two.astype(int)).mean() < 1.0
    argv = ["run", "--model", str(model_files["original"]), "--ranks", "2", "--lora", str(model_files["lora"]),
            "--size", "64x64", "--frames", "5", "--out", ""]
    assert main(argv) == 2
    assert "--lora and --vae are not supported with pipeline ranks yet" in capsys.readouterr().err.splitlines()[-1]
