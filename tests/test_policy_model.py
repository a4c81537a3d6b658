"""The `r1vla` policy in process: both heads' forward/select_action, normalisation, save/load, the backbone's
identity, batched calls."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from policies.r1vla import R1VLAPolicy, make_r1vla_pre_post_processors

sys.path.insert(0, str(Path(__file__).parent))
from r1vla_small import STATS, make_batch, make_config, one_obs


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
