"""The GPU plan's memory estimate against a measured training step, on this machine's CPU, in fp32.

    .venv/bin/python bench/plan_check.py                 # tiny and mid (~0.29 B parameters): about a minute
    .venv/bin/python bench/plan_check.py --arch tiny

Estimate: what r1vla/gpu_plan.py counts for an unsharded fp32 full fine-tune with AdamW: weights 4 B/param +
AdamW moments 8 B/param + max(gradients 4 B/param, activations and gradients live at the backward peak), the
latter traced on the real architecture with fake tensors (adapters/footprint.py).
Measured: a real training step of the same architecture and shape (Qwen2_5_VLForConditionalGeneration with its
own vision path and loss, random weights, two steps of forward + backward + AdamW), in a fresh process: the peak
resident memory (the kernel's VmHWM, reset through /proc/self/clear_refs once the warm-up is done: a child's
ru_maxrss starts at its parent's peak, so a large pytest process would otherwise be counted) minus the resident
memory before the model was built, after a warm-up step on a tiny model (so code pages and thread pools are
already resident) and with glibc's mmap threshold fixed at 64 KiB (so freed tensors leave the resident set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {  # arch -> (batch, text tokens, images, image side)
    "tiny": (8, 512, 2, 224),
    "mid": (2, 128, 1, 224),
}


def _inputs(cfg, batch: int, text: int, images: int, side: int):
    import torch

    grid = side // 14
    tokens = (grid // 2) ** 2 * images
    ids = torch.randint(0, 200, (batch, tokens + text))
    ids[:, :tokens] = cfg.image_token_id
    pixels = torch.randn(batch * images * grid * grid, 3 * 2 * 14 * 14)
    thw = torch.tensor([[1, grid, grid]] * (batch * images))
    return dict(input_ids=ids, pixel_values=pixels, image_grid_thw=thw, labels=ids)


def _vm_hwm() -> int:
    """This process's peak resident set in bytes since the last reset (Linux /proc/self/status, kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the measured side of this check needs Linux")


def _child(arch: str) -> dict:
    """In a fresh process: the resident-memory peak of two real fp32 training steps above the pre-model level."""
    import gc

    import psutil
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from adapters.architectures import qwen_config

    torch.manual_seed(0)

    def step(model, opt, inputs):
        model(**inputs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    warm = Qwen2_5_VLForConditionalGeneration._from_config(qwen_config("tiny"), dtype=torch.float32)
    step(warm, torch.optim.AdamW(warm.parameters()), _inputs(warm.config, 1, 16, 1, 56))
    cfg = qwen_config(arch)
    cfg._attn_implementation = "sdpa"
    inputs = _inputs(cfg, *SHAPES[arch])
    del warm
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # peak resident set := current resident set
    rss0 = psutil.Process().memory_info().rss
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for _ in range(2):
        step(model, opt, inputs)
    peak = _vm_hwm()
    return {"measured": peak - rss0, "rss0": rss0}


def measure(arch: str) -> int:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", arch], env=env, capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])["measured"]


def estimate(arch: str) -> dict:
    from adapters.architectures import qwen_config
    from adapters.footprint import StepShape, step_footprint

    batch, text, images, side = SHAPES[arch]
    fp = step_footprint(qwen_config(arch), StepShape(batch, text, images, side, dtype="float32"))
    weights, grads, opt = fp.params * 4, fp.params * 4, fp.params * 8
    live = max(grads, fp.grads_at_peak + fp.activations)
    return {"params": fp.params, "estimate": weights + opt + live, "activations": fp.activations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(SHAPES), action="append", help="default: tiny and mid")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child)))
        return 0
    print(
        "| config | parameters | shape (batch x tokens) | estimate MiB | measured MiB | estimate / measured |"
    )
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for arch in args.arch or ["tiny", "mid"]:
        est, got = estimate(arch), measure(arch)
        batch, text, images, side = SHAPES[arch]
        tokens = text + images * (side // 28) ** 2
        ratio = est["estimate"] / got
        worst = max(worst, abs(ratio - 1))
        print(
            f"| {arch} | {est['params'] / 1e6:.1f} M | {batch} x {tokens} | {est['estimate'] / 2**20:.0f} | "
            f"{got / 2**20:.0f} | {ratio:.2f} |"
        )
    print(
        f"plan check: largest difference between estimate and measured peak {worst:.0%} (target within 20%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
