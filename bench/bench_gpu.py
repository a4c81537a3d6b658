"""GPU benchmark of the r1vla policy's own training step and inference, on the REAL Qwen2.5-VL-7B architecture with
random weights (no download). Prints measurements; asserts nothing.

    .venv/bin/python bench/bench_gpu.py                       # on a GPU: the 7B architecture
    .venv/bin/python bench/bench_gpu.py --arch tiny           # smoke run of this script on a CPU

Each mode runs in a process of its own (nothing of a previous mode stays alive): the policy `R1VLAPolicy` built
as lerobot-train builds it (flow head, the paper preset's config), its optimiser from `get_optim_params()` and
the policy's optimiser preset, its own AMP (`--policy.amp` auto: bf16 autocast on CUDA), one training step =
forward + backward + grad clip + optimiser step, timed as the median of --repeats after two warm-up steps. Reports
samples/s at --train-batch, the projected time of 60k steps at batch 32 on one GPU, peak memory (CUDA allocator;
max RSS on a CPU); and the inference latency per 8- and 16-step flow chunk (4 Euler steps) at batch 1 and 8.
Tokenizer and processor come from the offline tiny checkpoint: token ids differ from Qwen's, compute does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.architectures import QWEN2_5_VL_7B_TEXT, QWEN2_5_VL_7B_VISION  # noqa: E402  (one definition)

TASK = "put both the alphabet soup and the tomato sauce in the basket"
TINY_HEAD = dict(
    head_hidden=64, head_layers=2, head_heads=2, vl_self_attn_layers=1, num_future_tokens=4
)  # CPU


def make_policy(arch: str, mode: str, chunk: int, device: str, gradient_checkpointing: bool):
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from transformers import Qwen2_5_VLConfig

    from adapters import build_random_backbone
    from policies.r1vla import R1VLAConfig, R1VLAPolicy

    img = PolicyFeature(FeatureType.VISUAL, (3, 256, 256))
    cfg = R1VLAConfig(
        device=device,
        backbone="tiny",
        backbone_mode=mode,
        head="flow",
        chunk_size=chunk,
        gradient_checkpointing=gradient_checkpointing,
        **({} if arch == "7b" else TINY_HEAD),
        input_features={
            "observation.images.image": img,
            "observation.images.image2": img,
            "observation.state": PolicyFeature(FeatureType.STATE, (8,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))},
    )
    backbone = None
    if arch == "7b":
        hf = Qwen2_5_VLConfig(text_config=QWEN2_5_VL_7B_TEXT, vision_config=QWEN2_5_VL_7B_VISION)
        backbone = build_random_backbone(cfg.backbone_config(), hf, device)
    torch.manual_seed(0)
    return R1VLAPolicy(cfg, backbone=backbone).to(device)


def make_batch(b: int, chunk: int, device: str) -> dict:
    import torch

    return {
        "observation.images.image": torch.rand(b, 3, 256, 256, device=device),
        "observation.images.image2": torch.rand(b, 3, 256, 256, device=device),
        "observation.state": torch.rand(b, 8, device=device) * 2 - 1,
        "action": torch.rand(b, chunk, 7, device=device) * 2 - 1,
        "action_is_pad": torch.zeros(b, chunk, dtype=torch.bool, device=device),
        "prompt": [TASK] * b,
    }


def timed(fn, repeats: int, cuda: bool) -> float:
    import torch

    fn()
    fn()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_gib(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_train(a) -> dict:
    """One mode's training step, in this (fresh) process."""
    import torch

    cuda = a.device.startswith("cuda")
    policy = make_policy(a.arch, a.mode, 16, a.device, a.gradient_checkpointing).train()
    opt = policy.config.get_optimizer_preset().build(policy.get_optim_params())
    clip = policy.config.optimizer_grad_clip_norm
    batch = make_batch(a.train_batch, 16, a.device)

    def step() -> None:
        loss, _ = policy.forward(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), clip)
        opt.step()

    t = timed(step, a.repeats, cuda)
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return {
        "mode": a.mode,
        "step_s": t,
        "samples_per_s": a.train_batch / t,
        "hours_60k_b32": 60000 * 32 / (a.train_batch / t) / 3600,
        "trainable_m": trainable / 1e6,
        "peak_gib": peak_gib(cuda),
        "amp": policy.amp,
        "pid": os.getpid(),
        "attn": policy.model.backbone.model.config._attn_implementation,
    }


def run_infer(a) -> dict:
    """Latency per chunk (flow head, frozen backbone) at batch 1 and 8, for 8- and 16-step chunks."""
    import torch

    cuda = a.device.startswith("cuda")
    out = {"pid": os.getpid()}
    for chunk in (8, 16):
        policy = make_policy(a.arch, "frozen", chunk, a.device, False).eval()
        for b in (1, 8):
            batch = make_batch(b, chunk, a.device)
            fn = lambda pol=policy, x=batch: pol.predict_action_chunk(x)  # noqa: E731
            out[f"H{chunk}_b{b}_ms"] = 1e3 * timed(fn, a.repeats, cuda)
        del policy
        if cuda:
            torch.cuda.empty_cache()
    out["peak_gib"] = peak_gib(cuda)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="7b", choices=["7b", "tiny"])
    p.add_argument("--modes", default="frozen,lora,full", help="training modes, each in its own process")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--worker", choices=["train", "infer"], help=argparse.SUPPRESS)
    p.add_argument("--mode", default="frozen", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:  # a child: measure one thing, print one JSON line
        print("RESULT " + json.dumps(run_train(a) if a.worker == "train" else run_infer(a)), flush=True)
        return
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(
        f"device: {name}; arch: Qwen2.5-VL-{a.arch} (random weights); torch {torch.__version__}", flush=True
    )
    common = [
        "--arch",
        a.arch,
        "--repeats",
        str(a.repeats),
        "--device",
        device,
        "--train-batch",
        str(a.train_batch),
    ]
    common += ["--gradient-checkpointing"] if a.gradient_checkpointing else []
    jobs = [("infer", "frozen")] + [("train", m) for m in a.modes.split(",") if m]
    for worker, mode in jobs:
        cmd = [sys.executable, __file__, "--worker", worker, "--mode", mode, *common]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            err = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{worker} {mode}: failed ({'out of memory' if 'out of memory' in proc.stderr else err})")
            continue
        r = json.loads(line[7:])
        if worker == "infer":
            print(
                "inference  flow, 4 Euler steps: "
                + ", ".join(f"H={h} batch {b} {r[f'H{h}_b{b}_ms']:.1f} ms" for h in (8, 16) for b in (1, 8))
                + f" per chunk (goal <= 35 ms at batch 1; GR00T-N1.5 47.9 ms); peak {r['peak_gib']:.1f} GiB"
            )
        else:
            print(
                f"train step {mode:6s} (amp {r['amp']}, {r['attn']}): {1e3 * r['step_s']:8.1f} ms at batch "
                f"{a.train_batch}; {r['samples_per_s']:7.1f} samples/s; 60k x 32 = {r['hours_60k_b32']:6.2f} h on "
                f"one device; trainable {r['trainable_m']:.1f} M; peak {r['peak_gib']:.1f} GiB (pid {r['pid']})"
            )
        print("RESULT " + json.dumps({"worker": worker, **r}), flush=True)


if __name__ == "__main__":
    main()
