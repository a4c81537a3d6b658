"""Offline metric next to success: mean L1 action error on held-out demonstration episodes.

For every `stride`-th frame of the held-out episodes the policy predicts a chunk from the recorded
observation; the error is |predicted - recorded| over the first `n_action_steps` actions (the ones a robot
would execute), in the dataset's action units, padded steps excluded. It shows learning on a CPU run where
success stays near zero, and needs no simulator.
"""

from __future__ import annotations

from pathlib import Path

import torch


def heldout_episodes(repo_id: str, root: str | None, per_task: int) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices: the last `per_task` episodes of every task are held out."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata(repo_id, root=root)
    by_task: dict[str, list[int]] = {}
    for ep in range(meta.total_episodes):
        tasks = meta.episodes[ep]["tasks"]
        by_task.setdefault(str(tasks[0] if isinstance(tasks, list) else tasks), []).append(ep)
    held = sorted(e for eps in by_task.values() if len(eps) > per_task for e in eps[len(eps) - per_task :])
    train = [e for e in range(meta.total_episodes) if e not in set(held)]
    return train, held


@torch.no_grad()
def action_l1(
    predict,
    repo_id: str,
    root: str | None,
    episodes: list[int],
    chunk_size: int,
    n_action_steps: int,
    stride: int = 4,
    batch_size: int = 16,
) -> dict:
    """{'l1': mean error, 'frames': frames scored, 'per_dim': [7 floats]} of `predict(batch) -> (B, >= n, 7)`
    actions in dataset units, on every `stride`-th frame of `episodes`."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from r1vla import fastdata

    fastdata.install()
    probe = LeRobotDataset(repo_id, root=root, episodes=episodes[:1])
    fps = probe.fps
    ds = LeRobotDataset(
        repo_id,
        root=root,
        episodes=episodes,
        delta_timestamps={"action": [i / fps for i in range(chunk_size)]},
    )
    frames = list(range(0, len(ds), stride))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, frames), batch_size=batch_size, shuffle=False
    )
    total, count = torch.zeros(7, dtype=torch.float64), 0
    n = n_action_steps
    for batch in loader:
        target = batch["action"][:, :n].double()  # (B, n, 7) recorded, dataset units
        valid = ~batch["action_is_pad"][:, :n]  # (B, n)
        pred = predict(batch)[:, :n].double().cpu()  # (B, n, 7)
        total += ((pred - target).abs() * valid.unsqueeze(-1)).sum(dim=(0, 1))
        count += int(valid.sum())
    per_dim = (total / max(count, 1)).tolist()
    return {"l1": sum(per_dim) / len(per_dim), "per_dim": per_dim, "frames": len(frames), "steps": count}


def mean_action_l1(
    repo_id: str, root: str | None, train: list[int], heldout: list[int], chunk_size: int, n_action_steps: int
) -> dict:
    """The held-out error of the mean-action baseline: always predict the training episodes' mean action (the
    floor a policy must clear before its error says anything)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(repo_id, root=root, episodes=train)
    mean = torch.as_tensor(ds.hf_dataset.with_format("numpy", columns=["action"])["action"]).double().mean(0)
    out = action_l1(
        lambda b: mean.expand(b["action"].shape[0], n_action_steps, 7),
        repo_id,
        root,
        heldout,
        chunk_size,
        n_action_steps,
    )
    return {**out, "mean_action": mean.tolist()}


def evaluate_checkpoint(
    ckpt: Path,
    repo_id: str,
    root: str | None,
    episodes: list[int],
    untrained: bool = False,
    device: str = "cpu",
) -> dict:
    """Held-out L1 of the policy saved in `ckpt`; `untrained=True` scores a freshly initialised policy with the
    same config and normalisation (the reference a trained policy must beat)."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    from policies.r1vla import R1VLAPolicy

    cfg = PreTrainedConfig.from_pretrained(ckpt)
    cfg.device = device
    if untrained:
        torch.manual_seed(0)
        policy = R1VLAPolicy(cfg)
    else:
        policy = R1VLAPolicy.from_pretrained(ckpt, config=cfg)
    policy.to(device)
    pre, post = make_pre_post_processors(
        cfg, pretrained_path=str(ckpt), preprocessor_overrides={"device_processor": {"device": device}}
    )
    policy.eval()
    torch.manual_seed(0)
    return action_l1(
        lambda b: post(policy.predict_action_chunk(pre(b))),
        repo_id,
        root,
        episodes,
        cfg.chunk_size,
        cfg.n_action_steps,
    )
