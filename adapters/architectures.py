"""Qwen2.5-VL architectures as configs, without the hub: the 7B, a mid-size one of the same shape, and the tiny.

The 7B's numbers are those of Qwen/Qwen2.5-VL-7B-Instruct's config.json (hub revision of 2025-02; the same as
transformers' Qwen2_5_VLConfig docstring example): hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate
18944, vocab 152064; vision depth 32, hidden 1280, 16 heads, intermediate 3420, window 112, full attention in
blocks 7/15/23/31. About 8.29 B parameters (measured by `count_parameters` on the meta device).
"""

from __future__ import annotations

import os

# Qwen/Qwen2.5-VL-7B-Instruct config.json (text + vision): the numbers that set memory and compute
QWEN2_5_VL_7B_TEXT = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    vocab_size=152064,
    max_position_embeddings=128000,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
)
QWEN2_5_VL_7B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    hidden_act="silu",
)
# Special token ids of the real checkpoint (its tokenizer's added tokens 151652 ... 151656)
QWEN2_5_VL_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652)

# A mid-size model of the 7B's shape (GQA 7:1, mrope, windowed vision) for measurements on a CPU: ~0.2 B parameters
MID_TEXT = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=12,
    num_attention_heads=14,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    vocab_size=32768,
    max_position_embeddings=32768,
    rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]},  # head_dim 64 (the 7B: 128 -> [16, 24, 24])
    tie_word_embeddings=False,
)
MID_VISION = dict(QWEN2_5_VL_7B_VISION, depth=8, hidden_size=640, intermediate_size=1712, num_heads=8)
MID_VISION.update(out_hidden_size=896, fullatt_block_indexes=[3, 7])
MID_IDS = dict(image_token_id=32000, video_token_id=32001, vision_start_token_id=32002)

HUB_7B = (
    "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2_5_vl",
    "robot_r1",
    "sft",
)  # names that mean the 7B architecture
NAMES = ("7b", "mid", "tiny")


def qwen_config(name: str):
    """Qwen2_5_VLConfig of `name`: 7b | mid | tiny, a 7B hub id / preset key, or a local checkpoint folder."""
    from transformers import AutoConfig, Qwen2_5_VLConfig

    if name in ("7b", *HUB_7B):
        return Qwen2_5_VLConfig(
            text_config=dict(QWEN2_5_VL_7B_TEXT), vision_config=dict(QWEN2_5_VL_7B_VISION), **QWEN2_5_VL_IDS
        )
    if name == "mid":
        return Qwen2_5_VLConfig(
            text_config=dict(MID_TEXT), vision_config=dict(MID_VISION), tie_word_embeddings=False, **MID_IDS
        )
    if name == "tiny":
        from adapters.tiny import ensure_tiny_checkpoint

        name = str(ensure_tiny_checkpoint())
    if os.path.isdir(name):
        return AutoConfig.from_pretrained(name)
    from hints import unknown

    raise unknown("architecture", name, [*NAMES, *HUB_7B, "a local checkpoint folder"])
