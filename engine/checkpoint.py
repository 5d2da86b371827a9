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
  * ComfyUI / Kijai single files are the "wan" names, bare or under `model.diffusion_model.`, in bf16/fp16, fp8
    (`*_fp8_e4m3fn`, read as stored) or ComfyUI scaled fp8 (`*_fp8_scaled`: fp8 weights with a per-linear
    `scale_weight`), which `engine.weights` dequantises per tensor into the compute dtype at load. Error against
    the bf16 weights: at most 2^-4 of each weight (e4m3 rounding) plus bf16 rounding.

`identify(path)` says what any model file is (DiT, VAE, text encoder, LoRA, TAEHV), for `sdv2 inspect`.

Loading never materialises a second full copy: the model is built on the meta device, every tensor is read
from the memory-mapped file (`engine.weights`) and cast straight to its final dtype/device one at a time, then
attached with `load_state_dict(strict=True, assign=True)`. fp32 islands (`engine.model.keep_fp32`) stay float32.

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
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from sdv2_studio.engine.config import PRESETS, ModelConfig, get_preset
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.model import CausalWanModel, cast_model, fuse_qkv, keep_fp32
from sdv2_studio.engine.weights import TensorFile, open_tensors, some, strip_prefix

LAYOUTS = ("wan", "diffusers", "causal-wan")
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
    fuse_qkv(model.eval().requires_grad_(False))  # one q/k/v GEMM per self-attention (names unchanged)
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


@dataclass(frozen=True)
class FileInfo:
    """What `identify` found: the kind of model file, its layout, size and dtype."""

    path: Path  # the weights file read
    kind: str  # one of KINDS
    layout: str  # e.g. "wan", "diffusers", "transformers", "comfy", "peft", "taehv"
    summary: str  # what it is, in words
    num_params: int
    num_tensors: int
    dtypes: tuple[str, ...]  # as stored
    notes: tuple[str, ...] = ()
    checkpoint: CheckpointInfo | None = None  # the DiT details, for kind "dit"


KINDS = {"dit": "DiT", "vae": "VAE", "text-encoder": "text encoder", "lora": "LoRA", "taehv": "TAEHV"}


def identify(path: str | os.PathLike) -> FileInfo:
    """Say what a model file (or a folder holding one) is, from tensor names and shapes only (nothing is loaded
    except a LoRA's small tensors). One EngineError line when it is none of `KINDS`."""
    from sdv2_studio.engine.lora import describe_lora
    from sdv2_studio.engine.taehv import describe_taehv
    from sdv2_studio.engine.text import describe_text_encoder
    from sdv2_studio.engine.vae import describe_vae

    with open_tensors(locate(Path(path).expanduser())) as tf:
        stats = dict(path=tf.path, num_params=tf.num_params, num_tensors=len(tf.shapes),
                     dtypes=tuple(sorted(set(tf.dtypes.values()))))
        for kind, describe in (("lora", describe_lora), ("taehv", describe_taehv), ("vae", describe_vae),
                               ("text-encoder", describe_text_encoder)):
            found = describe(tf)
            if found is not None:
                return FileInfo(kind=kind, layout=found[0], summary=found[1], notes=tuple(tf.notes), **stats)
        cleaned = [_clean_key(k)[0] for k in tf.shapes]
        if dit_layout(cleaned) is None:
            raise EngineError(f"{tf.path} is not a model file this app reads (DiT, VAE, text encoder, LoRA, "
                              f"TAEHV): it looks like {_looks_like(cleaned)}")
        w = _Weights(tf, _name_weights(tf))
        w.hints = _hints(tf)
        info = _info(w, _config_for(w, None))
        c = info.config
        return FileInfo(kind="dit", layout=info.layout, summary=f"Wan2.1 text-to-video DiT, {_cfg_label(c)}",
                        notes=info.notes, checkpoint=info, **stats)


def format_file_info(info: FileInfo) -> str:
    """Human-readable summary for `sdv2 inspect PATH`."""
    kind = f"kind:    {KINDS[info.kind]}: {info.summary}"
    if info.checkpoint is not None:
        first, *rest = format_info(info.checkpoint).splitlines()
        return "\n".join([first, kind, *rest])
    lines = [f"path:    {info.path}", kind, f"layout:  {info.layout}",
             f"params:  {info.num_params:,} in {info.num_tensors} tensors", f"dtype:   {', '.join(info.dtypes)}"]
    return "\n".join(lines + [f"note:    {n}" for n in info.notes])


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
    """An opened DiT checkpoint: the file (tensor names already ours), its layout and config hints."""

    tf: TensorFile
    layout: str
    hints: dict = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.tf.path

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.tf.shapes

    def read(self, name: str) -> torch.Tensor:
        return self.tf.read(name)


@contextlib.contextmanager
def _open_weights(path: str | os.PathLike) -> Iterator[_Weights]:
    with open_tensors(locate(Path(path).expanduser())) as tf:
        w = _Weights(tf, _name_weights(tf))
        w.hints = _hints(tf)
        yield w


def locate(path: Path) -> Path:
    """The weights file to read for a model file or folder (a DiT folder, or one holding a single weights file)."""
    if not path.exists():
        what = "folder" if not path.suffix else "file"
        raise EngineError(f"checkpoint {what} not found: {path}; check the path (or download the model)")
    if not path.is_dir():
        return path
    for name in ("model.pt", "model.pth", "diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model.safetensors"):
        if (path / name).is_file():
            return path / name
    if (path / "transformer").is_dir():
        return locate(path / "transformer")
    for pattern in ("*.safetensors.index.json", "*.safetensors", "*.pth", "*.pt"):
        found = sorted(path.glob(pattern))
        if len(found) == 1:
            return found[0]
    raise EngineError(f"no DiT weights in folder {path}: expected model.pt, "
                      "diffusion_pytorch_model*.safetensors or a transformer/ subfolder; point to the "
                      "weights file itself")


# ----------------------------------------------------------------------------------------------------------
# Names and layouts


def _clean_key(key: str) -> tuple[str, bool]:
    """Remove training wrappers and prefixes; also report whether a `model.` style prefix was present."""
    for tok in _WRAPPER_TOKENS:
        key = key.replace(tok, "")
    bare = strip_prefix(key, _PREFIXES)
    return bare, bare != key


def wan_name(key: str) -> str:
    """Our (original Wan) name for a DiT tensor or module name in any accepted layout and prefix."""
    return _from_diffusers(_clean_key(key)[0])


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


def dit_layout(keys: list[str]) -> str | None:
    """"wan" or "diffusers" if these (cleaned) tensor names are a Wan2.1 DiT's, else None."""
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


def _is_i2v(keys: list[str]) -> bool:
    return any(k.startswith(("img_emb.", "condition_embedder.image_embedder.")) or ".k_img." in k
               or ".add_k_proj." in k for k in keys)


def _name_weights(tf: TensorFile) -> str:
    """Rename the file's tensors to ours; returns the layout."""
    file = tf.path
    cleaned, prefixed = {}, False
    for k in tf.shapes:
        c, p = _clean_key(k)
        cleaned[k] = c
        prefixed |= p
    keys = list(cleaned.values())
    from sdv2_studio.engine.lora import is_lora  # lora.py builds on this module

    if is_lora(tf.shapes):
        raise EngineError(f"{file} is a LoRA adapter, not a full Wan2.1 DiT; load the base or causal model and "
                          "apply the LoRA on top of it (engine.lora)")
    if _is_i2v(keys):
        raise EngineError(f"{file}: this is an image-to-video Wan model (it has image-embedding weights); "
                          "only Wan2.1 text-to-video DiTs (T2V 1.3B/14B and their causal distillations) are "
                          "supported")
    layout = dit_layout(keys)
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
    tf.rename({raw: name for name, raw in ours.items()})
    pickled = file.suffix.lower() not in (".safetensors", ".json")
    return "causal-wan" if pickled and (tf.entry is not None or prefixed) else layout


# ----------------------------------------------------------------------------------------------------------
# Configs and checks


def _hints(w: TensorFile) -> dict:
    """num_heads / text_len / eps / rope_max_len from our safetensors metadata or a config.json beside it."""
    dim, metadata = w.shapes.get("patch_embedding.weight", (None,))[0], w.metadata
    if METADATA_KEY in metadata:
        try:
            ours = json.loads(metadata[METADATA_KEY])
            return {k: ours[k] for k in _HINTED if k in ours}
        except (ValueError, TypeError):
            w.notes.append(f"ignored unreadable {METADATA_KEY} metadata")
    cfg_file = w.path.parent / "config.json"
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
            parts.append(f"{_count(missing, 'missing')} ({some(missing)})")
        if unexpected:
            parts.append(f"{_count(unexpected, 'unexpected')} ({some(unexpected)})")
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
    tf = w.tf
    return CheckpointInfo(
        path=tf.path, layout=w.layout, preset=cfg.name, config=cfg, num_tensors=len(tf.shapes),
        num_params=tf.num_params, dtypes=tuple(sorted(set(tf.dtypes.values()))), entry=tf.entry, files=tf.files,
        notes=tuple(tf.notes),
    )


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _cfg_label(cfg: ModelConfig) -> str:
    return cfg.name if cfg.name != "custom" else f"custom dim-{cfg.dim} {cfg.num_layers}-layer"


def _count(keys: list[str], what: str) -> str:
    return f"{len(keys)} {what} tensor{'s' if len(keys) != 1 else ''}"


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
