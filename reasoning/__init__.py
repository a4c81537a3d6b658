"""Reasoning backbones from LIBERO demonstrations: Robot-R1-style MCQA, SFT and GRPO trainers, the probe.

    from reasoning import build_mcqa, train_backbone, probe
    summary = build_mcqa("runs/tiny/data/demos", "runs/mcqa")           # reasoning.mcqa
    ckpt = train_backbone("grpo", "qwen2_5_vl", "runs/mcqa", "ckpt/robot-r1", steps=None)  # reasoning.train
    result = probe(ckpt, "runs/mcqa", split="heldout")                  # reasoning.probe

Importing this package is light: each function's module (transformers, trl, datasets) loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reasoning.mcqa import MCQAConfig, build_mcqa, load_mcqa
    from reasoning.probe import probe
    from reasoning.recipes import TrainConfig
    from reasoning.train import train_backbone

_LAZY = {
    "MCQAConfig": "reasoning.mcqa",
    "build_mcqa": "reasoning.mcqa",
    "load_mcqa": "reasoning.mcqa",
    "probe": "reasoning.probe",
    "TrainConfig": "reasoning.recipes",
    "train_backbone": "reasoning.train",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reasoning' has no attribute {name!r}")


__all__ = ["MCQAConfig", "TrainConfig", "build_mcqa", "load_mcqa", "probe", "train_backbone"]
