"""`r1vla train`, lerobot-train and lerobot-eval on the `r1vla` policy, as a user runs them."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from policies.r1vla import R1VLAPolicy

sys.path.insert(0, str(Path(__file__).parent))
from libero_like import make_libero_like_dataset  # noqa: E402
from r1vla_small import CLI_SMALL, make_batch, one_obs

REPO = Path(__file__).resolve().parents[1]


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
