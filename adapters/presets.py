"""Backbone presets: which checkpoint a key names, and how it is prompted by default.

A preset never loads anything; `build_backbone` resolves a `BackboneConfig` against it. All presets
are Qwen2.5-VL checkpoints (the 7B: hidden 3584, 28 decoder layers, about 15.5 GiB in bf16), so they
share one loader and differ only in where the weights come from.
"""

from __future__ import annotations

from dataclasses import dataclass

from hints import unknown


@dataclass(frozen=True)
class Preset:
    key: str  # name used in configs and on the command line
    default_path: str | None  # hub id or local folder used when no path is given (None: path required)
    path_required: bool  # True: there are no public weights, the user must pass a path
    prompt_style: str  # default prompt style (see adapters.prompts); configs may override it
    description: str  # one line for --help and error messages


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add `preset` to PRESETS. A key can be registered only once (no silent overwrite)."""
    if preset.key in PRESETS:
        raise ValueError(f"backbone preset {preset.key!r} is already registered: {PRESETS[preset.key]}")
    if preset.path_required and preset.default_path is not None:
        raise ValueError(f"preset {preset.key!r}: a preset with a default_path cannot require a path")
    PRESETS[preset.key] = preset
    return preset


def get_preset(key: str) -> Preset:
    """The preset registered under `key`; ValueError naming the valid keys and the closest one if unknown."""
    if key not in PRESETS:
        raise unknown("backbone key", key, sorted(PRESETS))
    return PRESETS[key]


def resolve_path(preset: Preset, path: str | None) -> str | None:
    """The checkpoint path to load for `preset`: `path` if given, else the preset's default.

    Returns None only for presets that build their own default (the `tiny` preset); raises when the
    preset has no public weights and no path was given.
    """
    if path:
        return path
    if preset.path_required:
        raise ValueError(
            f"backbone {preset.key!r} needs a checkpoint path: {preset.description} "
            f"Pass it as BackboneConfig(key={preset.key!r}, path='/path/to/checkpoint') "
            f"(on the command line: --policy.backbone_path=/path/to/checkpoint); "
            f"the folder must hold a Qwen2.5-VL checkpoint (config.json, *.safetensors, tokenizer, processor)."
        )
    return preset.default_path


register_preset(
    Preset(
        key="qwen2_5_vl",
        default_path="Qwen/Qwen2.5-VL-7B-Instruct",
        path_required=False,
        prompt_style="plain",
        description="Any Qwen2.5-VL checkpoint (hub id or local folder); default: the base model "
        "Qwen/Qwen2.5-VL-7B-Instruct.",
    )
)
register_preset(
    Preset(
        key="robot_r1",
        default_path=None,
        path_required=True,
        prompt_style="robot_r1",
        description="Robot-R1 (Qwen2.5-VL-7B-Instruct trained with GRPO for embodied reasoning) has no "
        "public weights: train or obtain it yourself and pass the local folder.",
    )
)
register_preset(
    Preset(
        key="sft",
        default_path=None,
        path_required=True,
        prompt_style="robot_r1",
        description="The SFT-backbone baseline (Qwen2.5-VL-7B-Instruct fine-tuned with SFT on the same "
        "data as Robot-R1) has no public weights: pass the folder of your SFT checkpoint.",
    )
)
register_preset(
    Preset(
        key="tiny",
        default_path=None,
        path_required=False,
        prompt_style="plain",
        description="Random tiny Qwen2.5-VL (hidden 64, 2 layers, vision depth 2) built offline for tests; "
        "path: a folder to build it in (default: $R1VLA_CACHE/tiny-qwen2_5_vl-v2).",
    )
)
