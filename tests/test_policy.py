"""The `r1vla` LeRobot policy: both heads, save/load, processors, lerobot-train / lerobot-eval integration."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from safetensors.torch import load_file

from policies.r1vla import R1VLAConfig, R1VLAPolicy, make_r1vla_pre_post_processors

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from libero_like import make_libero_like_dataset  # noqa: E402

IMG = PolicyFeature(FeatureType.VISUAL, (3, 64, 64))
FEATURES_IN = {
    "observation.images.image": IMG,
    "observation.images.image2": IMG,
    "observation.state": PolicyFeature(FeatureType.STATE, (8,)),
}
FEATURES_OUT = {"action": PolicyFeature(FeatureType.ACTION, (7,))}
STATS = {  # non-identity min-max stats: a normalised value never equals its raw value by accident
    "observation.state": {"min": torch.zeros(8), "max": torch.full((8,), 10.0)},
    "action": {"min": torch.zeros(7), "max": torch.full((7,), 10.0)},
}
SMALL = {  # CPU-sized heads; the tiny backbone comes from the adapters' offline checkpoint
    "flow": dict(head_hidden=32, head_layers=2, head_heads=2, vl_self_attn_layers=1, num_future_tokens=4),
    "l1": dict(head_hidden=32, head_layers=1),
}
CLI_SMALL = {h: [f"--policy.{k}={v}" for k, v in kw.items()] for h, kw in SMALL.items()}


def make_config(head: str = "flow", **kw) -> R1VLAConfig:
    return R1VLAConfig(
        device="cpu",
        head=head,
        image_size=56,
        input_features=dict(FEATURES_IN),
        output_features=dict(FEATURES_OUT),
        **{**SMALL[head], **kw},
    )


def make_batch(cfg: R1VLAConfig, b: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h = cfg.chunk_size
    return {
        "observation.images.image": torch.rand(b, 3, 64, 64, generator=g),
        "observation.images.image2": torch.rand(b, 3, 64, 64, generator=g),
        "observation.state": torch.rand(b, 8, generator=g) * 10,  # dataset units, inside [min, max]
        "action": torch.rand(b, h, 7, generator=g) * 10,
        "action_is_pad": torch.zeros(b, h, dtype=torch.bool),
        "task": [f"put object {i} in the basket" for i in range(b)],
    }


def one_obs(batch: dict, i: int = 0) -> dict:
    obs = {k: v[i] for k, v in batch.items() if k.startswith("observation.")}
    obs["task"] = batch["task"][i]
    return obs


@pytest.mark.parametrize("head", ["flow", "l1"])
def test_forward_select_action_and_queue(head):
    cfg = make_config(head, n_action_steps=4)
    policy = R1VLAPolicy(cfg)
    pre, post = make_r1vla_pre_post_processors(cfg, STATS)
    batch = pre(make_batch(cfg))
    loss, info = policy.forward(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and "loss" in info
    loss.backward()
    chunk = policy.predict_action_chunk(batch)
    assert chunk.shape == (3, cfg.chunk_size, 7)

    calls = []
    policy.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    policy.reset()
    obs = pre(one_obs(make_batch(cfg)))
    actions = [post(policy.select_action(obs)) for _ in range(8)]
    assert all(a.shape == (1, 7) for a in actions)
    assert len(calls) == 8 // cfg.n_action_steps  # the backbone runs once per n_action_steps env steps


def test_normalisation_round_trip_and_prompt_sees_each_samples_raw_state():
    """min 0 / max 10 stats, a batch of 2 with different states: each prompt shows its own raw eef position, the
    model receives min-max normalised state, and the postprocessor returns actions in dataset units."""
    cfg = make_config(prompt_style="robot_r1")
    pre, post = make_r1vla_pre_post_processors(cfg, STATS)
    batch = make_batch(cfg, b=2)
    batch["observation.state"][0, :3] = torch.tensor([2.5, 5.0, 7.5])
    batch["observation.state"][1, :3] = torch.tensor([1.25, 8.0, 0.5])
    raw_state = batch["observation.state"].clone()
    out = pre(batch)
    assert "[2.500, 5.000, 7.500]" in out["prompt"][0] and "put object 0 in the basket" in out["prompt"][0]
    assert "[1.250, 8.000, 0.500]" in out["prompt"][1] and "put object 1 in the basket" in out["prompt"][1]
    torch.testing.assert_close(out["observation.state"], raw_state / 10 * 2 - 1)  # what the model receives
    torch.testing.assert_close(out["action"], batch["action"] / 10 * 2 - 1)
    normalised = torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0, 0.2, -0.2]] * 2)
    torch.testing.assert_close(post(normalised), (normalised + 1) / 2 * 10)  # dataset units again
    policy = R1VLAPolicy(cfg).eval()
    chunk = policy.predict_action_chunk(out)  # (2, H, 7) normalised
    torch.testing.assert_close(post(chunk[:, 0]), (chunk[:, 0] + 1) / 2 * 10)


@pytest.mark.parametrize("head,mode", [("flow", "frozen"), ("l1", "lora"), ("flow", "full")])
def test_save_load_identical_actions_and_no_frozen_weights(tmp_path, head, mode):
    cfg = make_config(head, backbone_mode=mode, lora_r=4)
    policy = R1VLAPolicy(cfg)
    with torch.no_grad():  # make trained weights differ from a fresh init, backbone LoRA included
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    pre, _ = make_r1vla_pre_post_processors(cfg, STATS)
    batch = pre(make_batch(cfg))
    policy.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    backbone_saved = [k for k in saved if k.startswith("model.backbone.")]
    if mode == "frozen":
        assert backbone_saved == []
    else:
        assert backbone_saved and set(backbone_saved) <= trainable | {
            k for k in policy.state_dict() if "lora" in k
        }
    reloaded = R1VLAPolicy.from_pretrained(tmp_path)
    policy.eval()
    torch.manual_seed(7)
    a = policy.predict_action_chunk(batch)
    torch.manual_seed(7)
    b = reloaded.predict_action_chunk(batch)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_reload_needs_the_backbone_folder(tmp_path, tiny_backbone_dir):
    folder = tmp_path / "my_backbone"
    shutil.copytree(tiny_backbone_dir, folder)
    cfg = make_config(backbone="sft", backbone_path=str(folder))
    original = R1VLAPolicy(cfg).eval()
    original.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(folder)
    with pytest.raises(Exception, match="my_backbone"):
        R1VLAPolicy.from_pretrained(tmp_path / "ckpt")
    shutil.copytree(tiny_backbone_dir, tmp_path / "moved")
    from lerobot.configs.policies import PreTrainedConfig

    loaded_cfg = PreTrainedConfig.from_pretrained(tmp_path / "ckpt")
    loaded_cfg.backbone_path = str(tmp_path / "moved")  # the user says where it is now
    reloaded = R1VLAPolicy.from_pretrained(tmp_path / "ckpt", config=loaded_cfg).eval()
    batch = make_r1vla_pre_post_processors(cfg, STATS)[0](make_batch(cfg))
    torch.manual_seed(3)
    want = original.predict_action_chunk(batch)
    torch.manual_seed(3)
    torch.testing.assert_close(reloaded.predict_action_chunk(batch), want, rtol=0, atol=1e-6)


def test_backbone_fingerprint_refuses_another_backbone(tmp_path, tiny_backbone_dir, caplog):
    """The study's only variable is the backbone folder: a checkpoint pointed at another one is refused, naming
    both; --allow-backbone-mismatch loads it with a warning; a checkpoint made before fingerprints warns."""
    from lerobot.configs.policies import PreTrainedConfig

    from adapters import build_tiny_checkpoint

    other = build_tiny_checkpoint(
        tmp_path / "tiny-seed1", seed=1
    )  # same architecture and config, other weights
    cfg = make_config(backbone="robot_r1", backbone_path=str(tiny_backbone_dir))
    R1VLAPolicy(cfg).save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "backbone_fingerprint.json").read_text())
    assert saved["config_sha256"] and saved["weights"] == {
        "model.safetensors": (tiny_backbone_dir / "model.safetensors").stat().st_size
    }
    wrong = PreTrainedConfig.from_pretrained(tmp_path / "ckpt")
    wrong.backbone_path = str(other)
    with pytest.raises(
        ValueError, match=r"(?s)trained on another backbone than .*tiny-seed1.*tensors: trained on"
    ):
        R1VLAPolicy.from_pretrained(tmp_path / "ckpt", config=wrong)
    wrong.allow_backbone_mismatch = True
    with caplog.at_level("WARNING"):
        R1VLAPolicy.from_pretrained(tmp_path / "ckpt", config=wrong)
    assert "(allowed)" in caplog.text
    (tmp_path / "ckpt" / "backbone_fingerprint.json").unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        R1VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert "made before backbone fingerprints" in caplog.text


def test_head_init_and_data_order_do_not_depend_on_the_backbone(tiny_backbone_dir, tmp_path):
    """Under one seed, two backbones (one of them LoRA-injected: its init draws from the RNG) give the same head
    init and leave the global RNG (lerobot-train's sampler) where they found it."""
    from adapters import build_tiny_checkpoint

    other = build_tiny_checkpoint(tmp_path / "tiny-seed1", seed=1)
    hashes, after = [], []
    for path, mode in ((tiny_backbone_dir, "frozen"), (other, "lora")):
        torch.manual_seed(42)
        policy = R1VLAPolicy(
            make_config("l1", backbone="sft", backbone_path=str(path), backbone_mode=mode, lora_r=4)
        )
        hashes.append(policy.run_identity()["head_init_sha256"])
        after.append(torch.rand(3))
    assert hashes[0] == hashes[1] and torch.equal(after[0], after[1])
    torch.manual_seed(43)
    assert R1VLAPolicy(make_config("l1")).run_identity()["head_init_sha256"] != hashes[0]


def test_batched_flow_calls_with_per_episode_generators_equal_per_episode_calls():
    """The evaluation batches stochastic episodes: row b's noise comes from episode b's generator alone, so one
    batched call gives what one call per episode gives (up to float reduction order in the batched backbone)."""
    cfg = make_config("flow")
    policy = R1VLAPolicy(cfg).eval()
    pre, _ = make_r1vla_pre_post_processors(cfg, STATS)
    batch = make_batch(cfg, b=3)
    batch["task"] = ["put the object in the basket"] * 3  # one prompt length: no padding differences
    inputs = pre(batch)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    together = [policy.predict_action_chunk(inputs, generators=gens) for _ in range(2)]  # two chunks in a row
    for i in range(3):
        one = {k: v[i : i + 1] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in inputs.items()}
        g = torch.Generator().manual_seed(100 + i)
        for t in range(2):
            torch.testing.assert_close(
                policy.predict_action_chunk(one, generators=[g])[0], together[t][i], atol=1e-5, rtol=0
            )
    assert not torch.allclose(together[0][0], together[0][1])  # other episodes, other noise
    torch.manual_seed(0)
    assert not torch.allclose(together[0], together[1])  # the generators advance between calls


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


# --- lerobot-train / lerobot-eval, as a user runs them -------------------------------------------------------
@pytest.fixture(scope="module")
def libero_like(tmp_path_factory) -> Path:
    return make_libero_like_dataset(tmp_path_factory.mktemp("data") / "libero_like", episodes=2, frames=16)


def _train(
    out: Path, dataset: Path, *args: str, entry: str = "r1vla", steps: int = 2
) -> subprocess.CompletedProcess:
    cmd = (
        [str(REPO / ".venv/bin/r1vla"), "train"]
        if entry == "r1vla"
        else [str(REPO / ".venv/bin/lerobot-train")]
    )
    cmd += [
        "--policy.type=r1vla",
        "--policy.backbone=tiny",
        "--policy.device=cpu",
        "--policy.image_size=56",
        "--dataset.repo_id=local/libero_like",
        f"--dataset.root={dataset}",
        f"--output_dir={out}",
        f"--steps={steps}",
        "--batch_size=2",
        f"--save_freq={steps}",
        "--log_freq=1",
        "--num_workers=0",
        *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_MODE": "disabled"}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


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


@pytest.fixture(scope="module")
def trained_l1(tmp_path_factory, libero_like) -> Path:
    """`r1vla train` (frozen tiny backbone, l1 head, 2 steps): the checkpoint the LeRobot-tool tests load."""
    out = tmp_path_factory.mktemp("train") / "run"
    _train(out, libero_like, "--policy.head=l1", *CLI_SMALL["l1"])
    return out


def _scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"} <= set(acc.Tags()["scalars"])
    return [e.value for e in acc.Scalars(tag)]


@pytest.mark.parametrize("head,mode", [("flow", "frozen"), ("l1", "lora"), ("flow", "full")])
def test_r1vla_train_each_head_and_mode(tmp_path, libero_like, head, mode):
    """Through lerobot-train: finite logged losses; the checkpoint holds exactly the trained backbone weights,
    changed from the backbone they started from."""
    out = tmp_path / "run"
    _train(
        out,
        libero_like,
        f"--policy.head={head}",
        f"--policy.backbone_mode={mode}",
        "--policy.lora_r=4",
        *CLI_SMALL[head],
    )
    losses = _scalars(out, "train/loss")
    assert len(losses) == 2 and all(map(math.isfinite, losses))
    saved = load_file(out / "checkpoints/last/pretrained_model/model.safetensors")
    backbone = {
        k.removeprefix("model.backbone.model."): v
        for k, v in saved.items()
        if k.startswith("model.backbone.")
    }
    if mode == "frozen":
        assert backbone == {}
    elif mode == "lora":
        assert backbone and all(".lora_" in k for k in backbone)
        assert any(v.abs().sum() > 0 for k, v in backbone.items() if "lora_B" in k)  # B starts at zero
    else:
        from adapters import ensure_tiny_checkpoint
        from adapters.qwen2_5_vl import CHECKPOINT_KEY_MAPPING

        start = load_file(ensure_tiny_checkpoint() / "model.safetensors")
        for pattern, repl in CHECKPOINT_KEY_MAPPING.items():
            start = {re.sub(pattern, repl, k): v for k, v in start.items()}
        assert set(backbone) <= set(start) and len(backbone) > 50
        changed = [k for k, v in backbone.items() if not torch.equal(v, start[k])]
        assert len(changed) == len(backbone), sorted(set(backbone) - set(changed))[:5]


def test_bare_lerobot_train_finds_plugin_and_maps_cameras(tmp_path):
    # LeRobot 0.6 refuses --rename_map on a fresh policy: the r1vla preprocessor maps the dataset's other camera
    # names onto its image keys itself (processor_r1vla.camera_rename_map), saved with the processor
    data = make_libero_like_dataset(tmp_path / "wrist_data", episodes=1, frames=12, wrist_key="wrist_image")
    _train(tmp_path / "run", data, "--policy.head=l1", *CLI_SMALL["l1"], entry="lerobot-train")
    ckpt = tmp_path / "run/checkpoints/last/pretrained_model"
    assert (ckpt / "model.safetensors").exists()
    saved = json.loads((ckpt / "policy_preprocessor.json").read_text())
    rename = next(s for s in saved["steps"] if s["registry_name"] == "rename_observations_processor")
    assert rename["config"]["rename_map"] == {"observation.images.wrist_image": "observation.images.image2"}


def test_lerobot_eval_processor_overrides_accepted(trained_l1):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    ckpt = trained_l1 / "checkpoints/last/pretrained_model"
    cfg = PreTrainedConfig.from_pretrained(ckpt)
    pre, post = make_pre_post_processors(  # exactly what lerobot-eval 0.4.4 passes
        policy_cfg=cfg,
        pretrained_path=str(ckpt),
        preprocessor_overrides={
            "device_processor": {"device": "cpu"},
            "rename_observations_processor": {"rename_map": {}},
        },
    )
    policy = R1VLAPolicy.from_pretrained(ckpt)
    batch = make_batch(cfg, b=1)
    action = post(policy.select_action(pre(one_obs(batch))))
    assert action.shape == (1, 7) and torch.isfinite(action).all()
    assert [s.__class__.__name__ for s in pre.steps][:3] == [
        "RenameObservationsProcessorStep",
        "AddBatchDimensionProcessorStep",
        "R1VLAPromptProcessorStep",
    ]


def test_two_cpu_ranks_train(tmp_path, libero_like):
    """Multi-process training as on GPUs: torchrun, 2 CPU ranks (gloo), lerobot-train's accelerate inside."""
    out = tmp_path / "run"
    cmd = [
        str(REPO / ".venv/bin/torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "r1vla.train",
        "--policy.type=r1vla",
        "--policy.backbone=tiny",
        "--policy.device=cpu",
        "--policy.image_size=56",
        "--policy.head=l1",
        *CLI_SMALL["l1"],
        "--dataset.repo_id=local/libero_like",
        f"--dataset.root={libero_like}",
        f"--output_dir={out}",
        "--steps=2",
        "--batch_size=2",
        "--save_freq=2",
        "--log_freq=1",
        "--num_workers=0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 x 2 = 4" in proc.stdout + proc.stderr  # lerobot-train's effective batch across the two ranks
    assert (out / "checkpoints/last/pretrained_model/model.safetensors").exists()


@pytest.mark.libero
def test_bare_lerobot_eval_runs_an_r1vla_checkpoint(tmp_path, trained_l1):
    """A user's first command: bare `lerobot-eval --env.type=libero` on an r1vla checkpoint (CI-sized episodes).
    `--eval.batch_size=2` runs LeRobot 0.6's async vector env: its envs are built in forkserver workers, which must
    see the plugin's LIBERO init-states patch too (eval_libero/lerobot_compat.py)."""
    ckpt = trained_l1 / "checkpoints/last/pretrained_model"
    flags = "--env.type=libero --env.task=libero_object --env.task_ids=[0] --env.episode_length=4 "
    flags += f"--eval.n_episodes=2 --eval.batch_size=2 --policy.path={ckpt} --output_dir={tmp_path / 'le'}"
    res = subprocess.run(
        [str(REPO / ".venv/bin/lerobot-eval"), *flags.split()], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    info = json.loads((tmp_path / "le" / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 2 and info["overall"]["pc_success"] == 0.0
