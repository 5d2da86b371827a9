"""engine.text: loading umT5 from every release layout, padding, the prompt cache, the tiny encoder, errors.

The model folder is built on the spot: a small UMT5EncoderModel saved with `save_pretrained`, and a umT5-style
(Unigram) tokenizer trained with the sentencepiece package on a few sentences, wrapped as transformers'
`T5Tokenizer` and saved as tokenizer.json (no download; no protobuf needed). The same weights are then written
in the original Wan, Kijai and ComfyUI layouts (names from Wan2.1's wan/modules/t5.py, ComfyUI's scaled fp8).
"""

from __future__ import annotations

import copy
import io
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.text import (
    ByteTokenizer,
    PromptCache,
    SentencePieceTokenizer,
    TextEncoder,
    clean_prompt,
    hf_tokenize,
    load_text_encoder,
    tiny_text_encoder,
)
from sdv2_studio.engine.umt5 import UMT5Config, UMT5Encoder

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

TEXT_LEN = 16
D_MODEL = 32
SENTENCES = [
    "a red fox jumps over the lazy dog",
    "watercolor painting of a city at night",
    "anime style portrait with vivid colours",
    "oil painting in the style of van gogh",
    "cyberpunk neon street in the rain",
    "a pencil sketch of a cat on a sofa",
]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_diffusers")
    # tokenizer: sentencepiece Unigram model -> T5Tokenizer (vocab + scores) -> tokenizer.json
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 4), model_writer=buf, vocab_size=60,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = transformers.T5Tokenizer(vocab=vocab, extra_ids=0)
    tok.save_pretrained(root / "tokenizer")
    (root / "tokenizer" / "spiece.model").write_bytes(buf.getvalue())
    # encoder: small umT5 with perturbed norms so that a skipped layer would show
    cfg = transformers.UMT5Config(vocab_size=len(vocab), d_model=D_MODEL, d_kv=8, d_ff=64, num_layers=2,
                                  num_heads=4, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                                  is_encoder_decoder=False, use_cache=False)
    torch.manual_seed(0)
    model = transformers.UMT5EncoderModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.mul_(1 + 0.3 * torch.randn(p.shape))
    model.save_pretrained(root / "text_encoder")
    return root, sp, model.eval()


@pytest.fixture(scope="module")
def encoder(model_root):
    return load_text_encoder(model_root[0], dtype=torch.float32, text_len=TEXT_LEN)


# -- loader and encoding -----------------------------------------------------------------------------------------


def test_load_shapes_and_padding_zeroed(model_root, encoder):
    root, sp, _ = model_root
    assert encoder.text_dim == D_MODEL and encoder.text_len == TEXT_LEN
    assert encoder.device.type == "cpu" and encoder.dtype == torch.float32
    prompt = "a red fox"
    ids, mask = encoder.tokenize(prompt)
    n = int(mask.sum())
    assert ids.shape == mask.shape == (1, TEXT_LEN)
    assert ids[0, :n - 1].tolist() == sp.encode(prompt) and ids[0, n - 1] == 1  # tokens + </s>
    assert (ids[0, n:] == 0).all()
    out = encoder.encode(prompt)
    assert out.shape == (1, TEXT_LEN, D_MODEL) and out.dtype == torch.float32
    assert (out[0, n:] == 0).all()
    assert (out[0, :n].abs().sum(-1) > 0).all()


def test_matches_unpadded_reference_run(model_root, encoder):
    """The valid positions equal a plain transformers run on the unpadded ids (so the mask is applied)."""
    _, _, model = model_root
    for prompt in ("a red fox", "watercolor painting of a city at night"):
        ids, mask = encoder.tokenize(prompt)
        n = int(mask.sum())
        with torch.no_grad():
            ref = model(input_ids=ids[:, :n]).last_hidden_state
        out = encoder.encode(prompt)
        assert torch.allclose(out[:, :n], ref, atol=1e-5)
        assert torch.equal(encoder.encode_trimmed(prompt), out[:, :n])


def test_deterministic_cleaning_truncation_dtype(model_root, encoder):
    a = encoder.encode("a red fox")
    assert torch.equal(a, encoder.encode("a red fox"))
    assert torch.equal(a, encoder.encode("  a   red\n\tfox "))  # whitespace cleaning
    assert not torch.equal(a, encoder.encode("a red dog"))
    long = " ".join(SENTENCES)
    ids, mask = encoder.tokenize(long)
    assert mask.all() and ids[0, -1] == 1  # truncated to text_len, </s> kept
    assert encoder.encode(long).shape == (1, TEXT_LEN, D_MODEL)
    bf = load_text_encoder(model_root[0], dtype=torch.bfloat16, text_len=TEXT_LEN)
    out = bf.encode("a red fox")
    assert out.dtype == torch.bfloat16 and (out.float() - a).abs().max() < 0.1
    assert encoder.encode("a red fox", dtype=torch.float16).dtype == torch.float16
    # the direct text_encoder/ folder is accepted too
    assert torch.equal(load_text_encoder(model_root[0] / "text_encoder", dtype=torch.float32,
                                         text_len=TEXT_LEN).encode("a red fox"), a)


def test_clean_prompt():
    assert clean_prompt("  a\n\n b\t c  ") == "a b c"
    assert clean_prompt("fish &amp;amp; chips") == "fish & chips"


# -- every release layout ----------------------------------------------------------------------------------------


def wan_names(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers UMT5EncoderModel tensors under Wan's T5Encoder names, written out as a table (not the loader's)."""
    out = {"token_embedding.weight": hf["shared.weight"], "norm.weight": hf["encoder.final_layer_norm.weight"]}
    n = 0
    while f"encoder.block.{n}.layer.0.layer_norm.weight" in hf:
        src, dst = f"encoder.block.{n}.layer.", f"blocks.{n}."
        out[dst + "norm1.weight"] = hf[src + "0.layer_norm.weight"]
        for p in "qkvo":
            out[dst + f"attn.{p}.weight"] = hf[src + f"0.SelfAttention.{p}.weight"]
        out[dst + "pos_embedding.embedding.weight"] = hf[src + "0.SelfAttention.relative_attention_bias.weight"]
        out[dst + "norm2.weight"] = hf[src + "1.layer_norm.weight"]
        out[dst + "ffn.gate.0.weight"] = hf[src + "1.DenseReluDense.wi_0.weight"]
        out[dst + "ffn.fc1.weight"] = hf[src + "1.DenseReluDense.wi_1.weight"]
        out[dst + "ffn.fc2.weight"] = hf[src + "1.DenseReluDense.wo.weight"]
        n += 1
    return out


def wan_t5_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor, heads: int, eps: float = 1e-6,
                   buckets: int = 32, max_dist: int = 128) -> torch.Tensor:
    """Wan's T5Encoder math on Wan-named weights (per-block relative position bias, T5 RMS norm, no attention
    scaling, ffn = fc2(fc1(x) * gelu_tanh(gate(x)))) for unpadded ids [1, L]: an independent check of the table."""
    L = ids.shape[1]
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]  # key position - query position
    half = buckets // 2
    exact = half // 2
    far = exact + (torch.log(rel.abs().clamp(min=1).float() / exact) / math.log(max_dist / exact)
                   * (half - exact)).long()
    bucket = (rel > 0).long() * half + torch.where(rel.abs() < exact, rel.abs(), far.clamp(max=half - 1))

    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    x = sd["token_embedding.weight"][ids]
    n = 0
    while f"blocks.{n}.norm1.weight" in sd:
        p = f"blocks.{n}."
        h = norm(x, sd[p + "norm1.weight"])
        q, k, v = ((h @ sd[p + f"attn.{c}.weight"].T).view(1, L, heads, -1) for c in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]
        attn = (torch.einsum("binc,bjnc->bnij", q, k) + bias).softmax(-1)
        x = x + torch.einsum("bnij,bjnc->binc", attn, v).reshape(1, L, -1) @ sd[p + "attn.o.weight"].T
        h = norm(x, sd[p + "norm2.weight"])
        gate = F.gelu(h @ sd[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ sd[p + "ffn.fc1.weight"].T) * gate) @ sd[p + "ffn.fc2.weight"].T
        n += 1
    return norm(x, sd["norm.weight"])


def test_wan_name_table_follows_wans_math(model_root):
    _, sp, model = model_root
    sd = wan_names(model.state_dict())
    for prompt in SENTENCES[:3]:
        ids = torch.tensor([sp.encode(prompt) + [1]])
        with torch.no_grad():
            ref = model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(wan_t5_forward(sd, ids, heads=4), ref, atol=1e-5, rtol=1e-5)


FP8_MAX = 448.0  # largest float8_e4m3fn


def _is_linear(name: str) -> bool:
    return name.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "wi_0.weight", "wi_1.weight",
                          "wo.weight", "gate.0.weight", "fc1.weight", "fc2.weight"))


def comfy_scaled_fp8(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """ComfyUI scaled fp8: each linear stored as fp8(w / s) with s = amax / 448 in `scale_weight`, the rest fp16,
    a `scaled_fp8` marker. Returns (file tensors, {weight: s})."""
    out, scales = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for k, v in sd.items():
        if _is_linear(k):
            s = v.abs().max().float() / FP8_MAX
            out[k] = (v.float() / s).to(torch.float8_e4m3fn)
            out[k.removesuffix("weight") + "scale_weight"] = s.reshape(())
            scales[k] = s
        else:
            out[k] = v.half()
    return out, scales


def fp8_bound(w: torch.Tensor, scale) -> torch.Tensor:
    """Stated error of an fp8 e4m3 weight (round to nearest, 3 mantissa bits): 2^-4 relative above the smallest
    normal 2^-6 * scale, 2^-10 * scale (half a subnormal step) below it."""
    return torch.maximum(w.abs() * 2 ** -4, torch.as_tensor(2 ** -10 * scale))


@pytest.fixture(scope="module")
def layouts(model_root, tmp_path_factory):
    """The reference weights written as each release lays them out: name -> (path, load kwargs)."""
    root, sp, model = model_root
    base = tmp_path_factory.mktemp("umt5_layouts")
    hf = {k: v.clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    wan = wan_names(hf)
    spiece = torch.tensor(list(sp.serialized_model_proto()), dtype=torch.uint8)
    out = {"diffusers": (root, {})}
    original = base / "Wan2.1-T2V-1.3B"  # the original release folder
    (original / "google").mkdir(parents=True)
    torch.save({k: v.bfloat16() for k, v in wan.items()}, original / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copytree(root / "tokenizer", original / "google" / "umt5-xxl")
    out["wan-original"] = (original, {})
    kijai = base / "kijai"
    kijai.mkdir()
    save_file({k: v.bfloat16() for k, v in wan.items()}, kijai / "umt5-xxl-enc-bf16.safetensors")
    save_file({k: v.to(torch.float8_e4m3fn) if _is_linear(k) else v.bfloat16() for k, v in wan.items()},
              kijai / "umt5-xxl-enc-fp8_e4m3fn.safetensors")
    out["kijai-bf16"] = (kijai / "umt5-xxl-enc-bf16.safetensors", {"tokenizer": root / "tokenizer"})
    out["kijai-fp8"] = (kijai / "umt5-xxl-enc-fp8_e4m3fn.safetensors",
                        {"tokenizer": root / "tokenizer" / "spiece.model"})
    comfy = base / "comfy"
    comfy.mkdir()
    save_file({k: v.half() for k, v in hf.items()} | {"spiece_model": spiece}, comfy / "umt5_xxl_fp16.safetensors")
    save_file(comfy_scaled_fp8(hf)[0] | {"spiece_model": spiece}, comfy / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    out["comfy-fp16"] = (comfy / "umt5_xxl_fp16.safetensors", {})
    out["comfy-fp8-scaled"] = (comfy / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", {})
    return out


def _reference(model, cast, dtype) -> UMT5Encoder:
    """Our encoder with the reference weights cast as a file's storage casts them, run in `dtype` (the loaders are
    checked bitwise against it; it is checked against transformers in test_umt5_matches_transformers)."""
    ref = UMT5Encoder(UMT5Config.from_fields(model.config.to_dict()))
    sd = {k: cast(v) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    ref.load_state_dict(sd)
    return ref.to(dtype).eval()


# layout -> (load dtype, the cast the file's storage applies to the reference weights)
EXACT = {"diffusers": (torch.float32, lambda v: v), "wan-original": (torch.bfloat16, lambda v: v.bfloat16()),
         "kijai-bf16": (torch.float32, lambda v: v.bfloat16().float()),
         "comfy-fp16": (torch.float32, lambda v: v.half().float())}


@pytest.mark.parametrize("layout", list(EXACT))
def test_layouts_give_the_reference_output_bitwise(model_root, layouts, layout):
    _, sp, model = model_root
    path, kw = layouts[layout]
    dtype, cast = EXACT[layout]
    enc = load_text_encoder(path, dtype=dtype, text_len=TEXT_LEN, **kw)
    assert (enc.text_dim, enc.dtype, enc.device.type) == (D_MODEL, dtype, "cpu")
    ref = _reference(model, cast, dtype)
    for prompt in SENTENCES[:3]:
        ids, mask = enc.tokenize(prompt)
        n = int(mask.sum())
        assert ids[0, : n - 1].tolist() == sp.encode(prompt)[: n - 1]  # every layout's tokenizer: the same ids
        with torch.no_grad():
            want = ref(ids[:, :n])
        assert torch.equal(enc.encode_trimmed(prompt), want), (layout, prompt)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 0.05)])
def test_umt5_matches_transformers_and_real_tokens_equal_padded(model_root, encoder, dtype, tol):
    """engine/umt5.py against transformers' UMT5EncoderModel (same weights): upstream's run on ids padded to
    text_len with the mask equals, at the valid positions, ours on the real tokens only; the padded run of ours
    equals its real-token run too. `tol` is relative to the largest activation (bf16: ~2^-7 per op, a few ops)."""
    _, _, model = model_root
    hf = copy.deepcopy(model).to(dtype).eval()
    ours = _reference(model, lambda v: v, dtype)
    for prompt in ("a red fox", "a cat", "a dog"):
        ids, mask = encoder.tokenize(prompt)
        n = int(mask.sum())
        assert n < TEXT_LEN  # there is padding to skip
        with torch.no_grad():
            upstream = hf(input_ids=ids, attention_mask=mask).last_hidden_state[:, :n].float()
            padded = ours(ids, mask)[:, :n].float()
            real = ours(ids[:, :n]).float()
        scale = upstream.abs().max()
        assert (real - upstream).abs().max() <= tol * scale, (dtype, prompt)
        assert (padded - upstream).abs().max() <= tol * scale, (dtype, prompt)
        assert (real - padded).abs().max() <= tol * scale, (dtype, prompt)


@pytest.mark.parametrize("layout", ["kijai-fp8", "comfy-fp8-scaled"])
def test_fp8_layouts_within_quantisation_error(model_root, layouts, layout):
    """Weights within the stated e4m3 bound of the reference (scale 1 for Kijai's plain fp8 cast); outputs within
    2^-4 (relative L2) of the fp32 reference: the worst per-weight error, while the RMS rounding error is
    2^-4 / sqrt(3) ~ 3.6% per weight (measured here: ~4.3% after two layers)."""
    _, _, model = model_root
    path, kw = layouts[layout]
    enc = load_text_encoder(path, dtype=torch.float32, text_len=TEXT_LEN, **kw)
    theirs = enc.model.state_dict()
    scales = comfy_scaled_fp8(model.state_dict())[1] if layout == "comfy-fp8-scaled" else {}
    for k, v in model.state_dict().items():
        if _is_linear(k):
            err = (theirs[k] - v).abs()
            assert (err <= fp8_bound(v, scales.get(k, 1.0))).all() and err.max() > 0, k
    for prompt in SENTENCES[:3]:
        ids, mask = enc.tokenize(prompt)
        n = int(mask.sum())
        with torch.no_grad():
            want = model(input_ids=ids[:, :n]).last_hidden_state
        got = enc.encode_trimmed(prompt)
        assert (got - want).norm() / want.norm() < 2 ** -4, (layout, prompt)


def test_default_is_bf16_on_cpu(layouts):
    enc = load_text_encoder(layouts["wan-original"][0], text_len=TEXT_LEN)
    assert enc.dtype == torch.bfloat16 and enc.device.type == "cpu"
    assert all(p.dtype == torch.bfloat16 for p in enc.model.parameters())


def test_embedded_sentencepiece_tokenizes_like_transformers(model_root):
    root, sp, _ = model_root
    ours = SentencePieceTokenizer(sp.serialized_model_proto(), TEXT_LEN)
    hf = hf_tokenize(transformers.AutoTokenizer.from_pretrained(root / "tokenizer"), TEXT_LEN)
    for prompt in [*SENTENCES, " ".join(SENTENCES), "a", "UPPER case, punctuation!"]:
        a, b = ours(prompt), hf(prompt)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), prompt


def test_tokenizer_is_found_beside_the_weights(layouts, tmp_path, model_root):
    path, _ = layouts["kijai-bf16"]
    shutil.copy(path, tmp_path / path.name)
    with pytest.raises(EngineError, match=r"no tokenizer found for .*tokenizer= the google/umt5-xxl folder"):
        load_text_encoder(tmp_path / path.name, text_len=TEXT_LEN)
    shutil.copytree(model_root[0] / "tokenizer", tmp_path / "google" / "umt5-xxl")
    assert load_text_encoder(tmp_path / path.name, text_len=TEXT_LEN).text_dim == D_MODEL
    # ComfyUI's embedded sentencepiece model serves as the tokenizer, unless one is passed
    comfy, _ = layouts["comfy-fp16"]
    assert isinstance(load_text_encoder(comfy, text_len=TEXT_LEN).tokenize_fn, SentencePieceTokenizer)
    enc = load_text_encoder(comfy, tokenizer=model_root[0] / "tokenizer", text_len=TEXT_LEN)
    assert not isinstance(enc.tokenize_fn, SentencePieceTokenizer)


# -- errors ------------------------------------------------------------------------------------------------------


def _copy_root(src, dst, skip=()):
    for sub in ("text_encoder", "tokenizer"):
        for f in (src / sub).iterdir():
            if f"{sub}/{f.name}" not in skip and sub not in skip:
                (dst / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst / sub / f.name)
    return dst


def _error(*args, **kw) -> str:
    with pytest.raises(EngineError) as e:
        load_text_encoder(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def test_cannot_load_messages_name_the_cause(model_root, layouts, tmp_path):
    src = model_root[0]
    assert "not found" in _error(tmp_path / "nope")
    assert "no text encoder in folder" in _error(tmp_path)
    r = _copy_root(src, tmp_path / "noweights", skip=("text_encoder/model.safetensors",))
    assert "no weights (*.safetensors)" in _error(r)
    r = _copy_root(src, tmp_path / "notok", skip=("tokenizer",))
    assert "no tokenizer found" in _error(r)
    r = _copy_root(src, tmp_path / "t5")
    cfg = json.loads((r / "text_encoder" / "config.json").read_text())
    (r / "text_encoder" / "config.json").write_text(json.dumps(cfg | {"model_type": "t5"}))
    assert "not umT5" in _error(r)
    r = _copy_root(src, tmp_path / "broken")
    (r / "text_encoder" / "model.safetensors").write_bytes(b"\x00garbage")
    msg = _error(r)
    assert "corrupt or truncated" in msg and "download it again" in msg
    # a plain T5 (one relative position bias, in block 0) is named as such
    hf = {k: v for k, v in model_root[2].state_dict().items()
          if "block.1.layer.0.SelfAttention.relative" not in k and k != "encoder.embed_tokens.weight"}
    save_file(hf, tmp_path / "t5.safetensors")
    assert "is a T5 encoder" in _error(tmp_path / "t5.safetensors", tokenizer=src / "tokenizer")
    # tensors missing, or not a text encoder at all
    wan = torch.load(layouts["wan-original"][0] / "models_t5_umt5-xxl-enc-bf16.pth")
    save_file({k: v for k, v in wan.items() if k != "blocks.1.ffn.fc2.weight"}, tmp_path / "short.safetensors")
    msg = _error(tmp_path / "short.safetensors", tokenizer=src / "tokenizer")
    assert "missing tensors: encoder.block.1.layer.1.DenseReluDense.wo.weight" in msg
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, tmp_path / "dit.safetensors")
    assert "not a umT5 text encoder" in _error(tmp_path / "dit.safetensors")
    assert "tokenizer not found" in _error(layouts["kijai-bf16"][0], tokenizer=tmp_path / "none")


# -- prompt cache ------------------------------------------------------------------------------------------------


def test_memory_and_disk_cache(encoder, tmp_path):
    calls0 = encoder.calls
    cache = PromptCache(encoder, tmp_path / "prompts")
    a = cache.encode("a red fox")
    assert encoder.calls == calls0 + 1
    assert torch.equal(a, encoder.encode("a red fox"))
    calls0 = encoder.calls
    b = cache.encode("  a red   fox")  # same cleaned prompt -> memory hit
    assert torch.equal(a, b) and encoder.calls == calls0
    assert cache.stats == {"memory": 1, "disk": 0, "computed": 1, "bad_files": 0}
    b.add_(1)  # callers cannot damage the cached entry
    assert torch.equal(cache.encode("a red fox"), a)
    files = list((tmp_path / "prompts").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "prompts").glob(".tmp-*"))
    # a new cache on the same folder (a restart) reads the file instead of running the encoder
    cache2 = PromptCache(encoder, tmp_path / "prompts")
    assert "a red fox" in cache2 and "a blue fox" not in cache2
    c = cache2.encode("a red fox")
    assert torch.equal(c, a) and encoder.calls == calls0
    assert cache2.stats["disk"] == 1 and cache2.stats["computed"] == 0
    assert cache2.encode("a red fox", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_cache_keys_depend_on_encoder_and_length(encoder, tmp_path):
    tiny_a, tiny_b = tiny_text_encoder(D_MODEL, TEXT_LEN, seed=0), tiny_text_encoder(D_MODEL, TEXT_LEN, seed=1)
    keys = {PromptCache(e, tmp_path).key("a red fox") for e in (encoder, tiny_a, tiny_b)}
    keys.add(PromptCache(tiny_text_encoder(D_MODEL, 8, seed=0), tmp_path).key("a red fox"))
    assert len(keys) == 4
    ca = PromptCache(tiny_a, tmp_path)
    cb = PromptCache(tiny_b, tmp_path)
    assert not torch.equal(ca.encode("x"), cb.encode("x"))
    assert cb.stats["computed"] == 1 and cb.stats["disk"] == 0


def test_lru_bound(tmp_path):
    enc = tiny_text_encoder(D_MODEL, TEXT_LEN)
    cache = PromptCache(enc, None, max_memory=2)
    for p in ("one", "two", "three"):
        cache.encode(p)
    assert enc.calls == 3
    cache.encode("three")
    cache.encode("two")
    assert enc.calls == 3
    cache.encode("one")  # evicted (least recently used), no disk cache
    assert enc.calls == 4 and len(cache._mem) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip_payload", "wrong_key"])
def test_corrupted_cache_file_is_recomputed(tmp_path, damage):
    enc = tiny_text_encoder(D_MODEL, TEXT_LEN)
    folder = tmp_path / "prompts"
    ref = PromptCache(enc, folder).encode("a red fox")
    (file,) = folder.glob("*.safetensors")
    data = bytearray(file.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not a safetensors file")
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_payload":
        data[-5] ^= 0xFF
    else:  # a valid file for another prompt, renamed to this key
        other = PromptCache(enc, tmp_path / "other")
        other.encode("a blue fox")
        (ofile,) = (tmp_path / "other").glob("*.safetensors")
        data = bytearray(ofile.read_bytes())
    file.write_bytes(bytes(data))
    calls0 = enc.calls
    cache = PromptCache(enc, folder)
    out = cache.encode("a red fox")
    assert torch.equal(out, ref)
    assert enc.calls == calls0 + 1 and cache.stats["bad_files"] == 1 and cache.stats["computed"] == 1
    # the file was rewritten and is good again
    cache3 = PromptCache(enc, folder)
    assert torch.equal(cache3.encode("a red fox"), ref) and cache3.stats["disk"] == 1


def test_unwritable_cache_folder_falls_back_to_memory(tmp_path):
    enc = tiny_text_encoder(D_MODEL, TEXT_LEN)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = PromptCache(enc, blocker / "prompts")  # cannot mkdir below a file
    a = cache.encode("a red fox")
    assert torch.equal(cache.encode("a red fox"), a) and enc.calls == 1


# -- tiny encoder ------------------------------------------------------------------------------------------------


def test_byte_tokenizer():
    tok = ByteTokenizer(8)
    ids, mask = tok("hé")
    assert ids.tolist() == [[ord("h") + 2, 0xC3 + 2, 0xA9 + 2, 1, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]
    ids, mask = tok("a much longer prompt")
    assert mask.all() and ids[0, -1] == 1 and ids[0, 0] == ord("a") + 2


def test_tiny_text_encoder_deterministic_and_fits_tiny_dit():
    from sdv2_studio.engine.config import get_preset
    from sdv2_studio.engine.model import CausalWanModel

    state = torch.random.get_rng_state()
    enc = tiny_text_encoder()
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert isinstance(enc, TextEncoder) and enc.model_id.startswith("tiny-umt5")
    out = enc.encode("a watercolor fox")
    assert out.shape == (1, 32, 64) and out.dtype == torch.float32
    n = len(b"a watercolor fox") + 1
    assert (out[0, n:] == 0).all() and (out[0, :n].abs().sum(-1) > 0).all()
    assert torch.isfinite(out).all() and 0.1 < out[0, :n].std() < 10
    assert torch.equal(out, tiny_text_encoder().encode("a watercolor fox"))
    assert not torch.equal(out, tiny_text_encoder(seed=1).encode("a watercolor fox"))
    cfg = get_preset("tiny")
    enc.check_compatible(cfg.text_dim, cfg.text_len)
    with pytest.raises(EngineError, match="text_dim"):
        enc.check_compatible(4096, 512)
    # the DiT zero-pads a trimmed context itself: trimmed and padded contexts embed identically
    torch.manual_seed(0)
    dit = CausalWanModel(cfg).eval()
    with torch.no_grad():
        assert torch.equal(dit.embed_text(enc.encode_trimmed("a watercolor fox")), dit.embed_text(out))


def test_not_enough_ram_is_one_line_before_loading(model_root, monkeypatch):
    from sdv2_studio.engine import memory

    monkeypatch.setattr(memory, "available_host_memory", lambda: 1000)
    with pytest.raises(EngineError, match=r"needs .* of RAM in bfloat16 and .* is available; close other programs"):
        load_text_encoder(model_root[0], text_len=TEXT_LEN)
    monkeypatch.setattr(memory, "available_host_memory", lambda: None)  # the OS does not say: load
    assert load_text_encoder(model_root[0], text_len=TEXT_LEN).dtype == torch.bfloat16
