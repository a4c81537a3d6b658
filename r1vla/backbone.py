"""`r1vla backbone sft|grpo ...`: a backbone build (reasoning/train.py), or with `--plan` its GPU plan.

The build itself runs in `reasoning.train` (also `python -m reasoning.train`, what launchers start); the plan lives
here, beside the study's, so that `reasoning` never imports the CLI layer.
"""

from __future__ import annotations

import argparse
import sys

from reasoning import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from r1vla.gpu_stages import add_plan_arguments

    train.add_arguments(parser, each=add_plan_arguments)


def run(args: argparse.Namespace) -> int:
    if not args.plan:
        return train.run(args)
    try:
        hp, steps = train.hparams(args)
    except ValueError as e:  # json.JSONDecodeError is one
        print(f"r1vla backbone: {e}", file=sys.stderr)
        return 2
    from r1vla.gpu_plan import plan_backbone
    from r1vla.gpu_stages import budget_from_args, render

    hp = {k: v for k, v in hp.items() if v is not None or k in ("gradient_checkpointing", "use_vllm")}
    try:  # a batch that does not split, a bad budget: the message, no traceback
        budget = budget_from_args(args)
        plan = plan_backbone(
            f"backbone {args.method}", args.method, args.base, {**hp, "steps": steps}, budget
        )
    except ValueError as e:
        print(f"r1vla backbone: {e}", file=sys.stderr)
        return 2
    text, rc = render([plan], budget)
    print(text)
    return rc
