"""One GPU: what `r1vla study --plan` predicts against what a real step measures, stage by stage, on the 7B
architecture with random weights built from its config (no hub). Run by bench/gpu_check.sh (each stage in a
fresh process); prints one RESULT line per stage.

    python bench/gpu_check.py --stage sft              # on a GPU
    python bench/gpu_check.py --stage sft --arch tiny  # the same code on a CPU (a dry run: nothing compared)

Predicted memory: the plan's peak less its 2 GiB CUDA-context allowance (torch.cuda.max_memory_allocated does not
see the context); predicted step time: the step's counted FLOPs at --utilisation of --gpu-tflops.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

PAPER_POLICY = {"head": "flow", "backbone_mode": "frozen", "augment": True}
STAGES = ("vla-train-4", "vla-train-32", "sft", "eval")


def _sync(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()


def _time(fn, cuda: bool, repeats: int = 3) -> float:
    fn()  # warm-up
    _sync(cuda)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(cuda)
    return (time.perf_counter() - t0) / repeats


def _peak(cuda: bool) -> float:
    import resource

    import torch

    if cuda:
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def predicted(stage: str, arch: str, budget) -> tuple[float, float]:
    """(bytes, FLOPs per step) the plan gives this stage on one GPU."""
    from r1vla.gpu_plan import OVERHEAD, plan_backbone
    from r1vla.gpu_stages import INFER_BATCH, plan_inference, plan_vla_train

    if stage.startswith("vla-train"):
        batch = int(stage.rsplit("-", 1)[1])
        plan = plan_vla_train(stage, PAPER_POLICY, arch, SimpleNamespace(batch_size=batch, steps=1), budget)
    elif stage == "sft":
        args = {"batch": 2, "micro_batch": 2, "steps": 1}
        plan = plan_backbone(stage, "sft", "7b" if arch == "7b" else arch, args, budget)
    else:
        plan = plan_inference(stage, "eval", arch, PAPER_POLICY, budget, INFER_BATCH)
    return plan.peak - OVERHEAD, plan.flops


def measure(stage: str, arch: str, device: str) -> float:
    """Seconds per step of the real thing; its peak memory is read after."""
    import torch

    cuda = device.startswith("cuda")
    if stage.startswith("vla-train") or stage == "eval":
        from bench_gpu import make_batch, make_policy

        batch = int(stage.rsplit("-", 1)[1]) if stage != "eval" else 8
        policy = make_policy(arch, "frozen", 16, device, False)
        data = make_batch(batch, 16, device)
        if stage == "eval":
            policy.eval()
            return _time(lambda: policy.predict_action_chunk(data), cuda)
        policy.train()
        opt = policy.config.get_optimizer_preset().build(policy.get_optim_params())

        def step() -> None:
            loss, _ = policy.forward(data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return _time(step, cuda)
    from plan_check import _inputs
    from transformers import Qwen2_5_VLForConditionalGeneration

    from adapters.architectures import qwen_config
    from r1vla.gpu_plan import MCQA_IMAGE, MCQA_PROMPT_TOKENS

    cfg = qwen_config(arch)
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if cuda else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs = {k: v.to(device) for k, v in _inputs(cfg, 2, MCQA_PROMPT_TOKENS + 16, 1, MCQA_IMAGE).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)

    def step() -> None:
        model(**inputs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, cuda)


def main(argv: list[str] | None = None) -> int:
    import torch

    from r1vla.gpu_plan import GIB, Budget

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=STAGES, required=True)
    p.add_argument("--arch", default="7b", choices=["7b", "tiny"])
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM 989, A100 312)")
    p.add_argument("--utilisation", type=float, default=0.4)
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available() and a.arch == "7b"
    device = "cuda" if cuda else "cpu"
    mem = torch.cuda.get_device_properties(0).total_memory / GIB if cuda else 24.0
    budget = Budget(1, mem, a.gpu_tflops, a.utilisation)
    want_bytes, flops = predicted(a.stage, a.arch, budget)
    step_s = measure(a.stage, a.arch, device)
    got = _peak(cuda)
    want_s = flops / (a.gpu_tflops * 1e12 * a.utilisation)
    row = {
        "stage": a.stage,
        "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
        "predicted_gib": want_bytes / GIB,
        "measured_gib": got / GIB,
        "predicted_step_s": want_s,
        "measured_step_s": step_s,
        "utilisation_measured": flops / step_s / (a.gpu_tflops * 1e12),
    }
    print("RESULT " + json.dumps(row), flush=True)
    print(
        f"ROW {a.stage:<14} {row['predicted_gib']:14.2f} {row['measured_gib']:14.2f} {want_s:12.3f} {step_s:12.3f} "
        f"{row['utilisation_measured']:8.1%}"
    )
    print(f"RATIO {row['measured_gib'] / max(row['predicted_gib'], 1e-9):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
