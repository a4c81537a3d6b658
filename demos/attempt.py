"""One demo attempt, in a worker process: plan it with the scripted expert unrendered, drop no-ops, replay the kept
actions rendered from the same start to record the frames, and stage the episode (demos/dataset.py).

The recorded action is the executed one (`labels="executed"`), or, with `labels="expert"` and noise, the expert's
own action before the noise was added (DART, Laskey et al. 2017: the demos visit the states a slightly wrong
policy reaches, and each is labelled with the correction the expert would make there). The executed actions of
such a dataset are kept in meta/executed_actions.npz, so that `r1vla replay` still re-executes it exactly.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from libero_core.suites import IMAGE_SIZE

NOOP_EPS = 1e-4
LABELS = ("executed", "expert")  # what a demo's `action` column holds (see the module docstring)


@dataclass(frozen=True)
class Job:
    suite: str
    task_id: int
    attempt: int
    seed: int
    noise: float
    max_steps: int
    init_state: int | None = None  # official init state to start from; None = LIBERO's randomized placement
    labels: str = "executed"  # one of LABELS
    image_size: int = IMAGE_SIZE  # camera resolution of the recorded frames

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.task_id}/{self.attempt}"


@dataclass(frozen=True)
class Plan:
    """A successful unrendered plan: the kept actions (executed and labels, no-ops dropped) and what the rendered
    replay must reproduce."""

    actions: np.ndarray  # (T, 7) executed
    labels: np.ndarray  # (T, 7) the expert's actions before noise, same steps
    ref_states: np.ndarray  # (T, 8) dataset states before each action
    ref_eef: np.ndarray  # (3,) eef position after the last action


def episode_seed(seed: int, suite: str, task_id: int, attempt: int) -> int:
    return int(
        np.random.SeedSequence([seed, zlib.crc32(suite.encode()), task_id, attempt]).generate_state(1)[0]
    )


def kept_steps(actions: np.ndarray) -> np.ndarray:
    """OpenVLA/OFT's no-op rule: indices t kept, dropping a[t] if |a[:6]| < 1e-4 and its gripper equals the last
    kept one's."""
    keep, last_g = [], None
    for t, a in enumerate(actions):
        if np.linalg.norm(a[:6]) < NOOP_EPS and (last_g is None or a[6] == last_g):
            continue
        keep.append(t)
        last_g = a[6]
    return np.asarray(keep, dtype=np.int64)


def drop_noops(actions: np.ndarray) -> np.ndarray:
    """`actions` without the no-ops of `kept_steps`."""
    return actions[kept_steps(actions)]


_SIMS: dict = {}


def _sim(suite: str, task_id: int, render: bool, size: int = IMAGE_SIZE):
    """One planning and one rendering env per worker, for the task at hand (others are closed)."""
    from libero_core.sim import LiberoSim

    key = (suite, task_id, render, size if render else None)
    for k in [k for k in _SIMS if k[:2] != (suite, task_id)]:
        _SIMS.pop(k).close()
    if key not in _SIMS:
        _SIMS[key] = LiberoSim(suite, task_id, render=render, size=size)
    return _SIMS[key]


def _replay(sim, start_state: np.ndarray, seed: int, actions: np.ndarray, frames: bool):
    """Execute `actions` from `start_state` (fixtures placed by `seed`, as in run_expert); returns (states before
    each action, frames or [], first success step or -1, eef position after the last executed action)."""
    from libero_core.sim import frame_from_obs, state_from_obs

    obs, states, images, hit = sim.reset(seed=seed, start_state=start_state), [], [], -1
    for t, a in enumerate(actions):
        f = frame_from_obs(obs) if frames else {"observation.state": state_from_obs(obs)}
        images += [f] if frames else []
        states.append(f["observation.state"])
        obs, success = sim.step(a)
        if success:
            hit = t
            break
    return np.stack(states), images, hit, obs["robot0_eef_pos"].copy()


def plan_attempt(job: Job) -> tuple[dict, Plan | None, np.ndarray]:
    """Run the expert unrendered and drop no-ops; if any were dropped, check (unrendered: cheap) that the kept
    actions still succeed. Returns (record, plan or None when the attempt failed (record["reason"] says why),
    start state)."""
    from demos.expert import run_expert

    sim = _sim(job.suite, job.task_id, False)
    init = job.init_state
    rec = {
        "key": job.key,
        "task_key": f"{job.suite}/{job.task_id}",
        "suite": job.suite,
        "task_id": job.task_id,
    }
    rec |= {"task": sim.info.language, "attempt": job.attempt, "seed": job.seed}
    rec |= {"start": "official" if job.init_state is not None else "random"} | (
        {} if init is None else {"init_state_index": init}
    )
    rec |= {"wait_steps": 10, "success": False, "reason": ""}
    t0 = time.time()
    run = run_expert(sim, init, job.max_steps, job.noise, job.seed)
    rec.update(planned_steps=len(run.actions), plan_s=round(time.time() - t0, 2))
    if not run.success:
        return rec | {"reason": run.reason}, None, run.start_state
    keep = kept_steps(run.actions)
    kept, labels, ref_states, ref_eef = run.actions[keep], run.labels[keep], run.states, run.final_eef
    if len(kept) < len(run.actions):
        ref_states, _, hit, ref_eef = _replay(sim, run.start_state, job.seed, kept, frames=False)
        if hit < 0:
            return rec | {"reason": "success lost after dropping no-ops"}, None, run.start_state
        kept, labels, ref_states = kept[: hit + 1], labels[: hit + 1], ref_states[: hit + 1]
    return rec, Plan(kept, labels, ref_states, ref_eef), run.start_state


def run_attempt(job: Job, staging: str) -> dict:
    """Plan one attempt unrendered; if it succeeds, re-render its kept actions and stage the episode."""
    from demos.dataset import stage_attempt
    from libero_core.sim import IMAGE_KEY, STATE_KEY, WRIST_KEY

    rec, plan, start = plan_attempt(job)
    if plan is None:
        stage_attempt(Path(staging), rec)
        return rec
    t1 = time.time()
    sim = _sim(job.suite, job.task_id, True, job.image_size)
    states, frames, hit, eef = _replay(sim, start, job.seed, plan.actions, True)
    n = min(len(states), len(plan.ref_states))
    dev = float(
        max(np.abs(states[:n] - plan.ref_states[:n]).max(initial=0.0), np.abs(eef - plan.ref_eef).max())
    )
    rec.update(render_s=round(time.time() - t1, 2), kept_steps=len(plan.actions), replay_max_dev=dev)
    if hit != len(plan.actions) - 1 or dev > 1e-6:  # physics must not depend on rendering
        rec["reason"] = f"rendered replay diverged (success at step {hit}, max deviation {dev:.2e})"
        stage_attempt(Path(staging), rec)
        return rec
    arrays = {k: np.stack([f[k] for f in frames]) for k in (IMAGE_KEY, WRIST_KEY, STATE_KEY)}
    expert = job.labels == "expert"
    arrays["action"] = (plan.labels if expert else plan.actions).astype(np.float32)
    rec.update(success=True, length=len(plan.actions), labels=job.labels)
    executed = plan.actions.astype(np.float32) if expert else None
    stage_attempt(Path(staging), rec, arrays, start_state=start, executed=executed)
    return rec


def plan_only(job: Job) -> dict:
    """`--plan-only`: one attempt's success (expert plan + no-op removal), without rendering or saving."""
    rec, plan, _ = plan_attempt(job)
    return rec | {"success": plan is not None, "max_steps": job.max_steps}
