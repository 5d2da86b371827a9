"""The Wan2.1 text-to-video DiT as a causal, streaming model (StreamDiffusionV2 / CausVid / Self-Forcing).

One readable file. Module attribute names equal the original Wan checkpoint keys (`patch_embedding`,
`text_embedding.0`, `blocks.N.self_attn.q`, `blocks.N.norm3`, `head.head`, ...) so released weights load with
strict checking. Shapes are noted as

    B batch (stream-batch slots), F latent frames in the call, L tokens per latent frame = (H/2)(W/2),
    N = F*L tokens, C model width, H heads, D head_dim, Lt text tokens, S cache tokens.

Two ways in:
  * `forward(x, t, context, frame_blocks=None)`: the whole sequence at once (bidirectional, or block-causal
    when `frame_blocks` gives the frames per block). Used by tests and as the no-cache reference.
  * `forward_chunk(x, t, cache, start_frames, advance)`: one chunk against the rolling `KVCache`
    (engine/kv_cache.py). This is the hot path; it reads no device value on the host.
The stages `embed` -> `run_blocks` -> `unembed` are public so pipeline parallelism (engine/parallel.py) can run a
range of blocks per rank without this file knowing anything about torch.distributed.

fp32 islands (explicit): timestep embedding and projection, modulation tables, LayerNorm/RMSNorm math, RoPE.
Everything else runs in the parameters' dtype (bf16 on GPUs). The model never picks a device or dtype itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from sdv2_studio.engine.config import ModelConfig

if TYPE_CHECKING:
    from sdv2_studio.engine.kv_cache import KVCache, StepPlan

# Parameters kept in float32 whatever dtype the model is cast to (diffusers calls this _keep_in_fp32_modules).
FP32_KEYS = ("time_embedding.", "time_projection.", "modulation", "norm_q.", "norm_k.", "norm3.")


def keep_fp32(name: str) -> bool:
    return any(key in name for key in FP32_KEYS)


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast parameters to `dtype`, keeping the fp32 islands in float32."""
    for name, p in model.named_parameters():
        want = torch.float32 if keep_fp32(name) else dtype
        if p.dtype != want:
            p.data = p.data.to(want)
    for m in model.modules():  # a fused q/k/v follows its parameters (`SelfAttention.fuse`)
        if getattr(m, "wqkv", None) is not None:
            m.fuse()
    return model


def fuse_qkv(model: nn.Module) -> int:
    """One GEMM for each self-attention's q, k, v (`SelfAttention.fuse`), for the layers with weights; -> how many."""
    return sum(m.fuse() for m in model.modules() if isinstance(m, SelfAttention))


# ----------------------------------------------------------------------------------------------------------------
# Small pieces: norms, timestep embedding, RoPE


class RMSNorm(nn.Module):
    """RMSNorm over the whole width (all heads at once, as in Wan). Math in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


class LayerNorm(nn.Module):
    """LayerNorm computed in fp32; affine only where the checkpoint has weights (norm3)."""

    def __init__(self, dim: int, eps: float, affine: bool = False):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), (self.dim,), w, b, self.eps).type_as(x)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[M] timesteps -> [M, dim] float32 (cos half first, Wan's convention; computed in float64)."""
    half = dim // 2
    pos = t.double()
    freqs = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float64) / half)
    ang = torch.outer(pos, freqs)
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1).float()


class Rope3D:
    """3-axis rotary tables (t, h, w) for interleaved (real, imag) channel pairs: (cos, sin) in fp32 from fp64 angles.

    Not an nn.Module on purpose: the tables must stay fp32 when the model is cast (Wan keeps them as a plain
    attribute for the same reason). `tables(...)` returns the rotation (cos, sin) of shape [B, N, 1, D/2, 2] for the
    token grid F x h x w starting at per-sample temporal positions `start_frames` [B]. Real arithmetic rather than
    complex numbers (Wan's form, equal values): torch.compile's Inductor generates no code for complex ops.
    """

    def __init__(self, head_dim: int, split: tuple[int, int, int], max_len: int, theta: float = 10000.0):
        self.split = split
        self.max_len = max_len
        # Built on the CPU explicitly: the model may be constructed under `torch.device("meta")`.
        f64 = {"dtype": torch.float64, "device": "cpu"}
        pos = torch.arange(max_len, **f64)
        self._angles = [torch.outer(pos, 1.0 / torch.pow(theta, torch.arange(0, d, 2, **f64) / d))
                        for d in split]  # 3 x [max_len, d/2]
        self._dev: dict[torch.device, list[torch.Tensor]] = {}
        self._spatial: dict[tuple, torch.Tensor] = {}

    def _on(self, device: torch.device) -> list[torch.Tensor]:
        if device not in self._dev:  # [max_len, d/2, 2] (cos, sin), rounded to fp32 as complex64 would be
            self._dev[device] = [torch.stack([a.cos(), a.sin()], -1).float().to(device) for a in self._angles]
        return self._dev[device]

    def tables(self, grid: tuple[int, int, int], start_frames: torch.Tensor) -> torch.Tensor:
        f, h, w = grid
        device = start_frames.device
        rt, rh, rw = self._on(device)
        key = (h, w, device)
        if key not in self._spatial:  # [h*w, (dh+dw)/2, 2], reused by every call at this resolution
            hh = torch.arange(h, device=device).repeat_interleave(w)
            ww = torch.arange(w, device=device).repeat(h)
            self._spatial[key] = torch.cat([rh[hh], rw[ww]], 1)
        spatial = self._spatial[key]
        pos = start_frames.view(-1, 1) + torch.arange(f, device=device)  # [B, F]
        temporal = rt[pos]  # [B, F, dt/2, 2]
        B, hw = pos.shape[0], h * w
        tt = temporal[:, :, None].expand(B, f, hw, *temporal.shape[-2:])
        ss = spatial[None, None].expand(B, f, hw, *spatial.shape[-2:])
        return torch.cat([tt, ss], 3).reshape(B, f * hw, 1, -1, 2)  # [B, N, 1, D/2, 2] fp32


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """x [B, N, H, D] with (real, imag) pairs interleaved along D, rot [B, N, 1, D/2, 2] (cos, sin); math in fp32:
    each pair (a, b) becomes (a cos - b sin, a sin + b cos), the complex product (a + ib) e^{i angle}."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, N, H, D/2, 2]
    a, b = xf[..., 0], xf[..., 1]
    cos, sin = rot[..., 0], rot[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """Per-frame AdaLN: x [B, N, C], shift/scale [B, F, 1, C] (fp32) -> [B, N, C] in x's dtype."""
    xf = x.float().unflatten(1, (frames, -1))  # [B, F, L, C]
    return torch.addcmul(shift, xf, 1 + scale).flatten(1, 2).type_as(x)


def gate(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, frames: int) -> torch.Tensor:
    """Residual add with a per-frame gate, in fp32: x + y * g."""
    out = torch.addcmul(x.float().unflatten(1, (frames, -1)), y.float().unflatten(1, (frames, -1)), g)
    return out.flatten(1, 2).type_as(x)


# ----------------------------------------------------------------------------------------------------------------
# Attention


class _AttentionWeights(nn.Module):
    """The weights both attentions have (checkpoint names q, k, v, o, norm_q, norm_k)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm_q = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()


class SelfAttention(_AttentionWeights):
    """Self-attention over the chunk and the rolling KV cache (which lives outside, engine/kv_cache.py).

    `fuse()` (done at load, `fuse_qkv`) puts q, k and v's weights in one [3C, C] tensor, `wqkv`, and makes the three
    parameters views of it: one GEMM per chunk instead of three, while the checkpoint names, the state dict and
    in-place edits of q/k/v (LoRA merges) stay as they are. Casts, moves, copies and loads keep them aliased, and
    the parameter objects the same (`_apply`, `__setstate__`, `cast_model`, the load_state_dict post-hook).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.register_buffer("wqkv", None, persistent=False)  # [3C, C] once fused; q/k/v.weight are its rows
        self.register_buffer("bqkv", None, persistent=False)  # [3C]
        self.register_load_state_dict_post_hook(SelfAttention._refuse_after_load)

    @torch.no_grad()
    def fuse(self) -> bool:
        """Build `wqkv`/`bqkv` from q, k, v and make those parameters views of it; False on the meta device."""
        lins = (self.q, self.k, self.v)
        if any(lin.weight.is_meta for lin in lins):
            return False
        self.wqkv = torch.cat([lin.weight for lin in lins])
        self.bqkv = torch.cat([lin.bias for lin in lins])
        self._alias()
        return True

    def _alias(self) -> None:
        """q/k/v's parameters (the same objects: mergers keep them) become views of the rows of `wqkv`/`bqkv`."""
        for lin, w, b in zip((self.q, self.k, self.v), self.wqkv.chunk(3), self.bqkv.chunk(3)):
            lin.weight.data, lin.bias.data = w, b

    def _apply(self, fn, recurse=True):
        """.to()/.half()/share_memory() convert q, k, v and `wqkv` apart: point q/k/v at the converted `wqkv`."""
        out = super()._apply(fn, recurse)
        if self.wqkv is not None:
            self._alias()
        return out

    def __setstate__(self, state):
        """copy.deepcopy and unpickling copy each parameter alone: point them at the copied `wqkv` again."""
        super().__setstate__(state)
        if self.wqkv is not None:
            self._alias()

    @staticmethod
    def _refuse_after_load(module: SelfAttention, _keys) -> None:
        """load_state_dict(assign=True) puts new q/k/v tensors in place: fuse them again (a copying load wrote
        into the views already)."""
        if module.wqkv is not None:
            module.fuse()

    def qkv(self, x: torch.Tensor, rope: torch.Tensor):
        """x [B, N, C] -> roped q, roped k, v, each [B, H, N, D]."""
        B, N, C = x.shape
        if self.wqkv is None:
            q, k, v = self.q(x), self.k(x), self.v(x)  # 3 x [B, N, C]
        else:
            q, k, v = F.linear(x, self.wqkv, self.bqkv).split(C, dim=-1)  # one GEMM [B, N, 3C] -> 3 views
        q = self.norm_q(q).view(B, N, self.num_heads, self.head_dim)
        k = self.norm_k(k).view(B, N, self.num_heads, self.head_dim)
        v = v.view(B, N, self.num_heads, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, rope, *, mask=None, cache: KVCache | None = None, layer: int = 0,
                plan: StepPlan | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x, rope)  # [B, H, N, D]
        if cache is not None:
            k, v, mask = cache.update(layer, k, v, plan)  # [B, H, S', D]: the valid cache incl. this chunk
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, N, D]
        return self.o(y.transpose(1, 2).flatten(2))


class CrossAttention(_AttentionWeights):
    """Text cross-attention; K/V of the prompt are computed once per prompt (`kv`) and reused every chunk."""

    def kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx [B, Lt, C] (already text-embedded) -> k, v [B, H, Lt, D]."""
        B, Lt, _ = ctx.shape
        k = self.norm_k(self.k(ctx)).view(B, Lt, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(ctx).view(B, Lt, self.num_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q = self.norm_q(self.q(x)).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        if k.shape[0] != B:  # one prompt shared by every stream-batch slot
            k, v = k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)
        y = F.scaled_dot_product_attention(q, k, v)  # no key mask: zero padding is attended (as upstream)
        return self.o(y.transpose(1, 2).flatten(2))


# ----------------------------------------------------------------------------------------------------------------
# Block, head, model


def _normal(*shape: int, std: float) -> torch.Tensor:
    """N(0, std^2) init; left empty on the meta device (weights are loaded there, and a random op on meta would pull
    in torch's compiler stack, seconds of import)."""
    t = torch.empty(shape)
    return t if t.is_meta else t.normal_(0.0, std)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, cfg.eps)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = LayerNorm(cfg.dim, cfg.eps, affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(_normal(1, 6, cfg.dim, std=cfg.dim**-0.5))  # fp32 island

    def forward(self, x, e0, rope, ctx_kv, *, mask=None, cache=None, layer=0, plan=None) -> torch.Tensor:
        """x [B, N, C]; e0 [B, F, 6, C] fp32; ctx_kv = (k, v) [B, H, Lt, D]."""
        frames = e0.shape[1]
        e = (self.modulation.float().unsqueeze(1) + e0).chunk(6, dim=2)  # 6 x [B, F, 1, C] fp32
        # 1. self-attention (modulated, gated)
        y = self.self_attn(modulate(self.norm1(x), e[0], e[1], frames), rope,
                           mask=mask, cache=cache, layer=layer, plan=plan)
        x = gate(x, y, e[2], frames)
        # 2. cross-attention to the prompt (no modulation)
        x = x + self.cross_attn(self.norm3(x), *ctx_kv)
        # 3. feed-forward (modulated, gated)
        y = self.ffn(modulate(self.norm2(x), e[3], e[4], frames))
        return gate(x, y, e[5], frames)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(_normal(1, 2, cfg.dim, std=cfg.dim**-0.5))  # fp32 island

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, N, C], e [B, F, 1, C] fp32 -> [B, N, p*out]."""
        shift, scale = (self.modulation.float().unsqueeze(1) + e).chunk(2, dim=2)
        return self.head(modulate(self.norm(x), shift, scale, e.shape[1]))


class CausalWanModel(nn.Module):
    """Wan2.1 DiT predicting flow (noise - x0) with per-frame timesteps, runnable chunk by chunk."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, C, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, C), nn.SiLU(), nn.Linear(C, C))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.rope = Rope3D(cfg.head_dim, cfg.rope_split, cfg.rope_max_len)
        self.compiled_step = None  # engine/compiled.py attaches a CompiledStep here

    # -- stages ----------------------------------------------------------------------------------------------------

    def embed(self, x: torch.Tensor, t: torch.Tensor):
        """x [B, in, F, H, W] latents, t [B, F] (or [B]) timesteps ->
        tokens [B, N, C], e [B, F, C] fp32 (head modulation), e0 [B, F, 6, C] fp32, grid (F, h, w)."""
        B, _, Fr = x.shape[:3]
        p = self.patch_embedding
        h = p(x.to(p.weight.dtype))  # [B, C, F, h, w]
        grid = tuple(h.shape[2:])
        tokens = h.flatten(2).transpose(1, 2)  # [B, N, C]
        t = t.view(B, 1).expand(B, Fr) if t.dim() == 1 else t
        e = self.time_embedding(sinusoidal_embedding(self.cfg.freq_dim, t.reshape(-1)))  # [B*F, C] fp32
        e0 = self.time_projection(e).unflatten(1, (6, self.cfg.dim))  # [B*F, 6, C]
        return tokens, e.view(B, Fr, -1), e0.view(B, Fr, 6, -1), grid

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """context [B, Lt', text_dim] (umT5 output, Lt' <= text_len) -> [B, text_len, C], zero-padded as in Wan."""
        pad = self.cfg.text_len - context.shape[1]
        if pad > 0:
            context = F.pad(context, (0, 0, 0, pad))
        w = self.text_embedding[0].weight
        return self.text_embedding(context.to(w.dtype))

    def cross_kv(self, ctx: torch.Tensor, blocks: range | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Prompt K/V for each block in `blocks` (default all): list of (k, v) [B, H, Lt, D]."""
        blocks = range(len(self.blocks)) if blocks is None else blocks
        return [self.blocks[i].cross_attn.kv(ctx) for i in blocks]

    def run_blocks(self, x, e0, rope, ctx_kv, *, blocks: range | None = None, mask=None, cache=None, plan=None):
        """Run blocks[i] for i in `blocks`; ctx_kv and the cache are indexed relative to blocks.start."""
        blocks = range(len(self.blocks)) if blocks is None else blocks
        for j, i in enumerate(blocks):
            x = self.blocks[i](x, e0, rope, ctx_kv[j], mask=mask, cache=cache, layer=j, plan=plan)
        return x

    def unembed(self, x: torch.Tensor, e: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """tokens [B, N, C] -> flow [B, out, F, H, W] (float32)."""
        x = self.head(x, e.unsqueeze(2))  # [B, N, pt*ph*pw*out]
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        x = x.float().view(x.shape[0], f, h, w, pt, ph, pw, self.cfg.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(x.shape[0], self.cfg.out_dim, f * pt, h * ph, w * pw)

    # -- entry points ----------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                frame_blocks: list[int] | None = None) -> torch.Tensor:
        """Whole-sequence forward (no cache).

        x [B, in, F, H, W], t [B, F] or [B], context [B, Lt, text_dim] -> flow [B, out, F, H, W] (fp32).
        frame_blocks: frames per causal block, e.g. [2, 1, 1]; tokens attend to their own block and every earlier
        one. None = bidirectional (plain Wan2.1).
        """
        tokens, e, e0, grid = self.embed(x, t)
        start = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        rope = self.rope.tables(grid, start)
        mask = None
        if frame_blocks is not None:
            mask = block_causal_mask(frame_blocks, grid[1] * grid[2], x.device)
        ctx_kv = self.cross_kv(self.embed_text(context))
        return self.unembed(self.run_blocks(tokens, e0, rope, ctx_kv, mask=mask), e, grid)

    def forward_chunk(self, x: torch.Tensor, t: torch.Tensor, cache: KVCache, start_frames: list[int],
                      advance: bool = True, slot: int | None = None) -> torch.Tensor:
        """One streaming call: x [B, in, F, H, W] (B = cache batch), t [B, F], start_frames per slot (host ints,
        the temporal RoPE positions after any refresh). The chunk attends to the cache plus itself; its K/V are
        written to the cache. `advance=False` keeps the ring pointer (no-batch multi-step: only the last step of a
        chunk advances). `slot`: x holds that one cache slot (a pipeline micro-batch). Returns flow
        [B, out, F, H, W] (fp32).

        The host bookkeeping (`cache.plan`) runs here; the device work is `chunk_step`, the function a compiled
        engine replaces (`self.step`, engine/compiled.py)."""
        plan = cache.plan(start_frames, self.grid(*x.shape[2:]), advance, slot=slot)
        return self.step(x, t, cache, plan)

    def chunk_step(self, x: torch.Tensor, t: torch.Tensor, cache: KVCache, plan: StepPlan) -> torch.Tensor:
        """The device work of one streaming call (no host reads; static shapes once the cache is full)."""
        tokens, e, e0, grid = self.embed(x, t)
        return self.unembed(self.cached_blocks(tokens, e0, grid, cache, plan), e, grid)

    def cached_blocks(self, tokens: torch.Tensor, e0: torch.Tensor, grid: tuple[int, int, int], cache: KVCache,
                      plan: StepPlan) -> torch.Tensor:
        """tokens [B, N, C] through the blocks `cache` holds, against it (pipeline ranks run this part alone)."""
        rope = self.rope.tables(grid, plan.start_frames_dev)
        return self.run_blocks(tokens, e0, rope, cache.cross_for(plan), blocks=cache.blocks, cache=cache, plan=plan)

    def grid(self, frames: int, h: int, w: int) -> tuple[int, int, int]:
        """Token grid (F, h, w) of latents with `frames` x h x w positions."""
        pt, ph, pw = self.cfg.patch_size
        return frames // pt, h // ph, w // pw

    @property
    def step(self):
        """What `forward_chunk` runs on the device: `chunk_step`, or its compiled form once one is attached."""
        return self.compiled_step or self.chunk_step

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def block_causal_mask(frame_blocks: list[int], frame_tokens: int, device) -> torch.Tensor:
    """Boolean [N, N] mask, True = may attend: a token sees every token up to the end of its own frame block."""
    block_id = torch.repeat_interleave(torch.arange(len(frame_blocks), device=device),
                                       torch.tensor(frame_blocks, device=device) * frame_tokens)
    return block_id[None, :] <= block_id[:, None]
