"""reasoning/ training on the tiny base: SFT, GRPO, backbones loaded into the policy, the reasoning probe,
resume and the LoRA merge."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reasoning.mcqa import load_mcqa  # noqa: E402

N_SFT = 8  # training questions the SFT test memorises
SFT_STEPS, SFT_LR = 100, 5e-3  # measured: loss 6.20 -> 0.003, accuracy 0/8 -> 8/8 (60 steps: 4/8, 80: 8/8)


@pytest.fixture(scope="module")
def sft_dir(mcqa, tiny_backbone_dir, tmp_path_factory) -> Path:
    from reasoning.train import train_backbone

    out = tmp_path_factory.mktemp("sft") / "sft"
    kw = dict(lr=SFT_LR, batch=N_SFT, micro_batch=N_SFT, limit=N_SFT, save_steps=1000)
    return train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=SFT_STEPS, **kw)


def test_sft_lowers_loss_and_beats_chance(sft_dir, mcqa, tiny_backbone_dir):
    from reasoning.probe import probe

    before = probe(tiny_backbone_dir, mcqa, "train", limit=N_SFT, max_new_tokens=16)
    after = probe(sft_dir, mcqa, "train", limit=N_SFT, max_new_tokens=16)
    prov = json.loads((sft_dir / "r1vla_provenance.json").read_text())
    log = [json.loads(line) for line in (sft_dir / "r1vla_train_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in log if "loss" in h]
    assert (
        prov["method"] == "sft"
        and prov["steps"] == SFT_STEPS
        and prov["hyperparameters"]["sft_targets"] == "direct"
    )
    assert prov["mcqa_hash"] == json.loads((mcqa / "r1vla_mcqa.json").read_text())["mcqa_hash"]
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    assert before["overall"]["accuracy"] <= 0.25
    assert after["overall"]["accuracy"] >= 0.75, after["examples"]  # chance 0.25; 6/8 has p < 0.005
    # Direct SFT is asked as it was trained (answer only) and its format is scored as such
    assert after["answer_format"] == "direct" and prov["answer_format"] == "direct"
    assert after["overall"]["answered"] == 1.0 and after["overall"]["format"] == 1.0
    assert prov["drift"]["relative_weight_change"] > 0 and prov["drift"]["kl_to_base"] > 0


@pytest.fixture(scope="module")
def direct_mcqa(mcqa, tmp_path_factory) -> Path:
    """The MCQA asked in the Direct SFT format (the prompt `sft_dir` learned to answer)."""
    import shutil

    from reasoning.mcqa import META_FILE
    from reasoning.questions import with_answer_format

    dd, _ = load_mcqa(mcqa)
    out = tmp_path_factory.mktemp("direct") / "mcqa"
    dd.map(lambda r: {"prompt": with_answer_format(r["prompt"], "direct")}).save_to_disk(str(out))
    shutil.copy(mcqa / META_FILE, out / META_FILE)
    return out


def test_grpo_logs_rewards(sft_dir, direct_mcqa, tmp_path):
    """GRPO from the SFT checkpoint, on the prompts it was trained with: it answers, so the answer reward varies
    within a group. The SFT model is so sharp that at temperature 1.0 all 5 samples agree (no signal); 1.5 makes
    the groups differ (measured)."""
    from reasoning.train import train_backbone

    out = train_backbone(
        "grpo",
        str(sft_dir),
        direct_mcqa,
        tmp_path / "grpo",
        steps=2,
        batch=2,
        micro_batch=1,
        limit=N_SFT,
        max_completion_length=16,
        lr=1e-5,
        temperature=1.5,
    )
    prov = json.loads((out / "r1vla_provenance.json").read_text())
    log = [json.loads(line) for line in (out / "r1vla_train_log.jsonl").read_text().splitlines()]
    steps = [h for h in log if "reward" in h]
    assert prov["steps"] == 2 and len(steps) == 2 and len(prov["rewards_history"]) == 2
    assert prov["hyperparameters"]["num_generations"] == 5 and prov["hyperparameters"]["temperature"] == 1.5
    from reasoning.recipes import TrainConfig

    d = TrainConfig()  # the Robot-R1 / EasyR1 defaults
    assert (d.num_generations, d.temperature, d.learning_rate, d.beta, d.batch, d.epochs) == (
        5,
        1.0,
        1e-6,
        0.01,
        128,
        5.0,
    )
    assert prov["hyperparameters"]["learning_rate"] == 1e-5 and prov["hyperparameters"]["beta"] == 0.01
    assert "rewards/format_reward/mean" in steps[0] and "rewards/answer_reward/mean" in steps[0]
    assert any(h["rewards/answer_reward/mean"] > 0 for h in steps)
    assert any(h["frac_reward_zero_std"] < 1 for h in steps) and any(h["loss"] != 0 for h in steps)
    assert steps[1]["kl"] > 0  # step 1 moved the policy away from the reference model
    assert prov["final"]["reward"] == steps[-1]["reward"]


def test_grpo_without_learning_signal_warns(mcqa, tiny_backbone_dir, tmp_path, caplog):
    from reasoning.train import NO_SIGNAL, train_backbone

    with caplog.at_level(logging.WARNING, logger="reasoning.train"):
        out = train_backbone(
            "grpo",
            str(tiny_backbone_dir),
            mcqa,
            tmp_path / "g",
            steps=3,
            batch=1,
            micro_batch=1,
            limit=4,
            max_completion_length=8,
            warn_every=2,
        )
    prov = json.loads((out / "r1vla_provenance.json").read_text())
    assert [w["step"] for w in prov["warnings"]] == [1, 3]  # once per warn_every steps, not every step
    assert all(NO_SIGNAL in w["message"] for w in prov["warnings"])
    assert caplog.text.count(NO_SIGNAL) == 2


def test_backbones_load_through_adapters_and_policy(sft_dir):
    from adapters import BackboneConfig, build_backbone
    from policies.r1vla import R1VLAConfig, R1VLAPolicy

    for key in ("sft", "robot_r1"):
        bb = build_backbone(BackboneConfig(key=key, path=str(sft_dir), image_size=56))
        out = bb(torch.rand(2, 2, 3, 64, 64), ["put the bowl on the plate", "pick up the soup"])
        assert out["tokens"].shape[0] == 2 and torch.isfinite(out["tokens"]).all()
    policy = R1VLAPolicy(make_policy_config(R1VLAConfig, backbone="sft", backbone_path=str(sft_dir)))
    assert policy.model.backbone.config.path == str(sft_dir)


def make_policy_config(cls, **kw):
    from lerobot.configs.types import FeatureType, PolicyFeature

    img = PolicyFeature(FeatureType.VISUAL, (3, 64, 64))
    return cls(
        device="cpu",
        head="l1",
        image_size=56,
        head_hidden=32,
        head_layers=1,
        input_features={
            "observation.images.image": img,
            "observation.images.image2": img,
            "observation.state": PolicyFeature(FeatureType.STATE, (8,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))},
        **kw,
    )


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_probe_reads_a_policy_checkpoint(mode, sft_dir, mcqa, tmp_path):
    from policies.r1vla import R1VLAConfig, R1VLAPolicy
    from reasoning.probe import load_for_generation, probe

    cfg = make_policy_config(
        R1VLAConfig, backbone="sft", backbone_path=str(sft_dir), backbone_mode=mode, lora_r=4
    )
    policy = R1VLAPolicy(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # VLA fine-tuning moved the backbone: perturb what the checkpoint holds
        for name, p in policy.model.backbone.named_parameters():
            if p.requires_grad and ("lora_B" in name or mode == "full"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    policy.save_pretrained(tmp_path / "pretrained_model")
    model, processor, info = load_for_generation(str(tmp_path / "pretrained_model"))
    assert info["kind"] == "r1vla_policy" and info["mode"] == mode and info["tensors"] > 0
    ids = processor.tokenizer("put the bowl on the plate", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model.model(input_ids=ids).last_hidden_state
        theirs = policy.model.backbone.model(input_ids=ids).last_hidden_state
        base = load_for_generation(str(sft_dir))[0].model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours, base, atol=1e-3)  # the policy's weights were applied, not the base's
    r = probe(tmp_path / "pretrained_model", mcqa, "heldout", limit=3, max_new_tokens=12)
    assert r["overall"]["n"] == 3 and r["loaded"]["kind"] == "r1vla_policy"


def test_interrupted_training_resumes(mcqa, tiny_backbone_dir, tmp_path):
    from transformers import TrainerCallback

    from reasoning.train import train_backbone

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed at step 3")

    out = tmp_path / "bb"
    kw = dict(batch=2, micro_batch=2, limit=4, save_steps=2, lr=1e-3)
    with pytest.raises(KeyboardInterrupt):
        train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=4, callbacks=[Crash()], **kw)
    partial = tmp_path / ".bb.partial"
    assert not out.exists() and (partial / "trainer" / "checkpoint-2").is_dir()
    with pytest.raises(ValueError, match=r"different request.*config\.lr: 0\.001 -> 0\.002"):
        train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=4, **{**kw, "lr": 2e-3})
    train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=4, **kw)
    prov = json.loads((out / "r1vla_provenance.json").read_text())
    assert prov["resumed_from"] == "checkpoint-2" and prov["steps"] == 4 and not partial.exists()
    steps = [json.loads(line)["step"] for line in (out / "r1vla_train_log.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == [1, 2, 3, 4, 4]  # 1-2 before the crash, 3-4 after, the summary
    weights = sorted(p.name for p in out.iterdir() if re.match(r"model.*\.safetensors", p.name))
    assert weights == ["model.safetensors"]
    assert train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=4, **kw) == out  # complete: no-op


def test_lora_training_is_merged_on_save(mcqa, tiny_backbone_dir, tmp_path):
    from safetensors.torch import load_file

    from reasoning.train import train_backbone

    kw = dict(lora=True, lora_r=4, lora_alpha=8, batch=2, micro_batch=2, limit=4, lr=1e-2)
    out = train_backbone("sft", str(tiny_backbone_dir), mcqa, tmp_path / "lora", steps=2, **kw)
    merged, base = load_file(out / "model.safetensors"), load_file(tiny_backbone_dir / "model.safetensors")
    assert sorted(merged) == sorted(base)  # a plain Qwen2.5-VL checkpoint: no adapter tensors left
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(re.search(r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$", k) for k in changed)
    assert not any(k.startswith("visual.") for k in changed)  # LoRA on the language model only
