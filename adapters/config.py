"""BackboneConfig: every choice about the vision-language backbone, validated at construction.

Kept free of transformers imports, so policy configs can hold one without loading the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.precision import DTYPES, check_dtype  # noqa: F401  (DTYPES re-exported)
from adapters.presets import get_preset
from adapters.prompts import check_prompt_style
from hints import check as _check_choice

MODES = ("frozen", "lora", "full")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


@dataclass(frozen=True)
class BackboneConfig:
    key: str = "qwen2_5_vl"  # preset: qwen2_5_vl | robot_r1 | sft | tiny (see adapters.PRESETS)
    path: str | None = None  # hub id or local folder; None = the preset's default (robot_r1/sft need one)
    mode: str = "frozen"  # frozen: no backbone grads | lora: LoRA on the LLM only | full: all trainable
    select_layer: int = -1  # -1 = all decoder layers; L > 0 = keep the first L (rest deleted), normed output
    dtype: str = "auto"  # auto: bf16 on CUDA unless mode=full (trainable weights stay fp32), else fp32
    attn_implementation: str = (
        "auto"  # auto: flash_attention_2 on CUDA when installed, else sdpa | sdpa | eager
    )
    gradient_checkpointing: bool = False  # recompute decoder activations in backward whenever grads flow
    device: str | None = None  # load the weights straight onto this device (cuda:N per rank); None = CPU
    trust_remote_code: bool = False  # run Python code shipped with the checkpoint (only when asked)
    lora_r: int = 32  # LoRA rank (OpenVLA-OFT: 32)
    lora_alpha: int = 16  # LoRA scaling numerator: scale = alpha / r (OpenVLA-OFT: min(r, 16))
    lora_dropout: float = 0.0  # dropout on the LoRA branch input
    image_size: int = 224  # each view is resized to this square; 224 -> 8x8 = 64 visual tokens per view
    min_pixels: int = 3136  # Qwen image processor bounds (the 7B's defaults); 224^2 lies between them,
    max_pixels: int = 12845056  # so the processor keeps 224x224 and does not rescale
    prompt_style: str | None = None  # plain | robot_r1; None = the preset's default (see prompt_style_name)

    def __post_init__(self) -> None:
        get_preset(self.key)  # unknown key -> ValueError with the valid keys and the closest match
        _check_choice("mode", self.mode, MODES)
        # one rule with the reasoning builds (adapters/precision.py): weights training changes stay fp32
        check_dtype(self.dtype, self.mode == "full", f"backbone mode {self.mode!r}")
        _check_choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        if self.prompt_style is not None:
            check_prompt_style(self.prompt_style)
        if self.select_layer != -1 and self.select_layer < 1:
            raise ValueError(f"select_layer must be -1 (all layers) or >= 1; got {self.select_layer}")
        if self.image_size < 28 or self.image_size % 28:
            raise ValueError(
                f"image_size must be a positive multiple of 28 (patch 14 x merge 2); got {self.image_size}"
            )
        if not self.min_pixels <= self.image_size**2 <= self.max_pixels:
            raise ValueError(
                f"image_size**2 = {self.image_size**2} must lie in [min_pixels, max_pixels] = "
                f"[{self.min_pixels}, {self.max_pixels}], or the processor would rescale every view"
            )
        if self.lora_r < 1 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(
                f"need lora_r >= 1 and 0 <= lora_dropout < 1; got {self.lora_r}, {self.lora_dropout}"
            )

    @property
    def prompt_style_name(self) -> str:
        """The prompt style to use: `prompt_style` if set, else the preset's default."""
        return self.prompt_style or get_preset(self.key).prompt_style
