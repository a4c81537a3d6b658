"""Shared building blocks for the action heads (pure torch).

Attention / FFN / AdaLN / DiT block follow the structure of GR00T-N1.5's `cross_attention_dit.py` (diffusers
`BasicTransformerBlock` with `norm_type="ada_norm"`); `MLPResNet` follows OpenVLA-OFT's `action_heads.py`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TIMESTEP_FREQ_DIM = 256  # width of the sinusoid fed to the DiT timestep MLP (diffusers `Timesteps(256)`)


def sinusoidal(t: torch.Tensor, dim: int, freq_shift: float = 0.0, flip: bool = False) -> torch.Tensor:
    """Sinusoidal embedding of (possibly integer) positions `t` (...,) -> (..., dim), float32.

    freq_k = exp(-ln(1e4) * k / (dim/2 - freq_shift)); output [sin, cos] (or [cos, sin] if `flip`).
    GR00T's action encoder uses freq_shift=0, flip=False; its DiT timestep encoder (diffusers
    `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`) uses freq_shift=1, flip=True.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding width must be even, got {dim}")
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * k / (half - freq_shift))  # (half,)
    args = t.float()[..., None] * freqs  # (..., half)
    parts = (args.cos(), args.sin()) if flip else (args.sin(), args.cos())
    return torch.cat(parts, dim=-1)  # (..., dim)


def check_feats(feats: dict, need_queries: int = 0) -> None:
    """Validate the backbone output dict of docs/ARCHITECTURE.md (cheap shape checks only)."""
    for key in ("tokens", "mask"):
        if key not in feats:
            raise KeyError(f"backbone output lacks '{key}' (has {sorted(feats)})")
    tok, mask = feats["tokens"], feats["mask"]
    if tok.dim() != 3 or mask.shape != tok.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"expected tokens (B,L,D) and bool mask (B,L); got {tuple(tok.shape)} / {tuple(mask.shape)} {mask.dtype}"
        )
    if need_queries:
        q = feats.get("queries")
        if q is None or q.dim() != 3 or q.shape[0] != tok.shape[0] or q.shape[1] != need_queries:
            got = None if q is None else tuple(q.shape)
            raise ValueError(f"head needs feats['queries'] of shape (B,{need_queries},D); got {got}")


class MLP(nn.Sequential):
    """Linear -> act -> Linear."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, act: type[nn.Module] = nn.ReLU):
        super().__init__(nn.Linear(d_in, d_hidden), act(), nn.Linear(d_hidden, d_out))


class Attention(nn.Module):
    """Multi-head attention; self-attention if `ctx` is None, else cross-attention with K/V from `ctx`.

    As diffusers' `Attention` used by GR00T: biased q/k/v/out projections, no dropout on attention
    probabilities, dropout on the output projection.
    """

    def __init__(self, dim: int, n_heads: int, kv_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"attention width {dim} is not divisible by n_heads={n_heads}")
        kv_dim = dim if kv_dim is None else kv_dim
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x (B,N,C); ctx (B,L,C_kv) or None; key_mask (B,L) bool True = may be attended to
        ctx = x if ctx is None else ctx
        B, N, C = x.shape
        L, h = ctx.shape[1], self.n_heads
        q = self.q(x).view(B, N, h, C // h).transpose(1, 2)  # (B,h,N,d)
        k = self.k(ctx).view(B, L, h, C // h).transpose(1, 2)  # (B,h,L,d)
        v = self.v(ctx).view(B, L, h, C // h).transpose(1, 2)  # (B,h,L,d)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B,1,1,L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B,h,N,d)
        y = y.transpose(1, 2).reshape(B, N, C)
        return self.drop(self.out(y))


class FeedForward(nn.Sequential):
    """Linear(dim -> 4 dim) -> GELU(tanh) -> Dropout -> Linear(4 dim -> dim) -> Dropout (diffusers FeedForward)."""

    def __init__(self, dim: int, dropout: float = 0.0, mult: int = 4):
        super().__init__(
            nn.Linear(dim, mult * dim),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(mult * dim, dim),
            nn.Dropout(dropout),
        )


class AdaLayerNorm(nn.Module):
    """LN(x) * (1 + scale) + shift with (scale, shift) = Linear(SiLU(temb)); the LN has no affine parameters."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.proj = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # x (B,N,C), temb (B,C)
        scale, shift = self.proj(F.silu(temb)).chunk(2, dim=-1)  # (B,C) each
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class TransformerBlock(nn.Module):
    """Pre-LN self-attention block (GR00T's VL self-attention): x += attn(LN x); x += FFN(LN x)."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout)
        self.drop = nn.Dropout(dropout)  # GR00T's `final_dropout` on the attention branch

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x (B,L,C); key_mask (B,L) bool or None
        x = x + self.drop(self.attn(self.norm1(x), key_mask=key_mask))
        return x + self.ff(self.norm2(x))


class DiTBlock(nn.Module):
    """AdaLN(temb) -> (cross- or self-) attention -> residual; LN (no affine) -> FFN -> residual.

    With `kv_dim` set the block cross-attends: Q from the action-side sequence, K/V from the VL tokens.
    """

    def __init__(self, dim: int, n_heads: int, kv_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.cross = kv_dim is not None
        self.norm1 = AdaLayerNorm(dim)
        self.attn = Attention(dim, n_heads, kv_dim=kv_dim, dropout=dropout)
        self.drop = nn.Dropout(dropout)  # GR00T's `final_dropout` on the attention branch
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ff = FeedForward(dim, dropout)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor | None
    ) -> torch.Tensor:
        # x (B,N,C); temb (B,C); ctx (B,L,D) VL tokens; ctx_mask (B,L) bool or None
        h = self.norm1(x, temb)
        h = self.attn(h, ctx, ctx_mask) if self.cross else self.attn(h)
        x = x + self.drop(h)
        return x + self.ff(self.norm2(x))


class TimestepEncoder(nn.Module):
    """Integer bucket (B,) -> sinusoid(256, flipped, shift 1) -> Linear -> SiLU -> Linear -> (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = MLP(TIMESTEP_FREQ_DIM, dim, dim, act=nn.SiLU)

    def forward(self, bucket: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal(bucket, TIMESTEP_FREQ_DIM, freq_shift=1.0, flip=True)  # (B,256)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (B,dim)


class MLPResNet(nn.Module):
    """OpenVLA-OFT MLP-ResNet: LN -> Linear(in->h) -> ReLU -> n x [x + ReLU(Linear(LN x))] -> LN -> Linear(h->out)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, n_blocks: int):
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_hidden), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d_hidden), nn.Linear(d_hidden, d_hidden), nn.ReLU())
            for _ in range(n_blocks)
        )
        self.out = nn.Sequential(nn.LayerNorm(d_hidden), nn.Linear(d_hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (..., d_in) -> (..., d_out)
        x = self.inp(x)
        for blk in self.blocks:
            x = x + blk(x)
        return self.out(x)


def masked_mean(err: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
    """Mean of err (B,H,A) over real steps: sum(err * real) / (num_real_steps * A). Padded entries (even
    NaN/inf) never reach the result. Raises if every step is padding (the loss would be 0/0)."""
    real = ~is_pad[..., None]  # (B,H,1)
    n = real.sum() * err.shape[-1]
    if not bool(n):
        raise ValueError(
            "every action step in the batch is padding (action_is_pad all True); nothing to learn"
        )
    return torch.where(real, err, torch.zeros_like(err)).sum() / n


def check_actions(actions: torch.Tensor, is_pad: torch.Tensor, state: torch.Tensor, head: nn.Module) -> None:
    """Shape checks for loss() inputs against the head's chunk size / action dim / state dim."""
    B, H, A = state.shape[0], head.chunk_size, head.action_dim
    if actions.shape != (B, H, A):
        raise ValueError(f"actions must be (B={B}, H={H}, A={A}); got {tuple(actions.shape)}")
    if is_pad.shape != (B, H) or is_pad.dtype != torch.bool:
        raise ValueError(
            f"action_is_pad must be bool (B={B}, H={H}); got {tuple(is_pad.shape)} {is_pad.dtype}"
        )
    if state.shape != (B, head.state_dim):
        raise ValueError(f"state must be (B, S={head.state_dim}); got {tuple(state.shape)}")
