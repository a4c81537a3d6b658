"""Training the `r1vla` policy in process: bf16 autocast, optimiser groups, gradient checkpointing,
augmentation, each backbone mode's trainable weights, refusals of bad actions and configs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from policies.r1vla import R1VLAConfig, R1VLAPolicy, make_r1vla_pre_post_processors

sys.path.insert(0, str(Path(__file__).parent))
from r1vla_small import FEATURES_IN, FEATURES_OUT, STATS, make_batch, make_config, one_obs


def test_amp_bf16_autocasts_backbone_and_head_while_trainable_weights_stay_fp32():
    """amp=bf16 (CPU bf16 autocast here, for the plumbing): backbone and head compute in bf16, the loss is fp32,
    every trainable weight (head, full backbone) stays fp32 and moves at the default learning rates."""
    outs = {}
    for amp in ("bf16", "none"):
        cfg = make_config("l1", backbone_mode="full", amp=amp)
        policy = R1VLAPolicy(cfg).train()
        assert policy.amp == amp
        seen = []
        policy.model.head.mlp.out[1].register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        policy.model.backbone.model.language_model.layers[0].mlp.down_proj.register_forward_hook(
            lambda m, i, o, seen=seen: seen.append(o.dtype)
        )
        pre, _ = make_r1vla_pre_post_processors(cfg, STATS)
        opt = cfg.get_optimizer_preset().build(policy.get_optim_params())
        before = {n: p.detach().clone() for n, p in policy.named_parameters()}
        for step in range(2):
            loss, _ = policy.forward(pre(make_batch(cfg, seed=step)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        outs[amp] = set(seen)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert {p.dtype for p in policy.parameters() if p.requires_grad} == {torch.float32}
        moved = [
            n
            for n, p in policy.named_parameters()
            if n.startswith("model.backbone.") and not torch.equal(p, before[n])
        ]
        assert len(moved) == len([n for n in before if n.startswith("model.backbone.")])
    assert outs == {"bf16": {torch.bfloat16}, "none": {torch.float32}}
    with pytest.raises(ValueError, match="unknown amp 'fp16'"):
        make_config(amp="fp16")
    with pytest.raises(ValueError, match="'float16' is refused: Qwen2.5-VL's activations overflow"):
        make_config(backbone_dtype="float16")
    with pytest.raises(ValueError, match="full' changes the backbone's weights: they stay float32"):
        make_config(backbone_mode="full", backbone_dtype="bfloat16")


def test_optimizer_groups_learning_rates_and_weight_decay():
    groups = {
        g["name"]: g
        for g in R1VLAPolicy(make_config("l1", backbone_mode="lora", lora_r=4)).get_optim_params()
    }
    assert list(groups) == ["head", "head_no_decay", "backbone", "backbone_no_decay"][: len(groups)]
    assert "lr" not in groups["head"] and groups["backbone"]["lr"] == 1e-4  # lora_lr, not 0.1 x 1e-4
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and "weight_decay" not in groups["head"]
    policy = R1VLAPolicy(make_config("l1"))
    names = {id(p): n for n, p in policy.named_parameters()}
    no_decay = {
        names[id(p)] for g in policy.get_optim_params() if g.get("weight_decay") == 0.0 for p in g["params"]
    }
    assert "model.head.query_embeds" in no_decay and all(
        n.endswith(("bias", "weight", "query_embeds")) for n in no_decay
    )
    assert not any(
        names[id(p)] in no_decay and p.ndim >= 2 and not names[id(p)].endswith("query_embeds")
        for p in policy.parameters()
    )
    full = {g["name"]: g for g in R1VLAPolicy(make_config("l1", backbone_mode="full")).get_optim_params()}
    assert full["backbone"]["lr"] == pytest.approx(1e-5)  # full mode keeps 0.1 x optimizer_lr


def test_gradient_checkpointing_takes_effect_in_frozen_mode_with_l1_queries():
    """A frozen backbone runs in eval mode, but the L1 head's queries back-propagate through it: with
    gradient_checkpointing its decoder layers are recomputed in backward (two forward calls per layer)."""
    calls = {}
    for ckpt in (False, True):
        cfg = make_config("l1", gradient_checkpointing=ckpt)
        policy = R1VLAPolicy(cfg).train()
        n = []
        layer = policy.model.backbone.model.language_model.layers[0]  # a pre-hook: recompute may stop early
        layer.register_forward_pre_hook(lambda *a, n=n: n.append(1))
        loss, _ = policy.forward(make_r1vla_pre_post_processors(cfg, STATS)[0](make_batch(cfg)))
        loss.backward()
        calls[ckpt] = len(n)
        assert not policy.model.backbone.model.training  # still frozen, in eval mode outside the call
        assert policy.model.head.query_embeds.grad is not None
    assert calls == {False: 1, True: 2}


def test_augmentation_in_training_only():
    """Training: random crop + colour jitter, different at every call; inference (select_action): the same crop,
    centred, no randomness."""
    cfg = make_config("l1", augment=True, n_action_steps=1)
    policy = R1VLAPolicy(cfg)
    seen = []
    policy.model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    pre, _ = make_r1vla_pre_post_processors(cfg, STATS)
    batch = pre(make_batch(cfg, b=2))
    policy.train()
    policy.forward(batch)
    policy.forward(batch)
    policy.eval()
    obs = pre(one_obs(make_batch(cfg, b=2)))
    for _ in range(2):
        policy.select_action(obs)
    train_a, train_b, eval_a, eval_b = seen
    assert not torch.equal(train_a, train_b)  # random in training
    assert torch.equal(eval_a, eval_b)  # deterministic at inference
    from policies.r1vla.augment_r1vla import center_crop

    raw = torch.stack([obs[k] for k in cfg.image_keys], dim=1)
    assert torch.equal(eval_a, center_crop(raw, cfg.augment_crop)) and not torch.equal(eval_a, raw)
    assert json.loads(json.dumps(cfg.augment)) is True  # saved in the policy config (config.json)


def test_non_finite_actions_raise():
    cfg = make_config("l1")
    policy = R1VLAPolicy(cfg)
    pre, _ = make_r1vla_pre_post_processors(cfg, STATS)
    with torch.no_grad():
        next(p for n, p in policy.named_parameters() if n.startswith("model.head.")).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        policy.predict_action_chunk(pre(make_batch(cfg)))


def test_bad_configs_name_values_and_choices():
    with pytest.raises(ValueError, match="unknown head 'flwo'.*did you mean 'flow'.*valid: flow, l1"):
        R1VLAConfig(device="cpu", head="flwo")
    with pytest.raises(ValueError, match=r"n_action_steps \(9\) must be <= chunk_size \(8\)"):
        make_config("l1", n_action_steps=9)
    with pytest.raises(ValueError, match="robot_r2"):
        make_config(backbone="robot_r2")
    no_wrist = {k: v for k, v in FEATURES_IN.items() if k != "observation.images.image2"}
    with pytest.raises(ValueError, match=r"2 cameras.*observation.images.image2.*rename_map"):
        R1VLAConfig(
            device="cpu", input_features=no_wrist, output_features=dict(FEATURES_OUT)
        ).validate_features()
    wrong_state = {**FEATURES_IN, "observation.state": PolicyFeature(FeatureType.STATE, (9,))}
    with pytest.raises(ValueError, match=r"shape \(8,\).*found \(9,\)"):
        R1VLAConfig(
            device="cpu", input_features=wrong_state, output_features=dict(FEATURES_OUT)
        ).validate_features()
    wrong_action = {"action": PolicyFeature(FeatureType.ACTION, (6,))}
    with pytest.raises(ValueError, match=r"shape \(7,\).*found \(6,\)"):
        R1VLAConfig(
            device="cpu", input_features=dict(FEATURES_IN), output_features=wrong_action
        ).validate_features()


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
def test_each_backbone_mode_trains_exactly_its_weights(mode):
    """Two optimiser steps with the policy's own optimiser preset: frozen moves none of the backbone, lora only its
    adapters (all of them), full all of it; the head moves in every mode; the loss is finite."""
    cfg = make_config("l1", backbone_mode=mode, lora_r=4)
    policy = R1VLAPolicy(cfg).train()
    pre, _ = make_r1vla_pre_post_processors(cfg, STATS)
    opt = cfg.get_optimizer_preset().build(policy.get_optim_params())
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    for step in range(2):  # two: LoRA's A only gets a gradient once B has left zero
        loss, _ = policy.forward(pre(make_batch(cfg, seed=step)))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    backbone = {n for n in before if n.startswith("model.backbone.")}
    lora = {n for n in backbone if ".lora_" in n}
    assert set(before) - backbone <= moved  # the whole head
    expected = {"frozen": set(), "lora": lora, "full": backbone}[mode]
    assert moved & backbone == expected and (mode != "lora" or len(lora) == 28)
