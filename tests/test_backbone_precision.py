"""The precision rule every backbone trainer shares (adapters/precision.py): weights that training changes are fp32
masters, on GPUs too. The oracle is independent of the rule: a few AdamW steps at GRPO's lr 1e-6 under the set-up
resolved for CUDA, applied on this CPU (fp32 weights + bf16 autocast), change nearly every weight; bf16 masters
(the old set-up) change few."""

from __future__ import annotations

import pytest
import torch

from adapters import BackboneConfig
from adapters.precision import Precision, resolve_precision
from reasoning.recipes import TrainConfig, _common_args


def changed_fraction(prec: Precision, lr: float = 1e-6, steps: int = 5) -> float:
    """Fraction of a 256x256 N(0, 0.02) weight changed by `steps` AdamW steps under `prec`, applied on CPU."""
    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[prec.weights]
    layer = torch.nn.Linear(256, 256, bias=False).to(dtype)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.02)
    before = layer.weight.detach().clone()
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=0.0)
    x, y = torch.randn(64, 256), torch.randn(64, 256)
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec.autocast_bf16):
            loss = (layer(x.to(dtype)).float() - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float((layer.weight.detach() != before).float().mean())


@pytest.mark.parametrize("method,lora", [("grpo", False), ("sft", False), ("grpo", True), ("sft", True)])
def test_builds_resolved_for_cuda_keep_fp32_masters(method, lora, tmp_path):
    cfg = TrainConfig(method=method, lora=lora, gradient_checkpointing=False)
    args, _ = _common_args(cfg, str(tmp_path), 1, "unused", device="cuda")  # the TRL arguments a GPU run gets
    prec = Precision(weights=args["model_init_kwargs"]["dtype"], autocast_bf16=args["bf16"])
    assert prec.autocast_bf16  # bf16 speed on GPUs ...
    assert changed_fraction(prec) > 0.99  # ... and every weight moves at lr 1e-6


def test_bf16_masters_barely_move_and_are_refused():
    assert changed_fraction(Precision("bfloat16", False)) < 0.1  # the old set-up: ~2% of the weights move
    with pytest.raises(ValueError, match="stay float32 master weights"):
        TrainConfig(method="grpo", dtype="bfloat16")
    with pytest.raises(ValueError, match="stay float32 master weights"):
        BackboneConfig(key="tiny", mode="full", dtype="bfloat16")
    with pytest.raises(ValueError, match="'float16' is refused"):
        TrainConfig(method="sft", dtype="float16")


def test_vla_and_builds_share_the_rule():
    from adapters.qwen2_5_vl import resolve_dtype

    assert resolve_dtype("auto", "full", "cuda") == torch.float32  # trains its weights: fp32
    assert resolve_dtype("auto", "frozen", "cuda") == torch.bfloat16  # frozen weights may be bf16
    assert resolve_dtype("auto", "lora", "cuda") == torch.bfloat16  # PEFT adapters stay fp32, never merged
    assert resolve_precision("cuda", True) == Precision("float32", True)
    assert resolve_precision("cpu", True) == Precision("float32", False)
