"""CPU-sized `r1vla` policy configs, dataset stats and batches shared by the policy tests."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from policies.r1vla import R1VLAConfig

sys.path.insert(0, str(Path(__file__).parent))


IMG = PolicyFeature(FeatureType.VISUAL, (3, 64, 64))
FEATURES_IN = {
    "observation.images.image": IMG,
    "observation.images.image2": IMG,
    "observation.state": PolicyFeature(FeatureType.STATE, (8,)),
}
FEATURES_OUT = {"action": PolicyFeature(FeatureType.ACTION, (7,))}
STATS = {  # non-identity min-max stats: a normalised value never equals its raw value by accident
    "observation.state": {"min": torch.zeros(8), "max": torch.full((8,), 10.0)},
    "action": {"min": torch.zeros(7), "max": torch.full((7,), 10.0)},
}
SMALL = {  # CPU-sized heads; the tiny backbone comes from the adapters' offline checkpoint
    "flow": dict(head_hidden=32, head_layers=2, head_heads=2, vl_self_attn_layers=1, num_future_tokens=4),
    "l1": dict(head_hidden=32, head_layers=1),
}
CLI_SMALL = {h: [f"--policy.{k}={v}" for k, v in kw.items()] for h, kw in SMALL.items()}


def make_config(head: str = "flow", **kw) -> R1VLAConfig:
    return R1VLAConfig(
        device="cpu",
        head=head,
        image_size=56,
        input_features=dict(FEATURES_IN),
        output_features=dict(FEATURES_OUT),
        **{**SMALL[head], **kw},
    )


def make_batch(cfg: R1VLAConfig, b: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h = cfg.chunk_size
    return {
        "observation.images.image": torch.rand(b, 3, 64, 64, generator=g),
        "observation.images.image2": torch.rand(b, 3, 64, 64, generator=g),
        "observation.state": torch.rand(b, 8, generator=g) * 10,  # dataset units, inside [min, max]
        "action": torch.rand(b, h, 7, generator=g) * 10,
        "action_is_pad": torch.zeros(b, h, dtype=torch.bool),
        "task": [f"put object {i} in the basket" for i in range(b)],
    }


def one_obs(batch: dict, i: int = 0) -> dict:
    obs = {k: v[i] for k, v in batch.items() if k.startswith("observation.")}
    obs["task"] = batch["task"][i]
    return obs
