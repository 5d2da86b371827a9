"""The umT5 text encoder (prompt -> [1, Lt, text_dim] context for the DiT) and a memory + disk prompt cache.

What upstream does (reference notes section 5) and we reproduce: the prompt is cleaned (ftfy if installed,
HTML entities unescaped, whitespace collapsed and stripped), tokenised with padding and truncation to
``text_len`` (512) tokens including the closing ``</s>``, run through the umT5 encoder with the attention
mask, and the hidden states at padding positions are set to zero. The DiT zero-pads shorter contexts itself
(`WanDiT.embed_text`), so a context trimmed to its valid tokens gives exactly the same result; the cache
stores trimmed contexts and hands out padded ones.

`load_text_encoder` reads every umT5 release, the layout told by the key names and the size by the shapes, into
our umT5 encoder (`engine.umt5`, module names = transformers' checkpoint names; built on the meta device, weights
attached one at a time):

* original Wan2.1 (``Wan-AI/Wan2.1-T2V-1.3B``): ``models_t5_umt5-xxl-enc-bf16.pth`` in Wan's ``T5Encoder`` names
  (``token_embedding``, ``blocks.N.attn.q``, ``blocks.N.ffn.gate.0`` ...; tables `_WAN_TO_HF_*`) with the tokenizer
  folder ``google/umt5-xxl/`` beside it;
* diffusers (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): ``text_encoder/`` (config.json + safetensors shards, fp32) and
  ``tokenizer/``;
* Kijai (``umt5-xxl-enc-bf16.safetensors``, ``umt5-xxl-enc-fp8_e4m3fn.safetensors``): Wan names in one file;
* ComfyUI (``umt5_xxl_fp16.safetensors``, ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``): transformers names in one
  file, scaled fp8 dequantised (`engine.weights`), and the sentencepiece model embedded as a ``spiece_model``
  byte tensor, which serves as the tokenizer unless one is given (ComfyUI tokenises with it the same way).

Single files need a tokenizer: ``tokenizer=`` (a tokenizer folder or a ``spiece.model``), else one found beside
the weights (``google/umt5-xxl/``, ``tokenizer/``), else the embedded one. Weights load in bf16 on the CPU by
default (umT5-XXL: 5.7 G parameters, 11.4 GB; fp8 files are dequantised to it); the caller moves the (small)
context to the DiT's device. Only the real tokens are encoded (see `TextEncoder.encode_trimmed`). ``transformers``
is imported only for tokenizer folders (``AutoTokenizer``; any version from the declared floor on).

`tiny_text_encoder` builds an UNTRAINED umT5-shaped encoder with fixed-seed random weights and a byte-level
tokenizer of our own, for the embedded ``tiny`` demo model and tests; its outputs carry no meaning.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import logging
import math
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
from sdv2_studio.engine.umt5 import UMT5Config, UMT5Encoder
from sdv2_studio.engine.weights import TensorFile, first_line, open_tensors, shape_mismatch, some

log = logging.getLogger(__name__)

DEFAULT_TEXT_LEN = 512
PROCESS_MIN_PARAMS = 50_000_000  # `TextEncoder.use_process(None)`: encoders this large run in a child process
DOWNLOAD_HINT = "run `sdv2 models download`"
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"  # the original Wan2.1 release
LAYOUT_HINT = (f"a Wan2.1 folder ({WAN_T5_FILE} + google/umt5-xxl/, or diffusers text_encoder/ + tokenizer/) "
               "or a single umT5 file")

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

    def encode(self, prompt: str) -> list[int]:
        return [b + self.offset for b in prompt.encode("utf-8")]

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.encode(prompt)[: self.text_len - 1] + [self.eos_id]
        n = len(ids)
        ids = ids + [self.pad_id] * (self.text_len - n)
        mask = [1] * n + [0] * (self.text_len - n)
        return torch.tensor([ids], dtype=torch.long), torch.tensor([mask], dtype=torch.long)


class SentencePieceTokenizer(ByteTokenizer):
    """A sentencepiece model used directly (ComfyUI's umT5 tokenisation): its pieces, then ``</s>``, padded."""

    def __init__(self, model_proto: bytes, text_len: int):
        super().__init__(text_len)
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.pad_id, self.eos_id = max(self.sp.pad_id(), 0), self.sp.eos_id()
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, prompt: str) -> list[int]:
        return self.sp.encode(prompt)


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

    def __init__(self, model: torch.nn.Module, tokenize: Tokenize, *, text_len: int, model_id: str,
                 recipe: functools.partial | None = None):
        """`recipe`: a picklable call that builds this encoder again (`load_text_encoder` / `tiny_text_encoder` with
        its arguments). It lets `release` free the weights (loaded again on the next encode) and `use_process`
        move them into a low-priority child process."""
        self.model: torch.nn.Module | None = model.eval().requires_grad_(False)
        self.tokenize_fn = tokenize
        self.text_len = int(text_len)
        self.model_id = model_id
        self.calls = 0  # encoder forward passes run (for diagnostics and tests)
        self.reloads = 0  # times the weights were loaded again in this process after `release`
        self.processes = 0  # child processes started to hold the weights (`use_process`)
        self._recipe = recipe
        self._in_process = False  # `use_process` chose the child process
        self._worker = None  # the EncoderProcess while it runs
        self._background = threading.local()  # .on: this thread encodes in the background (`background_thread`)
        self.child_lowest_priority = True  # the child's priority (False: normal, for tests on a shared machine)
        self._lock = threading.Lock()  # where the weights are (here, in the child, released)
        self._describe(model)

    def _describe(self, model: torch.nn.Module) -> None:
        p = next(model.parameters())
        self.text_dim, self.device, self.dtype = int(model.config.d_model), p.device, p.dtype
        self.num_params = sum(q.numel() for q in model.parameters())

    @property
    def cache_id(self) -> str:
        return f"{self.model_id}|{str(self.dtype).removeprefix('torch.')}"

    def to(self, device=None, dtype: torch.dtype | None = None) -> TextEncoder:
        self._stop_worker()
        model = self._loaded()
        model.to(device=device, dtype=dtype)
        self._describe(model)
        if self._recipe is not None:
            kw = {**self._recipe.keywords, **({} if device is None else {"device": device}),
                  **({} if dtype is None else {"dtype": dtype})}
            self._recipe = functools.partial(self._recipe.func, *self._recipe.args, **kw)
        return self

    @property
    def released(self) -> bool:
        return self.model is None and self._worker is None

    def release(self) -> bool:
        """Free the weights (every prompt the stream may need is cached), here or in the child process; the next
        encode loads them again. False (nothing freed) when this encoder cannot be rebuilt."""
        with self._lock:
            if self._recipe is None or self.released:
                return False
            self.model = None
        self._stop_worker()
        return True

    def use_process(self, when: bool | None = None) -> bool:
        """Run the forward of background encodes (threads that called `background_thread`: a live stream's) in a
        child process at the lowest CPU priority (`engine.text_process`), so that a prompt typed live never slows
        the chunks. The child starts now, without weights; the first background encode frees the weights here and
        loads them there (held once). Encodes on other threads (a stream's first prompt) always run here, loading
        the weights back if the child has them. `when` None decides by size: encoders of `PROCESS_MIN_PARAMS` or
        more parameters on the CPU (an encode of a smaller one is a few milliseconds, not worth a process). True if
        the child will be used; a child that cannot be started is one warning, and encodes stay in this process."""
        on = bool(when if when is not None else self.num_params >= PROCESS_MIN_PARAMS)
        on = on and self._recipe is not None and self.device.type == "cpu"
        with self._lock:
            self._in_process = on
        if not on:
            self._stop_worker()
            return False
        try:
            self._start_worker()
        except (OSError, RuntimeError) as e:  # no process can be started here (limits, a frozen app)
            log.warning("cannot start the text encoder's process (%s); prompts are encoded in a thread", e)
            with self._lock:
                self._in_process = False
            return False
        return True

    def background_thread(self) -> None:
        """Mark the calling thread as a background encoder (a thread pool's initializer)."""
        self._background.on = True

    def _start_worker(self):
        """The running child (a new one if there is none or it died)."""
        from sdv2_studio.engine.text_process import EncoderProcess

        with self._lock:
            dead = self._worker if self._worker is not None and not self._worker.alive else None
            if self._worker is None or dead is not None:
                self._worker = EncoderProcess(self._recipe, self.model_id, lowest=self.child_lowest_priority)
                self.processes += 1
            worker = self._worker
        if dead is not None:
            dead.close()
        return worker

    def close(self) -> None:
        """Stop the child process, if any (the weights come back here on the next encode unless `use_process`)."""
        with self._lock:
            self._in_process = False
        self._stop_worker()

    def _stop_worker(self) -> None:
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def _loaded(self) -> torch.nn.Module:
        with self._lock:
            return self._loaded_locked()

    def _loaded_locked(self) -> torch.nn.Module:
        if self.model is None:
            self.model = self._recipe().model.eval().requires_grad_(False)
            self.reloads += 1
        return self.model

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (self._in_process and getattr(self._background, "on", False)):
            if self.model is None:
                self._stop_worker()  # the weights come back here: never held twice
            with self._lock:
                model = self._loaded_locked()
            return model(ids.to(self.device))
        worker = self._start_worker()  # (a new one if the last one died: killed, out of memory)
        with self._lock:
            self.model = None  # the child loads its own copy: the weights are held once
        # waits in a pipe read (the GIL is free): the engine thread runs meanwhile
        return worker.forward(ids.cpu()).to(self.device)

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
        n = int(mask.sum())  # mask is on the host: no device sync
        # Only the n real tokens run: at those positions this equals upstream's run on the padded ids with the
        # mask (tests/test_text.py proves it), for n/text_len of the compute (512 -> ~20 tokens for a preset).
        out = self._forward(ids[:, :n])
        self.calls += 1
        return out

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


# Original Wan T5Encoder names -> transformers UMT5EncoderModel names (per block; from Wan's wan/modules/t5.py:
# `ffn(x) = fc2(fc1(x) * gelu(gate(x)))` and transformers' `wo(wi_1(x) * gelu_new(wi_0(x)))`).
_WAN_TO_HF_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    **{f"attn.{p}.weight": f"layer.0.SelfAttention.{p}.weight" for p in "qkvo"},
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_WAN_TO_HF_TOP = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_WAN_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_BLOCK = re.compile(r"encoder\.block\.(\d+)\.")
_SPIECE = "spiece_model"  # ComfyUI's embedded tokenizer (sentencepiece model bytes)
_REL_BIAS = "layer.0.SelfAttention.relative_attention_bias.weight"


def text_encoder_layout(keys) -> str | None:
    """"wan" (Wan's T5Encoder names: original .pth, Kijai) or "transformers" (diffusers, ComfyUI), else None."""
    if "token_embedding.weight" in keys and "blocks.0.attn.q.weight" in keys:
        return "wan"
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in keys:
        return "transformers"
    return None


def _hf_name(key: str) -> str:
    if key in _WAN_TO_HF_TOP:
        return _WAN_TO_HF_TOP[key]
    m = _WAN_BLOCK.fullmatch(key)
    if m and m[2] in _WAN_TO_HF_BLOCK:
        return f"encoder.block.{m[1]}.{_WAN_TO_HF_BLOCK[m[2]]}"
    return key  # unknown: reported by the strict check


def _hf_shapes(tf: TensorFile) -> dict[str, str]:
    """{transformers name: stored name} for a umT5 file in either layout (tied / tokenizer tensors dropped)."""
    layout = text_encoder_layout(tf.shapes)
    names = {(_hf_name(k) if layout == "wan" else k): k for k in tf.shapes if k != _SPIECE}
    if "shared.weight" not in names and "encoder.embed_tokens.weight" in names:
        names["shared.weight"] = names["encoder.embed_tokens.weight"]
    names.pop("encoder.embed_tokens.weight", None)  # transformers ties it to shared.weight
    return names


def _umt5_config(file: Path, shapes: dict[str, tuple[int, ...]], config: dict) -> dict:
    """UMT5Config arguments from the tensor shapes (and config.json values the shapes cannot tell)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise EngineError(f"{file}: tensor {key} is missing; the file is incomplete or not a umT5 encoder, "
                              "download it again")
        return shapes[key]

    layers = {int(m[1]) for k in shapes if (m := _HF_BLOCK.match(k))}
    if not layers:
        raise EngineError(f"{file}: no encoder blocks; not a umT5 text encoder")
    vocab, d_model = shape("shared.weight")
    buckets, heads = shape(f"encoder.block.0.{_REL_BIAS}")
    if len(layers) > 1 and f"encoder.block.1.{_REL_BIAS}" not in shapes:
        raise EngineError(f"{file} is a T5 encoder (one shared position bias), not umT5; Wan2.1 needs "
                          f"umT5-XXL ({WAN_T5_FILE} or a umt5-xxl file)")
    return dict(vocab_size=vocab, d_model=d_model, num_layers=max(layers) + 1, num_heads=heads,
                d_kv=shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0] // heads,
                d_ff=shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0],
                relative_attention_num_buckets=buckets,
                relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
                layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6))


def describe_text_encoder(tf: TensorFile) -> tuple[str, str] | None:
    """(layout, what it is) for `engine.checkpoint.identify`, or None when the file is not a T5 encoder."""
    layout = text_encoder_layout(tf.shapes)
    if layout is None:
        return None
    names = _hf_shapes(tf)
    try:
        c = _umt5_config(tf.path, {k: tf.shapes[v] for k, v in names.items()}, {})
    except EngineError as e:
        return layout, str(e).removeprefix(f"{tf.path}").lstrip(": ")
    tok = ", tokenizer embedded" if _SPIECE in tf.shapes else ""
    layers = f"{c['num_layers']} layer{'s' if c['num_layers'] != 1 else ''}"
    return layout, (f"umT5 text encoder (d_model {c['d_model']}, {layers}, {c['num_heads']} heads, "
                    f"vocab {c['vocab_size']}{tok})")


def _find_weights(path: Path) -> tuple[Path, list[Path], dict]:
    """(weights file, where a tokenizer may be, config.json values) for a file or a release folder. The
    weights file itself among the places stands for its embedded tokenizer."""
    if not path.exists():
        raise EngineError(f"text encoder not found: {path}; expected {LAYOUT_HINT}; {DOWNLOAD_HINT}")
    if path.is_file():
        return path, [path.parent / "google" / "umt5-xxl", path.parent / "tokenizer", path, path.parent], {}
    if (path / WAN_T5_FILE).is_file():
        return path / WAN_T5_FILE, [path / "google" / "umt5-xxl"], {}
    te_dir = path / "text_encoder" if (path / "text_encoder").is_dir() else path
    if not (te_dir / "config.json").is_file():
        raise EngineError(f"no text encoder in folder {path}: expected {LAYOUT_HINT}; {DOWNLOAD_HINT}")
    try:
        config = json.loads((te_dir / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read {te_dir / 'config.json'} ({type(e).__name__}: {e}); "
                          f"download it again: {DOWNLOAD_HINT}") from None
    if config.get("model_type") != "umt5":
        raise EngineError(f"{te_dir} holds a {config.get('model_type')!r} model, not umT5 (model_type 'umt5'); "
                          f"use the Wan2.1 text encoder: {DOWNLOAD_HINT}")
    for pattern in ("*.safetensors.index.json", "*.safetensors", "*.bin.index.json", "*.bin"):
        found = sorted(te_dir.glob(pattern))
        if len(found) == 1 or (found and pattern.endswith(".index.json")):
            return found[0], [te_dir.parent / "tokenizer", te_dir], config
    raise EngineError(f"no weights (*.safetensors) in {te_dir}; the download is incomplete: {DOWNLOAD_HINT}")


def _tokenizer(given: Path | None, candidates: list[Path], tf: TensorFile, text_len: int) -> tuple[Tokenize, Path]:
    """The tokenizer and the path it came from (see the module docstring for the search order)."""
    if given is not None and not given.exists():
        raise EngineError(f"tokenizer not found: {given}; pass the google/umt5-xxl folder (Wan-AI/Wan2.1-T2V-1.3B) "
                          "or a spiece.model file")
    for where in [given] if given is not None else candidates:
        if where == tf.path:
            if _SPIECE in tf.shapes:
                return SentencePieceTokenizer(tf.read(_SPIECE).numpy().tobytes(), text_len), where
            continue
        if where.is_file() and where.suffix == ".model":
            return SentencePieceTokenizer(where.read_bytes(), text_len), where
        if where.is_file():
            where = where.parent
        if any((where / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            try:
                tok = _transformers().AutoTokenizer.from_pretrained(where, local_files_only=True)
            except Exception as e:  # transformers raises many types here; the message names the cause
                raise EngineError(f"cannot load the tokenizer in {where} ({type(e).__name__}: "
                                  f"{first_line(e)})") from None
            return hf_tokenize(tok, text_len), where
        if (where / "spiece.model").is_file():
            return SentencePieceTokenizer((where / "spiece.model").read_bytes(), text_len), where / "spiece.model"
    if given is not None:
        raise EngineError(f"no tokenizer in {given} (need tokenizer.json, tokenizer_config.json or spiece.model)")
    raise EngineError(f"no tokenizer found for {tf.path}; pass tokenizer= the google/umt5-xxl folder "
                      "(Wan-AI/Wan2.1-T2V-1.3B) or the tokenizer/ folder of the diffusers release")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")  # what makes a folder a tokenizer


def describe_tokenizer(path: str | os.PathLike) -> str | None:
    """What makes `path` a tokenizer `load_text_encoder(tokenizer=)` reads (a spiece.model file, or the file of a
    folder that `_tokenizer` loads), or None when it is not one."""
    path = Path(path).expanduser()
    if path.is_file():
        return "sentencepiece model" if path.suffix == ".model" else None
    found = next((f for f in TOKENIZER_FILES if (path / f).is_file()), None)
    return f"tokenizer folder ({found})" if found else None


def _fingerprint(files: list[Path]) -> str:
    """Cheap identity of weights + tokenizer: names and sizes of their files (and a config.json's contents)."""
    h = hashlib.sha256()
    for f in files:
        for g in sorted(f.iterdir()) if f.is_dir() else [f]:
            if g.is_file():
                h.update(f"{g.name}:{g.stat().st_size}\n".encode())
                if g.name == "config.json":
                    h.update(g.read_bytes())
    return h.hexdigest()[:16]


def _check_host_memory(file: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, device) -> None:
    """One line before loading when the encoder's weights will not fit in the RAM available now (CPU encoders;
    the file is read lazily, so the weights in `dtype` are what the load adds)."""
    if torch.device(device).type != "cpu":
        return
    from sdv2_studio.engine import memory  # memory -> models -> text

    need = sum(math.prod(s) for s in shapes.values()) * torch.empty((), dtype=dtype).element_size()
    have = memory.available_host_memory()
    if have is not None and need > have:
        raise EngineError(f"the text encoder {file.name} needs {memory.gib(need)} of RAM in "
                          f"{str(dtype).removeprefix('torch.')} and {memory.gib(have)} is available; close other "
                          "programs, or run it on the GPU (text_device='cuda', the app's 'text encoder on GPU')")


def load_text_encoder(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                      text_len: int = DEFAULT_TEXT_LEN) -> TextEncoder:
    """Load the umT5 encoder (and its tokenizer) from any release in the module docstring: a file or a folder.

    `dtype` is the weight / compute dtype (bf16 by default, as upstream runs umT5); outputs come in that dtype.
    """
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise EngineError("text encoder device 'cuda' requested but no CUDA GPU is available; use device='cpu'")
    file, candidates, config = _find_weights(Path(path).expanduser())
    with open_tensors(file) as tf:
        if text_encoder_layout(tf.shapes) is None:
            raise EngineError(f"{file} is not a umT5 text encoder (no token_embedding / encoder.block weights, "
                              f"e.g. {some(tf.shapes)}); expected {LAYOUT_HINT}")
        names = _hf_shapes(tf)
        shapes = {k: tf.shapes[v] for k, v in names.items()}
        with torch.device("meta"):
            model = UMT5Encoder(UMT5Config.from_fields(_umt5_config(file, shapes, config)))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        mismatch = shape_mismatch(expected, shapes, what="tensors")
        if mismatch:
            raise EngineError(f"{file} is not a complete umT5 encoder ({mismatch}); the file is incomplete or from "
                              "another model, download it again")
        _check_host_memory(file, shapes, dtype, device)
        tok, tok_path = _tokenizer(None if tokenizer is None else Path(tokenizer).expanduser(), candidates, tf,
                                   text_len)
        sd = {k: tf.read(v).to(device=device, dtype=dtype) for k, v in names.items()}
        model.load_state_dict(sd, strict=True, assign=True)
        files = [*tf.files, tok_path] + ([file.parent / "config.json"] if config else [])

    recipe = functools.partial(load_text_encoder, path, tokenizer=tokenizer, device=device, dtype=dtype,
                               text_len=text_len)
    return TextEncoder(model, tok, text_len=text_len, model_id=f"umt5:{_fingerprint(files)}", recipe=recipe)


TINY_RECIPE = "tiny-umt5-v1"  # bump when the tiny encoder's construction changes (invalidates prompt caches)


def tiny_text_config(text_dim: int = 64, num_layers: int = 2) -> dict:
    """The tiny encoder's umT5 architecture, in the names of transformers' UMT5Config (and of config.json)."""
    heads = max(1, text_dim // 16)
    if text_dim % heads:
        raise EngineError(f"tiny text encoder: text_dim {text_dim} must be a multiple of 16 (or below 16)")
    return {"vocab_size": ByteTokenizer.vocab_size, "d_model": text_dim, "d_kv": text_dim // heads,
            "d_ff": 2 * text_dim, "num_layers": num_layers, "num_heads": heads, "relative_attention_num_buckets": 32,
            "feed_forward_proj": "gated-gelu"}


def tiny_text_encoder(text_dim: int = 64, text_len: int = 32, seed: int = 0, *, num_layers: int = 2,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TextEncoder:
    """An UNTRAINED umT5 encoder (random weights from `seed`) with the byte tokenizer, for the ``tiny`` demo
    model and tests. Needs no download; its outputs are deterministic but meaningless.

    Weights are drawn by our own generator in parameter order (embeddings N(0, 1), projections
    N(0, 1/fan_in) with the query further scaled by 1/d_kv, norms 1, relative-position biases N(0, 0.1)), so
    they do not depend on transformers' initialisation scheme or the global RNG.
    """
    arch = tiny_text_config(text_dim, num_layers)
    d_kv = arch["d_kv"]
    with torch.device("meta"):
        model = UMT5Encoder(UMT5Config.from_fields(arch))
    model.to_empty(device="cpu")
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

    recipe = functools.partial(tiny_text_encoder, text_dim, text_len, seed, num_layers=num_layers, device=device,
                               dtype=dtype)
    return TextEncoder(model, ByteTokenizer(text_len), text_len=text_len, model_id=model_id, recipe=recipe)


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
        self._lock = threading.RLock()  # the memory and disk entries
        self._encode_lock = threading.Lock()  # one encoder forward at a time
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

    def encode_blend(self, weighted, *, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """[1, text_len, text_dim]: the weighted sum of the prompts' contexts (`weighted`: ((prompt, weight), ...)
        with weights summing to 1, `Controls.weighted_prompts`), summed in float32; one prompt is exactly `encode`
        (a single-prompt stream is unchanged by blending)."""
        if len(weighted) == 1:
            return self.encode(weighted[0][0], dtype=dtype, device=device)
        out = sum(w * self.encode(p, dtype=torch.float32, device=device) for p, w in weighted)
        return out.to(dtype=dtype)

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
                self._remember(key, ctx)
                return ctx
        # The encoder runs outside the lock: lookups of other prompts (a preset click on the engine thread) never
        # wait for an encode in the background. Two threads encoding the same prompt at once both compute it.
        with self._encode_lock:
            with self._lock:  # another thread may have encoded it while this one waited
                ctx = self._mem.get(key)
            if ctx is not None:
                return ctx
            ctx = self.encoder.encode_trimmed(prompt).to("cpu")
        with self._lock:
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

    def release_encoder(self, prompts) -> bool:
        """Free the encoder's weights if every one of `prompts` is cached (a live stream whose presets are all
        encoded needs it only for a prompt typed later, which loads it again). True if it was freed."""
        with self._encode_lock:
            return all(p in self for p in prompts) and self.encoder.release()

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
