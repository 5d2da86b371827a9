"""Load, inspect and save Wan2.1 DiT weights in the layouts users actually have on disk.

Accepted inputs (the layout is detected from tensor names, the model size from tensor shapes):

  * "wan": the original Wan2.1 names (`patch_embedding`, `blocks.N.self_attn.q`, `head.head`, ...), which
    are also our module names. A `.safetensors` file, a sharded set with its `*.safetensors.index.json`
    (the Wan-AI base-model folder: `diffusion_pytorch_model*.safetensors` with original names), or a
    `.pt/.pth` pickle.
  * "diffusers": `WanTransformer3DModel` names (`condition_embedder.*`, `blocks.N.attn1.to_q`, `proj_out`).
    A diffusers model folder (single or sharded `diffusion_pytorch_model*.safetensors` + `config.json`), or
    a pipeline folder holding it under `transformer/`.
  * "causal-wan": StreamDiffusionV2 / Self-Forcing / CausVid `model.pt`: a torch pickle whose top level
    holds `generator`, `generator_ema` or `state_dict` (taken in that order, as upstream does; otherwise the
    dict itself), with keys prefixed `model.` (stripped). A folder holding `model.pt` works too.

Loading never materialises a second full copy: the model is built on the meta device, every tensor is read
from the memory-mapped file and cast straight to its final dtype/device one at a time, then attached with
`load_state_dict(strict=True, assign=True)`. fp32 islands (`engine.model.keep_fp32`) stay float32.

The number of attention heads is not in the weights. It comes from, in order: our own safetensors metadata
(`save_model`), a `config.json` next to the weights (diffusers' `num_attention_heads` or Wan's
`num_heads`), the preset whose shapes match, an explicit `preset=`, a preset of the same width, and finally
dim / 128 (the head dim of every released Wan model).

Every user-fixable problem raises `EngineError` with one line that names the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from sdv2_studio.engine.config import PRESETS, ModelConfig, get_preset
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.model import CausalWanModel, cast_model, keep_fp32

LAYOUTS = ("wan", "diffusers", "causal-wan")
CAUSAL_ENTRIES = ("generator", "generator_ema", "state_dict")  # upstream's order of preference
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
METADATA_KEY = "sdv2.config"  # our ModelConfig as JSON in the safetensors header (written by save_model)

# Wrappers that training code puts around the DiT, removed from every key: DDP, torch.compile, FSDP,
# activation checkpointing, the diffusion wrapper's `.model`, ComfyUI's `diffusion_model`.
_WRAPPER_TOKENS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_PREFIXES = ("module.", "model.", "diffusion_model.")

# diffusers WanTransformer3DModel -> original Wan names. Note diffusers' norm2 is the cross-attention norm
# (norm3 in Wan); diffusers' norm3 has no weights.
_DIFFUSERS_TOP = {
    "condition_embedder.time_embedder.linear_1.": "time_embedding.0.",
    "condition_embedder.time_embedder.linear_2.": "time_embedding.2.",
    "condition_embedder.time_proj.": "time_projection.1.",
    "condition_embedder.text_embedder.linear_1.": "text_embedding.0.",
    "condition_embedder.text_embedder.linear_2.": "text_embedding.2.",
    "proj_out.": "head.head.",
}
_DIFFUSERS_ATTN = {"to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "o.", "norm_q.": "norm_q.",
                   "norm_k.": "norm_k."}
_DIFFUSERS_BLOCK = {
    **{f"attn1.{a}": f"self_attn.{b}" for a, b in _DIFFUSERS_ATTN.items()},
    **{f"attn2.{a}": f"cross_attn.{b}" for a, b in _DIFFUSERS_ATTN.items()},
    "norm2.": "norm3.",
    "ffn.net.0.proj.": "ffn.0.",
    "ffn.net.2.": "ffn.2.",
}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")
_SHARD_RE = re.compile(r"(.+)-\d+-of-\d+\.safetensors")

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
              "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}

# Fields of ModelConfig that the tensor shapes determine, and those they cannot (taken from hints/presets).
_STRUCTURAL = ("dim", "ffn_dim", "num_layers", "patch_size", "in_dim", "out_dim", "text_dim", "freq_dim",
               "qk_norm", "cross_attn_norm")
_HINTED = ("num_heads", "text_len", "eps", "rope_max_len")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, as found by `inspect_checkpoint` / `load_model`."""

    path: Path  # the weights file (or index json) actually read
    layout: str  # "wan" | "diffusers" | "causal-wan"
    preset: str  # a PRESETS name, or "custom"
    config: ModelConfig
    num_tensors: int
    num_params: int
    dtypes: tuple[str, ...]  # dtypes stored in the file, e.g. ("bfloat16", "float32")
    entry: str | None = None  # top-level entry used in a causal pickle ("generator", ...), else None
    files: tuple[Path, ...] = ()  # every file read (shards)
    notes: tuple[str, ...] = ()  # remarks worth showing (ignored config.json, unused EMA weights, ...)


# ----------------------------------------------------------------------------------------------------------
# Public API


def load_model(path: str | os.PathLike, *, dtype: torch.dtype | str = torch.bfloat16,
               device: str | torch.device = "cpu",
               preset: str | None = None,
               select: Callable[[str], bool] | None = None) -> tuple[CausalWanModel, CheckpointInfo]:
    """Build the DiT for the checkpoint at `path` and load its weights (eval mode, no grad).

    Parameters end up on `device` in `dtype`, except the fp32 islands, which stay float32. `preset` asserts
    the model size (a mismatch is an error) and supplies what shapes cannot tell (heads, text_len).
    `select(name)`: materialise only these tensors (a pipeline rank's blocks); the rest stay on the meta device
    and are never read from the file.
    """
    want = _as_dtype(dtype)
    dev = _as_device(device)
    with _open_weights(path) as w:
        cfg = _config_for(w, preset)
        with torch.device("meta"):
            model = CausalWanModel(cfg)
        sd = {}
        for name in _expected_shapes(cfg):
            if select is not None and not select(name):
                continue
            target = torch.float32 if keep_fp32(name) else want
            # One tensor at a time; no copy at all when the file already holds the right dtype (CPU).
            sd[name] = w.read(name).to(device=dev, dtype=target)
        model.load_state_dict(sd, strict=select is None, assign=True)
        del sd
        info = _info(w, cfg)
    cast_model(model, want)  # a no-op after the per-tensor casts; keeps the fp32-island rule in one place
    model.eval().requires_grad_(False)
    return model, info


def inspect_checkpoint(path: str | os.PathLike, *, preset: str | None = None) -> CheckpointInfo:
    """Describe a checkpoint from headers / tensor shapes without loading weights (pickles are mmapped)."""
    with _open_weights(path) as w:
        cfg = _config_for(w, preset)
        return _info(w, cfg)


def format_info(info: CheckpointInfo) -> str:
    """Human-readable summary for `sdv2 inspect PATH`."""
    c = info.config
    layout = {"wan": "original Wan2.1 names", "diffusers": "diffusers WanTransformer3DModel",
              "causal-wan": "StreamDiffusionV2 / Self-Forcing / CausVid causal generator"}[info.layout]
    if info.entry:
        layout += f", entry '{info.entry}'"
    shards = f" ({len(info.files)} shards)" if len(info.files) > 1 else ""
    lines = [
        f"path:    {info.path}{shards}",
        f"layout:  {info.layout} ({layout})",
        f"preset:  {info.preset} (dim {c.dim}, {c.num_layers} layers, {c.num_heads} heads x {c.head_dim}, "
        f"ffn {c.ffn_dim}, text_dim {c.text_dim}, text_len {c.text_len})",
        f"params:  {info.num_params:,} in {info.num_tensors} tensors",
        f"dtype:   {', '.join(info.dtypes)}",
    ]
    lines += [f"note:    {n}" for n in info.notes]
    return "\n".join(lines)


def save_model(model: CausalWanModel, path: str | os.PathLike) -> Path:
    """Write `model` as a safetensors file in the original Wan layout (its config goes into the header)."""
    path = Path(path)
    sd = {}
    for k, v in model.state_dict().items():
        if v.is_meta:
            raise EngineError(f"cannot save {k}: the model has no weights yet (it lives on the meta device)")
        sd[k] = v.detach().to("cpu").contiguous()
    cfg = dataclasses.asdict(model.cfg)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, tmp, metadata={"format": "pt", METADATA_KEY: json.dumps(cfg)})
    os.replace(tmp, path)
    return path


def detect_config(shapes: Mapping[str, tuple[int, ...]], *, preset: str | None = None,
                  hints: Mapping[str, object] | None = None) -> ModelConfig:
    """ModelConfig for a state dict given as {Wan key: shape}.

    A preset is returned when the shapes match one (and the hints agree with it); otherwise a "custom" config.
    `hints` may give num_heads, text_len, eps, rope_max_len (from config.json or file metadata).
    """
    hints = dict(hints or {})
    found = _structure(shapes)
    if preset is not None:
        base = get_preset(preset)
        _check_preset(base, found, shapes)
    else:
        base = next((p for p in PRESETS.values() if _structural(p) == found), None)
    if base is not None:
        over = {k: hints[k] for k in _HINTED if k in hints and hints[k] != getattr(base, k)}
        return base.replace(name="custom", **over) if over else base
    heads = hints.get("num_heads")
    if heads is None:
        same_dim = [p.num_heads for p in PRESETS.values() if p.dim == found["dim"]]
        if same_dim:
            heads = same_dim[0]
        elif found["dim"] % 128 == 0:
            heads = found["dim"] // 128
        else:
            raise EngineError(f"cannot tell the number of attention heads of a dim-{found['dim']} model; put "
                              "its config.json next to the weights or pass a preset")
    extra = {k: hints[k] for k in ("text_len", "eps", "rope_max_len") if k in hints}
    return ModelConfig(name="custom", num_heads=int(heads), **found, **extra)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the state dict of `CausalWanModel(cfg)` (computed on the meta device)."""
    return dict(_expected_shapes(cfg))


# ----------------------------------------------------------------------------------------------------------
# Reading files


@dataclass
class _Weights:
    """An opened checkpoint: tensor names (already ours), shapes, dtypes and a lazy reader."""

    path: Path
    files: tuple[Path, ...]
    layout: str
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    reader: Callable[[str], torch.Tensor]
    entry: str | None = None
    hints: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)

    def read(self, name: str) -> torch.Tensor:
        try:
            return self.reader(name)
        except (SafetensorError, RuntimeError, OSError) as e:
            raise EngineError(f"{self.path}: cannot read tensor {name} ({_first_line(e)}); the file is "
                              "corrupt, download it again") from None


@contextlib.contextmanager
def _open_weights(path: str | os.PathLike) -> Iterator[_Weights]:
    file, kind = _locate(Path(path).expanduser())
    with contextlib.ExitStack() as stack:
        if kind == "pickle":
            raw, entry, notes = _read_pickle(file)
            files = (file,)
            raw_shapes = {k: tuple(v.shape) for k, v in raw.items()}
            raw_dtypes = {k: _dtype_name(v.dtype) for k, v in raw.items()}
            read_raw = raw.__getitem__
            metadata: dict = {}
        else:
            files = _index_files(file) if kind == "index" else (file,)
            entry, notes, metadata = None, [], {}
            where, raw_shapes, raw_dtypes = {}, {}, {}
            for f in files:
                handle = _safe_open(f, stack)
                metadata.update(handle.metadata() or {})
                for k in handle.keys():
                    sl = handle.get_slice(k)
                    where[k] = handle
                    raw_shapes[k] = tuple(sl.get_shape())
                    raw_dtypes[k] = _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower())

            def read_raw(k: str) -> torch.Tensor:
                return where[k].get_tensor(k)

        w = _name_weights(file, files, raw_shapes, raw_dtypes, read_raw, entry, kind)
        w.notes += notes
        w.hints = _hints(file, metadata, w)
        yield w


def _locate(path: Path) -> tuple[Path, str]:
    """The weights file to read for `path` and its kind: "safetensors", "index" or "pickle"."""
    if not path.exists():
        what = "folder" if not path.suffix else "file"
        raise EngineError(f"checkpoint {what} not found: {path}; check the path (or download the model)")
    if path.is_dir():
        for name in ("model.pt", "model.pth"):
            if (path / name).is_file():
                return path / name, "pickle"
        if (path / "diffusion_pytorch_model.safetensors.index.json").is_file():
            return path / "diffusion_pytorch_model.safetensors.index.json", "index"
        if (path / "diffusion_pytorch_model.safetensors").is_file():
            return path / "diffusion_pytorch_model.safetensors", "safetensors"
        if (path / "transformer").is_dir():
            return _locate(path / "transformer")
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) == 1:
            return indexes[0], "index"
        singles = sorted(path.glob("*.safetensors"))
        if len(singles) == 1:
            return singles[0], "safetensors"
        raise EngineError(f"no DiT weights in folder {path}: expected model.pt, "
                          "diffusion_pytorch_model*.safetensors or a transformer/ subfolder; point to the "
                          "weights file itself")
    name = path.name.lower()
    if name.endswith(".index.json"):
        return path, "index"
    if name.endswith(".safetensors"):
        m = _SHARD_RE.fullmatch(path.name)
        if m and (path.parent / f"{m[1]}.safetensors.index.json").is_file():
            return path.parent / f"{m[1]}.safetensors.index.json", "index"  # one shard given: read the set
        return path, "safetensors"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return path, "pickle"
    if path.suffix.lower() == ".gguf":
        raise EngineError(f"{path}: GGUF files are not supported; use the .safetensors or model.pt release")
    raise EngineError(f"{path}: unsupported file type '{path.suffix}'; expected .safetensors, "
                      "*.safetensors.index.json, .pt/.pth or a model folder")


def _index_files(index: Path) -> tuple[Path, ...]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise EngineError(f"{index}: not a valid safetensors index (needs a 'weight_map'); "
                          "download it again") from None
    files = tuple(index.parent / n for n in names)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise EngineError(f"{index.parent}: {len(missing)} of {len(files)} shards listed in {index.name} are "
                          f"missing ({', '.join(missing[:3])}); the download is incomplete, fetch them again")
    return files


def _safe_open(file: Path, stack: contextlib.ExitStack):
    try:
        return stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
    except SafetensorError as e:
        raise EngineError(f"{file}: corrupt or truncated safetensors file ({_first_line(e)}); "
                          "download it again") from None
    except OSError as e:
        raise EngineError(f"{file}: cannot open ({e.strerror or e}); check the file permissions") from None


def _read_pickle(file: Path) -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """Tensors of a torch pickle (memory-mapped), which top-level entry they came from, and notes."""
    size = file.stat().st_size
    if size == 0:
        raise EngineError(f"{file}: the file is empty (0 bytes); download it again")
    try:
        if zipfile.is_zipfile(file):
            obj = torch.load(file, mmap=True, weights_only=True, map_location="cpu")
        else:
            with open(file, "rb") as fh:
                if fh.read(2) == b"PK":
                    raise EngineError(f"{file}: truncated or corrupt torch checkpoint (the zip archive has "
                                      "no central directory); download it again")
            # Legacy (pre-1.6, non-zip) torch.save format: cannot be memory-mapped, read into RAM.
            obj = torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if glob:
            raise EngineError(f"{file}: the pickle holds Python objects besides tensors ({glob[1]}) and is "
                              "not loaded for safety; re-save it as a plain state dict (or safetensors)") \
                from None
        raise EngineError(f"{file}: not a readable torch checkpoint ({_first_line(e)}); "
                          "download it again") from None
    # A damaged pickle stream can fail in the unpickler in many ways; each means "not a valid checkpoint".
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError, TypeError, struct.error) as e:
        raise EngineError(f"{file}: corrupt or truncated torch checkpoint ({_first_line(e)}); "
                          "download it again") from None
    if not isinstance(obj, Mapping):
        raise EngineError(f"{file}: holds a {type(obj).__name__}, not a state dict; expected a dict of "
                          f"tensors or one with {', '.join(CAUSAL_ENTRIES)}")
    entry = next((k for k in CAUSAL_ENTRIES if k in obj), None)
    notes = []
    if entry is not None:
        others = [k for k in obj if k != entry and isinstance(k, str)]
        if others:
            notes.append(f"used '{entry}'; the file also holds {', '.join(others[:6])}")
        obj = obj[entry]
        if not isinstance(obj, Mapping):
            raise EngineError(f"{file}: entry '{entry}' is a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        top = [str(k) for k in obj][:5]
        raise EngineError(f"{file}: no tensors found (top-level entries: {', '.join(top) or 'none'}); "
                          f"expected a state dict or a dict with {', '.join(CAUSAL_ENTRIES)}")
    return tensors, entry, notes


# ----------------------------------------------------------------------------------------------------------
# Names and layouts


def _clean_key(key: str) -> tuple[str, bool]:
    """Remove training wrappers and prefixes; also report whether a `model.` style prefix was present."""
    for tok in _WRAPPER_TOKENS:
        key = key.replace(tok, "")
    prefixed = False
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
        prefixed = True
    return key, prefixed


def _from_diffusers(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    m = _BLOCK_RE.fullmatch(key)
    if m:
        n, rest = m.groups()
        if rest == "scale_shift_table":
            return f"blocks.{n}.modulation"
        for a, b in _DIFFUSERS_BLOCK.items():
            if rest.startswith(a):
                return f"blocks.{n}.{b}{rest[len(a):]}"
        return key
    for a, b in _DIFFUSERS_TOP.items():
        if key.startswith(a):
            return b + key[len(a):]
    return key


def _layout_of(keys: list[str]) -> str | None:
    if any(k.startswith(("condition_embedder.", "proj_out.")) or ".attn1." in k for k in keys):
        return "diffusers"
    wan_parts = ("text_embedding.", "time_embedding.", "head.head.")
    if "patch_embedding.weight" in keys and any(k.startswith(wan_parts) or ".self_attn." in k for k in keys):
        return "wan"
    return None


def _looks_like(keys: list[str]) -> str:
    """A short guess at what a non-DiT state dict is, for the error message."""
    def has(*parts: str) -> bool:
        return any(p in k for k in keys for p in parts)

    def starts(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if starts("token_embedding.", "shared.", "encoder.block.") or has("SelfAttention", "relative_attention"):
        return "a T5/umT5 text encoder"
    if starts("visual.", "textual.", "vision_model.", "text_model."):
        return "a CLIP image/text encoder"
    if starts("encoder.") and starts("decoder."):
        return "a VAE (encoder/decoder weights)"
    if starts("encoder."):
        return "a VAE encoder or another encoder"
    if starts("decoder."):
        return "a VAE decoder"
    return f"something else ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"


def _is_lora(keys: list[str]) -> bool:
    tokens = ("lora_A", "lora_B", "lora_down", "lora_up", "lora.down", "lora.up")
    return any(t in k for k in keys for t in tokens)


def _is_i2v(keys: list[str]) -> bool:
    return any(k.startswith(("img_emb.", "condition_embedder.image_embedder.")) or ".k_img." in k
               or ".add_k_proj." in k for k in keys)


def _name_weights(file, files, raw_shapes, raw_dtypes, read_raw, entry, kind) -> _Weights:
    if not raw_shapes:
        raise EngineError(f"{file}: the checkpoint holds no tensors; download it again")
    cleaned, prefixed = {}, False
    for k in raw_shapes:
        c, p = _clean_key(k)
        cleaned[k] = c
        prefixed |= p
    keys = list(cleaned.values())
    if _is_lora(keys):
        raise EngineError(f"{file} is a LoRA adapter, not a full Wan2.1 DiT; load the base or causal model "
                          "(LoRA files are not supported)")
    if _is_i2v(keys):
        raise EngineError(f"{file}: this is an image-to-video Wan model (it has image-embedding weights); "
                          "only Wan2.1 text-to-video DiTs (T2V 1.3B/14B and their causal distillations) are "
                          "supported")
    layout = _layout_of(keys)
    if layout is None:
        raise EngineError(f"{file} is not a Wan2.1 DiT checkpoint: it looks like {_looks_like(keys)}; point "
                          "to the DiT weights (model.pt or diffusion_pytorch_model*.safetensors)")
    ours: dict[str, str] = {}
    for raw, c in cleaned.items():
        name = _from_diffusers(c) if layout == "diffusers" else c
        if name in ours:
            raise EngineError(f"{file}: tensor {name} appears twice (as {ours[name]} and {raw}); the "
                              "checkpoint mixes two models, re-export it")
        ours[name] = raw
    if kind == "pickle" and (entry is not None or prefixed):
        layout = "causal-wan"
    return _Weights(
        path=file, files=tuple(files), layout=layout, entry=entry,
        shapes={n: raw_shapes[r] for n, r in ours.items()},
        dtypes={n: raw_dtypes[r] for n, r in ours.items()},
        reader=lambda n: read_raw(ours[n]),
    )


# ----------------------------------------------------------------------------------------------------------
# Configs and checks


def _hints(file: Path, metadata: Mapping[str, str], w: _Weights) -> dict:
    """num_heads / text_len / eps / rope_max_len from our safetensors metadata or a config.json beside it."""
    dim = w.shapes.get("patch_embedding.weight", (None,))[0]
    if METADATA_KEY in metadata:
        try:
            ours = json.loads(metadata[METADATA_KEY])
            return {k: ours[k] for k in _HINTED if k in ours}
        except (ValueError, TypeError):
            w.notes.append(f"ignored unreadable {METADATA_KEY} metadata")
    cfg_file = file.parent / "config.json"
    if not cfg_file.is_file():
        return {}
    try:
        raw = json.loads(cfg_file.read_text())
        if not isinstance(raw, dict):
            raise ValueError
    except (OSError, UnicodeDecodeError, ValueError):
        w.notes.append(f"ignored unreadable {cfg_file}")
        return {}
    hints: dict = {}
    if "num_attention_heads" in raw and "attention_head_dim" in raw:  # diffusers WanTransformer3DModel
        hints["num_heads"] = raw["num_attention_heads"]
        cfg_dim = raw["num_attention_heads"] * raw["attention_head_dim"]
        for src, dst in (("eps", "eps"), ("rope_max_seq_len", "rope_max_len")):
            if src in raw:
                hints[dst] = raw[src]
    elif "num_heads" in raw and "dim" in raw:  # Wan's WanModel config
        hints["num_heads"], cfg_dim = raw["num_heads"], raw["dim"]
        for k in ("eps", "text_len"):
            if k in raw:
                hints[k] = raw[k]
    else:
        return {}  # some other model's config (e.g. a VAE's); not ours to interpret
    if cfg_dim != dim:
        w.notes.append(f"ignored {cfg_file} (it describes a dim-{cfg_dim} model, the weights are dim {dim})")
        return {}
    return hints


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, ndim: int) -> tuple[int, ...]:
    s = shapes.get(key)
    if s is None:
        raise EngineError(f"required tensor {key} is missing ({len(shapes)} tensors present); the file is "
                          "incomplete or not a Wan2.1 DiT, download it again")
    if len(s) != ndim:
        raise EngineError(f"tensor {key} has shape {tuple(s)}, expected {ndim} dimensions; not a Wan2.1 DiT")
    return tuple(s)


def _structure(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """The ModelConfig fields that tensor shapes determine."""
    dim, in_dim, *patch = _shape(shapes, "patch_embedding.weight", 5)
    blocks = {int(m[1]) for k in shapes if (m := _BLOCK_RE.fullmatch(k))}
    if not blocks:
        raise EngineError("the checkpoint has no transformer blocks (blocks.N.*); not a Wan2.1 DiT")
    head_out = _shape(shapes, "head.head.weight", 2)[0]
    if head_out % math.prod(patch):
        raise EngineError(f"head.head.weight has {head_out} outputs, not a multiple of the patch {patch}")
    return dict(
        dim=dim,
        ffn_dim=_shape(shapes, "blocks.0.ffn.0.weight", 2)[0],
        num_layers=max(blocks) + 1,
        patch_size=tuple(patch),
        in_dim=in_dim,
        out_dim=head_out // math.prod(patch),
        text_dim=_shape(shapes, "text_embedding.0.weight", 2)[1],
        freq_dim=_shape(shapes, "time_embedding.0.weight", 2)[1],
        qk_norm="blocks.0.self_attn.norm_q.weight" in shapes,
        cross_attn_norm="blocks.0.norm3.weight" in shapes,
    )


def _structural(cfg: ModelConfig) -> dict:
    return {k: getattr(cfg, k) for k in _STRUCTURAL}


def _describe(found: dict) -> str:
    match = next((p.name for p in PRESETS.values() if _structural(p) == found), None)
    if match:
        return f"a {match} model"
    return f"a dim-{found['dim']} {found['num_layers']}-layer model (ffn {found['ffn_dim']})"


def _check_preset(base: ModelConfig, found: dict, shapes: Mapping[str, tuple[int, ...]]) -> None:
    if _structural(base) == found:
        return
    hint = f"the file looks like {_describe(found)}; drop the preset or choose the matching one"
    for key, want in _expected_shapes(base).items():
        if key in shapes and tuple(shapes[key]) != want:
            raise EngineError(f"checkpoint does not match preset '{base.name}': {key} is "
                              f"{tuple(shapes[key])}, expected {want}; {hint}")
    diffs = [f"{k} {found[k]} (preset {getattr(base, k)})"
             for k in _STRUCTURAL if found[k] != getattr(base, k)]
    raise EngineError(f"checkpoint does not match preset '{base.name}': {', '.join(diffs)}; {hint}")


@functools.lru_cache(maxsize=8)
def _expected_shapes_cached(cfg: ModelConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return dict(_expected_shapes_cached(cfg))


def _check_tensors(shapes: Mapping[str, tuple[int, ...]], cfg: ModelConfig) -> None:
    expected = _expected_shapes(cfg)
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{_count(missing, 'missing')} ({_some(missing)})")
        if unexpected:
            parts.append(f"{_count(unexpected, 'unexpected')} ({_some(unexpected)})")
        raise EngineError(f"{' and '.join(parts)} for a {_cfg_label(cfg)} Wan2.1 DiT; the file is "
                          "incomplete or from a different model, download it again")
    for k, want in expected.items():
        if tuple(shapes[k]) != want:
            raise EngineError(f"tensor {k} has shape {tuple(shapes[k])} but a {_cfg_label(cfg)} model "
                              f"needs {want}; the checkpoint is inconsistent or corrupt, download it again")


def _config_for(w: _Weights, preset: str | None) -> ModelConfig:
    try:
        cfg = detect_config(w.shapes, preset=preset, hints=w.hints)
        _check_tensors(w.shapes, cfg)
    except EngineError as e:
        raise EngineError(f"{w.path}: {e}") from None
    return cfg


def _info(w: _Weights, cfg: ModelConfig) -> CheckpointInfo:
    return CheckpointInfo(
        path=w.path, layout=w.layout, preset=cfg.name, config=cfg, num_tensors=len(w.shapes),
        num_params=sum(math.prod(s) for s in w.shapes.values()), dtypes=tuple(sorted(set(w.dtypes.values()))),
        entry=w.entry, files=w.files, notes=tuple(w.notes),
    )


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _cfg_label(cfg: ModelConfig) -> str:
    return cfg.name if cfg.name != "custom" else f"custom dim-{cfg.dim} {cfg.num_layers}-layer"


def _count(keys: list[str], what: str) -> str:
    return f"{len(keys)} {what} tensor{'s' if len(keys) != 1 else ''}"


def _some(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise EngineError(f"unknown dtype {dtype!r}; use one of bfloat16, float16, float32")
        return _DTYPE_NAMES[dtype.lower()]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise EngineError(f"cannot load the model in {dtype}; use torch.bfloat16, float16 or float32")
    return dtype


def _as_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise EngineError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} requested but CUDA is not available; use device='cpu' or "
                          "install the CUDA build of PyTorch")
    if dev.type == "meta":
        raise EngineError("cannot load weights onto the meta device; use 'cpu' or 'cuda'")
    return dev
