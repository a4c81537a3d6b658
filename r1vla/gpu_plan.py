"""The GPU plan of a study's stages, before any runs: launcher and processes, per-device batch, gradient
accumulation and global batch, master / compute dtype, sharding, activation checkpointing, peak memory per GPU
with its parts, GPU-hours, and `fits` or `does not fit: <what to change>`.

Memory: weights, gradients and optimizer state from the parameter count of the real architecture (built on the
meta device) and the precision / sharding of the launcher; activations (and the gradients live at that moment)
traced from one fake-tensor step of the real architecture at the planned per-device shape (adapters/footprint.py);
the reference model, the generation cache and a fixed 2 GiB for the CUDA context and allocator slack by rule.
FLOPs: counted by PyTorch's FlopCounterMode in that step; GPU-hours at a stated utilisation of a stated peak.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import scaleout as launch

GIB = 2**30
OVERHEAD = 2 * GIB  # CUDA context + allocator slack (not traced)
BYTES = {"float32": 4, "bfloat16": 2}
BIG = 1e9  # above this many parameters: sharded (FSDP) builds and activation checkpointing by default
MCQA_PROMPT_TOKENS = 220  # text tokens of an MCQA prompt (question, options, chat template); images apart
MCQA_IMAGE = 252  # LIBERO's 256^2 frames as Qwen's processor resizes them (multiples of 28): 81 tokens
VLA_TEXT_TOKENS = 64  # the policy's prompt (task + chat template)


@dataclass(frozen=True)
class Budget:
    gpus: int  # GPUs of the machine
    gpu_gib: float  # memory of each, GiB
    tflops: float = 312.0  # dense bf16 peak per GPU (A100; H100 SXM: 989)
    utilisation: float = 0.4  # fraction of the peak a step reaches (model FLOPs utilisation)
    questions: int = 20000  # MCQA training questions assumed before the mcqa stage has run


@dataclass
class StagePlan:
    stage: str
    what: str  # one line: method, architecture, parameters
    launcher: list[str]
    processes: int
    per_device: int
    accumulation: int
    global_batch: int
    batch_unit: str  # samples | prompts
    master: str  # master-weight dtype
    compute: str
    sharding: str
    checkpointing: bool
    parts: dict[str, float]  # bytes per GPU
    flops: float  # whole stage
    budget: Budget
    notes: list[str] = field(default_factory=list)
    advice: str = ""  # what to change when it does not fit
    extra_gpus: int = 0  # GPUs outside the training processes (a vLLM server)

    @property
    def peak(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget.gpu_gib * GIB and not self.advice.startswith("!")

    def gpu_hours(self) -> float:
        return self.flops / (self.budget.tflops * 1e12 * self.budget.utilisation) / 3600

    def render(self) -> str:
        b = self.budget
        launcher = " ".join(self.launcher) if self.launcher else "python (one process)"
        parts = " + ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items())
        verdict = "fits" if self.fits else f"does not fit: {self.advice.lstrip('!') or self._advice()}"
        lines = [
            f"stage {self.stage}: {self.what}",
            f"  launcher {launcher}; {self.processes} process(es)"
            + (f" + {self.extra_gpus} GPU(s) for the vLLM server" if self.extra_gpus else ""),
            f"  batch: per device {self.per_device} {self.batch_unit}, gradient accumulation {self.accumulation}, "
            f"global batch {self.global_batch}",
            f"  precision: master weights {self.master}, compute {self.compute}; sharding {self.sharding}; "
            f"activation checkpointing {'on' if self.checkpointing else 'off'}",
            f"  memory per GPU: {parts} = {self.peak / GIB:.1f} GiB of {b.gpu_gib:g} GiB",
            f"  compute: {self.flops:.2e} FLOPs = {self.gpu_hours():.2f} GPU-hours at {b.utilisation:.0%} of "
            f"{b.tflops:g} TFLOP/s",
            *(f"  note: {n}" for n in self.notes),
            f"  {verdict}",
        ]
        return "\n".join(lines)

    def _advice(self) -> str:
        return f"needs {self.peak / GIB:.1f} GiB per GPU, {self.budget.gpu_gib:g} GiB available"


@functools.lru_cache(maxsize=64)
def _footprint(arch: str, shape):
    """adapters.footprint.step_footprint, kept on disk (~/.cache/r1vla/footprints) by architecture, shape and
    library versions: tracing the 7B takes 10-40 s a shape on a CPU."""
    import hashlib
    import json
    import os
    from pathlib import Path

    import torch
    import transformers

    from adapters.architectures import qwen_config
    from adapters.footprint import Footprint, step_footprint

    cfg = qwen_config(arch)
    key = json.dumps(
        [cfg.to_dict(), repr(shape), torch.__version__, transformers.__version__, 2], sort_keys=True
    )
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "r1vla" / "footprints"
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        return Footprint(**json.loads(path.read_text()))
    fp = step_footprint(cfg, shape)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(fp)))
    os.replace(tmp, path)
    return fp


@functools.lru_cache(maxsize=16)
def _params(arch: str, lm_head: bool = True) -> tuple[int, int]:
    from adapters.architectures import qwen_config
    from adapters.footprint import count_parameters

    return count_parameters(qwen_config(arch), lm_head)


def count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n:.0f}"


def arch_of(base: str) -> str:
    """The architecture name a backbone key / base / checkpoint stands for (adapters.architectures.qwen_config)."""
    from adapters.architectures import HUB_7B

    return "7b" if base in HUB_7B or base.startswith("Qwen/Qwen2.5-VL-7B") else base


def default_launcher(gpus: int, params: int, config: str | None = None) -> list[str]:
    """One process on one GPU (or none); else accelerate over every GPU: FSDP above 1 B parameters, else DDP."""
    if gpus <= 1:
        return []
    return launch.accelerate(config or ("fsdp" if params > BIG else "ddp"), gpus)


def plan_backbone(
    stage: str, method: str, base: str, build_args: dict, budget: Budget, launcher=None
) -> StagePlan:
    from adapters.footprint import StepShape
    from reasoning.recipes import TrainConfig

    tc = TrainConfig(method=method, **build_args)
    arch = arch_of(base)
    params, largest = _params(arch)
    server = method == "grpo" and tc.vllm_mode == "server" and tc.use_vllm is not False
    gpus = budget.gpus - (1 if server and budget.gpus > 1 else 0)
    launcher = list(launcher) if launcher else default_launcher(gpus, params)
    n = launch.processes(launcher)
    shard = launch.sharding(launcher)
    sharded = shard != "none"
    ckpt = tc.gradient_checkpointing if tc.gradient_checkpointing is not None else params > BIG
    grpo = method == "grpo"
    per_dev, accum = launch.split_batch(tc.batch, n, tc.micro_batch)
    seqs = per_dev * (tc.num_generations if grpo else 1)
    text = MCQA_PROMPT_TOKENS + (tc.max_completion_length if grpo else 16)
    shape = StepShape(seqs, text, 1, MCQA_IMAGE, lm_head=True, checkpointing=ckpt, train="full")
    fp = _footprint(arch, shape)
    master = "float32"  # always fp32 masters, LoRA too (adapters/precision.py): bf16 only as autocast
    m, div = BYTES[master], (n if sharded else 1)
    trainable = _lora_params(arch) if tc.lora else params
    gathered = 2 * largest * 2 if sharded else 0  # FSDP / ZeRO-3 all-gather one layer ahead, in bf16
    weights = params * m / div + gathered
    grads, opt = trainable * m / div, trainable * 2 * m / div
    parts = {"weights": weights, "gradients": grads, "optimizer": opt}
    if grpo and tc.beta > 0:
        parts["reference"] = params * 2 / div
    notes, advice, gen = [], "", 0.0
    if grpo:
        if tc.use_vllm is False:
            kv = _kv_bytes(arch, seqs, text)
            gen, what = kv, f"KV cache of {seqs} x {text} tokens (transformers generate)"
        elif server:
            what = "vLLM server on its own GPU (`trl vllm-serve --model BASE`): none here"
        else:
            gen = tc.vllm_gpu_memory_utilization * budget.gpu_gib * GIB
            what = f"vLLM colocate, {tc.vllm_gpu_memory_utilization:.0%} of the GPU"
            if gen < params * 2 * 1.2:
                advice = (
                    f"!vLLM's {gen / GIB:.1f} GiB share cannot hold the {params * 2 / GIB:.1f} GiB bf16 weights "
                    "plus a cache: run generation on its own GPU (build_args vllm_mode: server)"
                )
        parts["generation"] = gen
        notes.append(f"generation: {what}")
    grad_peak = fp.grads_at_peak * m / 2 / div
    parts["activations"] = max(0.0, fp.activations + grad_peak - grads)  # peak: max(G, G live then + A)
    parts["overhead"] = OVERHEAD
    steps = tc.steps or math.ceil(tc.epochs * budget.questions / tc.batch)
    flops = fp.flops * accum * n * steps
    if (
        grpo
    ):  # sampling (2 x params per token) and the reference model's forward (a third of forward+backward)
        flops += steps * tc.batch * tc.num_generations * 2 * params * tc.max_completion_length
        flops += fp.flops * accum * n * steps / 3 if tc.beta > 0 else 0
    if not tc.steps:
        notes.append(
            f"{steps} optimizer steps = {tc.epochs:g} epochs of {budget.questions} questions (assumed)"
        )
    plan = StagePlan(
        stage, f"{method} of {base} ({count(params)} parameters{', LoRA' if tc.lora else ''}), "
        f"{text} text + {shape.visual_tokens()} image tokens per sequence",
        launcher, n, per_dev, accum, tc.batch, "prompts" + f" x {tc.num_generations} samples" if grpo else "samples",
        master, "bfloat16", shard, ckpt, parts, flops, budget, notes, advice, 1 if server else 0,
    )  # fmt: skip
    if not plan.fits and not advice:
        plan.advice = _shard_advice(plan, params, trainable, m)
    return plan


def _shard_advice(plan: StagePlan, params: int, trainable: int, m: int) -> str:
    """The first thing to change: shard the weight states when they alone crowd the GPU, else the batch."""
    head = f"needs {plan.peak / GIB:.1f} GiB per GPU, {plan.budget.gpu_gib:g} GiB available; "
    states = (params + 3 * trainable) * 4  # fp32 weights, gradients and AdamW's two moments
    if (
        plan.sharding == "none"
        and plan.parts["weights"] + plan.parts["optimizer"] > 0.5 * plan.budget.gpu_gib * GIB
    ):
        need = max(2, math.ceil(states / (0.5 * plan.budget.gpu_gib * GIB)))
        return head + (
            f"shard fp32 weights, gradients and AdamW over >= {need} GPUs (accelerate --config_file "
            "scaleout/fsdp.yaml --num_processes N; `--gpus N`), or train LoRA (build_args lora: true)"
        )
    return head + (
        f"lower micro_batch (now {plan.per_device} per device; the global batch stays by gradient accumulation)"
        + ("" if plan.checkpointing else " or set gradient_checkpointing: true")
    )


def _lora_params(arch: str, r: int = 64) -> int:
    from adapters.architectures import qwen_config

    t = qwen_config(arch).text_config
    head = t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head
    dims = [
        (t.hidden_size, t.hidden_size),
        (t.hidden_size, kv),
        (t.hidden_size, kv),
        (t.hidden_size, t.hidden_size),
    ]
    dims += [(t.hidden_size, t.intermediate_size)] * 2 + [(t.intermediate_size, t.hidden_size)]
    return t.num_hidden_layers * sum(r * (i + o) for i, o in dims)


def _kv_bytes(arch: str, seqs: int, tokens: int) -> float:
    from adapters.architectures import qwen_config

    t = qwen_config(arch).text_config
    head = t.hidden_size // t.num_attention_heads
    return 2 * t.num_hidden_layers * t.num_key_value_heads * head * 2 * seqs * tokens


def replace_budget(b: Budget, **kw) -> Budget:
    return dataclasses.replace(b, **kw)
