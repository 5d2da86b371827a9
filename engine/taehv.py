"""TAEHV: an optional tiny decoder for Wan2.1 latents, for low-latency streaming decode.

TAEHV (Ollin Boer Bohan, github.com/madebyollin/taehv, MIT) is a tiny autoencoder for video latents;
``taew2_1.pth`` holds the weights for Wan2.1's 16-channel latent space. As in StreamDiffusionV2 upstream
(``--use_taehv``), only its decoder is used: encoding stays on the Wan VAE (``engine.vae``). This module is
our own implementation of the decoder, written from the published architecture.

Architecture (per frame 2D convs, everything in ``decoder = nn.Sequential(...)``, so keys are ``decoder.N.*``)::

    0  Clamp: tanh(x / 3) * 3       1  conv3x3 16 -> 256 (+bias)   2  ReLU
    3-5   MemBlock(256)   6  Upsample x2   7  TGrow(256, stride 1)   8  conv3x3 256 -> 128 (no bias)
    9-11  MemBlock(128)   12 Upsample x2   13 TGrow(128, stride 2)   14 conv3x3 128 -> 64 (no bias)
    15-17 MemBlock(64)    18 Upsample x2   19 TGrow(64, stride 2)    20 conv3x3 64 -> 64 (no bias)
    21 ReLU               22 conv3x3 64 -> 3 (+bias); the output is clamped to [0, 1]

* ``MemBlock(C)``: ``relu(conv(cat([x_t, x_{t-1}])) + x_t)`` where ``x_{t-1}`` is the block's *input* at the
  previous time step (zeros before the first), ``conv`` = conv3x3(2C->C), ReLU, conv3x3, ReLU, conv3x3
  (keys ``conv.0/2/4.{weight,bias}``; the skip is an identity, so it has no key).
* ``TGrow(C, s)``: a bias-free 1x1 conv C -> s*C; the s channel groups become s consecutive frames, earliest
  first (key ``conv.weight``, shape ``[s*C, C, 1, 1]``). Upsampling is nearest, 2x in H and W.
* One latent thus gives 1 * 2 * 2 = 4 frames at 8x the resolution. The first ``FRAMES_TO_TRIM = 3`` frames of a
  stream are dropped, which gives Wan's count: latent 0 -> 1 frame, every later latent -> 4 frames.

What is certain and what is inferred about the real checkpoint:

* Read from public sources (madebyollin/taehv ``taehv.py`` and README; StreamDiffusionV2's
  ``taehv_wrapper.py``, which loads ``taew2_1.pth`` with a strict ``load_state_dict`` into the same layout): the
  block order and widths above, the ``decoder.N`` indices, the MemBlock/TGrow key names and shapes, the
  bias-free stage and TGrow convs, ``tanh(x/3)*3``, nearest upsampling, [0, 1] output, the 3 trimmed frames.
  Both of them also build the encoder, so the file holds ``encoder.*`` keys too; we skip those.
* The reference loader cuts a TGrow weight with more output rows than the model needs down to its *last*
  rows (``patch_tgrow_layers``; used when time upscaling is switched off). We do the same, so the file loads
  whether its ``decoder.7.conv.weight`` is ``[256, 256, 1, 1]`` or larger.
* Not verified against the file itself (not available here): the exact tensor set of ``taew2_1.pth``, and
  that the converted ``.safetensors`` files use the same names. ``load_taehv`` therefore checks every
  decoder key and shape and raises a one-line ``EngineError`` naming what differs, instead of loading a
  partial model.

Latent scaling. The TAEHV README states that TAEHV applies no latent scale/shift: it decodes exactly what
the diffusion model uses. Wan2.1's diffusion space is the *normalised* one, ``(z - mean) / std`` with the
per-channel statistics of ``engine.vae`` (diffusers' TAEHV wrapper sets ``latents_mean = 0`` and
``latents_std = 1`` so that the pipeline's de-normalisation becomes a no-op). StreamDiffusionV2 agrees: its
Wan decode path applies ``z * std + mean`` to the DiT output, its TAEHV path feeds the DiT output to TAEHV
unchanged. Our pipeline calls ``vae.denormalize`` and then ``decode_stream`` with RAW latents, so
``TAEHVDecoder.decode_stream`` takes raw latents by default and applies ``WanVAE.normalize``'s formula
itself (in fp32); pass ``normalized=True`` to hand it DiT-space latents and skip the round trip.

Streaming: exact per-block memory, not upstream's context window. Every MemBlock remembers its input at the
last time step; a call processes its latents in parallel over time (past = previous frame, the remembered one
for the first), so decoding latent by latent equals decoding the whole clip at once (up to float rounding),
and each latent is decoded once. Upstream instead re-decodes the last 3 latents plus the new one from empty
memory every call: 4x the work, and only approximate, since MemBlock memory is recurrent (its reach is
unbounded, not 3 latents). State lives in a ``TAEHVState`` (one per stream); ``reset_stream()`` starts a
new clip. Run in fp16/bf16 on GPU, fp32 on CPU (bf16 works there but was 2.5x slower here); reset after
``.to(...)``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.transfer import device_constant
from sdv2_studio.engine.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
from sdv2_studio.engine.weights import TensorFile, read_tensors, shape_mismatch

TAEW21_URL = "https://github.com/madebyollin/taehv/raw/main/taew2_1.pth"
TAEW21_FILES = ("taew2_1.safetensors", "taew2_1.pth")  # looked for inside a folder, in this order
LATENT_CHANNELS = 16
WIDTHS = (256, 128, 64, 64)  # channels of the three stages and of the output head
TIME_STRIDES = (1, 2, 2)  # TGrow stride per stage: 4 frames per latent
FRAMES_TO_TRIM = 3  # 4 - 1: the first latent gives 1 frame, like Wan's causal VAE
SPATIAL_FACTOR = 8
# TAEHV files for other models, told apart by name (taehv, taecvx have exactly taew2_1's shapes).
_OTHER_MODELS = {"taehv": "Hunyuan Video", "taecvx": "CogVideoX", "taeos1_3": "Open-Sora 1.3",
                 "taehv1_5": "Hunyuan Video 1.5", "taehv1_5_super": "Hunyuan Video 1.5",
                 "taew2_2": "Wan2.2 5B", "taew2_2_super": "Wan2.2 5B"}


# ---------------------------------------------------------------------------------------------------- layers


class Clamp(nn.Module):
    """Soft clamp of the input latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3.0) * 3.0


def _conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class MemBlock(nn.Module):
    """Residual block that also sees its own input one time step earlier: relu(f([x_t, x_{t-1}]) + x_t)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv3x3(2 * channels, channels), nn.ReLU(),
                                  _conv3x3(channels, channels), nn.ReLU(), _conv3x3(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:  # both [N, C, H, W]
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TGrow(nn.Module):
    """Temporal upsampling: every frame -> `stride` frames, the channel groups of a 1x1 conv, earliest first."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B*T, C, H, W] -> [B*T*stride, C, H, W]
        N, C, H, W = x.shape
        return self.conv(x).reshape(N * self.stride, C, H, W)


def build_decoder() -> nn.Sequential:
    """The TAEHV decoder stack, index for index as in the published checkpoints (see the module docstring)."""
    layers: list[nn.Module] = [Clamp(), _conv3x3(LATENT_CHANNELS, WIDTHS[0]), nn.ReLU()]
    for cin, cout, stride in zip(WIDTHS[:-1], WIDTHS[1:], TIME_STRIDES):
        layers += [MemBlock(cin), MemBlock(cin), MemBlock(cin)]
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), TGrow(cin, stride), _conv3x3(cin, cout, bias=False)]
    layers += [nn.ReLU(), _conv3x3(WIDTHS[-1], 3)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------- decoder


class TAEHVState:
    """What a decode stream carries between calls: each MemBlock's input at the last time step."""

    def __init__(self) -> None:
        self.memory: dict[int, torch.Tensor] = {}  # decoder index -> [B, 1, C, H, W]
        self.calls = 0  # decode_stream calls since the last reset

    def reset(self) -> None:
        self.memory.clear()
        self.calls = 0


class TAEHVDecoder(nn.Module):
    """Drop-in streaming decoder for Wan2.1 latents: same contract as ``WanVAE.decode_stream``.

    ``latents_per_pass`` bounds memory: longer inputs are decoded in groups of that many latents (the result
    does not depend on it).
    """

    def __init__(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN,
                 latents_std: tuple[float, ...] = WAN21_LATENTS_STD, latents_per_pass: int = 4) -> None:
        super().__init__()
        if len(latents_mean) != LATENT_CHANNELS or len(latents_std) != LATENT_CHANNELS:
            raise EngineError(f"TAEHV: latents_mean/std need {LATENT_CHANNELS} values (Wan2.1 latent channels)")
        self.decoder = build_decoder()
        self.latents_mean = tuple(latents_mean)
        self.latents_std = tuple(latents_std)
        self.latents_per_pass = max(1, int(latents_per_pass))
        self.state = TAEHVState()
        self._mem_blocks = [i for i, layer in enumerate(self.decoder) if isinstance(layer, MemBlock)]
        self.compiled_step = None  # engine/compiled.py `compile_decoder` attaches the compiled `decode_pass` here
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder[1].weight.device

    def reset_stream(self) -> None:
        self.state.reset()

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw Wan2.1 latents [B, 16, T, h, w] -> TAEHV's input space, (z - mean) / std, in fp32."""
        mean = device_constant(self.latents_mean, z.device).view(1, -1, 1, 1, 1)
        std = device_constant(self.latents_std, z.device).view(1, -1, 1, 1, 1)
        return (z.float() - mean) / std

    def new_state(self) -> TAEHVState:
        return TAEHVState()

    def steady_key(self, x: torch.Tensor, batch: int, state: TAEHVState) -> tuple | None:
        """The pass's shape and dtype once every MemBlock has a memory (after the first pass); None before."""
        if len(state.memory) < len(self._mem_blocks):
            return None
        return tuple(x.shape), x.dtype, batch

    def decode_pass(self, x: torch.Tensor, batch: int, state: TAEHVState) -> torch.Tensor:
        """[B*T, 16, h, w] (b-major, then time) -> [B*4T, 3, 8h, 8w] in [0, 1], advancing the memory."""
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemBlock):
                frames = x.view(batch, -1, *x.shape[1:])  # [B, T, C, H, W]
                prev = state.memory.get(i)
                if prev is None:  # start of a stream: empty memory
                    prev = torch.zeros_like(frames[:, :1])
                past = torch.cat([prev, frames[:, :-1]], dim=1).view_as(x)
                state.memory[i] = frames[:, -1:].clone(memory_format=torch.contiguous_format)  # own copy, one layout
                x = layer(x, past)
            else:
                x = layer(x)
        return x.clamp(0.0, 1.0)

    @torch.no_grad()
    def decode_stream(self, latents: torch.Tensor, state: TAEHVState | None = None,
                      normalized: bool = False) -> torch.Tensor:
        """[B, 16, T', h, w] raw latents -> [B, 3, T, 8h, 8w] in [-1, 1]; T = 4T' (-3 on the first call).

        ``normalized=True``: the latents are already in the DiT's (mean/std-normalised) space.
        """
        state = self.state if state is None else state
        if latents.dim() != 5 or latents.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"TAEHV decode_stream needs [B, {LATENT_CHANNELS}, T, h, w] latents, "
                             f"got {tuple(latents.shape)}")
        B, C, T, h, w = latents.shape
        if T == 0:
            raise ValueError("decode_stream got 0 latent frames")
        z = latents.to(self.device)
        z = z.float() if normalized else self.normalize(z)
        z = z.to(self.dtype).transpose(1, 2)  # [B, T, C, h, w]
        outs = []
        for t in range(0, T, self.latents_per_pass):
            chunk = z[:, t : t + self.latents_per_pass]
            y = (self.compiled_step or self.decode_pass)(chunk.reshape(-1, C, h, w), B, state)
            outs.append(y.view(B, -1, *y.shape[1:]))  # [B, 4t, 3, H, W]
        frames = torch.cat(outs, dim=1)
        if state.calls == 0:
            frames = frames[:, FRAMES_TO_TRIM:]
        state.calls += 1
        return frames.transpose(1, 2).mul(2.0).sub(1.0)  # [B, 3, T, H, W], [0, 1] -> [-1, 1]

    def decode(self, latents: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        """Whole clip of T' latents -> 1 + 4(T' - 1) frames (equal to streaming it in any split)."""
        return self.decode_stream(latents, TAEHVState(), normalized=normalized)


# --------------------------------------------------------------------------------------------------- loading


def _find_file(path: Path) -> Path:
    if path.is_dir():
        for name in TAEW21_FILES:
            if (path / name).is_file():
                return path / name
        raise EngineError(f"no TAEHV weights in folder {path}: expected taew2_1.pth; download it from "
                          f"{TAEW21_URL}")
    if not path.is_file():
        raise EngineError(f"TAEHV checkpoint not found: {path}; download {TAEW21_URL} and pass its path")
    return path


def is_taehv(keys) -> bool:
    """The tensor names of a TAEHV decoder (`decoder.N...` with MemBlocks), with or without its encoder."""
    return "decoder.1.weight" in keys and "decoder.3.conv.0.weight" in keys


def describe_taehv(tf: TensorFile) -> tuple[str, str] | None:
    """(layout, what it is) for `engine.checkpoint.identify`, or None when the file is not TAEHV."""
    if not is_taehv(tf.shapes):
        return None
    channels = tf.shapes["decoder.1.weight"][1]
    other = _OTHER_MODELS.get(tf.path.stem.lower())
    model = other or ("Wan2.1 (taew2_1)" if channels == LATENT_CHANNELS else f"{channels}-channel latents")
    halves = "encoder + decoder" if any(k.startswith("encoder.") for k in tf.shapes) else "decoder only"
    return "taehv", f"TAEHV tiny video autoencoder for {model}, {halves}"


def _check_latent_space(file: Path, sd: dict[str, torch.Tensor]) -> None:
    """Reject TAEHV weights for another model with a message that names it."""
    head, tail = sd.get("decoder.1.weight"), sd.get("decoder.22.weight")
    if head is not None and head.dim() == 4 and head.shape[1] != LATENT_CHANNELS:
        raise EngineError(f"{file} decodes {head.shape[1]}-channel latents (TAEHV for another model, e.g. "
                          f"taew2_2 = Wan2.2 5B); Wan2.1 needs taew2_1.pth from {TAEW21_URL}")
    if tail is not None and tail.dim() == 4 and tail.shape[0] != 3:
        raise EngineError(f"{file} is a patch-size TAEHV variant ({tail.shape[0]} output channels, not 3); "
                          f"Wan2.1 needs taew2_1.pth from {TAEW21_URL}")
    other = _OTHER_MODELS.get(file.stem.lower())
    if other is not None:
        raise EngineError(f"{file.name} is TAEHV for {other}, not Wan2.1; download taew2_1.pth from {TAEW21_URL}")


def decoder_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Keep the decoder keys of a TAEHV state dict; cut over-wide TGrow weights to their last rows.

    Drops ``encoder.*`` (the full TAEHV checkpoint holds both halves). Other keys stay, so that the
    comparison with ``expected`` reports them.
    """
    out = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
    for key, shape in expected.items():
        v = out.get(key)
        is_tgrow = key.endswith(".conv.weight") and len(shape) == 4 and shape[2:] == (1, 1)
        if is_tgrow and v is not None and v.dim() == 4 and v.shape[1:] == shape[1:] \
                and v.shape[0] > shape[0] and v.shape[0] % shape[1] == 0:
            out[key] = v[-shape[0]:]  # the reference loader keeps the last-timestep output channels
    return out


def load_taehv(path: str | Path, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> TAEHVDecoder:
    """Load the TAEHV decoder from ``taew2_1.pth`` / ``taew2_1.safetensors`` (or a folder holding one), in
    any stored dtype.

    Every decoder key must be present with the expected shape and nothing else may be left over (strict);
    ``encoder.*`` keys are ignored. Each user-fixable problem raises EngineError with a single line.
    """
    file = _find_file(Path(path).expanduser())
    sd = read_tensors(file).read_all()
    _check_latent_space(file, sd)
    with torch.device("meta"):
        model = TAEHVDecoder()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    sd = decoder_state_dict(sd, expected)
    mismatch = shape_mismatch(expected, {k: v.shape for k, v in sd.items()})
    if mismatch:
        raise EngineError(f"{file} is not a TAEHV Wan2.1 decoder ({mismatch}); download taew2_1.pth from {TAEW21_URL}")
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)
