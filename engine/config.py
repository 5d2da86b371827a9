"""Model, streaming-cache and live-control configuration, as dataclasses with named presets (gpt-fast style).

Torch-free: `Controls` is shared by presets (read inside OBS's own Python), the app's settings and the engine.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path, PurePath

from sdv2_studio.engine.errors import EngineError

# The denoising step schedule (wan_causal_dmd_v2v.yaml denoising_step_list[:-1]); `steps` takes its first n entries.
DEFAULT_TIMESTEPS: tuple[int, ...] = (700, 500, 400, 200)
MAX_STEPS = len(DEFAULT_TIMESTEPS)
MAX_TRANSITION = 64  # chunks
MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 2000
MAX_BLEND = 8  # prompts in one blend, the main prompt included
MAX_WEIGHT = 100.0
MAX_LORAS = 8  # LoRAs one Controls (a preset) names
#: How a frame of another aspect ratio is framed to the model size (engine.io.frames.fit_frame): crop to fill, or
#: fit with black bars.
FIT_MODES = ("crop", "bars")


class InvalidControl(EngineError):
    """One control has a wrong type or value; `field` names it (preset files report the field)."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field.replace('_', ' ')} {why}")
        self.field, self.why = field, why


def _whole(field: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise InvalidControl(field, f"must be a whole number from {lo} to {hi}, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class Controls:
    """What a preset or the user changes live. Checked on construction (`dataclasses.replace` too): every
    Controls is valid; a wrong type or value raises `InvalidControl` (an EngineError) naming the field."""

    prompt: str = "a high quality anime illustration, clean cel shading, vibrant colors"
    steps: int = 2  # denoising steps, 1 to MAX_STEPS (more = better quality, slower)
    noise_scale: float = 0.8  # (0, 1]: s0 of the motion-aware controller; more = stronger restyle
    seed: int = 0
    transition_chunks: int = 2  # a prompt change blends in over this many chunks (0 = at once)
    # A weighted blend of prompts (as Daydream Scope does): `prompt` at `prompt_weight` plus the (prompt, weight)
    # pairs of `blend`; the engine mixes their text embeddings by normalised weight (`weighted_prompts`). Without
    # a blend `prompt_weight` is 1 and the stream is exactly the single prompt's.
    prompt_weight: float = 1.0
    blend: tuple[tuple[str, float], ...] = ()
    # DiT LoRAs of this style, merged on top of the model's own (EngineConfig.loras) at the chunk boundary where
    # the controls apply: (file, strength) pairs; a relative file is in the user's LoRA folder
    # (engine.presets.resolve_lora_ref), an absolute one anywhere. Strength -10 to 10; () = none.
    loras: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        _check_prompt("prompt", self.prompt)
        set_ = object.__setattr__  # frozen: normalise numpy / int values to the declared types
        blend = self.blend
        if isinstance(blend, (str, bytes)) or not isinstance(blend, (list, tuple)):
            raise InvalidControl("blend", f"must be a list of [prompt, weight] pairs, not {blend!r}")
        if len(blend) + 1 > MAX_BLEND:
            raise InvalidControl("blend", f"has {len(blend) + 1} prompts with the main one, at most {MAX_BLEND}")
        pairs = []
        for pair in blend:
            if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise InvalidControl("blend", f"entries must be [prompt, weight] pairs, not {pair!r}")
            pairs.append((_check_prompt("blend", pair[0]), _weight("blend", pair[1])))
        set_(self, "blend", tuple(pairs))
        set_(self, "prompt_weight", _weight("prompt_weight", self.prompt_weight) if pairs else 1.0)
        if pairs and not self.prompt_weight + sum(w for _, w in pairs) > 0:
            raise InvalidControl("blend", "weights are all 0; give at least one prompt a weight above 0")
        set_(self, "loras", _check_loras(self.loras))
        noise = self.noise_scale
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0.0 < noise <= 1.0:
            raise InvalidControl("noise_scale", f"must be in (0, 1], not {noise!r}")
        set_(self, "steps", _whole("steps", self.steps, 1, MAX_STEPS))
        set_(self, "noise_scale", float(noise))
        set_(self, "seed", _whole("seed", self.seed, 0, MAX_SEED))
        set_(self, "transition_chunks", _whole("transition_chunks", self.transition_chunks, 0, MAX_TRANSITION))


    @property
    def weighted_prompts(self) -> tuple[tuple[str, float], ...]:
        """The prompts the stream mixes, each with its normalised weight (they sum to 1; weight-0 prompts left
        out): ((prompt, 1.0),) without a blend. The one definition of a blend's weights."""
        pairs = [(p, w) for p, w in ((self.prompt, self.prompt_weight), *self.blend) if w > 0]
        total = sum(w for _, w in pairs)
        return tuple((p, w / total) for p, w in pairs) if len(pairs) > 1 else ((pairs[0][0], 1.0),)

    @property
    def prompt_texts(self) -> tuple[str, ...]:
        """Every prompt text these controls name (the main one first), blended in or at weight 0."""
        return (self.prompt, *(p for p, _ in self.blend))

    def with_prompts(self, pairs) -> Controls:
        """These controls with the blend `pairs` ((prompt, weight), ...): the first is the main prompt."""
        if not pairs:
            raise InvalidControl("prompt", "is empty; type what the stream should look like")
        (prompt, weight), *rest = pairs
        return dataclasses.replace(self, prompt=prompt, prompt_weight=weight, blend=tuple(rest))


def _check_prompt(field: str, prompt) -> str:
    if not isinstance(prompt, str):
        raise InvalidControl(field, f"must be text, not {prompt!r}")
    if not prompt.strip():
        raise InvalidControl(field, "is empty; type what the stream should look like")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidControl(field, f"is too long ({len(prompt)} characters, at most {MAX_PROMPT_CHARS})")
    return prompt


def _check_loras(loras) -> tuple[tuple[str, float], ...]:
    """Controls.loras normalised to ((file, strength), ...): each a [file, strength] pair or a bare file (strength
    1); a relative file may not leave the LoRA folder (`leaves_folder`)."""
    if isinstance(loras, (str, bytes)) or not isinstance(loras, (list, tuple)):
        raise InvalidControl("loras", f"must be a list of [file, strength] pairs, not {loras!r}")
    if len(loras) > MAX_LORAS:
        raise InvalidControl("loras", f"names {len(loras)} LoRAs, at most {MAX_LORAS}")
    out = []
    for entry in loras:
        if isinstance(entry, str):
            entry = (entry, 1.0)
        ref, strength = entry if isinstance(entry, (list, tuple)) and len(entry) == 2 else (None, None)
        if not isinstance(ref, str) or not ref.strip() or len(ref) > 1000:
            raise InvalidControl("loras", f"entries must be [file, strength] pairs like [\"ink.safetensors\", 0.8], "
                                          f"not {entry!r}")
        ref = ref.strip()
        if leaves_folder(ref):
            raise InvalidControl("loras", f"file {ref!r} leaves the LoRA folder; name a file inside it or give an "
                                          "absolute path")
        if not lora_strength_ok(strength):
            raise InvalidControl("loras", f"strength of {ref} must be a number from {-MAX_LORA_STRENGTH:g} to "
                                          f"{MAX_LORA_STRENGTH:g}, not {strength!r}")
        out.append((ref, float(strength)))
    return tuple(out)


def leaves_folder(ref: str) -> bool:
    """A relative file name that climbs out of the folder it is looked up in (`..`); absolute paths do not."""
    return not os.path.isabs(os.path.expanduser(ref)) and ".." in PurePath(ref).parts


def lora_strength_ok(strength) -> bool:
    return not isinstance(strength, bool) and isinstance(strength, numbers.Real) and math.isfinite(strength) \
        and abs(strength) <= MAX_LORA_STRENGTH


def _weight(field: str, w) -> float:
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0.0 <= w <= MAX_WEIGHT:
        raise InvalidControl(field, f"weights must be numbers from 0 to {MAX_WEIGHT:g}, not {w!r}")
    return float(w)


def parse_weighted_prompt(text: str) -> tuple[str, float]:
    """"TEXT:WEIGHT" -> (TEXT, WEIGHT) (`sdv2 run --prompt "neon city:0.7"`); only a trailing ":number" is a
    weight, so a prompt with colons of its own keeps them; no weight: 1."""
    head, sep, tail = text.rpartition(":")
    try:
        weight = float(tail) if sep else None
    except ValueError:
        weight = None
    if weight is None or not head.strip() or not math.isfinite(weight):
        return text, 1.0
    return head.strip(), weight


CONTROL_FIELDS = tuple(f.name for f in dataclasses.fields(Controls))


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Wan2.1 text-to-video DiT. Names follow Wan's own `WanModel.__init__`."""

    name: str = "custom"
    dim: int = 1536  # hidden width of every block
    ffn_dim: int = 8960  # GELU(tanh) MLP width
    num_heads: int = 12  # head_dim = dim // num_heads (128 for the released models)
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patchify of the 16-channel VAE latent
    in_dim: int = 16  # VAE z_dim
    out_dim: int = 16
    text_dim: int = 4096  # umT5-XXL hidden size
    text_len: int = 512  # text tokens; shorter prompts are zero-padded to this length
    freq_dim: int = 256  # sinusoidal timestep embedding width
    qk_norm: bool = True  # RMSNorm over all heads on q and k
    cross_attn_norm: bool = True  # affine LayerNorm (norm3) before cross-attention
    eps: float = 1e-6
    rope_max_len: int = 1024  # positions per RoPE axis (Wan: rope_params(1024, .))

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise EngineError(f"model config {self.name}: dim {self.dim} is not divisible by {self.num_heads} heads")
        if self.head_dim % 2:
            raise EngineError(f"model config {self.name}: head_dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head-dim channels per RoPE axis (t, h, w): 44/42/42 for head_dim 128 (Wan's split)."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)


PRESETS: dict[str, ModelConfig] = {
    # Untrained test/demo model: runs anywhere in well under a second per chunk on a laptop CPU.
    "tiny": ModelConfig(name="tiny", dim=128, ffn_dim=256, num_heads=4, num_layers=4, text_dim=64,
                        text_len=32, freq_dim=64),
    # The benchmark shape of the issue tracker (dim 512, 8x64 heads, 4 layers): comparable with upstream's CPU cost.
    "small": ModelConfig(name="small", dim=512, ffn_dim=2048, num_heads=8, num_layers=4, text_dim=256,
                         text_len=512, freq_dim=256),
    "wan2.1-1.3b": ModelConfig(name="wan2.1-1.3b", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-14b": ModelConfig(name="wan2.1-14b", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise EngineError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class CacheConfig:
    """StreamDiffusionV2's long-stream machinery (upstream defaults of wan_causal_dmd_v2v.yaml)."""

    cache_frames: int = 6  # latent frames held per layer (sinks + rolling window)
    sink_frames: int = 3  # first latent frames kept as attention sinks
    sink_tau: float = 0.2  # adaptive sink refresh threshold on mean K/V cosine similarity; -1 disables
    rope_refresh: int = 50  # t_refresh: when a chunk's start frame reaches this, wrap to cache_frames - 1
    first_chunk_frames: int = 2  # the first VAE call turns 5 pixel frames into 2 latent frames
    chunk_frames: int = 1  # latent frames per later chunk (4 pixel frames)
    # Capacity of the device-side stack of pending sink refreshes. Upstream's Python list is unbounded (it can only
    # grow in multi-step no-batch mode under sustained low similarity); past this depth the oldest entry is dropped.
    refresh_stack: int = 64
    # When the ring pointer advances with one slot (B = 1) and several denoising steps per chunk:
    #  "upstream": a step counter that starts counting at the first full-phase call and pops every `steps` calls,
    #              exactly as upstream (its phase is off by one chunk step once the cache is full: the later steps
    #              of the chunk that fills the cache already write into the first rolling slot);
    #  "last_step": the pointer advances after the last denoising step of every chunk (the intended rule).
    ring_advance: str = "upstream"

    @property
    def first_pixels(self) -> int:
        """Pixel frames of the first chunk (the VAE encodes the stream's first frame alone, then 4 per latent): 5."""
        return 1 + 4 * (self.first_chunk_frames - 1)

    @property
    def chunk_pixels(self) -> int:
        """Pixel frames of every later chunk: 4."""
        return 4 * self.chunk_frames

    def __post_init__(self) -> None:
        if not 0 <= self.sink_frames < self.cache_frames:
            raise EngineError(
                f"cache: sink_frames ({self.sink_frames}) must be >= 0 and < cache_frames ({self.cache_frames})")
        if self.first_chunk_frames < 1 or self.chunk_frames < 1:
            raise EngineError("cache: chunk sizes must be at least one latent frame")
        if max(self.first_chunk_frames, self.chunk_frames) > self.cache_frames:
            raise EngineError("cache: a chunk cannot be larger than the cache")
        if self.ring_advance not in ("upstream", "last_step"):
            raise EngineError(f"cache: ring_advance must be 'upstream' or 'last_step', not {self.ring_advance!r}")
        if self.rope_refresh < self.cache_frames:
            raise EngineError(
                f"cache: rope_refresh ({self.rope_refresh}) must be >= cache_frames ({self.cache_frames})")


# -- model files: what `sdv2 run --model/--base/--vae/--text-encoder/--tokenizer/--lora` and EngineConfig name ------

PASSTHROUGH = "passthrough"  # the identity "model" (engine/passthrough.py): wiring checks, transport latency
SEEDED_MODELS = ("auto", "tiny", PASSTHROUGH)  # specs that need no file (with "random:PRESET")
MAX_LORA_STRENGTH = 10.0
_FILE_FIXES = {  # field -> (what it is, the flag, what to pass)
    "model": ("model", "--model", "a DiT checkpoint file or folder, 'tiny', 'passthrough', or run `sdv2 models "
                                  "download`"),
    "base": ("base folder", "--base", "a Wan2.1 folder (original: Wan2.1_VAE.pth + models_t5_umt5-xxl-enc-bf16.pth "
                                      "+ google/umt5-xxl/, or diffusers: vae/ + text_encoder/ + tokenizer/)"),
    "vae": ("VAE", "--vae", "Wan2.1_VAE.pth, a diffusers vae/ folder or ComfyUI's wan_2.1_vae.safetensors"),
    "text_encoder": ("text encoder", "--text-encoder", "models_t5_umt5-xxl-enc-bf16.pth, a diffusers "
                                                       "text_encoder/ folder or a single umT5 .safetensors"),
    "tokenizer": ("tokenizer", "--tokenizer", "the google/umt5-xxl/ or tokenizer/ folder, or a spiece.model"),
    "lora": ("LoRA", "--lora", "a Wan2.1 DiT LoRA .safetensors, as FILE or FILE:STRENGTH"),
}


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """`FILE[:STRENGTH]` (the CLI form) -> (path, strength); a trailing `:number` is the strength."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return Path(head).expanduser(), float(tail)
        except ValueError:  # a colon that is part of the path (C:\...), or a strength that is not a number
            if Path(head).expanduser().is_file() and not Path(spec).expanduser().exists():
                raise EngineError(f"LoRA strength {tail!r} is not a number (--lora FILE:STRENGTH, e.g. "
                                  f"{Path(head).name}:0.8)") from None
    return Path(spec).expanduser(), 1.0


def _must_exist(field: str, value) -> str | None:
    if value is None or value == "":
        return None
    what, flag, fix = _FILE_FIXES[field]
    if not isinstance(value, (str, Path)):
        raise EngineError(f"{what} ({flag}) must be a path, not {value!r}")
    if not Path(value).expanduser().exists():
        raise EngineError(f"{what} {value} does not exist ({flag}); pass {fix}")
    return str(value)


def check_model_files(model: str = "auto", base=None, vae=None, text_encoder=None, tokenizer=None,
                      loras=()) -> tuple[tuple[str, float], ...]:
    """Check the model-file choices at the boundary (one EngineError line naming the flag and what to pass) and
    return the LoRAs normalised to ((path, strength), ...). `loras`: "FILE[:STRENGTH]" strings or
    (path, strength) pairs; strength 1.0 when left out."""
    if not isinstance(model, str) or not model:
        raise EngineError(f"model must be 'auto', 'tiny', 'passthrough', 'random:PRESET' or a checkpoint path, not "
                          f"{model!r}")
    if model not in SEEDED_MODELS and not model.startswith("random:"):
        _must_exist("model", model)
    for name, value in (("base", base), ("vae", vae), ("text_encoder", text_encoder), ("tokenizer", tokenizer)):
        _must_exist(name, value)
    if model in ("tiny", PASSTHROUGH) or model.startswith("random:"):
        given = [_FILE_FIXES[n][1] for n, v in (("base", base), ("vae", vae), ("text_encoder", text_encoder),
                                               ("tokenizer", tokenizer)) if v]
        if model == PASSTHROUGH and loras:
            given.append("--lora")
        if given:
            raise EngineError(f"{', '.join(given)} cannot be used with the built-in {model} model (it "
                              f"{'runs no network' if model == PASSTHROUGH else 'has its own parts'}); pass a DiT "
                              "checkpoint with --model")
    if isinstance(loras, (str, Path)):
        loras = (loras,)
    out = []
    for spec in loras:
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            path, strength = Path(str(spec[0])).expanduser(), spec[1]
        elif isinstance(spec, (str, Path)):
            path, strength = parse_lora_spec(str(spec))
        else:
            raise EngineError(f"LoRA {spec!r} must be FILE, FILE:STRENGTH or (path, strength)")
        _must_exist("lora", str(path))
        if not lora_strength_ok(strength):
            raise EngineError(f"LoRA strength for {path.name} must be a number from {-MAX_LORA_STRENGTH:g} to "
                              f"{MAX_LORA_STRENGTH:g} (FILE:STRENGTH, e.g. {path.name}:0.8), not {strength!r}")
        out.append((str(path), float(strength)))
    return tuple(out)
