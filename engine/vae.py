"""The Wan2.1 video VAE with streaming (chunk-by-chunk) encode and decode.

Architecture: a causal 3D conv autoencoder. The encoder halves H and W three times (8x) and T twice (4x)
and outputs 2 * z_dim channels (mean and log-variance, via the 1x1x1 ``conv1``); we only use the mean. The
decoder mirrors it (``conv2`` first) and clamps its output to [-1, 1]. Every temporal conv is causal: time
is padded on the left only, so frame t depends on frames <= t.

Streaming contract (StreamDiffusionV2's ``stream_encode`` / ``stream_decode``):

* Pixel frames are ``[B, 3, T, H, W]`` in [-1, 1], H and W multiples of 8; latents ``[B, 16, T', H/8, W/8]``.
* ``encode_stream``: the first call after a reset takes ``1 + 4k`` frames. Frame 0 alone gives latent 0 (the
  temporal downsamplers pass the very first frame through), then every group of 4 frames gives one latent,
  so 5 frames -> 2 latents. Later calls take ``4k`` frames -> ``k`` latents.
* ``decode_stream``: the first latent after a reset gives 1 frame, every later latent gives 4 frames. Latents
  are decoded one at a time (bounded memory), however many are passed per call.
* The state between calls is a ``CausalCache``: for every causal conv the last ``context`` (<= 2) frames of
  its input, plus which temporal resamplers have seen their first chunk. Each conv thus sees one continuous
  stream with zeros before the first frame, so splitting the input across calls never changes the result:
  ``encode`` / ``decode`` of a whole clip equal the concatenated streaming outputs. ``reset_stream()`` starts
  a new clip. Cached tensors stay on the device/dtype they were made on: reset after ``.to(...)``.

Latent normalisation: Wan's own pipelines feed the DiT ``(mu - mean) / std``. StreamDiffusionV2 upstream
does not: it feeds the raw encoder mean to the DiT and applies ``z * std + mean`` to the DiT output before
decoding. So ``encode*`` return raw means, ``decode*`` take raw latents, and ``normalize`` / ``denormalize``
are separate steps for the pipeline to apply as its checkpoint expects.

Module names equal the keys of the original ``Wan2.1_VAE.pth`` (``encoder.downsamples.3.residual.2.weight``),
so it loads with ``strict=True``; ``diffusers_to_wan`` renames an ``AutoencoderKLWan`` state dict to them.
``load_vae`` reads every file users have, its layout told by the key names and its size by the shapes: the
original ``Wan2.1_VAE.pth``; a diffusers ``vae/`` folder or its single ``.safetensors``; ComfyUI's
``wan_2.1_vae.safetensors`` and Kijai's ``Wan2_1_VAE_{bf16,fp32}.safetensors`` (original names, bare or under
``model.``). Nothing needs renaming or a config file.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.transfer import device_constant
from sdv2_studio.engine.weights import TensorFile, read_tensors, shape_mismatch, strip_prefix

# Per-channel statistics of Wan2.1 latents (diffusers' AutoencoderKLWan `latents_mean` / `latents_std`).
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class VAEConfig:
    name: str = "custom"
    base_dim: int = 96  # channels after encoder.conv1; level i has base_dim * dim_mult[i]
    z_dim: int = 16  # latent channels (the DiT's in_dim)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # per encoder level (the decoder has one more per level)
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per encoder downsample; decoder reverses it
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise EngineError(f"VAE config {self.name}: need one temporal_downsample flag per downsample")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise EngineError(f"VAE config {self.name}: latents_mean/std need {self.z_dim} values (z_dim)")

    @property
    def temporal_factor(self) -> int:  # 4 for Wan2.1
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:  # 8 for Wan2.1
        return 2 ** len(self.temporal_downsample)

    def replace(self, **kw) -> VAEConfig:
        return dataclasses.replace(self, **kw)


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(name="wan2.1"),
    # Same structure and compression (4x time, 8x space, z_dim 16), ~1/36 of the conv FLOPs: tests, CPU demos.
    "tiny": VAEConfig(name="tiny", base_dim=16),
}


def get_vae_preset(name: str) -> VAEConfig:
    try:
        return VAE_PRESETS[name.lower()]
    except KeyError:
        raise EngineError(f"unknown VAE preset {name!r}; choose one of: {', '.join(VAE_PRESETS)}") from None


# ------------------------------------------------------------------------------------------- streaming state


class CausalCache:
    """Everything a stream carries between calls; one per independent stream (encoder and decoder apart)."""

    def __init__(self) -> None:
        self.frames: dict[nn.Module, torch.Tensor] = {}  # causal conv -> its last `context` input frames
        self.seen: set[nn.Module] = set()  # temporal resamplers past their first chunk
        self.calls = 0  # encode_stream/decode_stream calls since the last reset

    def reset(self) -> None:
        self.frames.clear()
        self.seen.clear()
        self.calls = 0


# ---------------------------------------------------------------------------------------------------- layers


_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")
# oneDNN's bf16 convolution needs AVX512 (BW/VL/DQ) or AVX-NE-CONVERT; without them (e.g. AVX2-only AMD EPYC) it
# raises, while torch's own choice of kernel works: dtypes we may send to oneDNN ourselves
_MKLDNN_DTYPES = (torch.float32, torch.bfloat16) if getattr(torch.cpu, "_is_avx512_supported", lambda: False)() \
    else (torch.float32,)


class CausalConv3d(nn.Conv3d):
    """3D conv, spatially 'same' padded, causal in time: sees `context` past frames (zeros before a stream).

    With a cache the past frames come from the previous call, so chunked input gives the output of one call.
    """

    def __init__(self, cin: int, cout: int, kernel, stride=1, context: int | None = None) -> None:
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        super().__init__(cin, cout, (kt, kh, kw), stride=stride, padding=(0, kh // 2, kw // 2))
        self.context = kt - 1 if context is None else context

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:  # [B, C, T, H, W]
        if self.context:
            past = cache.frames.get(self) if cache is not None else None
            if past is not None:
                x = torch.cat([past, x], dim=2)
            if cache is not None:
                # a copy of its own (not pinning the chunk), in one layout whatever ran the pass (eager or compiled)
                cache.frames[self] = x[:, :, -self.context:].clone(memory_format=torch.contiguous_format)
            missing = self.context - (0 if past is None else past.shape[2])  # only at the start of a stream
            x = F.pad(x, (0, 0, 0, 0, missing, 0))
        if _MKLDNN and x.device.type == "cpu" and x.dtype in _MKLDNN_DTYPES and not torch.compiler.is_compiling():
            # torch's CPU heuristic sends short clips (T <= 4) to slow_conv3d, 3-5x slower than oneDNN (eager only:
            # Inductor chooses its own convolution kernels).
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels (dim 1), times sqrt(C) * gamma; in fp32 for half-precision input."""

    def __init__(self, dim: int, images: bool = False, bias: bool = False) -> None:
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)  # broadcast over (H, W) or (T, H, W)
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None  # Wan2.1 has no norm biases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # x / max(||x||_C, 1e-12) as F.normalize, ~4x faster on CPU for a reduction over dim 1
        y = xf * torch.rsqrt(xf.square().sum(1, keepdim=True).clamp_min(1e-24)) * (self.scale * self.gamma.float())
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


def _run(layers: nn.Sequential, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D op to every frame: [B, C, T, H, W] -> [B*T, C, H, W] -> fn -> [B, C', T, H', W']."""
    B, C, T, H, W = x.shape
    y = fn(x.transpose(1, 2).reshape(B * T, C, H, W))
    return y.view(B, T, *y.shape[1:]).transpose(1, 2)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        # Indices are checkpoint keys: residual.{0,3} norms, residual.{2,6} convs; 1, 4 SiLU; 5 was dropout.
        self.residual = nn.Sequential(
            RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3),
            RMSNorm(cout), nn.SiLU(), nn.Identity(), CausalConv3d(cout, cout, 3),
        )
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        return _run(self.residual, x, cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (no attention across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _attend(self, h: torch.Tensor) -> torch.Tensor:  # h: [N, C, H, W], N = B*T
        N, C, H, W = h.shape
        qkv = self.to_qkv(self.norm(h)).flatten(2).transpose(1, 2).unsqueeze(1)  # [N, 1, H*W, 3C]
        q, k, v = qkv.chunk(3, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v)  # [N, 1, H*W, C]
        return self.proj(o.squeeze(1).transpose(1, 2).reshape(N, C, H, W))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return x + _per_frame(self._attend, x)


class Resample(nn.Module):
    """2x spatial up/down-sampling per frame, plus 2x causal temporal resampling for the *3d modes.

    The very first chunk of a stream skips the temporal part: in the encoder the first frame is not merged
    with anything (1 frame -> 1 latent), in the decoder the first latent is not doubled (1 latent -> 1 frame).
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):  # upsampling halves the channels
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:  # pad right/bottom then stride 2: H -> H/2 for even H
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":  # each frame -> 2 frames, as the two channel halves of a causal conv
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1))
        elif mode == "downsample3d":  # frames (2i-1, 2i, 2i+1) -> frame i; the first frame passes through
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), context=1)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:  # x: [B, C, T, H, W]
        if self.mode == "upsample3d":
            if self in cache.seen:
                B, C, T, H, W = x.shape
                x = self.time_conv(x, cache).view(B, 2, C, T, H, W)
                x = x.permute(0, 2, 3, 1, 4, 5).reshape(B, C, T * 2, H, W)  # interleave: t -> (2t, 2t+1)
            cache.seen.add(self)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            if self in cache.seen:
                x = self.time_conv(x, cache)
            else:
                cache.frames[self.time_conv] = x[:, :, -1:].clone(memory_format=torch.contiguous_format)  # its context
            cache.seen.add(self)
        return x


# ---------------------------------------------------------------------------------------- encoder and decoder


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def _head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]  # wan2.1: 96, 96, 192, 384, 384
        self.conv1 = CausalConv3d(3, dims[0], 3)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for j in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(cin if j == 0 else cout, cout))
            if i < len(cfg.temporal_downsample):
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                layers.append(Resample(cout, mode))
        self.downsamples = nn.Sequential(*layers)  # flat, as in the checkpoint: downsamples.{0..10}
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], cfg.z_dim * 2)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:  # [B,3,T,H,W] -> [B,2z,T',h,w]
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        return _run(self.head, x, cache)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]  # 384,384,384,192,96
        upsample_time = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3)
        self.middle = _middle(dims[0])
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            cin = cin // 2 if i > 0 else cin  # the previous level's Resample halved the channels
            for j in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(cin if j == 0 else cout, cout))
            if i < len(upsample_time):
                layers.append(Resample(cout, "upsample3d" if upsample_time[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)  # flat: upsamples.{0..14} for wan2.1
        self.head = _head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:  # [B,z,T',h,w] -> [B,3,T,H,W]
        x = self.conv1(x, cache)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, cache)
        return _run(self.head, x, cache)


class WanVAE(nn.Module):
    def __init__(self, cfg: VAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VAE_PRESETS["wan2.1"]
        self.encoder = Encoder(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)  # "quant conv": -> (mean, logvar)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)  # "post-quant conv"
        self.decoder = Decoder(cfg)
        self.enc_cache = CausalCache()
        self.dec_cache = CausalCache()
        # what a full decoder state holds (`steady_key`): every causal conv's context, every temporal upsampler seen
        self._dec_convs = [m for m in self.decoder.modules() if isinstance(m, CausalConv3d) and m.context]
        self._dec_resamples = [m for m in self.decoder.modules() if isinstance(m, Resample) and m.mode.endswith("3d")]
        self.compiled_step = None  # engine/compiled.py `compile_decoder` attaches the compiled `decode_pass` here

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def reset_stream(self) -> None:
        self.enc_cache.reset()
        self.dec_cache.reset()

    @torch.no_grad()
    def encode_stream(self, frames: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """[B, 3, T, H, W] pixels in [-1, 1] -> [B, z, T', H/8, W/8] raw latent means (module docstring)."""
        cache = self.enc_cache if cache is None else cache
        B, C, T, H, W = frames.shape
        tf, sf = self.cfg.temporal_factor, self.cfg.spatial_factor
        if H % sf or W % sf:
            raise ValueError(f"frame size {H}x{W} must be a multiple of {sf}")
        start = 1 if cache.calls == 0 else 0  # the first frame of a stream is encoded alone
        if (T - start) % tf or T == 0:
            want = f"1 + {tf}k frames on the first call" if start else f"{tf}k frames after the first call"
            raise ValueError(f"encode_stream got {T} frames; it needs {want}")
        x = frames.to(device=self.device, dtype=self.dtype)
        bounds = ([(0, 1)] if start else []) + [(t, t + tf) for t in range(start, T, tf)]
        out = torch.cat([self.encoder(x[:, :, a:b], cache) for a, b in bounds], dim=2)
        cache.calls += 1
        return self.conv1(out)[:, : self.cfg.z_dim]  # the mean; the log-variance half is unused

    @torch.no_grad()
    def decode_stream(self, latents: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """[B, z, T', h, w] raw latents -> [B, 3, T, 8h, 8w] in [-1, 1]; T = 4T' (-3 on the first call)."""
        cache = self.dec_cache if cache is None else cache
        if latents.shape[2] == 0:
            raise ValueError("decode_stream got 0 latent frames")
        x = self.conv2(latents.to(device=self.device, dtype=self.dtype))
        step = self.compiled_step or self.decode_pass
        out = torch.cat([step(x[:, :, t : t + 1], cache) for t in range(x.shape[2])], dim=2)
        cache.calls += 1
        return out.clamp(-1.0, 1.0)

    def decode_pass(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """One latent frame [B, z, 1, h, w] (after conv2) -> its frames, advancing `cache` (what compiles)."""
        return self.decoder(x, cache)

    def steady_key(self, x: torch.Tensor, cache: CausalCache) -> tuple | None:
        """The pass's shape and dtype once `cache` is full (fixed shapes from then on); None before."""
        frames = cache.frames
        if not all(m in cache.seen for m in self._dec_resamples) or not all(
                m in frames and frames[m].shape[2] == m.context for m in self._dec_convs):
            return None
        return tuple(x.shape), x.dtype

    def new_state(self) -> CausalCache:
        return CausalCache()

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Whole clip of 1 + 4k frames -> 1 + k latents (equal to streaming it in any split)."""
        return self.encode_stream(frames, CausalCache())

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Whole clip of T' latents -> 1 + 4(T' - 1) frames."""
        return self.decode_stream(latents, CausalCache())

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (z.dim() - 2)  # broadcast over [B, C, ...]
        return (device_constant(self.cfg.latents_mean, z.device).view(shape),
                device_constant(self.cfg.latents_std, z.device).view(shape))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> unit-scale latents, (z - mean) / std (what Wan's own pipelines feed the DiT)."""
        mean, std = self._stats(z)
        return ((z.float() - mean) / std).to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Unit-scale latents -> raw latents, z * std + mean (upstream: DiT output, pre-decode)."""
        mean, std = self._stats(z)
        return (z.float() * std + mean).to(z.dtype)


# ---------------------------------------------------------------------------------- diffusers key mapping


_RESBLOCK_NAMES = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.",
                   "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
_HEAD_NAMES = {"0": "norm_out", "2": "conv_out"}


def _resblock_key(tail: str) -> str:
    for ours, theirs in _RESBLOCK_NAMES.items():
        if tail.startswith(ours):
            return theirs + tail[len(ours):]
    return tail  # resample.* / time_conv.* keep their names


def wan_to_diffusers_key(key: str, cfg: VAEConfig) -> str:
    """Name of one of our (original Wan) state-dict keys in diffusers' AutoencoderKLWan."""
    top, _, rest = key.partition(".")
    if top in ("conv1", "conv2"):
        return {"conv1": "quant_conv.", "conv2": "post_quant_conv."}[top] + rest
    part, _, tail = rest.partition(".")
    if part == "conv1":
        return f"{top}.conv_in.{tail}"
    if part == "head":
        idx, _, tail = tail.partition(".")
        return f"{top}.{_HEAD_NAMES[idx]}.{tail}"
    idx, _, tail = tail.partition(".")
    i = int(idx)
    if part == "middle":
        block = "attentions.0" if i == 1 else f"resnets.{i // 2}"
        return f"{top}.mid_block.{block}.{_resblock_key(tail)}"
    if part == "downsamples":  # diffusers keeps the flat list
        return f"{top}.down_blocks.{i}.{_resblock_key(tail)}"
    if part == "upsamples":  # diffusers groups (num_res_blocks + 1) resnets and one upsampler per level
        per_level = cfg.num_res_blocks + 2
        level, j = divmod(i, per_level)
        if j <= cfg.num_res_blocks:
            return f"{top}.up_blocks.{level}.resnets.{j}.{_resblock_key(tail)}"
        return f"{top}.up_blocks.{level}.upsamplers.0.{tail}"
    raise KeyError(key)


def _our_keys(cfg: VAEConfig) -> list[str]:
    with torch.device("meta"):
        return list(WanVAE(cfg).state_dict())


def diffusers_to_wan(state_dict: dict[str, torch.Tensor], cfg: VAEConfig) -> dict[str, torch.Tensor]:
    """Rename an AutoencoderKLWan state dict to our layout; unknown keys stay (strict load reports them)."""
    rename = {wan_to_diffusers_key(k, cfg): k for k in _our_keys(cfg)}
    return {rename.get(k, k): v for k, v in state_dict.items()}


def config_from_diffusers(config: dict) -> VAEConfig:
    """VAEConfig from an AutoencoderKLWan config.json; rejects variants this module does not implement."""
    z_dim = config.get("z_dim", 16)
    if config.get("is_residual") or z_dim != 16:
        raise EngineError("this is a Wan2.2 VAE (z_dim 48); StreamDiffusionV2 needs the Wan2.1 VAE")
    base = config.get("base_dim", 96)
    if config.get("attn_scales") or config.get("decoder_base_dim") not in (None, base) \
            or (config.get("patch_size") or 1) != 1:
        raise EngineError("unsupported AutoencoderKLWan variant (attn_scales/decoder_base_dim/patch_size); "
                          "use the Wan2.1 VAE")
    cfg = VAEConfig(name="diffusers", base_dim=base, z_dim=z_dim,
                    dim_mult=tuple(config.get("dim_mult", (1, 2, 4, 4))),
                    num_res_blocks=config.get("num_res_blocks", 2),
                    temporal_downsample=tuple(config.get("temperal_downsample", (False, True, True))))
    if config.get("latents_mean") and config.get("latents_std"):
        cfg = cfg.replace(latents_mean=tuple(config["latents_mean"]),
                          latents_std=tuple(config["latents_std"]))
    return cfg


# --------------------------------------------------------------------------------------------------- loading

VAE_FILES = ("vae/diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors", "Wan2.1_VAE.pth")
_PREFIXES = ("model.", "first_stage_model.", "vae.")  # Kijai's wrapper module; full single-file checkpoints
FIX = "pass Wan2.1_VAE.pth (Wan-AI/Wan2.1-T2V-1.3B), a diffusers Wan2.1 vae/ folder or ComfyUI's wan_2.1_vae"


def vae_layout(keys) -> str | None:
    """"wan" (original names: Wan2.1_VAE.pth, ComfyUI, Kijai) or "diffusers" (AutoencoderKLWan), else None."""
    if "encoder.conv1.weight" in keys and "decoder.conv1.weight" in keys:
        return "wan"
    if "encoder.conv_in.weight" in keys and "decoder.conv_in.weight" in keys:
        return "diffusers"
    return None


def describe_vae(tf: TensorFile) -> tuple[str, str] | None:
    """(layout, what it is) for `engine.checkpoint.identify`, or None when the file is not a Wan VAE."""
    shapes = {strip_prefix(k, _PREFIXES): s for k, s in tf.shapes.items()}
    layout = vae_layout(shapes)
    if layout is None:
        return None
    base = shapes["encoder.conv1.weight" if layout == "wan" else "encoder.conv_in.weight"][0]
    z = shapes.get("conv2.weight" if layout == "wan" else "post_quant_conv.weight", (0,))[0]
    return layout, f"{'Wan2.2' if z == 48 else 'Wan2.1'} video VAE (base_dim {base}, z_dim {z})"


def _find_checkpoint(path: Path) -> Path:
    if path.is_dir():
        for rel in VAE_FILES:
            if (path / rel).is_file():
                return path / rel
        raise EngineError(f"no VAE weights in folder {path}: expected {' or '.join(VAE_FILES)}; {FIX}")
    if not path.is_file():
        raise EngineError(f"VAE checkpoint not found: {path}; {FIX}")
    return path


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             config: VAEConfig | None = None) -> WanVAE:
    """Load a Wan2.1 VAE from any file or folder in the module docstring (original or diffusers names).

    The layout is detected from the key names. `config` overrides the one read from config.json or inferred
    from the weights' shapes. Every user-fixable problem raises EngineError with a single line.
    """
    file = _find_checkpoint(Path(path).expanduser())
    tf = read_tensors(file)
    sd = {strip_prefix(k, _PREFIXES): tf.read(k) for k in tf.shapes}
    layout = vae_layout(sd)
    if layout is None:
        raise EngineError(f"{file} is not a Wan VAE checkpoint (no encoder.conv1 / encoder.conv_in weights); {FIX}")
    if layout == "wan":
        base = sd["encoder.conv1.weight"].shape[0]
        z_dim = sd["conv2.weight"].shape[0] if "conv2.weight" in sd else 0
    else:
        json_file = file.parent / "config.json"
        if config is None and json_file.is_file():
            config = config_from_diffusers(json.loads(json_file.read_text()))
        base = sd["encoder.conv_in.weight"].shape[0]
        z_dim = sd["post_quant_conv.weight"].shape[0] if "post_quant_conv.weight" in sd else 0
    if z_dim == 48:
        raise EngineError(f"{file} is a Wan2.2 VAE (z_dim 48); StreamDiffusionV2 needs the Wan2.1 VAE")
    if config is None:  # infer from shapes: a preset with this width, else the Wan2.1 structure at this width
        config = next((c for c in VAE_PRESETS.values() if c.base_dim == base),
                      VAE_PRESETS["wan2.1"].replace(name="custom", base_dim=base))
    if layout == "diffusers":
        sd = diffusers_to_wan(sd, config)

    with torch.device("meta"):
        model = WanVAE(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    mismatch = shape_mismatch(expected, {k: v.shape for k, v in sd.items()}, n=4)
    if mismatch:
        raise EngineError(f"{file} does not match the {config.name} VAE ({mismatch}); use the Wan2.1 VAE checkpoint "
                          "or pass the matching VAEConfig")
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)
