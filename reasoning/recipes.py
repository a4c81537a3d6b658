"""The two training recipes on one base: their hyperparameters (with sources) and TRL trainer construction.

Robot-R1 (arXiv 2506.00070): GRPO, format + exact-match answer reward, 5 samples per prompt, temperature 1.0,
lr 1e-6, batch 128, 5 epochs, Qwen2.5-VL-7B-Instruct, trained with EasyR1. What the paper does not give is
taken from EasyR1's examples/config.yaml (hiyouga/EasyR1): KL as a loss term with the low-variance (k3)
estimator and kl_coef 1e-2 (TRL's `beta`, whose KL term is the same k3 estimator), AdamW weight decay 1e-2,
max grad norm 1.0, no warmup, rollout top_p 0.99, clip ratio 0.2. "Batch 128" is read as 128 prompts per
optimizer step (x 5 samples = 640 completions): TRL needs the completion batch divisible by the group size.

The SFT twin is Robot-R1's "Direct SFT" baseline (the paper reports Direct SFT and CoT SFT; our MCQA has no
reasoning traces, so CoT SFT has no targets): answer-only targets `<answer>X</answer>` under a prompt that asks
for exactly that (reasoning/questions.py ANSWER_FORMATS["direct"]), the same prompt in training and in the probe.
Its learning rate follows one stated rule: the twin shares every optimizer setting of the GRPO recipe (lr 1e-6,
batch, epochs, AdamW, constant schedule), so the two arms differ by their objective only; how far each moved
from the base is measured after the build (reasoning/drift.py) and reported beside the probe.

Precision (adapters/precision.py, the rule the VLA's backbone modes share): the weights a build changes stay
float32 masters, on GPUs too; bf16 compute comes from autocast (TRL's `bf16=True` over fp32 weights).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from hints import check as _check_choice

METHODS = ("sft", "grpo")
VLLM_MODES = ("colocate", "server")
DEFAULT_LR = {
    "grpo": 1e-6,
    "sft": 1e-6,
}  # grpo: Robot-R1 / EasyR1; sft: the same (rule: one optimizer setting)
LR_RULE = (
    "sft shares the GRPO recipe's learning rate (1e-6, Robot-R1 / EasyR1): the arms differ by objective only"
)
ANSWER_FORMAT = {"grpo": "think", "sft": "direct"}  # GRPO: <think>..</think><answer>X</answer>; Direct SFT
LORA_TARGETS = r"^model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


@dataclass(frozen=True)
class TrainConfig:
    method: str = "grpo"  # sft (TRL SFTTrainer) | grpo (TRL GRPOTrainer)
    steps: int | None = None  # optimizer steps; None = `epochs` passes over the training questions
    epochs: float = 5.0  # Robot-R1: 5 epochs
    lr: float | None = None  # None = DEFAULT_LR[method] (1e-6 for both: Robot-R1's GRPO rate, LR_RULE)
    batch: int = 128  # per optimizer step: sft samples | grpo prompts (x num_generations completions)
    micro_batch: int = (
        4  # per device and forward: sft samples | grpo prompts (gradient accumulation fills batch)
    )
    lora: bool = False  # LoRA on the language model's projections (merged into the weights on save)
    lora_r: int = 64  # LoRA rank
    lora_alpha: int = 128  # LoRA alpha (scale alpha / r = 2)
    weight_decay: float = 1e-2  # AdamW weight decay (EasyR1)
    max_grad_norm: float = 1.0  # gradient clipping (EasyR1)
    warmup_ratio: float = 0.0  # linear warmup fraction (EasyR1: 0)
    num_generations: int = 5  # grpo: samples per prompt (Robot-R1: 5)
    temperature: float = 1.0  # grpo: sampling temperature (Robot-R1: 1.0)
    top_p: float = 0.99  # grpo: nucleus sampling (EasyR1 rollout top_p)
    beta: float = 0.01  # grpo: KL coefficient, k3 estimator (EasyR1 kl_coef 1e-2, low_var_kl, as a loss)
    epsilon: float = 0.2  # grpo: PPO clip ratio (EasyR1 clip_ratio 0.2, TRL default)
    max_completion_length: int = 1024  # grpo: tokens per sample (ours; EasyR1's example allows 2048)
    max_prompt_pixels: int = 12845056  # image processor max_pixels (the 7B's preprocessor default)
    save_steps: int = 50  # checkpoint every N steps (an interrupted run resumes from the last one)
    logging_steps: int = 1  # log every N steps
    warn_every: int = 10  # grpo: at most one "no learning signal" warning per this many steps
    flat_group_warn: float = 0.5  # grpo: warn when this fraction of a step's groups has identical rewards
    gradient_checkpointing: bool | None = (
        None  # recompute activations; None = on above 1 B parameters (the 7B)
    )
    use_vllm: bool | None = None  # grpo: None = when vllm is installed and CUDA is there
    vllm_mode: str = (
        "colocate"  # grpo: colocate (in the trainer's GPUs) | server (`trl vllm-serve` on its own GPU)
    )
    vllm_gpu_memory_utilization: float = 0.3  # grpo colocate: vLLM's share of each GPU (TRL's default)
    limit: int | None = None  # train on the first N training questions only (smoke tests)
    seed: int = 0  # trainer seed (data order, sampling, LoRA init)
    dtype: str = "auto"  # weights' dtype: auto = float32 masters (bf16 autocast on CUDA); bfloat16 is refused
    drift_questions: int = 16  # held-out MCQA prompts the KL(built || base) is measured on after the build

    def __post_init__(self) -> None:
        _check_choice("training method", self.method, METHODS)
        from adapters.precision import check_dtype

        check_dtype(self.dtype, True, f"a {self.method} build")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 or None; got {self.steps}")
        if self.batch < 1 or self.micro_batch < 1 or self.batch % min(self.micro_batch, self.batch):
            raise ValueError(
                f"batch ({self.batch}) must be a positive multiple of micro_batch ({self.micro_batch})"
            )
        _check_choice("vllm_mode", self.vllm_mode, VLLM_MODES)
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (GRPO compares samples); got {self.num_generations}"
            )

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def vllm(self) -> bool:
        import torch

        if self.use_vllm is not None:
            return self.use_vllm
        return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def answer_format(method: str, has_reasoning: bool) -> str:
    """The answer format a build trains (and is probed) with: GRPO and CoT SFT `think`, Direct SFT `direct`."""
    return "think" if method == "grpo" or has_reasoning else "direct"


def sft_target(row: dict) -> str:
    """Direct SFT: `<answer>X</answer>`; CoT SFT when the row carries reasoning: `<think>...</think><answer>X</answer>`."""
    reasoning = (row.get("reasoning") or "").strip()
    head = f"<think>{reasoning}</think>" if reasoning else ""
    return f"{head}<answer>{row['answer']}</answer>"


def checkpointing(cfg: TrainConfig, base_path: str) -> bool:
    """cfg.gradient_checkpointing, or (None) on when the base has more than 1 B parameters."""
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing
    from adapters.architectures import qwen_config
    from adapters.footprint import count_parameters

    return count_parameters(qwen_config(base_path))[0] > 1e9


def precision(cfg: TrainConfig, device: str | None = None) -> Any:
    """adapters.precision.Precision of a build on `device` (default: cuda when available, else cpu)."""
    from adapters.precision import resolve_precision

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_precision(device, True, cfg.dtype, f"a {cfg.method} build")


def _common_args(
    cfg: TrainConfig, out_dir: str, world: int, base_path: str, device: str | None = None
) -> tuple[dict, int]:
    import torch

    from scaleout import split_batch

    prec = precision(cfg, device)
    micro, accum = split_batch(cfg.batch, world, cfg.micro_batch)  # refuses a batch that does not divide
    report = ["tensorboard"] if importlib.util.find_spec("tensorboard") else "none"
    return (
        dict(
            output_dir=out_dir,
            max_steps=cfg.steps if cfg.steps is not None else -1,
            num_train_epochs=cfg.epochs,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="constant_with_warmup",  # EasyR1: constant lr after warmup; the same for both methods
            warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a fraction of the steps
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            gradient_accumulation_steps=accum,
            save_strategy="steps",
            save_steps=cfg.save_steps,
            save_total_limit=2,
            logging_steps=cfg.logging_steps,
            report_to=report,
            bf16=prec.autocast_bf16,  # autocast over the fp32 weights below (never bf16 masters)
            # without CUDA, transformers sets up no process group under a launcher unless told: each process would
            # train alone at world size 1 (and race the others to the output folder)
            use_cpu=not torch.cuda.is_available(),
            ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
            seed=cfg.seed,
            data_seed=cfg.seed,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            gradient_checkpointing=checkpointing(cfg, base_path),
            # fp32 master weights everywhere (adapters/precision.py); sharded (FSDP / ZeRO-3): shards of them
            model_init_kwargs={"dtype": prec.weights},
            disable_tqdm=True,
        ),
        micro,
    )


def peft_config(cfg: TrainConfig) -> Any:
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )


def make_trainer(
    cfg: TrainConfig, base_path: str, processor: Any, train_ds: Any, out_dir: str, callbacks: list
) -> Any:
    """The TRL trainer of `cfg.method` on `base_path` (loaded by TRL as Qwen2_5_VLForConditionalGeneration)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    common, micro = _common_args(cfg, out_dir, world, base_path)
    if cfg.method == "sft":
        from trl import SFTConfig, SFTTrainer

        from reasoning.questions import with_answer_format

        keep = {"prompt", "completion", "image"}
        fmt = answer_format("sft", any(train_ds["reasoning"]))
        data = train_ds.map(
            lambda r: {
                "prompt": with_answer_format(r["prompt"], fmt),  # Direct SFT asks for the answer only
                "completion": [{"role": "assistant", "content": sft_target(r)}],
            }
        )
        data = data.remove_columns([c for c in data.column_names if c not in keep])
        args = SFTConfig(
            **common, per_device_train_batch_size=micro, max_length=None, completion_only_loss=True
        )
        return SFTTrainer(
            model=base_path,
            args=args,
            train_dataset=data,
            processing_class=processor,
            peft_config=peft_config(cfg),
            callbacks=callbacks,
        )
    from trl import GRPOConfig, GRPOTrainer

    from reasoning.rewards import answer_reward, format_reward

    keep = {"prompt", "image", "answer", "kind"}
    data = train_ds.remove_columns([c for c in train_ds.column_names if c not in keep])
    args = GRPOConfig(
        **common,
        per_device_train_batch_size=micro * cfg.num_generations,
        num_generations=cfg.num_generations,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        max_completion_length=cfg.max_completion_length,
        use_vllm=cfg.vllm(),
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        log_completions=False,
    )
    return GRPOTrainer(
        model=base_path,
        reward_funcs=[format_reward, answer_reward],
        args=args,
        train_dataset=data,
        processing_class=processor,
        peft_config=peft_config(cfg),
        callbacks=callbacks,
    )
