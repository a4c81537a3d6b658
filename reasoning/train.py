"""`r1vla backbone sft|grpo`: train the SFT twin or the Robot-R1-style GRPO backbone on MCQA questions.

    r1vla backbone sft  --base KEY_OR_PATH --mcqa MCQA --out DIR [--steps N] [--lora] [--lr LR]
    r1vla backbone grpo --base KEY_OR_PATH --mcqa MCQA --out DIR [--steps N] [--lora] [--lr LR]
    r1vla backbone grpo --base Qwen/Qwen2.5-VL-7B-Instruct --plan --gpus 8 --gpu-memory 80   # the GPU plan
    accelerate launch --config_file scaleout/fsdp.yaml --num_processes 8 -m reasoning.train grpo ...
                                                   # multi-GPU, same arguments: FSDP, fp32 master weights

Both write a standard Qwen2.5-VL checkpoint folder (config.json, model.safetensors, tokenizer, processor,
chat template; LoRA merged) with `r1vla_provenance.json` (base, MCQA hash, method, steps, hyperparameters,
precision, answer format, coordinate format, drift from the base, final losses / rewards, warnings, versions) and `r1vla_train_log.jsonl` (every trainer log line) beside it.
Work happens in the sibling `.DIR.partial/` (trainer checkpoints every `save_steps`); the finished model is
renamed to DIR at the end, so DIR exists only when complete. Re-running the same command resumes from the
last checkpoint in `.DIR.partial/`, or returns at once when DIR is complete; a different request is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

from reasoning.base import check_qwen2_5_vl, resolve_base, versions, write_json_atomic
from reasoning.recipes import LR_RULE, METHODS, TrainConfig, answer_format, make_trainer, precision

log = logging.getLogger("reasoning.train")
PROVENANCE = "r1vla_provenance.json"
TRAIN_LOG = "r1vla_train_log.jsonl"
NO_SIGNAL = "no learning signal — the cause is usually the format"


def _monitor_class():
    from transformers import TrainerCallback

    class RewardMonitor(TrainerCallback):
        """Warns (at most once per `every` steps) when a step's GRPO groups have identical rewards."""

        def __init__(self, every: int, threshold: float, num_generations: int):
            self.every, self.threshold, self.g = every, threshold, num_generations
            self.last: int | None = None
            self.warnings: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            frac = (logs or {}).get("frac_reward_zero_std")
            if frac is None or frac < self.threshold:
                return
            step = state.global_step
            if self.last is not None and step - self.last < self.every:
                return
            self.last = step
            fmt = logs.get("rewards/format_reward/mean")
            ans = logs.get("rewards/answer_reward/mean")
            msg = (
                f"GRPO step {step}: {frac:.0%} of the groups got identical rewards for all {self.g} samples: "
                f"{NO_SIGNAL} (format reward mean {fmt}, answer reward mean {ans}); check that completions "
                "can reach <think>...</think><answer>X</answer> within max_completion_length (if every sample "
                "is already right, the questions are too easy for this model)"
            )
            log.warning(msg)
            self.warnings.append({"step": step, "frac_reward_zero_std": frac, "message": msg})

    return RewardMonitor


def _request(method: str, base: str, base_path: str, mcqa: Path, meta: dict, cfg: TrainConfig) -> dict:
    return {
        "method": method,
        "base": base,
        "base_path": base_path,
        "mcqa": str(mcqa),
        "mcqa_hash": meta.get("mcqa_hash"),
        "config": asdict(cfg),
    }


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {vb!r} -> {va!r}")
    return out


def _final(history: list[dict], keys: tuple[str, ...]) -> dict:
    out = {}
    for k in keys:
        vals = [h[k] for h in history if k in h]
        if vals:
            out[k] = vals[-1]
    return out


def train_backbone(
    method: str,
    base: str,
    mcqa: str | os.PathLike,
    out: str | os.PathLike,
    steps: int | None = None,
    callbacks: list | None = None,
    **hparams: object,
) -> Path:
    """Train `base` with `method` ("sft" | "grpo") on the MCQA training split; returns the checkpoint folder.

    `hparams`: any TrainConfig field (lr, lora, batch, micro_batch, epochs, ...). `callbacks`: extra
    transformers TrainerCallbacks (tests use one to interrupt a run)."""
    from transformers import AutoProcessor
    from transformers.trainer_utils import get_last_checkpoint

    from reasoning.mcqa import load_mcqa

    names = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(hparams) - names)
    if bad:
        from hints import unknown

        raise unknown("training hyperparameter", bad[0], sorted(names - {"method", "steps"}))
    cfg = TrainConfig(method=method, steps=steps, **hparams)  # type: ignore[arg-type]
    out, mcqa = Path(out).expanduser().resolve(), Path(mcqa).expanduser().resolve()
    base_path = resolve_base(base)
    check_qwen2_5_vl(base_path)
    train_ds, meta = load_mcqa(mcqa, "train")
    if cfg.limit is not None:
        train_ds = train_ds.select(range(min(cfg.limit, len(train_ds))))
    request = _request(method, base, base_path, mcqa, meta, cfg)
    if out.exists():
        prov = out / PROVENANCE
        if not prov.is_file():
            raise FileExistsError(
                f"{out} exists and is not an r1vla backbone (no {PROVENANCE}); choose another --out"
            )
        diff = _differences(request, json.loads(prov.read_text()).get("request", {}))
        if diff:
            raise ValueError(f"{out} was trained with a different request: {'; '.join(diff)}")
        log.info("%s is complete; nothing to do", out)
        return out
    work = out.parent / f".{out.name}.partial"
    work.mkdir(parents=True, exist_ok=True)
    req_file = work / "request.json"
    if req_file.is_file():
        diff = _differences(request, json.loads(req_file.read_text()))
        if diff:
            raise ValueError(
                f"{work} holds an interrupted run of a different request ({'; '.join(diff)}); "
                f"re-run the original command, or delete {work} to start over"
            )
    else:
        write_json_atomic(req_file, request)
    processor = AutoProcessor.from_pretrained(base_path, use_fast=True)
    prompt_side(processor, method)
    processor.image_processor.max_pixels = cfg.max_prompt_pixels
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    monitor = _monitor_class()(cfg.warn_every, cfg.flat_group_warn, cfg.num_generations)
    cbs = ([monitor] if method == "grpo" else []) + list(callbacks or [])
    trainer = make_trainer(cfg, base_path, processor, train_ds, str(work / "trainer"), cbs)
    last = get_last_checkpoint(str(work / "trainer")) if (work / "trainer").is_dir() else None
    if last:
        log.info("resuming from %s", last)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=last)
    trainer.accelerator.wait_for_everyone()
    model_dir = work / "model"
    if cfg.lora:
        if trainer.accelerator.is_main_process:
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(model_dir, safe_serialization=True)
    else:
        trainer.save_model(str(model_dir))
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(model_dir)
        for stale in ("training_args.bin",):
            (model_dir / stale).unlink(missing_ok=True)
        history = list(trainer.state.log_history)  # includes the steps before a resume
        keys = (
            "loss",
            "reward",
            "reward_std",
            "frac_reward_zero_std",
            "rewards/format_reward/mean",
            "rewards/answer_reward/mean",
            "kl",
            "mean_token_accuracy",
            "train_loss",
        )
        fmt = answer_format(method, any(train_ds["reasoning"]))
        drift = None
        if cfg.drift_questions > 0:  # how far the build moved from its base (reasoning/drift.py)
            from reasoning.drift import measure_drift

            drift = measure_drift(str(model_dir), base_path, str(mcqa), cfg.drift_questions, fmt)
        provenance = {
            "request": request,
            "method": method,
            "base": base,
            "base_path": base_path,
            "mcqa": str(mcqa),
            "mcqa_hash": meta.get("mcqa_hash"),
            "source_data_hash": meta.get("source", {}).get("data_hash"),
            "train_questions": len(train_ds),
            "steps": trainer.state.global_step,
            "epochs_done": trainer.state.epoch,
            "resumed_from": Path(last).name if last else None,
            "answer_format": fmt,  # the prompt's last line the build trained with (and is probed with)
            "coordinates": meta.get("coordinates"),  # the position format of its questions (adapters.prompts)
            "precision": precision(cfg).as_dict(),
            "drift": drift,
            "hyperparameters": {
                **asdict(cfg),
                "learning_rate": cfg.learning_rate,
                "learning_rate_rule": LR_RULE if cfg.lr is None else "set by the caller",
                "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
                "per_device_train_batch_size": trainer.args.per_device_train_batch_size,
                "world_size": trainer.args.world_size,
                "bf16": trainer.args.bf16,
                "use_vllm": bool(getattr(trainer.args, "use_vllm", False)),
                "sft_targets": ("cot" if any(train_ds["reasoning"]) else "direct")
                if method == "sft"
                else None,
                "loss_type": getattr(trainer.args, "loss_type", None),
            },
            "final": {**_final(history, keys), "train_runtime_s": result.metrics.get("train_runtime")},
            "rewards_history": [
                {k: h[k] for k in keys if k in h} | {"step": h.get("step")} for h in history if "reward" in h
            ],
            "warnings": monitor.warnings if method == "grpo" else [],
            "wall_s_this_run": round(time.time() - started, 1),
            "versions": versions(),
            "python": sys.version.split()[0],
        }
        write_json_atomic(model_dir / PROVENANCE, provenance)
        with open(model_dir / TRAIN_LOG, "w") as f:
            for h in history:
                f.write(json.dumps(h, default=str) + "\n")
        os.rename(model_dir, out)
        shutil.rmtree(work, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return out


def prompt_side(processor, method: str) -> None:
    """GRPO pads prompts on the left (TRL's GRPOTrainer loads its own processor so, and re-tokenizes the prompts
    with ours for the image inputs): with right padding, a batch of prompts of different lengths gets image-token
    types shifted against the ids (a shape error in Qwen2.5-VL's M-RoPE, or wrong positions)."""
    if method == "grpo":
        processor.tokenizer.padding_side = "left"
        processor.tokenizer.truncation_side = "left"


# --- CLI --------------------------------------------------------------------------------------------------
def add_arguments(
    p: argparse.ArgumentParser, each: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    """The build's flags on `sft` and `grpo` subcommands; `each(subparser)` adds more (r1vla backbone: --plan)."""
    sub = p.add_subparsers(dest="method", required=True, metavar="|".join(METHODS))
    for method in METHODS:
        s = sub.add_parser(
            method, help=f"train with {'TRL SFTTrainer' if method == 'sft' else 'TRL GRPOTrainer'}"
        )
        s.add_argument(
            "--base", required=True, help="backbone key (tiny, qwen2_5_vl) or checkpoint folder / hub id"
        )
        s.add_argument("--mcqa", help="MCQA folder from `r1vla mcqa` (required unless --plan)")
        s.add_argument("--out", help="checkpoint folder to write (required unless --plan)")
        s.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs)")
        s.add_argument("--epochs", type=float, default=5.0)
        s.add_argument("--lr", type=float, default=None, help="default 1e-6 for both (Robot-R1's GRPO rate)")
        s.add_argument("--lora", action="store_true", help="LoRA on the LLM projections, merged on save")
        s.add_argument("--batch", type=int, default=128, help="sft samples | grpo prompts per optimizer step")
        s.add_argument("--micro-batch", type=int, default=4, help="per device and forward")
        s.add_argument("--save-steps", type=int, default=50)
        s.add_argument("--limit", type=int, default=None, help="first N training questions only")
        s.add_argument(
            "--gradient-checkpointing",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="default: on above 1 B parameters (the 7B)",
        )
        s.add_argument("--seed", type=int, default=0)
        if method == "grpo":
            s.add_argument("--max-completion-length", type=int, default=1024)
            s.add_argument("--beta", type=float, default=0.01, help="KL coefficient (EasyR1 kl_coef 1e-2)")
            s.add_argument(
                "--no-vllm", action="store_true", help="generate with transformers even if vllm is there"
            )
            s.add_argument(
                "--vllm-mode",
                default="colocate",
                help="colocate | server (start `trl vllm-serve --model BASE` on its own GPU first)",
            )
        s.add_argument(
            "--hparams",
            default=None,
            metavar="JSON",
            help="any TrainConfig fields as JSON, over the flags (e.g. '{\"micro_batch\": 1}'; the study uses it)",
        )
        if each is not None:
            each(s)


def hparams(args: argparse.Namespace) -> tuple[dict, int | None]:
    """(TrainConfig fields, steps) from the flags and --hparams; ValueError on bad --hparams."""
    hp = dict(
        epochs=args.epochs,
        lr=args.lr,
        lora=args.lora,
        batch=args.batch,
        micro_batch=args.micro_batch,
        save_steps=args.save_steps,
        limit=args.limit,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
    )
    if args.method == "grpo":
        hp.update(max_completion_length=args.max_completion_length, beta=args.beta)
        hp.update(use_vllm=False if args.no_vllm else None, vllm_mode=args.vllm_mode)
    extra = json.loads(args.hparams) if args.hparams else {}
    if not isinstance(extra, dict):
        raise ValueError(f"--hparams must be a JSON object of TrainConfig fields; got {args.hparams!r}")
    steps = extra.pop("steps", args.steps)
    hp.update(extra)
    return hp, steps


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        hp, steps = hparams(args)
        if not (args.mcqa and args.out):
            raise ValueError("--mcqa and --out are required (or --plan)")
    except ValueError as e:  # json.JSONDecodeError is one
        print(f"r1vla backbone: {e}", file=sys.stderr)
        return 2
    out = train_backbone(args.method, args.base, args.mcqa, args.out, steps=steps, **hp)
    prov = json.loads((out / PROVENANCE).read_text())
    print(json.dumps({"out": str(out), "steps": prov["steps"], "final": prov["final"]}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reasoning.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
