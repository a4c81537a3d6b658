"""`r1vla probe`: does a backbone still answer the embodied-reasoning questions? (Does VLA fine-tuning erase
what GRPO taught?)

    r1vla probe --backbone PATH --mcqa MCQA [--split heldout] [--limit N] [--json OUT]

PATH is a Qwen2.5-VL checkpoint folder / hub id / backbone key, or the `pretrained_model` folder of a trained
r1vla VLA policy (config.json with "type": "r1vla"). For a policy, the base is loaded from its `backbone_path`
and the policy's backbone weights are applied: `full` mode copies `model.backbone.model.<key>` into the
Qwen2_5_VLModel; `lora` mode merges every adapter pair into its weight, W += (lora_alpha / lora_r) B A
(adapters' LoRA: plain PEFT LoRA on LORA_TARGET_REGEX); `frozen` mode changes nothing. Generation uses the
base's lm_head (tied to the embeddings when the base ties them). Greedy decoding; accuracy, format rate and
answered rate per kind and overall with Wilson 95% CIs (reasoning/rewards.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from reasoning.base import check_qwen2_5_vl, resolve_base, write_json_atomic
from reasoning.rewards import score

log = logging.getLogger("reasoning.probe")
POLICY_PREFIX = "model.backbone.model."


def _policy_config(path: Path) -> dict | None:
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    data = json.loads(cfg.read_text())
    return data if data.get("type") == "r1vla" else None


def _policy_base(pcfg: dict, base_path: str | None) -> str:
    import adapters

    if base_path:
        return resolve_base(base_path)
    preset = adapters.get_preset(pcfg.get("backbone", "tiny"))
    path = adapters.resolve_path(preset, pcfg.get("backbone_path"))
    if preset.key == "tiny":
        return str(adapters.ensure_tiny_checkpoint(path))
    return resolve_base(path)


def apply_policy_weights(model: Any, pcfg: dict, weights: dict) -> dict:
    """Put a policy checkpoint's backbone weights (`weights`: its state dict) into `model`
    (Qwen2_5_VLForConditionalGeneration). Returns {"mode", "tensors", "layers_from_base"}."""
    import torch

    mode = pcfg.get("backbone_mode", "frozen")
    inner = model.model  # Qwen2_5_VLModel
    params = dict(inner.named_parameters())
    bb = {k[len(POLICY_PREFIX) :]: v for k, v in weights.items() if k.startswith(POLICY_PREFIX)}
    layers = pcfg.get("backbone_layer", -1)
    n_layers = len(inner.language_model.layers)
    info = {"mode": mode, "tensors": 0, "layers_from_base": 0 if layers in (-1, None) else n_layers - layers}
    if info["layers_from_base"]:
        log.warning(
            "policy kept only its first %d of %d decoder layers (backbone_layer); layers %d.. come from the base",
            layers,
            n_layers,
            layers,
        )
    with torch.no_grad():
        if mode == "full":
            unknown_keys = sorted(set(bb) - set(params))
            if unknown_keys:
                raise ValueError(
                    f"{len(unknown_keys)} policy backbone tensors unknown to the base, e.g. {unknown_keys[:3]}"
                )
            for k, v in bb.items():
                params[k].copy_(v.to(params[k].dtype))
            info["tensors"] = len(bb)
        elif mode == "lora":
            scale = float(pcfg.get("lora_alpha", 16)) / float(pcfg.get("lora_r", 32))
            pairs = [k for k in bb if k.endswith(".lora_A.default.weight")]
            if not pairs:
                raise ValueError(
                    "backbone_mode is 'lora' but the policy checkpoint holds no '...lora_A.default.weight'"
                )
            for a_key in pairs:
                b_key = a_key.replace(".lora_A.", ".lora_B.")
                target = a_key[: -len(".lora_A.default.weight")] + ".weight"
                if b_key not in bb or target not in params:
                    raise ValueError(
                        f"LoRA pair {a_key} has no {'B' if b_key not in bb else 'base weight ' + target}"
                    )
                w = params[target]
                w.add_((bb[b_key].double() @ bb[a_key].double() * scale).to(w.dtype))
            info["tensors"] = 2 * len(pairs)
        elif mode != "frozen":
            raise ValueError(
                f"unknown backbone_mode {mode!r} in the policy config; valid: frozen, lora, full"
            )
    return info


def load_for_generation(
    path: str, base_path: str | None = None, device: str | None = None
) -> tuple[Any, Any, dict]:
    """(Qwen2_5_VLForConditionalGeneration, processor, info) for a checkpoint or an r1vla policy folder."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    folder = Path(path).expanduser()
    pcfg = _policy_config(folder) if folder.is_dir() else None
    if pcfg is None:
        model_path, info = resolve_base(path), {"kind": "backbone"}
    else:
        model_path = _policy_base(pcfg, base_path)
        info = {"kind": "r1vla_policy", "policy": str(folder.resolve()), "backbone": pcfg.get("backbone")}
    check_qwen2_5_vl(model_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype)
    if pcfg is not None:
        info.update(apply_policy_weights(model, pcfg, load_file(str(folder / "model.safetensors"))))
    info.update(base_path=model_path, tied_lm_head=bool(model.config.get_text_config().tie_word_embeddings))
    processor = AutoProcessor.from_pretrained(model_path, use_fast=True)
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model.to(device).eval(), processor, info


def generate(
    model: Any, processor: Any, rows: Any, max_new_tokens: int = 1024, batch_size: int = 8
) -> list[str]:
    """Greedy completions for MCQA rows (their prompt + image), decoded without special tokens."""
    import torch

    from reasoning.mcqa import chat_text

    texts: list[str] = []
    for i in range(0, len(rows), batch_size):
        chunk = [rows[j] for j in range(i, min(i + batch_size, len(rows)))]
        prompts = [chat_text(r, processor) for r in chunk]
        batch = processor(
            text=prompts, images=[r["image"] for r in chunk], padding=True, return_tensors="pt"
        ).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        texts += processor.batch_decode(new, skip_special_tokens=True)
    return texts


def provenance_of(path: str | None) -> dict:
    """The r1vla_provenance.json of a built backbone folder, else {}."""
    from reasoning.train import PROVENANCE

    f = Path(path) / PROVENANCE if path else None
    return json.loads(f.read_text()) if f is not None and f.is_file() else {}


def probe(
    backbone: str | os.PathLike,
    mcqa: str | os.PathLike,
    split: str = "heldout",
    limit: int | None = None,
    max_new_tokens: int = 1024,
    batch_size: int = 8,
    base_path: str | None = None,
    json_out: str | os.PathLike | None = None,
    answer_format: str | None = None,
) -> dict:
    """Accuracy / format rate per question kind and overall (Wilson 95% CIs) of `backbone` on an MCQA split."""
    from reasoning.mcqa import load_mcqa

    rows, meta = load_mcqa(mcqa, split)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if len(rows) == 0:
        raise ValueError(f"MCQA split {split!r} of {mcqa} is empty")
    model, processor, info = load_for_generation(str(backbone), base_path)
    prov = provenance_of(info.get("base_path") if info.get("kind") == "backbone" else None)
    fmt = answer_format or prov.get("answer_format") or "think"  # a build is asked as it was trained
    if fmt != "think":
        from reasoning.questions import with_answer_format

        rows = rows.map(lambda r: {"prompt": with_answer_format(r["prompt"], fmt)})
    texts = generate(model, processor, rows, max_new_tokens=max_new_tokens, batch_size=batch_size)
    options = meta.get("config", {}).get("option_rule", {}).get("options", 4)
    result = score(texts, rows["answer"], rows["kind"], options=options, answer_format=fmt)
    result.update(
        answer_format=fmt,
        drift=prov.get("drift"),
        backbone=str(backbone),
        loaded=info,
        mcqa=str(mcqa),
        mcqa_hash=meta.get("mcqa_hash"),
        split=split,
        decoding={"greedy": True, "max_new_tokens": max_new_tokens},
        examples=[{"id": r, "completion": t} for r, t in zip(rows["id"][:5], texts[:5], strict=True)],
    )
    if json_out is not None:
        write_json_atomic(Path(json_out), result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone", required=True, help="Qwen2.5-VL folder / hub id / key, or an r1vla pretrained_model"
    )
    p.add_argument("--mcqa", required=True, help="MCQA folder from `r1vla mcqa`")
    p.add_argument("--split", default="heldout", help="train | heldout")
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backbone-path", default=None, help="a policy's base when it moved (its backbone_path)")
    p.add_argument("--json", default=None, help="write the result here")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    r = probe(
        args.backbone,
        args.mcqa,
        args.split,
        args.limit,
        args.max_new_tokens,
        args.batch_size,
        args.backbone_path,
        args.json,
    )
    from reasoning.drift import drift_line

    print(f"probe of {args.backbone} on {args.split} (n={r['overall']['n']}, chance {r['chance']:.2f})")
    print(drift_line(r.get("drift")) + f"; answer format {r['answer_format']}")
    print(f"{'kind':<10}{'n':>5}  {'accuracy [95% CI]':<24}{'format [95% CI]':<24}")
    for kind, m in [*r["per_kind"].items(), ("overall", r["overall"])]:
        acc = f"{m['accuracy']:.3f} [{m['accuracy_ci95'][0]:.2f}, {m['accuracy_ci95'][1]:.2f}]"
        fmt = f"{m['format']:.3f} [{m['format_ci95'][0]:.2f}, {m['format_ci95'][1]:.2f}]"
        print(f"{kind:<10}{m['n']:>5}  {acc:<24}{fmt:<24}")
    return 0
