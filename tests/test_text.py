"""engine.text: loading a diffusers-format umT5 folder, padding, the prompt cache, the tiny encoder, errors.

The model folder is built on the spot: a small UMT5EncoderModel saved with `save_pretrained`, and a umT5-style
(Unigram) tokenizer trained with the sentencepiece package on a few sentences, wrapped as transformers'
`T5Tokenizer` and saved as tokenizer.json (no download; no protobuf needed).
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.text import (
    ByteTokenizer,
    PromptCache,
    TextEncoder,
    clean_prompt,
    load_text_encoder,
    tiny_text_encoder,
)

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


# -- errors ------------------------------------------------------------------------------------------------------


def _copy_root(src, dst, skip=()):
    import shutil

    for sub in ("text_encoder", "tokenizer"):
        for f in (src / sub).iterdir():
            if f"{sub}/{f.name}" not in skip and sub not in skip:
                (dst / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst / sub / f.name)
    return dst


def test_missing_folder_errors(model_root, tmp_path):
    src = model_root[0]
    with pytest.raises(EngineError, match=r"not found.*text_encoder/.*sdv2 models download"):
        load_text_encoder(tmp_path / "nope")
    with pytest.raises(EngineError, match=r"no text_encoder/ folder.*sdv2 models download"):
        load_text_encoder(tmp_path)
    r = _copy_root(src, tmp_path / "noweights", skip=("text_encoder/model.safetensors",))
    with pytest.raises(EngineError, match=r"no \*\.safetensors.*sdv2 models download"):
        load_text_encoder(r)
    r = _copy_root(src, tmp_path / "notok", skip=("tokenizer",))
    with pytest.raises(EngineError, match=r"tokenizer not found.*sdv2 models download"):
        load_text_encoder(r)
    r = _copy_root(src, tmp_path / "t5", skip=())
    cfg = json.loads((r / "text_encoder" / "config.json").read_text())
    cfg["model_type"] = "t5"
    (r / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError, match="not umT5"):
        load_text_encoder(r)
    r = _copy_root(src, tmp_path / "broken")
    (r / "text_encoder" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(EngineError, match=r"cannot load the text encoder.*re-download"):
        load_text_encoder(r)


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
