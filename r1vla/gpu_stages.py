"""The GPU plan of the VLA's training and inference stages, of a whole study, and its printing (r1vla/gpu_plan.py
has the backbone builds and the plan's parts)."""

from __future__ import annotations

import dataclasses
import functools

import scaleout as launch
from r1vla.gpu_plan import (
    BYTES,
    GIB,
    OVERHEAD,
    VLA_TEXT_TOKENS,
    Budget,
    StagePlan,
    _footprint,
    _params,
    arch_of,
    count,
    default_launcher,
    plan_backbone,
)

EVAL_STEPS = 300  # mean environment steps per LIBERO episode (the standard caps are 220-520)
INFER_BATCH = 8  # observations per forward in evaluation (one per env worker, batched)


def _policy_fields(policy: dict) -> dict:
    from policies.r1vla import R1VLAConfig

    fields = {
        f.name: f.default for f in dataclasses.fields(R1VLAConfig) if f.default is not dataclasses.MISSING
    }
    return {**fields, **policy}


@functools.lru_cache(maxsize=8)
def _head(head: str, overrides: tuple, hidden: int) -> tuple[int, int]:
    """(parameters, query tokens asked of the backbone) of the action head, built on the meta device."""
    import torch

    from vla.model import make_head

    with torch.device("meta"):
        module = make_head(head, dict(overrides), hidden)
    return sum(p.numel() for p in module.parameters()), int(getattr(module, "num_queries", 0))


def _head_overrides(p: dict) -> tuple:
    from policies.r1vla.configuration_r1vla import DEFAULT_CHUNK

    chunk = p.get("chunk_size") or DEFAULT_CHUNK[p["head"]]
    if p["head"] == "flow":
        names = {"hidden_dim": "head_hidden", "num_layers": "head_layers", "num_heads": "head_heads"}
        names |= {"num_vl_layers": "vl_self_attn_layers", "num_future_tokens": "num_future_tokens"}
    else:
        names = {"hidden_dim": "head_hidden", "num_blocks": "head_layers"}
    return (("chunk_size", chunk), *((k, p[v]) for k, v in names.items() if p.get(v) is not None))


def plan_vla_train(stage: str, policy: dict, arch: str, train, budget: Budget, launcher=None) -> StagePlan:
    """lerobot-train of the r1vla policy: `train.batch_size` is the global batch, split over the processes."""
    from adapters.footprint import StepShape

    p = _policy_fields(policy)
    params, _ = _params(arch, lm_head=False)
    hidden = _hidden(arch)
    head_params, queries = _head(p["head"], _head_overrides(p), hidden)
    launcher = list(launcher) if launcher else default_launcher(budget.gpus, 0, "ddp")
    n = launch.processes(launcher)
    per_dev, _ = launch.split_batch(train.batch_size, n)
    mode = p["backbone_mode"]
    shape = StepShape(
        per_dev, VLA_TEXT_TOKENS, len(p["image_keys"]), p["image_size"], queries=queries, lm_head=False,
        train="full" if mode != "frozen" else "frozen", checkpointing=bool(p["gradient_checkpointing"]),
    )  # fmt: skip
    fp = _footprint(arch, shape)
    backbone_dtype = "float32" if mode == "full" else "bfloat16"
    trainable = head_params + (params if mode == "full" else _lora(arch, mode, p))
    grads_then = fp.grads_at_peak * 2 if mode == "full" else 0  # traced in bf16, held in fp32
    parts = {
        "weights": params * BYTES[backbone_dtype] + (trainable if mode != "full" else head_params) * 4,
        "gradients": trainable * 4,
        "optimizer": trainable * 8,  # AdamW: two fp32 moments
        "activations": max(0.0, fp.activations + grads_then - (params * 4 if mode == "full" else 0)),
        "overhead": OVERHEAD,
    }
    flops = fp.flops / per_dev * train.batch_size * train.steps
    what = (
        f"r1vla policy ({p['head']} head {count(head_params)}, backbone {count(params)} {mode}), "
        f"{len(p['image_keys'])} views at {p['image_size']}^2 + {VLA_TEXT_TOKENS} text tokens"
    )
    plan = StagePlan(
        stage, what, launcher, n, per_dev, 1, train.batch_size, "samples", "float32", "bfloat16 (autocast)",
        launch.sharding(launcher), bool(p["gradient_checkpointing"]), parts, flops, budget,
        [
            "lerobot-train has no gradient accumulation: global batch = per device x processes",
            "activations traced: the backbone's step; the action head's are not (its parameters are counted)",
        ],
    )  # fmt: skip
    if not plan.fits:
        plan.advice = plan._advice() + (
            f"; full mode holds fp32 weights + gradients + AdamW = {params * 16 / GIB:.0f} GiB per process under "
            "lerobot-train's data parallel (no sharded path): use backbone_mode frozen or lora"
            if mode == "full"
            else f"; use more GPUs (smaller per-device batch) or gradient_checkpointing: true (now per device {per_dev})"
        )
    return plan


def _lora(arch: str, mode: str, p: dict) -> int:
    from r1vla.gpu_plan import _lora_params

    return _lora_params(arch, p.get("lora_r", 32)) if mode == "lora" else 0


def _hidden(arch: str) -> int:
    from adapters.architectures import qwen_config

    return qwen_config(arch).text_config.hidden_size


def plan_inference(
    stage: str, what: str, arch: str, policy: dict, budget: Budget, forwards: int
) -> StagePlan:
    """A policy evaluated (one process per GPU-holding evaluation): bf16 weights and a no-grad forward."""
    from adapters.footprint import StepShape

    p = _policy_fields(policy)
    params, _ = _params(arch, lm_head=False)
    head_params, queries = _head(p["head"], _head_overrides(p), _hidden(arch))
    shape = StepShape(
        INFER_BATCH, VLA_TEXT_TOKENS, len(p["image_keys"]), p["image_size"], queries, False, "none"
    )
    fp = _footprint(arch, shape)
    parts = {"weights": params * 2 + head_params * 4, "activations": fp.activations, "overhead": OVERHEAD}
    flops = fp.flops / INFER_BATCH * forwards
    return StagePlan(
        stage, what, [], 1, INFER_BATCH, 1, INFER_BATCH, "observations", "bfloat16", "bfloat16", "none", False,
        parts, flops, budget, [f"{forwards} backbone forwards (episodes x {EVAL_STEPS} steps / actions per chunk)"],
    )  # fmt: skip


def plan_probe(stage: str, arch: str, mcqa, budget: Budget) -> StagePlan:
    """The reasoning probe: generation with transformers (batch 8): bf16 weights, KV cache, prompt logits."""
    from adapters.footprint import StepShape
    from r1vla.gpu_plan import MCQA_IMAGE, MCQA_PROMPT_TOKENS, _kv_bytes

    params, _ = _params(arch)
    tokens = MCQA_PROMPT_TOKENS + mcqa.probe_max_new_tokens
    fp = _footprint(arch, StepShape(INFER_BATCH, MCQA_PROMPT_TOKENS, 1, MCQA_IMAGE, train="none"))
    parts = {
        "weights": params * 2,
        "generation": _kv_bytes(arch, INFER_BATCH, tokens),
        "activations": fp.activations,
        "overhead": OVERHEAD,
    }
    questions = mcqa.probe_limit or 2000
    flops = 2 * params * tokens * questions
    return StagePlan(
        stage, f"MCQA probe, {tokens} tokens per question", [], 1, INFER_BATCH, 1, INFER_BATCH, "questions",
        "bfloat16", "bfloat16", "none", False, parts, flops, budget,
        [f"{questions} held-out questions{' (assumed)' if not mcqa.probe_limit else ''}"],
    )  # fmt: skip


def plan_study(cfg, budget: Budget) -> list[StagePlan]:
    """Every GPU stage of the study `cfg` (a StudyConfig), in the order the study runs them; repeated stages
    (one per seed) are planned once and named with their seeds."""
    from r1vla.study_layout import eval_tasks

    plans, archs = [], {}
    build = cfg.backbone
    for b in cfg.backbones:
        archs[b.label] = arch_of(
            b.base if b.build else (b.path if b.path and b.key not in ("tiny",) else b.key)
        )
        if b.build:
            launcher = tuple(build.launcher) if build and build.launcher else None
            plans.append(
                plan_backbone(f"backbone/{b.label}", b.build, b.base, dict(b.build_args), budget, launcher)
            )
    built = [b for b in cfg.backbones if b.build]
    if built and cfg.mcqa.probe:
        for name, arch in {
            **{f"base:{b.base}": arch_of(b.base) for b in built},
            **{b.label: archs[b.label] for b in built},
        }.items():
            plans.append(plan_probe(f"probe/{name}", arch, cfg.mcqa, budget))
    seeds = ",".join(map(str, cfg.train.seeds))
    for b in cfg.backbones:
        name = f"train/{b.label}/seed{{{seeds}}}"
        plan = plan_vla_train(name, cfg.policy, archs[b.label], cfg.train, budget, cfg.train.launcher or None)
        plan.flops *= len(cfg.train.seeds)
        plans.append(plan)
    tasks, inits = eval_tasks(cfg)
    episodes = len(tasks) * len(inits) * len(cfg.eval.seeds) * (1 + len(cfg.eval.perturbations))
    p = _policy_fields(cfg.policy)
    for b in cfg.backbones:
        forwards = episodes * EVAL_STEPS // max(1, p["n_action_steps"]) * len(cfg.train.seeds)
        what = f"LIBERO evaluation, {episodes} episodes per checkpoint"
        plans.append(
            plan_inference(
                f"eval/{b.label}/seed{{{seeds}}}", what, archs[b.label], cfg.policy, budget, forwards
            )
        )
    return plans


def render(plans: list[StagePlan], budget: Budget, header: str = "") -> tuple[str, int]:
    """The printed plan and the exit code: 0 when every stage fits, else 1 (the first that does not is named)."""
    lines = [header] if header else []
    lines += [p.render() for p in plans]
    bad = [p for p in plans if not p.fits]
    hours = sum(p.gpu_hours() for p in plans)
    where = f"{budget.gpus} x {budget.gpu_gib:g} GiB"
    if bad:
        lines.append(
            f"plan: stage {bad[0].stage} does not fit on {where} ({len(bad)} of {len(plans)} GPU stages do not)"
        )
    else:
        lines.append(f"plan: all {len(plans)} GPU stages fit on {where}; about {hours:.0f} GPU-hours in all")
    return "\n".join(lines), 1 if bad else 0


def detected_budget() -> Budget | None:
    """The GPUs this process sees (count, the smallest memory), or None without CUDA."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    n = torch.cuda.device_count()
    mem = min(torch.cuda.get_device_properties(i).total_memory for i in range(n)) / GIB
    return Budget(n, mem)


def train_launcher(cfg, budget: Budget | None) -> list[str]:
    """The VLA training's launcher: train.launcher, else accelerate (ddp.yaml) over every GPU when there are several."""
    return list(cfg.train.launcher) or default_launcher(budget.gpus if budget else 1, 0, "ddp")


def build_launcher(cfg, b, budget: Budget | None) -> list[str]:
    """A backbone build's launcher: backbone.launcher, else accelerate over every GPU (FSDP above 1 B parameters)."""
    if cfg.backbone.launcher:
        return list(cfg.backbone.launcher)
    gpus = budget.gpus if budget else 1
    return default_launcher(gpus, _params(arch_of(b.base))[0] if gpus > 1 else 0)


# --- command line ------------------------------------------------------------------------------------------
def add_plan_arguments(parser) -> None:
    g = parser.add_argument_group("GPU plan")
    g.add_argument(
        "--plan",
        action="store_true",
        help="print the plan and exit: every GPU stage (memory, batch, GPU-hours; `r1vla study`: and the design's "
        "statistical power)",
    )
    g.add_argument(
        "--gpus", type=int, default=None, help="GPUs to plan for (default: those this process sees)"
    )
    g.add_argument("--gpu-memory", type=float, default=None, metavar="GiB", help="memory of each GPU")
    g.add_argument(
        "--gpu-tflops", type=float, default=312.0, help="dense bf16 peak per GPU (A100 312, H100 989)"
    )
    g.add_argument("--utilisation", type=float, default=0.4, help="fraction of the peak a step reaches")
    g.add_argument(
        "--mcqa-questions", type=int, default=20000, help="MCQA training questions (before mcqa has run)"
    )


def budget_from_args(args) -> Budget | None:
    """The Budget of --gpus / --gpu-memory (both, or neither: then the GPUs seen; None when there are none)."""
    extra = dict(tflops=args.gpu_tflops, utilisation=args.utilisation, questions=args.mcqa_questions)
    if (args.gpus is None) != (args.gpu_memory is None):
        raise ValueError(
            "give --gpus N and --gpu-memory GiB together (or neither: the GPUs this machine has)"
        )
    if args.gpus is not None:
        if args.gpus < 1 or args.gpu_memory <= 0:
            raise ValueError(
                f"--gpus must be >= 1 and --gpu-memory > 0; got {args.gpus} and {args.gpu_memory}"
            )
        return Budget(args.gpus, args.gpu_memory, **extra)
    seen = detected_budget()
    if seen is None and getattr(args, "plan", False):
        raise ValueError("no GPU seen here: plan for a machine with --gpus N --gpu-memory GiB")
    return dataclasses.replace(seen, **extra) if seen else None


def train_plan_cli(argv: list[str]) -> int:
    """`r1vla train --plan --gpus N --gpu-memory GiB --policy.…=… --batch_size B --steps S`: the plan of one
    lerobot-train run, where --batch_size is lerobot-train's, per process (the study's train.batch_size is global)."""
    import argparse
    import sys

    import yaml

    parser = argparse.ArgumentParser(prog="r1vla train --plan")
    add_plan_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100000)
    parser.add_argument(
        "--launcher", default=None, help="e.g. 'accelerate launch --num_processes 8' (default: auto)"
    )
    args, rest = parser.parse_known_args(argv)
    policy = {}
    for item in rest:
        key, sep, value = item.removeprefix("--policy.").partition("=")
        if item.startswith("--policy.") and sep and key not in ("type", "device", "push_to_hub", "repo_id"):
            policy[key] = yaml.safe_load(value)
    try:
        budget = budget_from_args(args)
        key, path = policy.pop("backbone", "tiny"), policy.pop("backbone_path", None)
        arch = arch_of(path if path and key not in ("robot_r1", "sft", "qwen2_5_vl") else key)
        launcher = args.launcher.split() if args.launcher else default_launcher(budget.gpus, 0, "ddp")
        spec = dataclasses.make_dataclass("T", ["batch_size", "steps"])
        train = spec(args.batch_size * launch.processes(launcher), args.steps)
        text, rc = render([plan_vla_train("train", policy, arch, train, budget, launcher)], budget)
    except ValueError as e:
        print(f"r1vla train: {e}", file=sys.stderr)
        return 2
    print(text)
    return rc


def check_study(cfg, budget: Budget | None, log) -> Budget | None:
    """Before a study's first stage: its plan on `budget` (default: the GPUs seen); ValueError naming the first
    stage that does not fit. Without a GPU nothing is checked (said in the log). Returns the budget used."""
    budget = budget or detected_budget()
    if budget is None:
        log("[study] plan: no GPU seen; the GPU plan is not checked (`r1vla study --plan --gpus N ...`)")
        return None
    text, rc = render(plan_study(cfg, budget), budget)
    log(text)
    if rc:
        raise ValueError(f"refusing to start: {text.splitlines()[-1].removeprefix('plan: ')} (plan above)")
    return budget


def build_command(cfg, b, budget: Budget | None, mcqa: str, out) -> tuple[list[str], list[str]]:
    """(launcher, command) of the backbone build `b` (a BackboneSpec with `build`): `r1vla backbone` through it."""
    import json
    import sys

    launcher = build_launcher(cfg, b, budget)
    cmd = [*launcher, *([] if launcher else [sys.executable]), "-m", "reasoning.train", b.build]
    cmd += ["--base", b.base, "--mcqa", str(mcqa), "--out", str(out), "--hparams", json.dumps(b.build_args)]
    return launcher, cmd


def plan_command(args, cfg) -> tuple[Budget | None, int | None]:
    """`r1vla study [--plan] [--gpus N --gpu-memory GiB]`: (budget, exit code when --plan printed the plan)."""
    budget = budget_from_args(args)
    if not args.plan:
        return budget, None
    text, rc = render(plan_study(cfg, budget), budget, f"study {cfg.name}: GPU plan")
    print(text)
    return budget, rc


def vla_batch(cfg, budget: Budget | None) -> tuple[list[str], int]:
    """(launcher, per-process batch) of the study's VLA training: train.batch_size (global) over the processes."""
    launcher = train_launcher(cfg, budget)
    return launcher, launch.split_batch(cfg.train.batch_size, launch.processes(launcher))[0]
