"""GR00T-N1.5-style flow-matching action head with a cross-attention DiT (pure torch).

Structure (see /work/shared/probes/action_heads_spec.md §1 and §3.3):
  VL tokens  -> vlln (LayerNorm) -> [optional pre-LN self-attention blocks]          = K/V of the DiT
  state      -> MLP(S -> mlp_dim -> ReLU -> hidden)                                 = 1 token
  x_t, bucket-> W1 x_t ++ sinusoid(bucket) -> W2 -> swish -> W3, + learned position  = H action tokens
  query seq  =  [state, F learned future tokens, H action tokens]
  DiT: n_layers x AdaLN(temb) blocks, even = cross-attention to VL, odd = self-attention
  out: AdaLN(temb) -> Linear(hidden -> mlp_dim) -> MLP(mlp_dim -> mlp_dim -> A), last H tokens = velocity

Flow matching exactly as GR00T: x_t = (1-t) eps + t a (t=0 noise, t=1 data), target v = a - eps,
t = (s - u) / s with u ~ Beta(1.5, 1) clamped to <= s (as starVLA), s = 0.999; bucket = floor(t * 1000).

Deviations from GR00T-N1.5, all deliberate:
  * `use_vl_mask` (default True): the backbone's padding mask is used as a key-padding mask in the VL
    self-attention and the DiT cross-attention. GR00T passes the mask but ignores it; our backbone
    left-pads, so without it pad-token states would leak into the actions (starVLA made the same fix).
  * no embodiment-specific (CategorySpecific) layers: one embodiment, plain Linear/MLP (as starVLA).
  * state/action are not zero-padded to 64/32 dims; the real sizes (8 / 7) are used.
  * padded action steps are zeroed before noising, so garbage in them cannot leak into the loss through
    self-attention; their error is excluded from the loss (GR00T masks per-dim only).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import (
    MLP,
    AdaLayerNorm,
    DiTBlock,
    TimestepEncoder,
    TransformerBlock,
    check_actions,
    check_feats,
    masked_mean,
    sinusoidal,
)


@dataclass(frozen=True)
class FlowHeadConfig:
    # fmt: off
    chunk_size: int = 16                  # H, action steps predicted per call (GR00T action_horizon 16)
    hidden_dim: int = 768                 # DiT inner width (DiT-B as starVLA; GR00T-N1.5 uses 1536)
    num_heads: int = 12                   # DiT attention heads; hidden_dim must divide evenly
    num_layers: int = 16                  # DiT blocks; even = cross-attention to VL tokens, odd = self-attention
    mlp_dim: int = 1024                   # state-encoder hidden, DiT output width, decoder hidden (GR00T 1024)
    dropout: float = 0.2                  # DiT attention/FFN dropout (GR00T 0.2)
    num_future_tokens: int = 32           # learned "future" query tokens between state and action tokens
    max_seq_len: int = 1024               # rows of the learned action position table (>= chunk_size)
    use_state: bool = True                # prepend the state token (starVLA drops it when no state is given)
    use_vlln: bool = True                 # LayerNorm over backbone tokens before everything else
    num_vl_layers: int = 2                # pre-LN self-attention blocks over VL tokens (GR00T 4; each ~12 D^2 params)
    vl_head_dim: int = 64                 # head width of those blocks: heads = backbone_dim // vl_head_dim
    vl_dropout: float = 0.2               # dropout in the VL self-attention blocks (GR00T 0.2)
    use_vl_mask: bool = True              # DEVIATION: honour feats["mask"] in VL/cross attention (GR00T ignores it)
    num_timestep_buckets: int = 1000      # t -> integer bucket floor(t * buckets) fed to both time encoders
    beta_alpha: float = 1.5               # u ~ Beta(beta_alpha, beta_beta), t = (s - u) / s (GR00T 1.5)
    beta_beta: float = 1.0                # second Beta parameter (GR00T 1.0)
    noise_s: float = 0.999                # s above; t in [0, 1] after clamping u <= s
    num_inference_steps: int = 4          # Euler steps at sampling (GR00T 4; its LIBERO eval used 8)
    repeated_diffusion_steps: int = 1     # starVLA: repeat each sample R times with fresh (eps, t) in loss()
    # fmt: on

    def __post_init__(self) -> None:
        _positive(
            self,
            "chunk_size",
            "hidden_dim",
            "num_heads",
            "num_layers",
            "mlp_dim",
            "max_seq_len",
            "vl_head_dim",
            "num_timestep_buckets",
            "num_inference_steps",
            "repeated_diffusion_steps",
        )
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be divisible by num_heads={self.num_heads}")
        if self.hidden_dim % 2:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be even (sinusoidal action-time encoding)")
        if self.max_seq_len < self.chunk_size:
            raise ValueError(f"max_seq_len={self.max_seq_len} < chunk_size={self.chunk_size}")
        if self.num_future_tokens < 0 or self.num_vl_layers < 0:
            raise ValueError("num_future_tokens and num_vl_layers must be >= 0")
        for name in ("dropout", "vl_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.noise_s <= 1.0 or self.beta_alpha <= 0 or self.beta_beta <= 0:
            raise ValueError("need 0 < noise_s <= 1 and beta_alpha, beta_beta > 0")


def _positive(cfg: object, *names: str) -> None:
    for name in names:
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive int, got {v!r}")


class FlowMatchingHead(nn.Module):
    """Flow-matching DiT action head; see the module docstring. `num_queries` = 0 (no backbone query tokens)."""

    num_queries = 0
    query_embeds = None

    def __init__(self, cfg: FlowHeadConfig, backbone_dim: int, state_dim: int = 8, action_dim: int = 7):
        super().__init__()
        if cfg.num_vl_layers and backbone_dim % cfg.vl_head_dim:
            raise ValueError(
                f"backbone_dim={backbone_dim} must be divisible by vl_head_dim={cfg.vl_head_dim} "
                f"when num_vl_layers={cfg.num_vl_layers} > 0"
            )
        self.cfg, self.chunk_size = cfg, cfg.chunk_size
        self.backbone_dim, self.state_dim, self.action_dim = backbone_dim, state_dim, action_dim
        D, h, m = backbone_dim, cfg.hidden_dim, cfg.mlp_dim
        # VL side
        self.vlln = nn.LayerNorm(D) if cfg.use_vlln else nn.Identity()
        self.vl_blocks = nn.ModuleList(
            TransformerBlock(D, D // cfg.vl_head_dim, cfg.vl_dropout) for _ in range(cfg.num_vl_layers)
        )
        # query side
        self.state_enc = MLP(state_dim, m, h) if cfg.use_state else None
        self.act_w1 = nn.Linear(action_dim, h)
        self.act_w2 = nn.Linear(2 * h, h)
        self.act_w3 = nn.Linear(h, h)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_seq_len, h) * 0.02)
        self.future = nn.Parameter(torch.randn(cfg.num_future_tokens, h) * 0.02)
        # DiT
        self.time_enc = TimestepEncoder(h)
        self.blocks = nn.ModuleList(
            DiTBlock(h, cfg.num_heads, kv_dim=D if i % 2 == 0 else None, dropout=cfg.dropout)
            for i in range(cfg.num_layers)
        )
        self.norm_out = AdaLayerNorm(h, eps=1e-6)
        self.proj_out = nn.Linear(h, m)
        self.decoder = MLP(m, m, action_dim)

    # ---- pieces -------------------------------------------------------------------------------------

    def encode_context(
        self, feats: dict, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Everything that does not depend on (x_t, t); computed once per sample() call.

        Returns vl (B,L,D) DiT K/V input, vl_mask (B,L) bool or None, prefix (B,P,h) = [state, future tokens].
        """
        check_feats(feats)
        dtype = self.act_w1.weight.dtype
        vl = self.vlln(feats["tokens"].to(dtype))  # (B,L,D)
        vl_mask = feats["mask"] if self.cfg.use_vl_mask else None  # (B,L)
        if vl_mask is not None:
            if not bool(vl_mask.any(dim=1).all()):
                raise ValueError(
                    "feats['mask'] has a sample with no real token; attention would be undefined"
                )
            vl = torch.where(vl_mask[..., None], vl, torch.zeros_like(vl))  # pad states can't leak (0 * NaN)
        for blk in self.vl_blocks:
            vl = blk(vl, vl_mask)
        B = vl.shape[0]
        prefix = [self.future.to(dtype).expand(B, -1, -1)]  # (B,F,h)
        if self.state_enc is not None:
            prefix.insert(0, self.state_enc(state.to(dtype))[:, None])  # (B,1,h)
        return vl, vl_mask, torch.cat(prefix, dim=1)  # prefix (B,P,h), P = [1] + F

    def sample_time(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """t (B,) = (s - u) / s, u ~ Beta(alpha, beta) clamped to <= s; uses the global RNG."""
        c = self.cfg
        beta = torch.distributions.Beta(
            torch.tensor(c.beta_alpha, device=device), torch.tensor(c.beta_beta, device=device)
        )
        u = beta.sample((batch_size,)).clamp(max=c.noise_s)
        return (c.noise_s - u) / c.noise_s

    def bucket(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous t in [0, 1] (B,) -> integer bucket floor(t * n) in [0, n-1] (B,) long."""
        n = self.cfg.num_timestep_buckets
        return (t * n).floor().long().clamp(0, n - 1)

    def encode_actions(self, x_t: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        """Action tokens (B,H,h): W3 swish(W2 [W1 x_t, sinusoid(bucket)]) + learned position embedding."""
        H = x_t.shape[1]
        a = self.act_w1(x_t)  # (B,H,h)
        tau = sinusoidal(bucket[:, None].expand(-1, H), a.shape[-1]).to(a.dtype)  # (B,H,h) same for all steps
        a = self.act_w3(F.silu(self.act_w2(torch.cat([a, tau], dim=-1))))  # (B,H,h)
        return a + self.pos_emb[:H]  # position embedding on action tokens only

    def velocity(
        self,
        ctx: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor],
        x_t: torch.Tensor,
        bucket: torch.Tensor,
    ) -> torch.Tensor:
        """One network evaluation: predicted velocity (B,H,A) for noisy actions x_t (B,H,A) at bucket (B,)."""
        vl, vl_mask, prefix = ctx
        H = x_t.shape[1]
        x = torch.cat([prefix, self.encode_actions(x_t.to(prefix.dtype), bucket)], dim=1)  # (B,P+H,h)
        temb = self.time_enc(bucket)  # (B,h)
        for blk in self.blocks:
            x = blk(x, temb, vl, vl_mask)
        x = self.proj_out(self.norm_out(x, temb))  # (B,P+H,m)
        return self.decoder(x[:, -H:])  # (B,H,A)

    # ---- public interface --------------------------------------------------------------------------

    def loss(
        self, feats: dict, state: torch.Tensor, actions: torch.Tensor, action_is_pad: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked flow-matching MSE; noise and t come from the global RNG (seed it for reproducibility)."""
        check_actions(actions, action_is_pad, state, self)
        vl, vl_mask, prefix = self.encode_context(feats, state)
        R = self.cfg.repeated_diffusion_steps
        if R > 1:  # fresh (eps, t) per copy; the backbone and VL adapter ran once
            vl, prefix = vl.repeat_interleave(R, 0), prefix.repeat_interleave(R, 0)
            vl_mask = None if vl_mask is None else vl_mask.repeat_interleave(R, 0)
            actions, action_is_pad = actions.repeat_interleave(R, 0), action_is_pad.repeat_interleave(R, 0)
        a = actions.to(prefix.dtype).masked_fill(action_is_pad[..., None], 0.0)  # (B,H,A) pads -> 0
        t32 = self.sample_time(a.shape[0], a.device)  # (B,) float32
        t = t32.to(a.dtype)[:, None, None]  # (B,1,1)
        eps = torch.randn_like(a)
        x_t = (1 - t) * eps + t * a  # t = 0 is noise, t = 1 is data
        v_pred = self.velocity((vl, vl_mask, prefix), x_t, self.bucket(t32))  # (B,H,A)
        loss = masked_mean((v_pred.float() - (a - eps).float()) ** 2, action_is_pad)
        return loss, {"loss": loss.item(), "t_mean": t32.mean().item()}

    @torch.no_grad()
    def sample(
        self,
        feats: dict,
        state: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Euler integration from x0 ~ N(0, I) over num_inference_steps -> (B,H,A). x0 is drawn with `generator`;
        with a list of B generators, row b's noise comes from generator b alone, so one batched call draws what B
        calls of one row each would (the evaluation batches stochastic episodes this way).

        Deterministic for a given generator seed when the module is in eval() mode (dropout off).
        """
        ctx = self.encode_context(feats, state)
        prefix = ctx[2]
        B, K = prefix.shape[0], self.cfg.num_inference_steps
        row = (self.chunk_size, self.action_dim)
        if isinstance(generator, (list, tuple)):
            if len(generator) != B:
                raise ValueError(f"got {len(generator)} generators for a batch of {B}")
            x = torch.stack([torch.randn(row, generator=g, device=g.device) for g in generator])
        else:
            gen_device = generator.device if generator is not None else prefix.device
            x = torch.randn((B, *row), generator=generator, device=gen_device, dtype=torch.float32)
        x = x.to(device=prefix.device, dtype=prefix.dtype)  # (B,H,A)
        n = self.cfg.num_timestep_buckets
        for i in range(K):
            bucket = torch.full((B,), i * n // K, device=x.device, dtype=torch.long)  # exact floor(t * n)
            x = x + self.velocity(ctx, x, bucket).to(x.dtype) / K  # x += dt * v, t = i / K
        return x.float()
