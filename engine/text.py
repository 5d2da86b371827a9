"""The umT5 text encoder (prompt -> [1, Lt, text_dim] context for the DiT) and a memory + disk prompt cache.

What upstream does (reference notes section 5) and we reproduce: the prompt is cleaned (ftfy if installed,
HTML entities unescaped, whitespace collapsed and stripped), tokenised with padding and truncation to
``text_len`` (512) tokens including the closing ``</s>``, run through the umT5 encoder with the attention
mask, and the hidden states at padding positions are set to zero. The DiT zero-pads shorter contexts itself
(`WanDiT.embed_text`), so a context trimmed to its valid tokens gives exactly the same result; the cache
stores trimmed contexts and hands out padded ones.

Weights come from a diffusers-format model folder (e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``)::

    <root>/text_encoder/config.json + *.safetensors   (transformers UMT5EncoderModel)
    <root>/tokenizer/tokenizer.json (+ tokenizer_config.json, spiece.model)

The encoder may live on another device than the DiT (CPU by default: umT5-XXL is ~11 GB in bf16); the caller
moves the (small) context to the DiT's device. ``transformers`` is imported lazily (optional extra ``text``).

`tiny_text_encoder` builds an UNTRAINED umT5-shaped encoder with fixed-seed random weights and a byte-level
tokenizer of our own, for the embedded ``tiny`` demo model and tests; its outputs carry no meaning.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from sdv2_studio.engine.errors import EngineError

log = logging.getLogger(__name__)

DEFAULT_TEXT_LEN = 512
DOWNLOAD_HINT = "run `sdv2 models download`"
LAYOUT_HINT = ("a diffusers-format Wan2.1 folder with text_encoder/ (config.json + *.safetensors) "
               "and tokenizer/ (tokenizer.json)")

Tokenize = Callable[[str], "tuple[torch.Tensor, torch.Tensor]"]  # prompt -> (ids, mask), each [1, text_len]


# -- prompt cleaning and tokenisers --------------------------------------------------------------------------

try:  # optional, as in upstream's 'whitespace' cleaning
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy = None

_WS = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Upstream's ``clean='whitespace'``: ftfy.fix_text (only if ftfy is installed), HTML entities unescaped
    twice, whitespace runs collapsed to one space, stripped."""
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WS.sub(" ", text).strip()


class ByteTokenizer:
    """Deterministic byte-level tokeniser (no vocabulary file): UTF-8 byte b -> id b + 2, ``<pad>`` = 0,
    ``</s>`` = 1. Like the T5 tokenisers it appends ``</s>``, truncates to leave room for it and pads to
    `text_len`."""

    pad_id, eos_id, offset = 0, 1, 2
    vocab_size = 256 + 2

    def __init__(self, text_len: int):
        if text_len < 1:
            raise EngineError(f"text_len must be >= 1, not {text_len}")
        self.text_len = text_len

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        body = [b + self.offset for b in prompt.encode("utf-8")][: self.text_len - 1]
        ids = body + [self.eos_id]
        n = len(ids)
        ids = ids + [self.pad_id] * (self.text_len - n)
        mask = [1] * n + [0] * (self.text_len - n)
        return torch.tensor([ids], dtype=torch.long), torch.tensor([mask], dtype=torch.long)


def hf_tokenize(tokenizer, text_len: int) -> Tokenize:
    """Wrap a transformers tokenizer as upstream calls it: max-length padding, truncation, ``</s>`` added."""

    def tokenize(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer([prompt], padding="max_length", truncation=True, max_length=text_len,
                        add_special_tokens=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    return tokenize


# -- the encoder ---------------------------------------------------------------------------------------------


class TextEncoder:
    """umT5 encoder + tokeniser. ``encode(prompt)`` -> [1, text_len, text_dim], padding positions zero.

    `model_id` names the weights (folder fingerprint or tiny-model recipe); `cache_id` adds the compute dtype
    and is what `PromptCache` keys on.
    """

    def __init__(self, model: torch.nn.Module, tokenize: Tokenize, *, text_len: int, model_id: str):
        self.model = model.eval().requires_grad_(False)
        self.tokenize_fn = tokenize
        self.text_len = int(text_len)
        self.model_id = model_id
        self.calls = 0  # encoder forward passes run (for diagnostics and tests)

    @property
    def text_dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def cache_id(self) -> str:
        return f"{self.model_id}|{str(self.dtype).removeprefix('torch.')}"

    def to(self, device=None, dtype: torch.dtype | None = None) -> TextEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    def check_compatible(self, text_dim: int, text_len: int) -> None:
        """Raise EngineError unless this encoder's output fits a DiT with these text_dim / text_len."""
        if self.text_dim != text_dim:
            raise EngineError(f"text encoder width {self.text_dim} does not match the model's text_dim "
                              f"{text_dim}; use the text encoder that belongs to this model")
        if self.text_len > text_len:
            raise EngineError(f"text encoder text_len {self.text_len} exceeds the model's {text_len}; "
                              f"load the text encoder with text_len={text_len}")

    def tokenize(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned, tokenised prompt: (ids, mask), each [1, text_len] int64."""
        return self.tokenize_fn(clean_prompt(prompt))

    @torch.no_grad()
    def encode_trimmed(self, prompt: str) -> torch.Tensor:
        """[1, n, text_dim] in the encoder's dtype and device: the n valid (unpadded) token states."""
        ids, mask = self.tokenize(prompt)
        dev = self.device
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        self.calls += 1
        n = int(mask.sum())  # mask is on the host: no device sync
        return out[:, :n].contiguous()

    def encode(self, prompt: str, *, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """[1, text_len, text_dim]; padding positions are zero. `dtype`/`device` default to the encoder's."""
        return pad_context(self.encode_trimmed(prompt), self.text_len).to(device=device, dtype=dtype)

    __call__ = encode


def pad_context(ctx: torch.Tensor, text_len: int) -> torch.Tensor:
    """Zero-pad [1, n, D] to [1, text_len, D]."""
    return F.pad(ctx, (0, 0, 0, text_len - ctx.shape[1])) if ctx.shape[1] < text_len else ctx


def _transformers():
    try:
        import transformers
    except ImportError:
        raise EngineError("the text encoder needs the transformers package: "
                          "pip install 'streamdiffusion-studio[text]'") from None
    return transformers


def _find_folders(root: Path) -> tuple[Path, Path]:
    """(text_encoder dir, tokenizer dir) for a model root, or for its text_encoder/ folder given directly."""
    if not root.exists():
        raise EngineError(f"text encoder folder not found: {root}; expected {LAYOUT_HINT}; {DOWNLOAD_HINT}")
    if (root / "text_encoder").is_dir():
        return root / "text_encoder", root / "tokenizer"
    if (root / "config.json").is_file() and root.name == "text_encoder":
        return root, root.parent / "tokenizer"
    raise EngineError(f"no text_encoder/ folder in {root}; expected {LAYOUT_HINT}; {DOWNLOAD_HINT}")


def _fingerprint(te_dir: Path, tok_dir: Path) -> str:
    """Cheap identity of the weights: config contents plus names and sizes of all model/tokenizer files."""
    h = hashlib.sha256((te_dir / "config.json").read_bytes())
    for d in (te_dir, tok_dir):
        for f in sorted(d.iterdir()):
            if f.is_file():
                h.update(f"{d.name}/{f.name}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def load_text_encoder(root: str | os.PathLike, *, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.bfloat16, text_len: int = DEFAULT_TEXT_LEN) -> TextEncoder:
    """Load the umT5 encoder and tokenizer from a diffusers-format model folder (or its text_encoder/).

    `dtype` is the weight / compute dtype (upstream runs umT5 in bf16); outputs come in that dtype.
    """
    root = Path(root).expanduser()
    te_dir, tok_dir = _find_folders(root)
    cfg_file = te_dir / "config.json"
    if not cfg_file.is_file():
        raise EngineError(f"{cfg_file} is missing; expected {LAYOUT_HINT}; {DOWNLOAD_HINT}")
    if not any(te_dir.glob("*.safetensors")):
        raise EngineError(f"no *.safetensors weights in {te_dir}; expected {LAYOUT_HINT}; {DOWNLOAD_HINT}")
    if not any((tok_dir / f).is_file() for f in ("tokenizer.json", "spiece.model")):
        raise EngineError(f"tokenizer not found in {tok_dir} (need tokenizer.json); expected {LAYOUT_HINT}; "
                          f"{DOWNLOAD_HINT}")
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read {cfg_file} ({type(e).__name__}); "
                          f"re-download it: {DOWNLOAD_HINT}") from None
    if model_type != "umt5":
        raise EngineError(f"{te_dir} holds a {model_type!r} model, not umT5 (model_type 'umt5'); "
                          f"use the Wan2.1 text encoder: {DOWNLOAD_HINT}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise EngineError("text encoder device 'cuda' requested but no CUDA GPU is available; "
                          "use device='cpu'")

    tf = _transformers()
    try:
        model = tf.UMT5EncoderModel.from_pretrained(te_dir, dtype=dtype, local_files_only=True)
    except Exception as e:  # any loader failure means a broken or partial download
        first = str(e).splitlines()[0] if str(e) else ""
        raise EngineError(f"cannot load the text encoder from {te_dir} ({type(e).__name__}: {first}); "
                          f"re-download it: {DOWNLOAD_HINT}") from None
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except Exception as e:
        raise EngineError(f"cannot load the tokenizer from {tok_dir} ({type(e).__name__}); it needs "
                          f"tokenizer.json; re-download it: {DOWNLOAD_HINT}") from None
    model.to(device)
    model_id = f"umt5:{_fingerprint(te_dir, tok_dir)}"
    return TextEncoder(model, hf_tokenize(tokenizer, text_len), text_len=text_len, model_id=model_id)


TINY_RECIPE = "tiny-umt5-v1"  # bump when the tiny encoder's construction changes (invalidates prompt caches)


def tiny_text_encoder(text_dim: int = 64, text_len: int = 32, seed: int = 0, *, num_layers: int = 2,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TextEncoder:
    """An UNTRAINED umT5 encoder (random weights from `seed`) with the byte tokenizer, for the ``tiny`` demo
    model and tests. Needs no download; its outputs are deterministic but meaningless.

    Weights are drawn by our own generator in parameter order (embeddings N(0, 1), projections
    N(0, 1/fan_in) with the query further scaled by 1/d_kv, norms 1, relative-position biases N(0, 0.1)), so
    they do not depend on transformers' initialisation scheme or the global RNG.
    """
    tf = _transformers()
    heads = max(1, text_dim // 16)
    if text_dim % heads:
        raise EngineError(f"tiny text encoder: text_dim {text_dim} must be a multiple of 16 (or below 16)")
    d_kv = text_dim // heads
    cfg = tf.UMT5Config(vocab_size=ByteTokenizer.vocab_size, d_model=text_dim, d_kv=d_kv, d_ff=2 * text_dim,
                        num_layers=num_layers, num_heads=heads, relative_attention_num_buckets=32,
                        relative_attention_max_distance=128, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                        is_encoder_decoder=False, use_cache=False, pad_token_id=ByteTokenizer.pad_id,
                        eos_token_id=ByteTokenizer.eos_id, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        model = tf.UMT5EncoderModel(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                w = torch.ones(p.shape)
            elif "relative_attention_bias" in name:
                w = 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() == 2 and name.startswith("shared"):
                w = torch.randn(p.shape, generator=g)
            else:
                std = p.shape[1] ** -0.5 * (d_kv ** -0.5 if name.endswith(".q.weight") else 1.0)
                w = std * torch.randn(p.shape, generator=g)
            p.copy_(w)
    model.to(device=device, dtype=dtype)
    model_id = f"{TINY_RECIPE}:d{text_dim}:len{text_len}:layers{num_layers}:seed{seed}"
    return TextEncoder(model, ByteTokenizer(text_len), text_len=text_len, model_id=model_id)


# -- prompt cache --------------------------------------------------------------------------------------------

_FORMAT = "sdv2-prompt-context-v1"


def default_prompt_cache_dir() -> Path:
    """Per-user cache folder for encoded prompts."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("sdv2-studio")) / "prompts"


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


class PromptCache:
    """Encoded prompts: an LRU in memory (at most `max_memory` entries) and, if `folder` is given, one
    safetensors file per prompt on disk, so switching between presets already seen is instant and survives
    restarts.

    Key = sha256 of the encoder's `cache_id` (weights fingerprint + dtype), `text_len` and the cleaned prompt.
    Files are written atomically (temp file + os.replace) and carry the key, prompt and a checksum of the
    tensor; a file that fails to load or verify is ignored, deleted and recomputed. Disk problems never fail
    an encode: they are logged and the cache falls back to memory. Contexts are stored trimmed to their valid
    tokens on the CPU and returned zero-padded to `text_len`. Thread-safe.
    """

    def __init__(self, encoder: TextEncoder, folder: str | os.PathLike | None = None, max_memory: int = 64):
        if max_memory < 0:
            raise EngineError(f"prompt cache size must be >= 0, not {max_memory}")
        self.encoder = encoder
        self.folder = Path(folder).expanduser() if folder is not None else None
        self.max_memory = max_memory
        self._mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.RLock()
        self.stats = {"memory": 0, "disk": 0, "computed": 0, "bad_files": 0}

    def key(self, prompt: str) -> str:
        text = f"{self.encoder.cache_id}\n{self.encoder.text_len}\n{clean_prompt(prompt)}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def path(self, prompt: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{self.key(prompt)}.safetensors"

    def encode(self, prompt: str, *, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """[1, text_len, text_dim] context: from memory, else from disk, else from the encoder.
        `dtype`/`device` default to the encoder's dtype and the CPU."""
        ctx = self.encode_trimmed(prompt)
        out = pad_context(ctx, self.encoder.text_len).to(device=device, dtype=dtype)
        return out.clone() if out is ctx else out  # never hand out the cached tensor itself

    __call__ = encode

    def encode_trimmed(self, prompt: str) -> torch.Tensor:
        """[1, n, text_dim] on the CPU (n = valid tokens). Do not modify the returned tensor in place."""
        key = self.key(prompt)
        with self._lock:
            ctx = self._mem.get(key)
            if ctx is not None:
                self._mem.move_to_end(key)
                self.stats["memory"] += 1
                return ctx
            ctx = self._load(key)
            if ctx is not None:
                self.stats["disk"] += 1
            else:
                ctx = self.encoder.encode_trimmed(prompt).to("cpu")
                self.stats["computed"] += 1
                self._save(key, clean_prompt(prompt), ctx)
            self._remember(key, ctx)
            return ctx

    def __contains__(self, prompt: str) -> bool:
        key = self.key(prompt)
        with self._lock:
            if key in self._mem:
                return True
            return self.folder is not None and (self.folder / f"{key}.safetensors").is_file()

    def clear_memory(self) -> None:
        with self._lock:
            self._mem.clear()

    def _remember(self, key: str, ctx: torch.Tensor) -> None:
        if self.max_memory == 0:
            return
        self._mem[key] = ctx
        self._mem.move_to_end(key)
        while len(self._mem) > self.max_memory:
            self._mem.popitem(last=False)

    def _load(self, key: str) -> torch.Tensor | None:
        if self.folder is None:
            return None
        file = self.folder / f"{key}.safetensors"
        if not file.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
                ctx = f.get_tensor("context")
            problem = self._verify(key, meta, ctx)
        except Exception as e:  # any unreadable file is a cache miss
            problem = f"unreadable ({type(e).__name__})"
        if problem is None:
            return ctx
        self.stats["bad_files"] += 1
        log.warning("prompt cache file %s is %s; recomputing it", file, problem)
        try:
            file.unlink()
        except OSError:
            pass
        return None

    def _verify(self, key: str, meta: dict, ctx: torch.Tensor) -> str | None:
        if meta.get("format") != _FORMAT or meta.get("key") != key:
            return "from another format or key"
        if meta.get("model") != self.encoder.cache_id or meta.get("text_len") != str(self.encoder.text_len):
            return "from another encoder"
        if (ctx.dim() != 3 or ctx.shape[0] != 1 or not 1 <= ctx.shape[1] <= self.encoder.text_len
                or ctx.shape[2] != self.encoder.text_dim or ctx.dtype != self.encoder.dtype):
            return f"of the wrong shape {tuple(ctx.shape)} / dtype {ctx.dtype}"
        if meta.get("sha256") != _digest(ctx):
            return "corrupted (checksum mismatch)"
        return None

    def _save(self, key: str, prompt: str, ctx: torch.Tensor) -> None:
        if self.folder is None:
            return
        from safetensors.torch import save

        ctx = ctx.contiguous()
        meta = {"format": _FORMAT, "key": key, "model": self.encoder.cache_id,
                "text_len": str(self.encoder.text_len), "prompt": prompt, "sha256": _digest(ctx)}
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            data = save({"context": ctx}, metadata=meta)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".safetensors")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / f"{key}.safetensors")
            tmp = None
        except OSError as e:
            log.warning("cannot write the prompt cache in %s (%s); keeping the prompt in memory only",
                        self.folder, e)
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
