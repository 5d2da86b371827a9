"""Analytic FLOP counts of the DiT (multiply-add = 2 FLOPs), for benchmarks and the hardware cost model.

Counted: every matmul (linears, patch embedding, attention scores and weighted sums). Not counted: norms,
activations, RoPE, elementwise modulation (a few % at real sizes). `tests/test_flops.py` checks the matmul part
against torch's FlopCounterMode on the real model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdv2_studio.engine.config import ModelConfig


@dataclass(frozen=True)
class ForwardFlops:
    linear: int  # projections, FFN, embeddings, head
    attention: int  # QK^T and AV of self- and cross-attention

    @property
    def total(self) -> int:
        return self.linear + self.attention


def forward_flops(cfg: ModelConfig, tokens: int, kv_tokens: int, *, batch: int = 1, frames: int = 1,
                  cross_cached: bool = True, text_tokens: int | None = None) -> ForwardFlops:
    """FLOPs of one DiT forward over `tokens` query tokens per sample attending to `kv_tokens` self-attention keys.

    cross_cached: the prompt's cross-attention K/V (and text embedding) are reused from the cache, as in the
    streaming path; False counts recomputing them, as a cache-free pipeline does every call.
    """
    C, Fd, N = cfg.dim, cfg.ffn_dim, tokens
    Lt = cfg.text_len if text_tokens is None else text_tokens
    per_layer = 2 * N * C * C * 4  # self q, k, v, o
    per_layer += 2 * N * C * C * 2  # cross q, o
    per_layer += 2 * N * C * Fd * 2  # FFN up, down
    attn = 2 * N * kv_tokens * C * 2 + 2 * N * Lt * C * 2  # self, cross (scores + weighted sum, all heads)
    linear = per_layer * cfg.num_layers
    if not cross_cached:
        linear += 2 * Lt * C * C * 2 * cfg.num_layers  # cross k, v of the prompt
        linear += 2 * Lt * (cfg.text_dim * C + C * C)  # text embedding MLP
    p = math.prod(cfg.patch_size)
    linear += 2 * N * cfg.in_dim * p * C  # patch embedding
    linear += 2 * N * C * cfg.out_dim * p  # head
    linear += 2 * frames * (cfg.freq_dim * C + C * C + C * 6 * C)  # time embedding + projection
    return ForwardFlops(linear=linear * batch, attention=attn * cfg.num_layers * batch)
