"""Wan2.1 DiT LoRAs: read the files trainers write, merge several at once (each with a strength) into the loaded
DiT's weights, and switch or remove them exactly, without reloading the base weights.

Key styles (from diffusers' Wan LoRA conversion, ComfyUI's `comfy/lora.py`, Kijai's WanVideoWrapper):

* PEFT / diffusers: `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r], optionally
  `<module>.lora_B.bias` (a bias added by the adapter); modules in diffusers names under `transformer.`
  (`transformer.blocks.0.attn1.to_q`) or in Wan names under `diffusion_model.`. PEFT files carry no alpha
  tensor: the scale is `lora_alpha / r` (`/ sqrt(r)` with rsLoRA) from the adapter config diffusers writes into
  the safetensors metadata (`lora_adapter_metadata`), else 1.
* ComfyUI / Kijai: `diffusion_model.<wan module>.lora_down.weight` / `.lora_up.weight` with `.alpha` (scale
  alpha / r), plus `.diff` (a full weight delta, e.g. on norms) and `.diff_b` (a bias delta).
* musubi-tuner: `lora_unet_<wan module, dots as underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`.

Module names map to ours with `engine.checkpoint.wan_name`, the table the DiT loader uses. A LoRA must fit the
loaded model: a module it names that the DiT lacks, or a shape of another model size, is one EngineError line.

Merging: W = W_base + sum_i strength_i * scale_i * (up_i @ down_i) (+ strength_i * diff_i), computed in float32
from the base value and cast to the parameter's dtype once, so merged weights do not depend on the order of
switches (A -> B -> A any number of times is bitwise base + A). `LoRAMerger` keeps the base value of every
parameter a LoRA changed, and only those (on the CPU by default); that is what undoing needs: `set([])` restores
them bit for bit, and a switch restores the changed weights and merges the new set in place (parameters keep their
identity and storage, so a compiled step or a CUDA graph goes on reading them without recompiling). Presets switch
their LoRAs through it (`Controls.loras`, applied by the Engine between chunks, on top of the model's own `fixed`
ones); `LoRAMerger.load` reads each file once and keeps its factors in a bounded cache.

What a switch costs, for a rank-32 LoRA on every linear of the 1.3B blocks (q, k, v, o of both attentions, ffn.0,
ffn.2: 1.39 G parameters): writing those weights back (2.8 GB in bf16; from pinned host memory over PCIe 4 roughly
0.1-0.3 s), 2 * r * in * out FLOPs per target for the products (r = 32: 89 GFLOP, a few ms on a GPU, seconds on a
CPU), the backup's 2.8 GB of host RAM while a LoRA is merged, and 87 MB of bf16 factors per LoRA kept. `SwitchStats`
reports the numbers of each switch. The caller switches between chunks (not during a forward pass); K/V cached with
the old weights stay (the Engine recomputes the prompt's cross-attention K/V).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sdv2_studio.engine.checkpoint import expected_shapes, wan_name
from sdv2_studio.engine.config import PRESETS, ModelConfig, parse_lora_spec
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.weights import TensorFile, read_tensors, some, strip_prefix

# Suffix of a LoRA tensor -> its role. Longest first, so `.lora_B.bias` is not read as something else.
_ROLES = {".lora_A.weight": "down", ".lora_down.weight": "down", ".lora.down.weight": "down",
          ".lora_B.weight": "up", ".lora_up.weight": "up", ".lora.up.weight": "up", ".lora_B.bias": "bias",
          ".alpha": "alpha", ".diff_b": "diff_b", ".diff": "diff"}
_PAIR_SUFFIXES = tuple(s for s, role in _ROLES.items() if role in ("down", "up"))
_UNSUPPORTED = {".lokr_": "LoKr", ".hada_": "LoHa", ".dora_scale": "DoRA", ".lora_magnitude_vector": "DoRA",
                ".lora_mid.": "LoCon with a mid matrix", ".glora_": "GLoRA", ".w_norm": "BOFT/OFT"}
_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.", "model.", "lora_unet_")
_METADATA_KEY = "lora_adapter_metadata"  # diffusers: the PEFT LoraConfig as JSON in the safetensors header
_BLOCK_RE = re.compile(r"blocks[._](\d+)[._](.+)")


@dataclass
class LoRA:
    """One LoRA file, keyed by our module names (model-independent until `check_lora`)."""

    path: Path
    style: str  # "peft" (lora_A/lora_B) | "comfy" (lora_down/lora_up/alpha) | "musubi" (lora_unet_*)
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)  # module ->
    # (down [r, in...], up [out, r...], scale)
    diffs: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)  # parameter -> (delta, scale)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def rank(self) -> int:
        return max((down.shape[0] for down, _, _ in self.pairs.values()), default=0)

    @property
    def num_params(self) -> int:
        return sum(d.numel() + u.numel() for d, u, _ in self.pairs.values()) + \
            sum(t.numel() for t, _ in self.diffs.values())

    @property
    def nbytes(self) -> int:
        """Host memory its factors and deltas take."""
        return sum(d.nbytes + u.nbytes for d, u, _ in self.pairs.values()) + \
            sum(t.nbytes for t, _ in self.diffs.values())

    def targets(self) -> set[str]:
        """The model parameters this LoRA changes."""
        return {f"{m}.weight" for m in self.pairs} | set(self.diffs)


@dataclass(frozen=True)
class SwitchStats:
    """What one `LoRAMerger.set` did."""

    restored: int  # parameters written back from the backup
    merged: int  # parameters given new LoRA deltas
    bytes_written: int  # parameter bytes written
    flops: int  # multiply-adds x 2 of the up @ down products
    backup_bytes: int  # host (or backup device) memory holding base values after the switch
    seconds: float
    factor_bytes: int = 0  # host memory of the LoRA factors kept (merged ones and the read cache)


def is_lora(keys: Iterable[str]) -> bool:
    return any(k.endswith(_PAIR_SUFFIXES) or k.startswith("lora_unet_") for k in keys)


def read_lora(path: str | Path) -> LoRA:
    """Read a LoRA file in any style above (one EngineError line when it is not one)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise EngineError(f"{path} is a folder with {len(found)} .safetensors files; point to the LoRA file")
        path = found[0]
    return _parse(read_tensors(path))


def _parse(tf: TensorFile) -> LoRA:
    path, keys = tf.path, list(tf.shapes)
    if not is_lora(keys):
        raise EngineError(f"{path} is not a LoRA (no lora_A/lora_B or lora_down/lora_up tensors, e.g. "
                          f"{some(keys)}); pass a Wan2.1 DiT LoRA")
    for token, what in _UNSUPPORTED.items():
        bad = [k for k in keys if token in k]
        if bad:
            raise EngineError(f"{path} is a {what} adapter ({bad[0]}), which is not supported; use a plain LoRA "
                              "(lora_A/lora_B or lora_down/lora_up)")
    style = "musubi" if any(k.startswith("lora_unet_") for k in keys) else \
        "comfy" if any(".lora_down." in k or ".lora.down." in k for k in keys) else "peft"
    peft_scale = _peft_scale(tf)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for k in keys:
        suffix = next((s for s in _ROLES if k.endswith(s)), None)
        if suffix is None:
            raise EngineError(f"{path}: tensor {k} is not a LoRA weight this app reads (expected "
                              f"{', '.join(_ROLES)}); the file may be for another tool or model")
        module = _module_name(k[: -len(suffix)], style)
        parts.setdefault(module, {})[_ROLES[suffix]] = tf.read(k)
    lora = LoRA(path=path, style=style)
    for module, p in parts.items():
        if ("down" in p) != ("up" in p):
            raise EngineError(f"{path}: {module} has a LoRA {'down' if 'down' in p else 'up'} matrix without its "
                              "partner; the file is incomplete, download it again")
        if "down" in p:
            down, up = p["down"], p["up"]
            if down.dim() < 2 or up.dim() < 2 or up.shape[1] != down.shape[0]:
                raise EngineError(f"{path}: {module} has LoRA matrices of shapes {tuple(down.shape)} and "
                                  f"{tuple(up.shape)}, which do not multiply; the file is corrupt")
            rank = down.shape[0]
            scale = float(p["alpha"]) / rank if "alpha" in p else peft_scale(rank)
            lora.pairs[module] = (down, up, scale)
            if "bias" in p:  # PEFT's lora_B bias is scaled with the adapter
                lora.diffs[f"{module}.bias"] = (p["bias"], scale)
        for role, param in (("diff", _weight_of(module)), ("diff_b", f"{module}.bias")):
            if role in p:
                lora.diffs[param] = (p[role], 1.0)
    return lora


def check_lora(lora: LoRA, cfg: ModelConfig) -> None:
    """One EngineError line unless every tensor of `lora` fits a DiT with config `cfg`."""
    shapes = expected_shapes(cfg)
    unknown = [m for m in lora.pairs if f"{m}.weight" not in shapes] + [p for p in lora.diffs if p not in shapes]
    if unknown:
        blocks = [int(m[1]) for u in unknown if (m := _BLOCK_RE.match(u))]
        if any("_img" in u or u.startswith("img_emb") for u in unknown):
            why = "an image-to-video LoRA (image cross-attention)"
        elif blocks and max(blocks) >= cfg.num_layers:
            why = f"a LoRA for a model with more than {cfg.num_layers} blocks (block {max(blocks)})"
        else:
            why = "a LoRA for another model"
        raise EngineError(f"{lora.path}: the LoRA targets layers the loaded {_label(cfg)} DiT does not have "
                          f"({some(unknown)}); it looks like {why}, use one trained for Wan2.1 T2V {_label(cfg)}")
    for module, (down, up, _) in lora.pairs.items():
        want = shapes[f"{module}.weight"]
        if (up.shape[0], math.prod(down.shape[1:])) != (want[0], math.prod(want[1:])):
            raise EngineError(f"{lora.path}: {module} is {up.shape[0]}x{math.prod(down.shape[1:])} in the LoRA but "
                              f"{want[0]}x{math.prod(want[1:])} in the loaded {_label(cfg)} DiT; it is a LoRA for "
                              f"{_size_of(lora)}, use one trained for {_label(cfg)}")
    for param, (delta, _) in lora.diffs.items():
        if math.prod(delta.shape) != math.prod(shapes[param]):
            raise EngineError(f"{lora.path}: the delta for {param} has shape {tuple(delta.shape)}, the loaded "
                              f"{_label(cfg)} DiT has {shapes[param]}; it is a LoRA for {_size_of(lora)}")


def load_loras(specs: Sequence[str | Path | tuple[str | Path, float]],
               cfg: ModelConfig | None = None) -> list[tuple[LoRA, float]]:
    """Read several LoRAs: each `"FILE[:STRENGTH]"`, a path (strength 1) or `(path, strength)`; checked against
    `cfg` when given. Returns [(LoRA, strength)] for `LoRAMerger.set`."""
    out = []
    for spec in specs:
        path, strength = spec if isinstance(spec, tuple) else parse_lora_spec(str(spec))
        if not math.isfinite(float(strength)):
            raise EngineError(f"LoRA strength for {path} must be a number, not {strength!r}")
        lora = read_lora(path)
        if cfg is not None:
            check_lora(lora, cfg)
        out.append((lora, float(strength)))
    return out


DEFAULT_CACHE_BYTES = 1 << 30  # LoRA factors kept for switching back without reading the file again


class LoRAMerger:
    """Merges LoRAs into a DiT's parameters in place and keeps what undoing needs (see the module docstring).

    `fixed` are the model's own LoRAs (EngineConfig.loras, merged at load): `switch` keeps them under every set of
    preset LoRAs. `load` reads LoRA files once: their factors stay in a least-recently-used cache of at most
    `cache_bytes` (the merged ones are never dropped), so switching back to a preset reads nothing. Parameters left
    on the meta device (another pipeline rank's blocks) are skipped.
    """

    def __init__(self, model: torch.nn.Module, backup_device: str | torch.device = "cpu",
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.model = model
        self.cfg: ModelConfig = model.cfg
        self.params = dict(model.named_parameters())
        self.backup_device = torch.device(backup_device)
        self.base: dict[str, torch.Tensor] = {}  # parameter -> its base value, for every changed parameter
        self.active: list[tuple[LoRA, float]] = []
        self.fixed: list[tuple[LoRA, float]] = []
        self.cache_bytes = cache_bytes
        self._files: OrderedDict[tuple, LoRA] = OrderedDict()  # (path, mtime, size) -> LoRA, oldest first
        self._lock = threading.Lock()  # `load` runs on callers' threads, `set` on the engine thread

    def load(self, files: Sequence[tuple[str | Path, float]]) -> list[tuple[LoRA, float]]:
        """[(LoRA, strength)] for `set` from (file, strength) pairs: each file read once (re-read when it changed
        on disk) and checked against the model (one EngineError line when it does not fit)."""
        out = []
        with self._lock:
            for path, strength in files:
                path = Path(path).expanduser().resolve()
                try:
                    st = path.stat()
                    key = (path, st.st_mtime_ns, st.st_size)
                except OSError:
                    key = None  # read_lora says what is wrong
                lora = self._files.get(key) if key else None
                if lora is None:
                    lora = read_lora(path)
                    check_lora(lora, self.cfg)
                if key:
                    self._files[key] = lora
                    self._files.move_to_end(key)
                out.append((lora, float(strength)))
            self._evict(keep={id(lora) for lora, _ in out})
        return out

    def _evict(self, keep: set[int]) -> None:
        keep |= {id(lora) for lora, _ in (*self.active, *self.fixed)}
        total = sum(lora.nbytes for lora in self._files.values())
        for key, lora in list(self._files.items()):
            if total <= self.cache_bytes:
                break
            if id(lora) not in keep:
                del self._files[key]
                total -= lora.nbytes

    @property
    def factor_bytes(self) -> int:
        """Host memory of the LoRA factors held: the read cache and the merged LoRAs."""
        with self._lock:
            held = {id(lora): lora for lora in self._files.values()}
        held.update((id(lora), lora) for lora, _ in (*self.active, *self.fixed))
        return sum(lora.nbytes for lora in held.values())

    def switch(self, loras: Sequence[tuple[LoRA, float]]) -> SwitchStats:
        """Make the model base + the fixed LoRAs + these (a preset's)."""
        return self.set([*self.fixed, *loras])

    def check_room(self, loras: Sequence[tuple[LoRA, float]], available: int | None = None) -> None:
        """One EngineError line when merging `loras` (all of them, fixed ones included) would need more host RAM
        for the base values it keeps than is free (`available` bytes; default: what the OS says now). Call it where
        a refusal is harmless (loading, set_controls), not on the stream's thread."""
        from sdv2_studio.engine.memory import available_host_memory, gib

        if self.backup_device.type != "cpu":
            return
        targets = {p for lora, s in loras if s != 0.0 for p in lora.targets() if not self.params[p].is_meta}
        need = sum(self.params[p].numel() * self.params[p].element_size() for p in targets - self.base.keys())
        available = available_host_memory() if available is None else available
        if available is not None and need > 0.9 * available:
            raise EngineError(f"these LoRAs change {gib(need)} of weights whose base values are kept in RAM to "
                              f"switch them off again, but {gib(available)} is free; close other programs or use "
                              "LoRAs that touch fewer layers")

    @torch.no_grad()
    def set(self, loras: Sequence[tuple[LoRA, float]]) -> SwitchStats:
        """Make the model base + these LoRAs (replacing any merged before); `set([])` restores the base. The same
        LoRAs at the same strengths as merged now: nothing to do."""
        t0 = time.perf_counter()
        for lora, _ in loras:
            check_lora(lora, self.cfg)
        live = [(lora, s) for lora, s in loras if s != 0.0]
        if [(id(lora), s) for lora, s in live] == [(id(lora), s) for lora, s in self.active]:
            return SwitchStats(restored=0, merged=0, bytes_written=0, flops=0, backup_bytes=self._backup_bytes(),
                               seconds=time.perf_counter() - t0, factor_bytes=self.factor_bytes)
        targets = {p for lora, _ in live for p in lora.targets() if not self.params[p].is_meta}
        written, flops, restored = 0, 0, 0
        for name in sorted(targets | self.base.keys()):
            p = self.params[name]
            if name not in self.base:
                backup = p.detach().to(self.backup_device, copy=True)
                self.base[name] = backup.pin_memory() if p.is_cuda and backup.device.type == "cpu" else backup
            base = self.base[name].to(p.device, non_blocking=True)
            if name in targets:  # from the base value every time: the result does not depend on earlier switches
                delta, f = self._delta(name, live, p)
                p.copy_((base.float() + delta).to(p.dtype))
                flops += f
            else:
                p.copy_(base)
                del self.base[name]
                restored += 1
            written += p.numel() * p.element_size()
        self.active = list(live)
        if any(p.is_cuda for p in self.params.values()):
            torch.cuda.synchronize()
        with self._lock:
            self._evict(keep=set())  # LoRAs merged before may go now
        return SwitchStats(restored=restored, merged=len(targets), bytes_written=written, flops=flops,
                           backup_bytes=self._backup_bytes(), seconds=time.perf_counter() - t0,
                           factor_bytes=self.factor_bytes)

    def _backup_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.base.values())

    def clear(self) -> SwitchStats:
        return self.set([])

    def _delta(self, name: str, loras: list[tuple[LoRA, float]], p: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Sum of the LoRA deltas of parameter `name` in float32 on its device, and the FLOPs spent."""
        delta = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        flops = 0
        module = name.removesuffix(".weight")
        for lora, strength in loras:
            if name.endswith(".weight") and module in lora.pairs:
                down, up, scale = lora.pairs[module]
                d = down.to(p.device, torch.float32).flatten(1)
                u = up.to(p.device, torch.float32).flatten(1)
                delta += (u @ d).view(p.shape) * (strength * scale)
                flops += 2 * u.shape[0] * u.shape[1] * d.shape[1]
            if name in lora.diffs:
                diff, scale = lora.diffs[name]
                delta += diff.to(p.device, torch.float32).view(p.shape) * (strength * scale)
        return delta, flops


def describe_lora(tf: TensorFile) -> tuple[str, str] | None:
    """(layout, what it is) for `engine.checkpoint.identify`, or None when the file is not a LoRA."""
    if not is_lora(tf.shapes):
        return None
    lora = _parse(tf)
    return lora.style, (f"LoRA for {_size_of(lora)}: {len(lora.pairs)} layers at rank {lora.rank}"
                        + (f", {len(lora.diffs)} direct deltas" if lora.diffs else ""))


# ---------------------------------------------------------------------------------------------------------------


def _module_name(key: str, style: str) -> str:
    """Our module name for the module part of a LoRA key (any prefix, diffusers or Wan names, musubi underscores)."""
    key = strip_prefix(key, _PREFIXES)
    if style == "musubi":
        key = _MUSUBI.get(key) or (f"blocks.{m[1]}.{_MUSUBI_BLOCK.get(m[2], m[2])}"
                                   if (m := _BLOCK_RE.fullmatch(key)) else key)
    module = wan_name(f"{key}.weight").removesuffix(".weight")  # layer names map as their weight's
    return module if module != key else wan_name(key)  # bare parameters (scale_shift_table) map as themselves


def _musubi_tables() -> tuple[dict[str, str], dict[str, str]]:
    """Underscored -> dotted module names of a Wan DiT (top level, and inside a block), from the model itself."""
    top, block = {}, {}
    for name in expected_shapes(PRESETS["tiny"]):
        module = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
        m = _BLOCK_RE.fullmatch(module)
        table, module = (block, m[2]) if m else (top, module)
        table[module.replace(".", "_")] = module
    return top, block


_MUSUBI, _MUSUBI_BLOCK = _musubi_tables()


def _weight_of(module: str) -> str:
    """The parameter a `.diff` delta targets: `<module>.weight`, or the module itself for bare parameters
    (`blocks.N.modulation`)."""
    return module if module.endswith("modulation") else f"{module}.weight"


def _peft_scale(tf: TensorFile):
    """rank -> scale from diffusers' PEFT adapter metadata (lora_alpha / r, rsLoRA: / sqrt(r)); 1 without it."""
    raw = tf.metadata.get(_METADATA_KEY)
    if raw is None:
        return lambda rank: 1.0
    try:
        meta = {k.removeprefix("transformer."): v for k, v in json.loads(raw).items()}
        alpha = float(meta["lora_alpha"])
    except (ValueError, TypeError, KeyError, AttributeError):
        raise EngineError(f"{tf.path}: unreadable {_METADATA_KEY} (no lora_alpha); re-export the LoRA") from None
    if meta.get("use_dora"):
        raise EngineError(f"{tf.path} is a DoRA adapter, which is not supported; use a plain LoRA")
    if meta.get("alpha_pattern") or meta.get("rank_pattern"):
        raise EngineError(f"{tf.path}: per-layer alpha/rank patterns are not supported; re-export the LoRA with "
                          "one alpha (or as lora_down/lora_up/alpha)")
    if meta.get("use_rslora"):
        return lambda rank: alpha / math.sqrt(rank)
    return lambda rank: alpha / rank


def _label(cfg: ModelConfig) -> str:
    return cfg.name if cfg.name != "custom" else f"dim-{cfg.dim} {cfg.num_layers}-layer"


def _size_of(lora: LoRA) -> str:
    """The model size a LoRA was trained for, from the input width of its attention / FFN input layers."""
    dims = {math.prod(d.shape[1:]) for m, (d, _, _) in lora.pairs.items()
            if m.endswith(("attn.q", "attn.k", "attn.v", "ffn.0"))}
    if len(dims) != 1:
        return "a Wan2.1 DiT"
    dim = dims.pop()
    names = [p.name for p in PRESETS.values() if p.dim == dim]
    return f"a dim-{dim} DiT ({names[0]})" if names else f"a dim-{dim} DiT"
