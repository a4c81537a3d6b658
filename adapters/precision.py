"""One precision rule for every trainer of a backbone (the VLA's backbone modes and the reasoning builds).

Weights that training changes keep float32 master copies; bf16 speed comes from autocast (or, at scale, from a
sharded optimizer whose mixed precision keeps fp32 masters, e.g. FSDP / DeepSpeed ZeRO through accelerate). The
reason: AdamW's update at the recipes' learning rates is smaller than half a bf16 rounding step of most weights,
so bf16 masters would not move. Measured on N(0, 0.02) weights (tests/test_backbone_precision.py): 5 AdamW steps
at lr 1e-6 change about 2% of bf16 entries and every fp32 entry.

Which weights change: a `full` VLA backbone's, a reasoning build's (full, or LoRA merged into the weights on save:
a bf16 base would round the merged delta away). A `frozen` VLA backbone and a VLA `lora` backbone (PEFT keeps its
trainable adapters in fp32 and never merges them) do not, so their frozen weights may be bf16 on CUDA.
Kept free of torch imports: configs validate with it.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "float32", "bfloat16")  # float16 is refused: Qwen2.5-VL's activations overflow it
FLOAT16_REFUSED = (
    "dtype 'float16' is refused: Qwen2.5-VL's activations overflow float16; use bfloat16 "
    "(or 'auto': bf16 on CUDA, fp32 on CPU)"
)
BF16_MASTERS_REFUSED = (
    "{what} changes the backbone's weights: they stay float32 master weights (AdamW updates at lr 1e-6 are "
    "below half a bfloat16 rounding step, so bf16 weights would barely move); bf16 compute comes from "
    "autocast. Use dtype 'auto' (or 'float32')"
)


@dataclass(frozen=True)
class Precision:
    weights: str  # dtype the model is loaded in: float32 | bfloat16
    autocast_bf16: bool  # run forward/backward under bf16 autocast (Trainer's `bf16=True` with fp32 weights)

    def as_dict(self) -> dict:
        return {"weights": self.weights, "autocast_bf16": self.autocast_bf16}


def check_dtype(dtype: str, trains_weights: bool, what: str) -> None:
    """ValueError for float16, an unknown dtype, or bfloat16 weights that training would change."""
    if dtype == "float16":
        raise ValueError(f"{what}: {FLOAT16_REFUSED}")
    if dtype not in DTYPES:
        from hints import unknown

        raise unknown("dtype", dtype, DTYPES)
    if trains_weights and dtype == "bfloat16":
        raise ValueError(BF16_MASTERS_REFUSED.format(what=what))


def resolve_precision(
    device: str, trains_weights: bool, dtype: str = "auto", what: str = "training"
) -> Precision:
    """The weights' dtype and autocast on `device` ("cuda", "cuda:N", "cpu"): fp32 weights whenever training
    changes them; bf16 frozen weights on CUDA under `auto`; bf16 autocast on CUDA."""
    check_dtype(dtype, trains_weights, what)
    cuda = str(device).startswith("cuda")
    if dtype == "auto":
        dtype = "bfloat16" if cuda and not trains_weights else "float32"
    return Precision(weights=dtype, autocast_bf16=cuda)
