"""GRPO's prompts of different lengths in one batch: the image-token types the processor returns line up with the
left-padded prompt ids TRL's GRPOTrainer builds (else Qwen2.5-VL's M-RoPE gets shifted types: a shape error, or
wrong positions). Oracle: after left-aligning as TRL does, `mm_token_type_ids == 1` exactly on the image tokens."""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers import AutoProcessor

from reasoning.train import prompt_side


def test_grpo_prompts_pad_left_so_image_types_match_the_ids(tiny_backbone_dir):
    processor = AutoProcessor.from_pretrained(str(tiny_backbone_dir), use_fast=True)
    prompt_side(processor, "grpo")
    image = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for t in ("go", "pick up the alphabet soup and place it in the basket, then come back " * 3)
    ]
    batch = processor(
        images=[image, image], text=texts, padding=True, return_tensors="pt"
    )  # TRL's image inputs
    # TRL's prompt ids: each prompt tokenized alone, then left-padded to the longest (trl's pad(..., "left"))
    alone = [processor(images=[image], text=[t], return_tensors="pt")["input_ids"][0] for t in texts]
    width = max(len(a) for a in alone)
    trl_ids = np.stack([np.pad(a.numpy(), (width - len(a), 0), constant_values=-1) for a in alone])
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    types = batch["mm_token_type_ids"].numpy()
    assert types.shape == trl_ids.shape and len(alone[0]) != len(alone[1])
    assert ((types == 1) == (trl_ids == image_id)).all(), (
        "image-token types are shifted against TRL's prompt ids"
    )
    prompt_side(processor, "sft")  # SFT keeps what it was given
    assert processor.tokenizer.padding_side == "left"
