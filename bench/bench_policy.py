"""CPU benchmark of the r1vla policy on the tiny backbone. Prints ratios measured in one run; asserts nothing.

    .venv/bin/python bench/bench_policy.py [--heads flow,l1] [--size small|default] [--repeats 5]

Reports per head: per-chunk inference latency (batch 1), training samples/s (batch 8), the per-sample cost
at batch 8 / batch 1 (goal <= 0.3) and backbone calls per env step (must equal 1 / n_action_steps).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from policies.r1vla import R1VLAConfig, R1VLAPolicy, make_r1vla_pre_post_processors

SIZES = {
    "small": {  # the tiny study's heads
        "flow": dict(head_hidden=64, head_layers=4, head_heads=4, vl_self_attn_layers=1, num_future_tokens=8),
        "l1": dict(head_hidden=128, head_layers=2),
    },
    "default": {"flow": {}, "l1": {}},  # DiT-B flow head / OFT MLP-ResNet at their defaults
}
IMG = PolicyFeature(FeatureType.VISUAL, (3, 256, 256))
FEATURES_IN = {
    "observation.images.image": IMG,
    "observation.images.image2": IMG,
    "observation.state": PolicyFeature(FeatureType.STATE, (8,)),
}
STATS = {
    "observation.state": {"min": torch.full((8,), -1.0), "max": torch.ones(8)},
    "action": {"min": -torch.ones(7), "max": torch.ones(7)},
}


def batch_of(b: int, chunk: int) -> dict:
    return {
        "observation.images.image": torch.rand(b, 3, 256, 256),
        "observation.images.image2": torch.rand(b, 3, 256, 256),
        "observation.state": torch.rand(b, 8) * 2 - 1,
        "action": torch.rand(b, chunk, 7) * 2 - 1,
        "action_is_pad": torch.zeros(b, chunk, dtype=torch.bool),
        "task": ["pick up the alphabet soup and place it in the basket"] * b,
    }


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_head(head: str, size: str, repeats: int) -> None:
    cfg = R1VLAConfig(
        device="cpu",
        head=head,
        input_features=FEATURES_IN,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))},
        **SIZES[size][head],
    )
    policy = R1VLAPolicy(cfg)
    pre, _ = make_r1vla_pre_post_processors(cfg, STATS)
    b1, b8 = pre(batch_of(1, cfg.chunk_size)), pre(batch_of(8, cfg.chunk_size))
    policy.eval()
    t1 = timed(lambda: policy.predict_action_chunk(b1), repeats)
    t8 = timed(lambda: policy.predict_action_chunk(b8), repeats)

    policy.train()
    opt = torch.optim.AdamW([p for g in policy.get_optim_params() for p in g["params"]], lr=1e-4)

    def step() -> None:
        loss, _ = policy.forward(b8)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_train = timed(step, repeats)

    calls = []
    hook = policy.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    policy.eval()
    policy.reset()
    obs = pre({k: v[:1] if hasattr(v, "shape") else v[:1] for k, v in batch_of(1, cfg.chunk_size).items()})
    n_steps = 8 * cfg.n_action_steps
    for _ in range(n_steps):
        policy.select_action(obs)
    hook.remove()

    n_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    print(
        f"[{head}/{size}] chunk H={cfg.chunk_size}, n_action_steps={cfg.n_action_steps}, "
        f"trainable params {n_trainable / 1e6:.2f} M, torch threads {torch.get_num_threads()}"
    )
    print(f"  inference latency per chunk, batch 1   : {t1 * 1e3:8.1f} ms")
    print(f"  inference latency per chunk, batch 8   : {t8 * 1e3:8.1f} ms")
    print(f"  per-sample cost batch 8 / batch 1      : {t8 / 8 / t1:8.3f}   (goal <= 0.3)")
    print(f"  training samples/s (batch 8, fwd+bwd)  : {8 / t_train:8.1f}")
    print(
        f"  backbone calls per env step            : {len(calls) / n_steps:8.4f}   "
        f"(1/n_action_steps = {1 / cfg.n_action_steps:.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="flow,l1")
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    for head in args.heads.split(","):
        bench_head(head, args.size, args.repeats)


if __name__ == "__main__":
    main()
