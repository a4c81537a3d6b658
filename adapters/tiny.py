"""A tiny random Qwen2.5-VL checkpoint built offline, for tests and smoke runs.

`build_tiny_checkpoint(out_dir)` writes a folder laid out like a real hub checkpoint (config.json,
model.safetensors, tokenizer, processor configs, chat template), so `build_backbone` loads it through
exactly the code path a real checkpoint takes. Nothing is downloaded:

- tokenizer: a byte-level BPE (Qwen2's pre-tokenizer, normaliser and decoder) trained in well under a
  second on a fixed corpus, followed by Qwen2.5-VL's 22 added tokens in Qwen's order, wrapped as a
  Qwen2TokenizerFast with Qwen2.5-VL's chat template. Token ids differ from the real model's, so the
  model config takes its special ids from this tokenizer.
- model: Qwen2_5_VLForConditionalGeneration with hidden 64, 2 decoder layers, vision depth 2
  (about 0.35 M parameters), initialised under a fixed seed: rebuilding gives identical weights.

The build is atomic: everything is written into a temporary sibling folder that is renamed to
`out_dir` at the end, so a killed build never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    AddedToken,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

# Bump when the recipe changes, so cached folders of an old recipe are not reused. v2: built by transformers 5
# (the same seed gives other random weights than transformers 4.57's v1, which a LeRobot 0.4.4 install built)
TINY_VERSION = "v2"

# Qwen2 pre-tokenisation regex (single digits, unlike GPT-4's \p{N}{1,3}).
QWEN2_PRETOKENIZE_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# Added tokens of Qwen2.5-VL-*-Instruct in id order (151643 ... 151664 in the real vocabulary), with
# their `special` flag as in the official tokenizer.json.
QWEN2_5_VL_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

# chat_template of Qwen/Qwen2.5-VL-7B-Instruct (the same as Qwen2-VL's).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Fixed corpus for the toy BPE: robot instructions plus the words of the robot_r1 prompt style.
_CORPUS = (
    "You are a helpful assistant.",
    "You are Franka Robot Assistant: Task Planning and Execution System",
    "Coordinate System: X front(+)/back(-), Y left(-)/right(+), Z down(-)/up(+)",
    "Current Robot State Position: [0.123, -0.045, 1.002]",
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "put both the alphabet soup and the tomato sauce in the basket",
    "open the top drawer of the cabinet and put the bowl inside",
    "turn on the stove and put the moka pot on it",
    "push the plate to the front of the stove",
    "What is the next action of the robot arm? Move the gripper down and close it.",
) * 20

_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP statistics, as Qwen2.5-VL's preprocessor_config.json
_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def build_tiny_tokenizer(vocab_size: int = 512) -> Qwen2TokenizerFast:
    """Byte-level BPE wired like Qwen2's tokenizer.json: 256 bytes + merges + the 22 added tokens."""
    backend = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(list(_CORPUS), trainer=trainer)
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN2_5_VL_ADDED_TOKENS])
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",  # Instruct checkpoints end a turn with <|im_end|>
        pad_token="<|endoftext|>",
        errors="replace",
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=32768,
        additional_special_tokens=[t for t, _ in QWEN2_5_VL_ADDED_TOKENS[1:14]],
    )
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer: Qwen2TokenizerFast) -> Qwen2_5_VLConfig:
    """Qwen2_5_VLConfig with hidden 64, 2 layers, vision depth 2; special ids taken from `tokenizer`."""
    hidden, heads = 64, 4
    half = hidden // heads // 2  # mrope sections (t, h, w) sum to head_dim // 2; the 7B uses [16, 24, 24]
    mrope_section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    vocab_size = -(-len(tokenizer) // 64) * 64  # round up to a multiple of 64, as real checkpoints pad
    ids = tokenizer.convert_tokens_to_ids
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling={"type": "mrope", "mrope_section": mrope_section},
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    vision_config = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
        tokens_per_second=2,
        out_hidden_size=hidden,
        hidden_act="silu",
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=True,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _write_checkpoint(folder: Path, seed: int) -> None:
    tokenizer = build_tiny_tokenizer()
    pixels = dict(min_pixels=3136, max_pixels=12845056)  # the real preprocessor_config.json values
    patches = dict(patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            **pixels, **patches, image_mean=list(_IMAGE_MEAN), image_std=list(_IMAGE_STD)
        ),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels, **patches),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state untouched
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration._from_config(tiny_config(tokenizer), dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def build_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build the tiny Qwen2.5-VL checkpoint into `out_dir` (must not exist yet) and return its path.

    Deterministic: the same seed gives bit-identical weights and the same tokenizer. Atomic: written
    into a temporary sibling folder, then renamed. If another process finished the same folder first,
    its result is kept and returned.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists():
        raise FileExistsError(f"{out} already exists; build_tiny_checkpoint writes a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        _write_checkpoint(tmp, seed)
        os.rename(tmp, out)  # atomic on one file system; fails if `out` appeared meanwhile
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (out / "config.json").is_file():  # a concurrent build won the race
            return out
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_tiny_dir() -> Path:
    """Where the `tiny` preset lives when no path is given: $R1VLA_CACHE or ~/.cache/r1vla."""
    cache = os.environ.get("R1VLA_CACHE") or Path.home() / ".cache" / "r1vla"
    return Path(cache).expanduser() / f"tiny-qwen2_5_vl-{TINY_VERSION}"


def ensure_tiny_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The tiny checkpoint folder at `path` (default: `default_tiny_dir()`), built on first use."""
    folder = Path(path).expanduser() if path is not None else default_tiny_dir()
    if (folder / "config.json").is_file():
        return folder
    return build_tiny_checkpoint(folder)
