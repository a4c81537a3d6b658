"""Vision-language backbones (the only package that imports transformers).

    from adapters import BackboneConfig, build_backbone, PRESETS, PROMPT_STYLES, build_prompt
    bb = build_backbone(BackboneConfig(key="tiny"))
    out = bb(images, texts, query_embeds=None)  # tokens (B, L, D), mask (B, L), queries (B, K, D) | None

Importing this package is light (torch only): the transformers-based parts (build_backbone,
QwenVLBackbone, build_tiny_checkpoint) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from adapters.config import ATTN_IMPLEMENTATIONS, DTYPES, MODES, BackboneConfig
from adapters.presets import PRESETS, Preset, get_preset, register_preset, resolve_path
from adapters.prompts import PROMPT_STYLES, build_prompt, check_prompt_style

if TYPE_CHECKING:
    from adapters.qwen2_5_vl import QwenVLBackbone, build_backbone, build_random_backbone
    from adapters.tiny import build_tiny_checkpoint, default_tiny_dir, ensure_tiny_checkpoint

_LAZY = {
    "QwenVLBackbone": "adapters.qwen2_5_vl",
    "build_backbone": "adapters.qwen2_5_vl",
    "build_random_backbone": "adapters.qwen2_5_vl",
    "build_tiny_checkpoint": "adapters.tiny",
    "default_tiny_dir": "adapters.tiny",
    "ensure_tiny_checkpoint": "adapters.tiny",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adapters' has no attribute {name!r}")


__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "DTYPES",
    "MODES",
    "PRESETS",
    "PROMPT_STYLES",
    "BackboneConfig",
    "Preset",
    "QwenVLBackbone",
    "build_backbone",
    "build_prompt",
    "build_random_backbone",
    "build_tiny_checkpoint",
    "check_prompt_style",
    "default_tiny_dir",
    "ensure_tiny_checkpoint",
    "get_preset",
    "register_preset",
    "resolve_path",
]
