"""VLAModel = backbone + action head, plus the head registry / factory (pure torch)."""

import dataclasses

import torch
import torch.nn as nn

from hints import did_you_mean, unknown

from .flow_head import FlowHeadConfig, FlowMatchingHead
from .l1_head import L1ChunkHead, L1HeadConfig

HEADS: dict[str, tuple[type, type[nn.Module]]] = {}  # name -> (config dataclass, head class)


def register_head(name: str, config_cls: type, head_cls: type[nn.Module]) -> None:
    """Register a head under `name`; refuses duplicates so two heads can never shadow each other."""
    if name in HEADS:
        raise ValueError(f"action head '{name}' is already registered ({HEADS[name][1].__name__})")
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config for head '{name}' must be a dataclass, got {config_cls!r}")
    HEADS[name] = (config_cls, head_cls)


register_head("flow", FlowHeadConfig, FlowMatchingHead)
register_head("l1", L1HeadConfig, L1ChunkHead)


def make_head(
    name: str,
    cfg_overrides: dict | None,
    backbone_dim: int,
    state_dim: int = 8,
    action_dim: int = 7,
) -> nn.Module:
    """Build the head registered as `name` with its default config updated by `cfg_overrides`."""
    if name not in HEADS:
        raise unknown("action head", name, sorted(HEADS))
    config_cls, head_cls = HEADS[name]
    overrides = dict(cfg_overrides or {})
    fields = [f.name for f in dataclasses.fields(config_cls)]
    bad = [k for k in overrides if k not in fields]
    if bad:
        raise ValueError(
            f"unknown {config_cls.__name__} field(s) {bad}{did_you_mean(bad[0], fields)}; valid: {', '.join(fields)}"
        )
    return head_cls(config_cls(**overrides), backbone_dim, state_dim=state_dim, action_dim=action_dim)


class VLAModel(nn.Module):
    """Backbone + action head over a plain-dict batch (docs/ARCHITECTURE.md):
    {"images": (B,V,3,H,W), "texts": list[str], "state": (B,S), "actions": (B,H,A), "action_is_pad": (B,H)}.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, batch: dict) -> dict:
        """Backbone output dict; the head's learned query tokens (if any) are appended by the backbone."""
        feats = self.backbone(batch["images"], batch["texts"], query_embeds=self.head.query_embeds)
        if self.head.num_queries and feats.get("queries") is None:
            raise ValueError(
                f"head needs {self.head.num_queries} query states but the backbone returned queries=None; "
                "does it honour query_embeds?"
            )
        return feats

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss (scalar) and a dict of python floats for logging."""
        feats = self.features(batch)
        return self.head.loss(feats, batch["state"], batch["actions"], batch["action_is_pad"])

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss(batch)

    @torch.no_grad()
    def sample(
        self, batch: dict, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Normalized action chunk (B,H,A); only "images", "texts", "state" are read from `batch`. `generator`:
        one, or one per row (see FlowMatchingHead.sample)."""
        return self.head.sample(self.features(batch), batch["state"], generator=generator)
