"""`r1vla replay`: re-execute a demo dataset's recorded actions in LIBERO and report success per episode.

    r1vla replay DATASET [--episodes 0,2] [--check-frames]

Each episode restarts from its recorded start (meta/start_states.npz, else the official init state
`init_state_index` of meta/r1vla_demos.json; fixtures placed by its `seed`; then its wait steps), then applies
the recorded actions one by one (the executed ones of meta/executed_actions.npz where the `action` column holds
the expert's labels, `r1vla demos --labels expert`). At every step the recorded
`observation.state` is compared with the replayed one (max abs deviation reported), and with
`--check-frames` (rendered, slow) the recorded images are compared with fresh renders. This catches gripper
polarity, image orientation and state-definition bugs: any of them shows up as a failed replay or a
deviation far above zero (physics is deterministic: a faithful dataset replays with deviation ~0).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from libero_core.suites import parse_index_list


@dataclass(frozen=True)
class ReplayResult:
    episode_index: int
    success: bool
    steps: int
    success_step: int  # first step after which LIBERO reported success, -1 if never
    max_state_dev: float
    max_image_dev: float | None  # in uint8 levels; None when frames were not checked


def reset_to(sim, rec: dict, start_state: np.ndarray | None = None) -> dict:
    """Reset a LiberoSim to the episode's start: `start_state` (from meta/start_states.npz), else its official
    init state `init_state_index`, else a legacy `init_state` list; fixtures are placed from the episode's `seed`
    (LIBERO samples them from np.random at reset). Then the recorded wait steps; returns the raw obs."""
    if start_state is None and "init_state_index" not in rec:
        if "init_state" not in rec:
            raise ValueError(f"episode {rec.get('episode_index')}: no start state recorded; cannot replay it")
        start_state = np.asarray(
            rec["init_state"], dtype=np.float64
        )  # datasets written before start_states.npz
    seed = None if rec.get("seed") is None else int(rec["seed"])
    return sim.reset(
        rec.get("init_state_index"), rec.get("wait_steps", 10), seed=seed, start_state=start_state
    )


def replay_episode(
    sim,
    rec: dict,
    states: np.ndarray,
    actions: np.ndarray,
    images: dict | None = None,
    start_state: np.ndarray | None = None,
) -> ReplayResult:
    """Replay one episode. `images` (optional) maps image keys to (T, H, W, 3) uint8 recorded frames."""
    from libero_core.sim import frame_from_obs, state_from_obs

    obs = reset_to(sim, rec, start_state)
    state_dev, image_dev, first = 0.0, 0.0 if images else None, -1
    success = False
    for t, a in enumerate(actions):
        state_dev = max(state_dev, float(np.abs(state_from_obs(obs) - states[t]).max()))
        if images:
            frame = frame_from_obs(obs)
            for k, v in images.items():
                image_dev = max(
                    image_dev, float(np.abs(frame[k].astype(np.int16) - v[t].astype(np.int16)).max())
                )
        obs, success = sim.step(a)
        if success and first < 0:
            first = t
    return ReplayResult(rec["episode_index"], bool(success), len(actions), first, state_dev, image_dev)


def load_episode(ds, index: int, frames: bool) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """(states, actions, images or None) of one episode of a LeRobotDataset."""
    from libero_core.sim import IMAGE_KEY, STATE_KEY, WRIST_KEY

    ep = ds.meta.episodes[index]
    lo, hi = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
    cols = ds.hf_dataset.select_columns([STATE_KEY, "action"]).with_format("numpy")[lo:hi]
    images = None
    if frames:
        items = [ds[i] for i in range(lo, hi)]
        images = {
            k: np.stack([(it[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for it in items])
            for k in (IMAGE_KEY, WRIST_KEY)
        }
    return np.asarray(cols[STATE_KEY], np.float32), np.asarray(cols["action"], np.float32), images


def replay(
    root: str | Path, episodes: str | None = None, check_frames: bool = False, log=print
) -> list[ReplayResult]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from libero_core.sim import IMAGE_KEY, LiberoSim
    from libero_core.starts import EXECUTED_ACTIONS, load_episode_arrays, load_meta, load_start_states

    meta = load_meta(root)
    starts, executed = load_start_states(root), load_episode_arrays(root, EXECUTED_ACTIONS)
    ds = LeRobotDataset(meta.get("repo_id", "local/libero_demos"), root=root)
    recs = {r["episode_index"]: r for r in meta["episodes"]}
    wanted = parse_index_list(episodes, ds.meta.total_episodes, "episode")
    results, sims = [], {}
    for e in wanted:
        rec = recs[e]
        if rec.get("suite") is None:
            log(f"episode {e}: no LIBERO task recorded for it ({rec.get('task')!r}); cannot replay")
            continue
        key = (rec["suite"], rec["task_id"])
        if key not in sims:
            for s in sims.values():
                s.close()
            size = ds.meta.features[IMAGE_KEY]["shape"][0]  # the recorded camera resolution
            sims = {key: LiberoSim(rec["suite"], rec["task_id"], render=check_frames, size=size)}
        states, actions, images = load_episode(ds, e, check_frames)
        actions = executed.get(e, actions)
        r = replay_episode(sims[key], rec, states, actions, images, starts.get(e))
        img = "" if r.max_image_dev is None else f"  max image dev {r.max_image_dev:.0f}/255"
        log(
            f"episode {e:>4} {rec['suite']} t{rec['task_id']} init {rec.get('init_state_index', '-')}: "
            f"{'success' if r.success else 'FAIL'} ({r.steps} steps, first success at {r.success_step})  "
            f"max state dev {r.max_state_dev:.2e}{img}"
        )
        results.append(r)
    for s in sims.values():
        s.close()
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="folder of a dataset written by `r1vla demos` or `r1vla convert-hdf5`")
    p.add_argument("--episodes", default=None, help="episode indices, e.g. '0,2' or '0-9' (default: all)")
    p.add_argument("--check-frames", action="store_true", help="also render and compare the recorded images")


def run(args: argparse.Namespace) -> int:
    try:
        results = replay(args.dataset, args.episodes, args.check_frames)
    except ValueError as e:
        print(f"r1vla replay: error: {e}", file=sys.stderr)
        return 2
    ok = sum(r.success for r in results)
    dev = max((r.max_state_dev for r in results), default=0.0)
    print(f"replayed {len(results)} episodes: {ok} succeeded; max state deviation {dev:.2e}")
    return 0 if results and ok == len(results) else 1
