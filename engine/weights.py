"""Read the tensors of a weights file the way users have it on disk: names, shapes and dtypes from the headers,
tensor data only when asked for, one tensor at a time.

Formats: a `.safetensors` file, a sharded set (`*.safetensors.index.json`, or `*.bin.index.json` over torch
pickles), and torch pickles (`.pt/.pth/.bin/.ckpt`; zip archives are memory-mapped, pre-1.6 ones are read into
RAM). A pickle may keep its tensors under one top-level entry: the first of `ENTRIES` present is used, as
StreamDiffusionV2 / Self-Forcing (`generator`, `generator_ema`) and other trainers (`state_dict`, `model`) save them.

ComfyUI scaled fp8 (`*_fp8_scaled.safetensors`, ComfyUI's `comfy/ops.py` and `model_detection.py`): a linear's
`X.weight` is stored as float8 and its real value is `X.weight * X.scale_weight` (a float32 scalar; ComfyUI
applies the scale to a linear that kept a wider dtype too, and so do we); a
`scaled_fp8` marker tensor flags the file (its dtype names the fp8 format), `X.scale_input` is an activation scale
for fp8 matmuls. ComfyUI's newer per-layer form is the same arithmetic under `X.weight_scale`, with a
`X.comfy_quant` JSON byte tensor naming the format and an optional `X.input_scale`. `TensorFile.read` returns such
weights dequantised (float32, one tensor at a time; the caller casts to its compute dtype); the scales, markers and
input scales are not listed as tensors. Plain fp8 files (no scales) read as stored. Quantisation error of an e4m3
weight: at most 2^-4 of its magnitude (3 mantissa bits, round to nearest), or 2^-10 * scale below the smallest
normal (2^-6 * scale); dequantising adds nothing but float32 rounding.

Every problem is an `EngineError` whose one line names the file, the cause and the fix.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from sdv2_studio.engine.errors import EngineError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
ENTRIES = ("generator", "generator_ema", "state_dict", "model")  # nested state dicts, in order of preference
SHARD_RE = re.compile(r"(.+)-\d+-of-\d+\.(safetensors|bin)")
FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
              "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
# ComfyUI scaled-fp8 companions of a weight `X.weight`: its dequantisation scale, and what is dropped.
_WEIGHT_SCALES = (".scale_weight", ".weight_scale")
_DROPPED = (".scale_input", ".input_scale", ".comfy_quant")


@dataclass
class TensorFile:
    """An opened weights file: every tensor's name, shape and stored dtype, and a reader for one tensor."""

    path: Path  # the file the user named (a weights file, or the index of a sharded set)
    files: tuple[Path, ...]  # every file read
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]  # as stored: "bfloat16", "float8_e4m3fn", ...
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header metadata (all shards)
    entry: str | None = None  # the pickle's top-level entry holding the tensors, if any
    notes: list[str] = field(default_factory=list)
    scaled: dict[str, str] = field(default_factory=dict)  # stored weight name -> its scale (ComfyUI scaled fp8)
    raw: Callable[[str], torch.Tensor] | None = None  # reads a tensor by its stored name
    stored: dict[str, str] = field(default_factory=dict)  # name -> stored name, where `rename` changed it

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name` (on the CPU); scaled-fp8 weights come dequantised in float32."""
        key = self.stored.get(name, name)
        try:
            t = self.raw(key)
            if key in self.scaled:
                t = dequantize(t, self.raw(self.scaled[key]), name)
            return t
        except (SafetensorError, RuntimeError, OSError) as e:
            raise EngineError(f"{self.path}: cannot read tensor {name} ({first_line(e)}); the file is corrupt, "
                              "download it again") from None

    def read_all(self) -> dict[str, torch.Tensor]:
        return {k: self.read(k) for k in self.shapes}

    def rename(self, names: Mapping[str, str]) -> None:
        """Use new names ({current: new}; tensors not named are dropped)."""
        self.stored = {new: self.stored.get(old, old) for old, new in names.items()}
        self.shapes = {new: self.shapes[old] for old, new in names.items()}
        self.dtypes = {new: self.dtypes[old] for old, new in names.items()}


def dequantize(weight: torch.Tensor, scale: torch.Tensor, name: str = "") -> torch.Tensor:
    """`weight * scale` in float32: a per-tensor scale, or one per output row ([out] or [out, 1])."""
    s = scale.float()
    if s.numel() != 1:
        if s.numel() != weight.shape[0]:
            raise EngineError(f"tensor {name}: scale of shape {tuple(scale.shape)} does not fit the weight "
                              f"{tuple(weight.shape)}; this fp8 format is not supported, use the bf16 file")
        s = s.reshape(-1, *([1] * (weight.dim() - 1)))
    return weight.float() * s


@contextlib.contextmanager
def open_tensors(path: str | Path) -> Iterator[TensorFile]:
    """Open a weights file (see the module docstring for formats); the tensors stay readable inside the block."""
    file, kind = locate_file(Path(path).expanduser())
    with contextlib.ExitStack() as stack:
        if kind == "pickle":
            tf = _pickle_file(file)
        else:
            files = index_files(file) if kind == "index" else (file,)
            tf = TensorFile(path=file, files=files, shapes={}, dtypes={})
            where: dict[str, Callable[[str], torch.Tensor]] = {}
            for f in files:
                if f.suffix == ".safetensors":
                    handle = _safe_open(f, stack)
                    tf.metadata.update(handle.metadata() or {})
                    for k in handle.keys():
                        sl = handle.get_slice(k)
                        where[k] = handle.get_tensor
                        tf.shapes[k] = tuple(sl.get_shape())
                        tf.dtypes[k] = _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower())
                else:  # a pickle shard of a *.bin.index.json set
                    part = _pickle_file(f)
                    where.update(dict.fromkeys(part.shapes, part.raw))
                    tf.shapes.update(part.shapes)
                    tf.dtypes.update(part.dtypes)
            tf.raw = lambda k: where[k](k)
        if not tf.shapes:
            raise EngineError(f"{file}: the file holds no tensors; download it again")
        _resolve_scaled_fp8(tf)
        yield tf


def read_tensors(path: str | Path) -> TensorFile:
    """Open and read everything (small files: VAE, TAEHV, LoRA); `tf.read` then returns the loaded tensors."""
    with open_tensors(path) as tf:
        data = tf.read_all()
    tf.scaled, tf.stored, tf.raw = {}, {}, data.__getitem__
    return tf


def locate_file(path: Path) -> tuple[Path, str]:
    """A weights file's kind by its name: "safetensors", "index" (sharded set) or "pickle"."""
    if not path.exists():
        raise EngineError(f"{path} not found; check the path")
    if path.is_dir():
        raise EngineError(f"{path} is a folder; point to the weights file inside it")
    name = path.name.lower()
    if name.endswith(".index.json"):
        return path, "index"
    m = SHARD_RE.fullmatch(path.name)
    if m:
        index = path.parent / f"{m[1]}.{m[2]}.index.json"
        if index.is_file():
            return index, "index"  # one shard given: read the whole set
    if name.endswith(".safetensors"):
        return path, "safetensors"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return path, "pickle"
    if path.suffix.lower() == ".gguf":
        raise EngineError(f"{path}: GGUF files are not supported; use the .safetensors or .pth release")
    raise EngineError(f"{path}: unsupported file type '{path.suffix}'; expected .safetensors, "
                      "*.safetensors.index.json, .pt/.pth or a model folder")


def index_files(index: Path) -> tuple[Path, ...]:
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


def strip_prefix(name: str, prefixes: tuple[str, ...]) -> str:
    """`name` without any of the leading `prefixes` (repeatedly: `model.diffusion_model.x` -> `x`)."""
    while name.startswith(prefixes):
        name = name[len(next(p for p in prefixes if name.startswith(p))):]
    return name


def some(keys, n: int = 3) -> str:
    """The first `n` of `keys` (sorted) for a message, with the total when there are more."""
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} total)" if len(keys) > n else "")


def shape_mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], what: str = "keys",
                   n: int = 3) -> str | None:
    """How the names and shapes `found` differ from those `expected` ("missing keys: a, b; wrong-shape keys: c"),
    or None when they match exactly."""
    missing, unexpected = expected.keys() - found.keys(), found.keys() - expected.keys()
    wrong = [k for k in expected.keys() & found.keys() if tuple(found[k]) != tuple(expected[k])]
    problems = [f"{name} {what}: {some(keys, n)}" for name, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong-shape", wrong)) if keys]
    return "; ".join(problems) or None


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------------------------


def _resolve_scaled_fp8(tf: TensorFile) -> None:
    """Fold ComfyUI scale tensors into their weights (see the module docstring)."""
    markers = [k for k in tf.shapes if k == "scaled_fp8" or k.endswith(".scaled_fp8")]
    for k in tf.shapes:
        if not k.endswith(".comfy_quant"):
            continue
        try:
            fmt = json.loads(bytes(tf.raw(k).flatten().tolist()).decode()).get("format")
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError, SafetensorError, RuntimeError):
            fmt = "unreadable"
        if fmt not in FP8_DTYPES:
            raise EngineError(f"{tf.path}: {k[:-len('.comfy_quant')]} uses ComfyUI's {fmt!r} quantisation, which "
                              "is not supported; use the fp8 or bf16 file")
    for k in list(tf.shapes):
        for suffix in _WEIGHT_SCALES:
            weight = k[: -len(suffix)] + ".weight"
            if k.endswith(suffix) and weight in tf.shapes:  # ComfyUI scales every linear that has one
                tf.scaled[weight] = k
    dropped = {k for k in tf.shapes if k.endswith(_DROPPED)} | set(tf.scaled.values()) | set(markers)
    if not (markers or tf.scaled):
        return
    for k in dropped:
        del tf.shapes[k], tf.dtypes[k]
    tf.notes.append(f"ComfyUI scaled fp8: {len(tf.scaled)} weights dequantised at load (weight x scale)")


def _safe_open(file: Path, stack: contextlib.ExitStack):
    if file.stat().st_size == 0:
        raise EngineError(f"{file}: the file is empty (0 bytes); download it again")
    try:
        return stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
    except SafetensorError as e:
        raise EngineError(f"{file}: cannot read: corrupt or truncated safetensors file ({first_line(e)}); "
                          "download it again") from None
    except OSError as e:
        raise EngineError(f"{file}: cannot open ({e.strerror or e}); check the file permissions") from None


def _pickle_file(file: Path) -> TensorFile:
    """The tensors of a torch pickle (memory-mapped), and which top-level entry held them."""
    if file.stat().st_size == 0:
        raise EngineError(f"{file}: the file is empty (0 bytes); download it again")
    try:
        if zipfile.is_zipfile(file):
            obj = torch.load(file, mmap=True, weights_only=True, map_location="cpu")
        else:
            with open(file, "rb") as fh:
                if fh.read(2) == b"PK":
                    raise EngineError(f"{file}: cannot read: truncated or corrupt torch checkpoint (the zip "
                                      "archive has no central directory); download it again")
            obj = torch.load(file, weights_only=True, map_location="cpu")  # legacy format: cannot be mmapped
    except pickle.UnpicklingError as e:
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if glob:
            raise EngineError(f"{file}: the pickle holds Python objects besides tensors ({glob[1]}) and is not "
                              "loaded for safety; re-save it as a plain state dict (or safetensors)") from None
        raise EngineError(f"{file}: cannot read: not a readable torch checkpoint ({first_line(e)}); "
                          "download it again") from None
    # A damaged pickle stream can fail in the unpickler in many ways; each means "not a valid checkpoint".
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError, TypeError, struct.error) as e:
        raise EngineError(f"{file}: cannot read: corrupt or truncated torch checkpoint ({first_line(e)}); "
                          "download it again") from None
    if not isinstance(obj, Mapping):
        raise EngineError(f"{file}: holds a {type(obj).__name__}, not a state dict; expected a dict of tensors "
                          f"(or one under {', '.join(ENTRIES)})")
    entry = next((k for k in ENTRIES if isinstance(obj.get(k), Mapping)), None)
    notes = []
    if entry is not None:
        others = [k for k in obj if k != entry and isinstance(k, str)]
        if others:
            notes.append(f"used '{entry}'; the file also holds {', '.join(others[:6])}")
        obj = obj[entry]
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        top = [str(k) for k in obj][:5]
        raise EngineError(f"{file}: no tensors found (top-level entries: {', '.join(top) or 'none'}); expected a "
                          f"state dict or a dict with {', '.join(ENTRIES)}")
    return TensorFile(path=file, files=(file,), shapes={k: tuple(v.shape) for k, v in tensors.items()},
                      dtypes={k: dtype_name(v.dtype) for k, v in tensors.items()}, entry=entry, notes=notes,
                      raw=tensors.__getitem__)
