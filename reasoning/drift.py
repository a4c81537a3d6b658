"""How far a built backbone moved from its base: the figure that tells "RL vs SFT" from "small vs large drift".

- relative weight change ||θ − θ0|| / ||θ0|| over every parameter the two checkpoints share (float64 sums of
  the float32 weights; the built checkpoint's weights are fp32 masters, adapters/precision.py);
- mean per-token KL(built || base) of the next-token distributions at every prompt token of `n` held-out MCQA
  questions (their prompt as the built backbone is asked it, image included), in nats per token.

Both models are loaded in float32 (a bf16 copy would round small moves away) on CUDA when available.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger("reasoning.drift")


def relative_weight_change(model: Any, base: Any) -> dict:
    """{"relative_weight_change", "tensors", "parameters"} over the parameters named alike in both models."""
    import torch

    ref = dict(base.named_parameters())
    num = den = 0.0
    tensors = params = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            q = ref.get(name)
            if q is None or q.shape != p.shape:
                continue
            num += float((p.double() - q.double().to(p.device)).pow(2).sum())
            den += float(q.double().pow(2).sum())
            tensors, params = tensors + 1, params + p.numel()
    if not tensors or den == 0.0:
        raise ValueError("the built and the base model share no (non-zero) parameters to compare")
    return {"relative_weight_change": math.sqrt(num / den), "tensors": tensors, "parameters": params}


def token_kl(logits_p: Any, logits_q: Any) -> Any:
    """(B, L, V) logits of two models -> (B, L) KL(p || q) per token, in float64, one row at a time (a (L, V)
    float64 pair at 7B's vocabulary is ~0.5 GB a tensor). A built backbone may move its next-token distributions by
    ~1e-10 nats (GRPO at a small lr), far below a float32 log-softmax's rounding (~1e-7): there the sum came out
    negative. KL >= 0, so what rounding leaves below 0 is clamped."""
    import torch

    rows = []
    for p, q in zip(logits_p, logits_q.to(logits_p.device), strict=True):  # (L, V) each
        lp = torch.log_softmax(p.double(), dim=-1)
        lq = torch.log_softmax(q.double(), dim=-1)
        rows.append((lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0))
    return torch.stack(rows)


def kl_to_base(model: Any, base: Any, processor: Any, rows: Any, batch_size: int = 4) -> dict:
    """{"kl_to_base", "tokens", "questions"}: mean over prompt tokens of KL(p_model || p_base), nats/token."""
    import torch

    from reasoning.mcqa import chat_text

    total, tokens = 0.0, 0
    processor.tokenizer.padding_side = "left"
    for i in range(0, len(rows), batch_size):
        chunk = [rows[j] for j in range(i, min(i + batch_size, len(rows)))]
        batch = processor(
            text=[chat_text(r, processor) for r in chunk],
            images=[r["image"] for r in chunk],
            padding=True,
            return_tensors="pt",
        ).to(model.device)
        with torch.no_grad():
            kl = token_kl(model(**batch).logits, base(**batch.to(base.device)).logits)  # (B, L)
        mask = batch["attention_mask"].to(kl.device).bool()
        total += float(kl[mask].sum())  # float64 already
        tokens += int(mask.sum())
    return {"kl_to_base": total / max(tokens, 1), "tokens": tokens, "questions": len(rows)}


def measure_drift(
    built: str,
    base: str,
    mcqa: str,
    questions: int = 16,
    answer_format: str = "think",
    device: str | None = None,
) -> dict:
    """The `drift` record of r1vla_provenance.json for checkpoint folder `built` against `base` (folder / hub id),
    KL on the first `questions` held-out questions of `mcqa` (asked in `answer_format`)."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from reasoning.mcqa import load_mcqa
    from reasoning.questions import with_answer_format

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    load = dict(dtype=torch.float32)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(built, **load).to(device).eval()
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, **load).to(device).eval()
    out = {"base": base, "dtype": "float32", **relative_weight_change(model, ref)}
    rows, _ = load_mcqa(mcqa, "heldout")
    rows = rows.select(range(min(questions, len(rows))))
    if len(rows) == 0:
        out.update(kl_to_base=None, kl_note="the MCQA's held-out split is empty: no KL measured")
    else:
        rows = rows.map(lambda r: {"prompt": with_answer_format(r["prompt"], answer_format)})
        processor = AutoProcessor.from_pretrained(built, use_fast=True)
        if processor.tokenizer.pad_token is None:
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
        out.update(kl_to_base(model, ref, processor, rows), kl_split="heldout", answer_format=answer_format)
    log.info(
        "moved from base: relative weight change %.3g, KL(built || base) %s nats/token",
        out["relative_weight_change"],
        out["kl_to_base"],
    )
    del model, ref
    return out


def drift_line(drift: dict | None) -> str:
    """One printable line of a provenance `drift` record."""
    if not drift:
        return "moved from base: not measured (no drift record in r1vla_provenance.json)"
    kl = drift.get("kl_to_base")
    kl_s = "not measured" if kl is None else f"{kl:.4g} nats/token over {drift.get('tokens')} prompt tokens"
    return (
        f"moved from base ({drift.get('base')}): relative weight change ‖θ−θ0‖/‖θ0‖ = "
        f"{drift['relative_weight_change']:.4g}; mean per-token KL(built ‖ base) = {kl_s}"
    )
