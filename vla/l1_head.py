"""OpenVLA-OFT / starVLA-QwenOFT-style L1 regression head with parallel decoding (pure torch).

The head owns K = chunk_size learned query tokens (`query_embeds`, (K, D), init N(0, 0.02)). The backbone
appends them after the prompt and returns their final hidden states as feats["queries"] (B, K, D); one query
token per action step, as starVLA's QwenOFT (OFT itself uses one token per step *and* dim, concatenated).
Each query state goes through a per-token MLP-ResNet (OFT's `L1RegressionActionHead`):
  LN -> Linear(D -> h) -> ReLU -> n x [LN -> Linear(h -> h) -> ReLU, + residual] -> LN -> Linear(h -> A).

Differences from the references, deliberate:
  * learned query embeddings instead of zeroed placeholder-token embeddings (OFT) or a repeated emoji token
    (starVLA): the backbone's vocabulary is never touched.
  * `use_state` (default True): a zero-initialised Linear(S -> D) of the state is added to every query hidden
    state before the MLP. OFT feeds proprio as an extra input token (2-layer projector); starVLA uses no state
    on LIBERO. Zero init makes the untrained head exactly the state-free one.
  * the L1 mean runs over real (non-padded) steps only.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import MLPResNet, check_actions, check_feats, masked_mean


@dataclass(frozen=True)
class L1HeadConfig:
    # fmt: off
    chunk_size: int = 8                   # H = K, action steps per call = learned query tokens (OFT LIBERO 8)
    hidden_dim: int | None = None         # MLP-ResNet width; None = 2 x backbone_dim (starVLA: H -> 2H)
    num_blocks: int = 2                   # residual blocks in the MLP-ResNet (OFT / starVLA 2)
    use_state: bool = True                # add zero-init Linear(S -> D)(state) to every query hidden state
    query_init_std: float = 0.02          # std of the N(0, std) init of the learned query tokens
    # fmt: on

    def __post_init__(self) -> None:
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"L1HeadConfig.chunk_size must be a positive int, got {self.chunk_size!r}")
        if self.hidden_dim is not None and (not isinstance(self.hidden_dim, int) or self.hidden_dim < 1):
            raise ValueError(
                f"L1HeadConfig.hidden_dim must be None or a positive int, got {self.hidden_dim!r}"
            )
        if not isinstance(self.num_blocks, int) or self.num_blocks < 0:
            raise ValueError(f"L1HeadConfig.num_blocks must be an int >= 0, got {self.num_blocks!r}")
        if self.query_init_std <= 0:
            raise ValueError(f"L1HeadConfig.query_init_std must be > 0, got {self.query_init_std}")


class L1ChunkHead(nn.Module):
    """L1 regression of an H-step action chunk from H backbone query-token states; see the module docstring."""

    def __init__(self, cfg: L1HeadConfig, backbone_dim: int, state_dim: int = 8, action_dim: int = 7):
        super().__init__()
        self.cfg, self.chunk_size, self.num_queries = cfg, cfg.chunk_size, cfg.chunk_size
        self.backbone_dim, self.state_dim, self.action_dim = backbone_dim, state_dim, action_dim
        D = backbone_dim
        self.query_embeds = nn.Parameter(torch.randn(cfg.chunk_size, D) * cfg.query_init_std)  # (K,D)
        self.state_proj = nn.Linear(state_dim, D) if cfg.use_state else None
        if self.state_proj is not None:
            nn.init.zeros_(self.state_proj.weight)
            nn.init.zeros_(self.state_proj.bias)
        self.mlp = MLPResNet(D, cfg.hidden_dim or 2 * D, action_dim, cfg.num_blocks)

    def predict(self, feats: dict, state: torch.Tensor) -> torch.Tensor:
        """Regressed actions (B,H,A) from feats["queries"] (B,K,D) and state (B,S)."""
        check_feats(feats, need_queries=self.num_queries)
        dtype = self.mlp.inp[1].weight.dtype
        q = feats["queries"].to(dtype)  # (B,K,D)
        if self.state_proj is not None:
            q = q + self.state_proj(state.to(dtype))[:, None]  # (B,1,D) broadcast over K
        return self.mlp(q)  # (B,H,A)

    def loss(
        self, feats: dict, state: torch.Tensor, actions: torch.Tensor, action_is_pad: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean absolute error over real (non-padded) steps and all action dims."""
        check_actions(actions, action_is_pad, state, self)
        pred = self.predict(feats, state).float()  # (B,H,A)
        target = actions.float().masked_fill(
            action_is_pad[..., None], 0.0
        )  # pad values never enter the arithmetic
        loss = masked_mean((pred - target).abs(), action_is_pad)
        return loss, {"loss": loss.item()}

    @torch.no_grad()
    def sample(
        self,
        feats: dict,
        state: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Deterministic regression output (B,H,A); `generator` is accepted for interface parity and unused."""
        return self.predict(feats, state).float()
