"""The `r1vla` LeRobot policy: both heads, save/load, processors, lerobot-train / lerobot-eval integration."""

from __future__ import annotations

import json
import os
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
STATS = {
    "observation.state": {"min": torch.full((8,), -1.0), "max": torch.ones(8)},
    "action": {"min": -torch.ones(7), "max": torch.ones(7)},
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
        "observation.state": torch.rand(b, 8, generator=g) * 2 - 1,
        "action": torch.rand(b, h, 7, generator=g) * 2 - 1,
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


def test_prompt_style_robot_r1_sees_raw_state():
    cfg = make_config(prompt_style="robot_r1")
    pre, _ = make_r1vla_pre_post_processors(cfg, STATS)
    batch = make_batch(cfg, b=1)
    batch["observation.state"][0, :3] = torch.tensor([0.25, -0.5, 0.75])
    prompt = pre(batch)["prompt"][0]
    assert "Franka Robot Assistant" in prompt and "put object 0 in the basket" in prompt
    assert "0.25" in prompt and "-0.5" in prompt and "0.75" in prompt  # metres, before normalisation


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
    R1VLAPolicy(cfg).save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(folder)
    with pytest.raises(Exception, match="my_backbone"):
        R1VLAPolicy.from_pretrained(tmp_path / "ckpt")
    shutil.copytree(tiny_backbone_dir, tmp_path / "moved")
    from lerobot.configs.policies import PreTrainedConfig

    loaded_cfg = PreTrainedConfig.from_pretrained(tmp_path / "ckpt")
    loaded_cfg.backbone_path = str(tmp_path / "moved")  # the user says where it is now
    assert R1VLAPolicy.from_pretrained(tmp_path / "ckpt", config=loaded_cfg).config.backbone == "sft"


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


@pytest.mark.parametrize("head,mode", [(h, m) for h in ("flow", "l1") for m in ("frozen", "lora", "full")])
def test_r1vla_train_each_head_and_mode(tmp_path, libero_like, head, mode):
    out = tmp_path / "run"
    _train(
        out,
        libero_like,
        f"--policy.head={head}",
        f"--policy.backbone_mode={mode}",
        "--policy.lora_r=4",
        *CLI_SMALL[head],
    )
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    assert json.loads((ckpt / "config.json").read_text())["backbone_mode"] == mode
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"} <= tags
    assert len(acc.Scalars("train/loss")) == 2


def test_bare_lerobot_train_finds_plugin_and_rename_map(tmp_path):
    data = make_libero_like_dataset(tmp_path / "wrist_data", episodes=1, frames=12, wrist_key="wrist_image")
    rename = '--rename_map={"observation.images.wrist_image": "observation.images.image2"}'
    _train(tmp_path / "run", data, rename, "--policy.head=l1", *CLI_SMALL["l1"], entry="lerobot-train")
    assert (tmp_path / "run/checkpoints/last/pretrained_model/model.safetensors").exists()


def test_lerobot_eval_processor_overrides_accepted(tmp_path, libero_like):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    _train(tmp_path / "run", libero_like, "--policy.head=l1", *CLI_SMALL["l1"])
    ckpt = tmp_path / "run/checkpoints/last/pretrained_model"
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
