"""The umT5 encoder (Wan2.1's text encoder) in one file: token ids [B, L] -> hidden states [B, L, d_model].

Module names equal the checkpoint keys of transformers' ``UMT5EncoderModel`` (``shared``, ``encoder.block.N.layer.0.
SelfAttention.q`` ...), so every release `engine.text` reads maps onto it by name. The math is umT5's as Wan's
``wan/modules/t5.py`` and transformers run it (the test suite checks it against transformers, which stays a test
oracle): pre-norm blocks, RMS layer norm without mean or bias, attention without the 1/sqrt(d) scale plus a learned
relative-position bias per layer (umT5's difference from T5, which shares one), gated tanh-GELU feed-forward.

fp32 islands (explicit, as upstream): the layer norm's mean of squares and the attention softmax run in fp32 and
cast back to the weight dtype; everything else runs in the weight dtype (bf16 on the CPU by default). fp16 clamps
infinities after each residual add as upstream does.

`forward(ids, mask)` with a padding mask gives, at the valid positions, what `forward(ids[:, :n])` gives on the n
valid tokens alone (masked keys get no weight; relative positions do not depend on the length), which is why
`TextEncoder` encodes only the real tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UMT5Config:
    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_fields(cls, fields: Mapping) -> UMT5Config:
        """From config.json-style fields (transformers' UMT5Config names); other keys are ignored."""
        return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields})


class LayerNorm(nn.Module):
    """T5's RMS norm: x / rms(x) * weight, the mean of squares in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)  # fp32 island
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5 buckets: half per direction, exact up to num_buckets/4, then log-spaced to max_distance."""
    num_buckets //= 2
    buckets = (relative > 0).long() * num_buckets
    distance = relative.abs()
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


def _embedding(num: int, dim: int) -> nn.Embedding:
    """An uninitialised embedding (the weights are always loaded): no random init, which on the meta device would
    also pull in torch's compiler stack."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


class Attention(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.cfg = cfg
        self.q = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.o = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)
        self.relative_attention_bias = _embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def position_bias(self, length: int) -> torch.Tensor:
        """[1, H, L, L] learned bias for key position j seen from query position i."""
        pos = torch.arange(length, device=self.relative_attention_bias.weight.device)
        bucket = relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.relative_attention_num_buckets,
                                          self.cfg.relative_attention_max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape  # x: [B, L, d_model]
        H, Dh = self.cfg.num_heads, self.cfg.d_kv
        q, k, v = (proj(x).view(B, L, H, Dh).transpose(1, 2) for proj in (self.q, self.k, self.v))  # [B, H, L, Dh]
        scores = q @ k.transpose(-1, -2)  # [B, H, L, L]; T5 has no 1/sqrt(Dh) scale
        bias = self.position_bias(L)
        if mask_bias is not None:
            bias = bias + mask_bias
        weights = F.softmax((scores + bias).float(), dim=-1).type_as(scores)  # fp32 island
        out = (weights @ v).transpose(1, 2).reshape(B, L, H * Dh)
        return self.o(out)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh GELU exactly as written upstream (transformers' gelu_new, Wan's GELU)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GatedFeedForward(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)  # gate
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(gelu_tanh(self.wi_0(x)) * self.wi_1(x))


class SelfAttentionLayer(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.SelfAttention = Attention(cfg)
        self.layer_norm = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), mask_bias)


class FeedForwardLayer(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.DenseReluDense = GatedFeedForward(cfg)
        self.layer_norm = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float16:
        return x
    top = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(x).any(), top - 1000, top)  # a tensor: no host sync
    return torch.clamp(x, min=-limit, max=limit)


class Block(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.layer = nn.ModuleList([SelfAttentionLayer(cfg), FeedForwardLayer(cfg)])

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        x = _clamp_fp16(self.layer[0](x, mask_bias))
        return _clamp_fp16(self.layer[1](x))


class Stack(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.block = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.final_layer_norm = LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)


class UMT5Encoder(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.config = cfg
        self.shared = _embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, L] int64, attention_mask [B, L] (1 = token, 0 = padding) -> [B, L, d_model]."""
        x = self.shared(input_ids)  # [B, L, D]
        mask_bias = None
        if attention_mask is not None:  # padded keys get the dtype's lowest value, as upstream
            mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for block in self.encoder.block:
            x = block(x, mask_bias)
        return self.encoder.final_layer_norm(x)
