"""Throughput of the LIBERO eval harness vs raw LIBERO, with a trivial constant policy. Prints ratios; asserts nothing.

    .venv/bin/python bench/bench_eval.py [--steps 40] [--episodes 2] [--chunk 8] [--workers 2] [--rounds 2]

raw       : one process steps one LiberoSim (same episodes: reset + S steps each, constant action).
harness   : eval_libero.rollout.run_episodes (worker processes, pipes, LeRobot's observation pipeline, the policy
            runner) with W workers, each running E episodes of S steps. Timed from the moment every worker has
            delivered its first observation (worker start-up and env creation excluded, as for raw) to the end.
Goals: harness(1 worker) / raw >= 0.9; harness(W workers) / harness(1 worker) >= 0.9 * W cores permitting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

SUITE, TASK = "libero_object", 0
ACTION = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def raw_steps_per_s(episodes: int, steps: int) -> float:
    from eval_libero.sim import LiberoSim

    sim = LiberoSim(SUITE, TASK)
    sim.reset(0)
    t0 = time.perf_counter()
    for e in range(episodes):
        if e:
            sim.reset(e)
        for _ in range(steps):
            sim.step(ACTION)
    dt = time.perf_counter() - t0
    sim.close()
    return episodes * steps / dt


def constant_runner(chunk: int):
    """A LeRobot policy that always returns the no-motion action, behind the real PolicyRunner and processors."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.envs.configs import LiberoEnv as LiberoEnvConfig
    from lerobot.envs.factory import make_env_pre_post_processors
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.pretrained import PreTrainedPolicy
    from lerobot.processor import AddBatchDimensionProcessorStep, DeviceProcessorStep, PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    from eval_libero.rollout import PolicyRunner

    class ConstantPolicy(PreTrainedPolicy):
        config_class, name = ACTConfig, "bench_constant"

        def __init__(self, config):
            super().__init__(config)
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def get_optim_params(self):
            return self.parameters()

        def reset(self):
            pass

        def predict_action_chunk(self, batch, **kwargs):
            b = batch["observation.state"].shape[0]
            return torch.tensor(ACTION).repeat(b, self.config.chunk_size, 1)

        def select_action(self, batch, **kwargs):
            return self.predict_action_chunk(batch)[:, 0]

        def forward(self, batch, reduction="mean"):
            raise NotImplementedError

    img = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 256, 256))
    cfg = ACTConfig(
        device="cpu",
        chunk_size=chunk,
        n_action_steps=chunk,
        pretrained_backbone_weights=None,
        input_features={
            "observation.images.image": img,
            "observation.images.image2": img,
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(8,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))},
    )
    pre = PolicyProcessorPipeline(steps=[AddBatchDimensionProcessorStep(), DeviceProcessorStep(device="cpu")])
    post = PolicyProcessorPipeline(
        steps=[DeviceProcessorStep(device="cpu")],
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    )
    env_pre, env_post = make_env_pre_post_processors(LiberoEnvConfig(task=SUITE), cfg)
    return PolicyRunner(ConstantPolicy(cfg).eval(), pre, post, env_pre, env_post, "batched")


class Timed:
    """Wraps a PolicyRunner; notes when every worker's first episode has produced an observation."""

    def __init__(self, runner, workers: int):
        self.runner, self.workers, self.seen, self.t_start = runner, workers, set(), None
        self.issued_before = 0  # actions handed out before the window opened (their steps are not counted)

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def act(self, rows):
        self.seen.update(r.key for r in rows)
        if self.t_start is None and len(self.seen) >= self.workers:
            self.t_start = time.perf_counter()
        out = self.runner.act(rows)
        if self.t_start is None:
            self.issued_before += sum(len(a) for a in out)
        return out


def harness_steps_per_s(workers: int, episodes: int, steps: int, chunk: int) -> tuple[float, float]:
    from eval_libero.rollout import EpisodeSpec, run_episodes
    from eval_libero.suites import NUM_WAIT_STEPS

    specs = [EpisodeSpec(i, SUITE, TASK, i % 50, 7, i, steps) for i in range(workers * episodes)]
    timed = Timed(constant_runner(chunk), workers)
    n = [0]
    t0 = time.perf_counter()
    lost = run_episodes(
        specs, timed, workers, lambda s, r: n.__setitem__(0, n[0] + r["steps"]), NUM_WAIT_STEPS, 256
    )
    t1 = time.perf_counter()
    assert not lost, "simulator errors during the benchmark"
    return (n[0] - timed.issued_before) / (t1 - timed.t_start), t1 - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="env steps per episode")
    p.add_argument("--episodes", type=int, default=2, help="episodes per worker")
    p.add_argument("--chunk", type=int, default=8, help="actions per policy call (n_action_steps)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--rounds", type=int, default=2, help="alternate raw/harness measurements; medians are reported"
    )
    a = p.parse_args()
    print(
        f"cores: {os.cpu_count()}  load: {os.getloadavg()[0]:.1f}  episodes: {a.episodes}/worker x {a.steps} steps"
    )
    raw, h1, hw = [], [], []
    for r in range(a.rounds):  # alternating, so that load from other processes hits all three alike
        raw.append(raw_steps_per_s(a.episodes, a.steps))
        h1.append(harness_steps_per_s(1, a.episodes, a.steps, a.chunk)[0])
        hw.append(harness_steps_per_s(a.workers, a.episodes, a.steps, a.chunk)[0])
        print(
            f"round {r}: raw {raw[-1]:.2f}  harness(1) {h1[-1]:.2f}  harness({a.workers}) {hw[-1]:.2f} steps/s  "
            f"load {os.getloadavg()[0]:.1f}"
        )
    ratio = statistics.median(x / y for x, y in zip(h1, raw, strict=True))
    speedup = statistics.median(x / y for x, y in zip(hw, h1, strict=True))
    print(f"harness(1) / raw             : {ratio:.2f}   (goal >= 0.9)")
    print(
        f"harness({a.workers}) / harness(1)       : {speedup:.2f}   (goal >= {0.9 * a.workers:.1f} given {a.workers} free cores)"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "raw_steps_per_s": raw,
                "harness1_steps_per_s": h1,
                f"harness{a.workers}_steps_per_s": hw,
                "ratio_1_vs_raw": ratio,
                "speedup": speedup,
                "load_avg": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
