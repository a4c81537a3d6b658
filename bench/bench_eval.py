"""LIBERO evaluation speed, measured in one run on one checkpoint, task and set of init states. Asserts nothing.

    .venv/bin/python bench/bench_eval.py [--steps 120] [--episodes 4] [--chunk 8] [--workers 2]

(a) lerobot-eval  bare `lerobot-eval --env.type=libero` (LeRobot 0.6; renders both cameras every step at 256², as
                  the policy reads them; one policy call per n_action_steps; stepping and inference alternate),
                  timed by its own `eval_ep_s`: once with one env (`--eval.batch_size=1`, a SyncVectorEnv) and once
                  with W envs (`--eval.batch_size=W`: LeRobot's AsyncVectorEnv, W forkserver worker processes; its
                  timing then includes starting them, a few seconds).
(b) harness       eval_libero (r1vla eval's engine) at 1 and W workers: chunks dispatched to workers, cameras
                  rendered only on the steps whose observation the policy reads, inference overlapped with stepping.
                  Timed from the moment every worker delivered its first observation to the end (process start-up
                  and env creation excluded, as in lerobot-eval's own timing with one env).
(c) raw LIBERO    one LiberoSim rendering both cameras every step with a constant action, and physics only
                  (steps only, resets excluded: the simulator's ceiling).
The policy: a stock LeRobot ACT with random weights, `chunk_size = n_action_steps = --chunk` (an 8-step chunk
policy); episodes never succeed, so each runs --steps steps. Prints episodes/hour, env steps/s and the ratios, like
for like: harness 1 worker vs lerobot-eval 1 env, harness W workers vs lerobot-eval W envs. The last two lines are
`eval speed: harness/lerobot-eval with W envs vs W workers Z.ZZ` and
`eval speed: harness/lerobot-eval X.XX, W workers/1 worker Y.YY` (X: one env vs one worker).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MUJOCO_GL", "egl")

SUITE, TASK = "libero_object", 0
ACTION = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def save_act(path: Path, chunk: int) -> Path:
    """A random ACT (stock LeRobot policy) with its processors: a LeRobot pretrained_model folder."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    img = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 256, 256))
    cfg = ACTConfig(
        device="cpu",
        use_vae=False,
        chunk_size=chunk,
        n_action_steps=chunk,
        pretrained_backbone_weights=None,
        dim_model=64,
        n_heads=2,
        dim_feedforward=128,
        n_encoder_layers=1,
        n_decoder_layers=1,
        input_features={
            "observation.images.image": img,
            "observation.images.image2": img,
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(8,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))},
    )
    torch.manual_seed(0)
    ACTPolicy(cfg).save_pretrained(path)
    for pipeline in make_act_pre_post_processors(cfg, dataset_stats=None):
        pipeline.save_pretrained(path)
    return path


def lerobot_eval(ckpt: Path, episodes: int, steps: int, out: Path, envs: int = 1) -> dict:
    """(a): episodes/h and steps/s from lerobot-eval's own per-episode timing, with `envs` vectorized envs."""
    flags = [
        "--env.type=libero",
        f"--env.task={SUITE}",
        f"--env.task_ids=[{TASK}]",
        f"--env.episode_length={steps}",
        "--env.observation_height=256",  # LeRobot 0.6 renders 360² by default; the policy reads 256²
        "--env.observation_width=256",
        f"--eval.n_episodes={episodes}",
        f"--eval.batch_size={envs}",
        f"--policy.path={ckpt}",
        f"--output_dir={out}",
    ]
    lerobot_eval_bin = Path(sys.executable).parent / "lerobot-eval"  # bare: the plugin is found by LeRobot
    proc = subprocess.run([str(lerobot_eval_bin), *flags], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    info = json.loads((out / "eval_info.json").read_text())["overall"]
    ep_s = info["eval_ep_s"]
    return {"episodes_per_h": 3600 / ep_s, "steps_per_s": steps / ep_s}


class Timed:
    """Wraps a PolicyRunner; opens the timing window once every worker's first episode has an observation."""

    def __init__(self, runner, workers: int):
        self.runner, self.workers, self.seen, self.t_start = runner, workers, set(), None
        self.steps_before = 0  # env steps handed out before the window opened (not counted)

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def act(self, rows):
        self.seen.update(r.key for r in rows)
        if self.t_start is None and len(self.seen) >= self.workers:
            self.t_start = time.perf_counter()
        out = self.runner.act(rows)
        if self.t_start is None:
            self.steps_before += sum(len(a) for a in out if not isinstance(a, str))
        return out


def harness(ckpt: Path, workers: int, episodes: int, steps: int) -> dict:
    """(b): this package's evaluation engine with `workers` LIBERO processes."""
    from eval_libero.checkpoint import load_policy_config, load_runner
    from eval_libero.scheduler import EpisodeSpec, run_episodes
    from libero_core.suites import NUM_WAIT_STEPS

    runner = load_runner(ckpt, load_policy_config(ckpt, "cpu"), [SUITE], "auto")
    specs = [EpisodeSpec(i, SUITE, TASK, i % 50, 7, 1000 + i, steps) for i in range(episodes)]
    timed = Timed(runner, min(workers, episodes))
    done = []
    run_episodes(specs, timed, workers, lambda s, r: done.append(r), NUM_WAIT_STEPS, 256, log=lambda m: None)
    dt = time.perf_counter() - timed.t_start
    if any(r["failure"] and not r["failure"].startswith("timeout") for r in done):
        raise RuntimeError(f"faults during the benchmark: {[r['failure'] for r in done]}")
    n_steps = sum(r["steps"] for r in done) - timed.steps_before
    return {"episodes_per_h": 3600 * n_steps / steps / dt, "steps_per_s": n_steps / dt, "mode": runner.mode}


def raw(episodes: int, steps: int, render: bool) -> dict:
    """(c): one LiberoSim stepping a constant action, rendering both cameras every step or none."""
    from libero_core.sim import LiberoSim

    sim = LiberoSim(SUITE, TASK, render=render)
    dt = 0.0
    for e in range(episodes):
        sim.reset(e)
        t0 = time.perf_counter()  # steps only: the simulator's ceiling
        for _ in range(steps):
            sim.step(ACTION)
        dt += time.perf_counter() - t0
    sim.close()
    return {"episodes_per_h": 3600 * episodes / dt, "steps_per_s": episodes * steps / dt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120, help="env steps per episode (after the 10 wait steps)")
    p.add_argument("--episodes", type=int, default=4, help="episodes per measurement")
    p.add_argument("--chunk", type=int, default=8, help="the policy's chunk_size = n_action_steps")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    print(f"cores: {os.cpu_count()}  load: {os.getloadavg()[0]:.1f}  {a.episodes} episodes x {a.steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_act(Path(tmp) / "act", a.chunk)
        res = {"lerobot-eval, 1 env": lerobot_eval(ckpt, a.episodes, a.steps, Path(tmp) / "le")}
        res[f"lerobot-eval, {a.workers} envs"] = lerobot_eval(
            ckpt, a.episodes, a.steps, Path(tmp) / "le_w", envs=a.workers
        )
        res["harness, 1 worker"] = harness(ckpt, 1, a.episodes, a.steps)
        res[f"harness, {a.workers} workers"] = harness(ckpt, a.workers, a.episodes, a.steps)
    res["raw LIBERO, render every step"] = raw(a.episodes, a.steps, True)
    res["raw LIBERO, physics only"] = raw(a.episodes, a.steps, False)
    for name, r in res.items():
        print(f"{name:<32} {r['episodes_per_h']:8.1f} episodes/h  {r['steps_per_s']:7.1f} env steps/s")
    h1, hw = res["harness, 1 worker"]["steps_per_s"], res[f"harness, {a.workers} workers"]["steps_per_s"]
    x = h1 / res["lerobot-eval, 1 env"]["steps_per_s"]
    z = hw / res[f"lerobot-eval, {a.workers} envs"]["steps_per_s"]
    print(
        f"harness(1) / raw LIBERO rendering every step: {h1 / res['raw LIBERO, render every step']['steps_per_s']:.2f}"
    )
    print(f"load at the end: {os.getloadavg()[0]:.1f}; policy calls: {res['harness, 1 worker']['mode']}")
    print(f"eval speed: harness/lerobot-eval with {a.workers} envs vs {a.workers} workers {z:.2f}")
    print(f"eval speed: harness/lerobot-eval {x:.2f}, {a.workers} workers/1 worker {hw / h1:.2f}")


if __name__ == "__main__":
    main()
