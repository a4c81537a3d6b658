"""vla-eval's side of `r1vla crosscheck`: `r1vla serve` in a child process, and vla-eval's LIBERO benchmark run
in this process (what `vla-eval run --no-docker --config CONFIG` does: its Orchestrator, then its export).

Alignment with `r1vla eval` (libero_core.sim / eval_libero.plan), set here in vla-eval's own config:
  init states    episode k of a task uses init state k in vla-eval; other lists of init states go through
                 `InitStatesLIBERO`, which only maps episode k to the k-th requested init state
  caps           `max_steps` = the standard protocol's cap of the suite (or --max-steps)
  wait steps     `num_steps_wait` = libero_core.suites.NUM_WAIT_STEPS (10)
  image size     vla-eval's LIBERO renders at its module constant LIBERO_ENV_RESOLUTION (256); set, for this run,
                 to the size `r1vla eval` renders (the policy's trained size), so no letterboxing happens
  state          `quat_no_antipodal: true` (declared by the server at hello, and set in the config)
  gripper        vla-eval rounds it by sign; `r1vla eval --gripper sign` does the same on its side
  seeding        vla-eval seeds a task's env once (`env_seed`) and reuses it across episodes; LIBERO places the
                 fixtures (cabinets, plates, stoves: not part of an init state) from the RNG at every reset, so
                 the scenes differ from `r1vla eval`'s (which seeds every episode). Aligned: one entry per
                 episode, its fresh env seeded with `r1vla eval`'s episode seed (`plan_entries`)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_libero.plan import EvalError

BENCHMARK = "vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark"
MAPPED = "r1vla.vlaeval:InitStatesLIBERO"  # only when the init states are not 0..n-1


def _libero_class():
    from vla_eval.benchmarks.libero.benchmark import LIBEROBenchmark

    return LIBEROBenchmark


def __getattr__(name: str):  # `InitStatesLIBERO` built on first use: importing this module needs no vla-eval
    if name != "InitStatesLIBERO":
        raise AttributeError(name)

    class InitStatesLIBERO(_libero_class()):
        """vla-eval's LIBERO with episode k of a task started from init state `init_states[k]`."""

        def __init__(self, init_states: list[int], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.init_states = list(init_states)

        def reset(self, task):
            return super().reset({**task, "episode_idx": self.init_states[task["episode_idx"]]})

    globals()[name] = InitStatesLIBERO
    return InitStatesLIBERO


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServeProcess:
    """`r1vla serve` in a child process on 127.0.0.1; stopped (by its own pid) on exit."""

    def __init__(self, policy: str, device: str, port: int, log_path: Path, ready_s: float = 900.0):
        self.port, self.log_path = port, log_path
        cmd = [sys.executable, "-m", "r1vla.cli", "serve", "--policy", policy, "--port", str(port)]
        cmd += ["--device", device, "--host", "127.0.0.1"]
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise EvalError(f"r1vla serve exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1.0)
        self.close()
        raise EvalError(f"r1vla serve did not answer within {ready_s:.0f} s: {self.log_tail()}")

    def log_tail(self, n: int = 1500) -> str:
        return self.log_path.read_text(errors="replace")[-n:].strip()

    def call_s(self) -> float | None:
        """The server's warm-up call time, from its start line."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("r1vla serve: ws://") and "one policy call " in line:
                return float(line.split("one policy call ")[1].split(" s")[0])
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Entry:
    """One vla-eval benchmark entry: `inits[k]` is the init state of its episode k."""

    suite: str
    task_id: int
    inits: tuple[int, ...]
    env_seed: int | None  # None: vla-eval's own seeding (the env seeded once with `seed`, reused)

    @property
    def subname(self) -> str:
        tail = "" if self.env_seed is None else f"_i{self.inits[0]}"
        return f"{self.suite}_t{self.task_id}{tail}"


def plan_entries(episodes: dict[str, dict[int, list[int]]], seed: int, aligned_seeding: bool) -> list[Entry]:
    """Aligned seeding: one entry per episode whose env is seeded with `r1vla eval`'s episode seed (a fresh env,
    seeded, then reset: what `r1vla eval` does). Else one entry per task, seeded as vla-eval seeds it."""
    from eval_libero.scheduler import derive_seed

    if not aligned_seeding:
        return [
            Entry(s, t, tuple(inits), None) for s, tasks in episodes.items() for t, inits in tasks.items()
        ]
    return [
        Entry(s, t, (i,), derive_seed(seed, s, t, i))
        for s, tasks in episodes.items()
        for t, inits in tasks.items()
        for i in inits
    ]


def make_config(
    url: str,
    timeout_s: float,
    out: Path,
    entries: list[Entry],
    languages: dict[tuple[str, int], str],
    caps: dict[str, int],
    seed: int,
    wait_steps: int,
) -> dict:
    """vla-eval's run config (what `vla-eval run --config` reads)."""
    benchmarks = []
    for e in entries:
        contiguous = list(e.inits) == list(range(len(e.inits)))
        params: dict[str, Any] = {
            "suite": e.suite,
            "seed": seed,
            "num_steps_wait": wait_steps,
            "quat_no_antipodal": True,
        }
        if e.env_seed is not None:
            params["env_seed"] = e.env_seed
        if not contiguous:
            params["init_states"] = list(e.inits)
        benchmarks.append(
            {
                "benchmark": BENCHMARK if contiguous else MAPPED,
                "subname": e.subname,
                "episodes_per_task": len(e.inits),
                "tasks": [languages[(e.suite, e.task_id)]],
                "max_steps": caps[e.suite],
                "params": params,
                "recording": {"record_step": True, "record_video": False},
            }
        )
    return {"server": {"url": url, "timeout": timeout_s}, "output_dir": str(out), "benchmarks": benchmarks}


def run_vla_eval(config: dict, image_size: int) -> tuple[list[dict], Path]:
    """vla-eval's Orchestrator on `config` in this process (LIBERO rendered at `image_size`), then its export;
    returns its per-benchmark results (tasks -> episodes) and its recording database."""
    import anyio
    import vla_eval.benchmarks.libero.benchmark as libero_bench
    from vla_eval.orchestrator import Orchestrator
    from vla_eval.recording import db_path_for_eval
    from vla_eval.results.export import export_eval

    os.environ.setdefault("MUJOCO_GL", "egl")  # as libero_core.sim
    Path(config["output_dir"]).mkdir(parents=True, exist_ok=True)
    (Path(config["output_dir"]) / "config.json").write_text(json.dumps(config, indent=1))
    saved = libero_bench.LIBERO_ENV_RESOLUTION
    libero_bench.LIBERO_ENV_RESOLUTION = image_size
    try:
        orchestrator = Orchestrator(config)
        results = anyio.run(orchestrator.run)
    finally:
        libero_bench.LIBERO_ENV_RESOLUTION = saved
    export_eval(Path(config["output_dir"]).resolve(), orchestrator.eval_id)
    return results, db_path_for_eval(Path(config["output_dir"]).resolve(), orchestrator.eval_id)


def outcomes(results: list[dict], entries: list[Entry]) -> dict[tuple, dict]:
    """(suite, task_id, init_state) -> {success, steps, failure}: vla-eval's per-episode results."""
    out: dict[tuple, dict] = {}
    for e, result in zip(entries, results, strict=True):
        for task in result.get("tasks", []):
            for ep in task.get("episodes", []):
                metrics = ep.get("metrics") or {}
                out[(e.suite, e.task_id, e.inits[int(ep["episode_id"])])] = {
                    "success": bool(metrics.get("success")),
                    "steps": int(ep.get("steps", 0)),
                    "failure": ep.get("failure_reason"),
                }
    return out


def recorded_steps(db: Path, entries: list[Entry]) -> dict[tuple[str, int, int], list[dict]]:
    """(suite, task_id, init_state) -> the episode's step rows (executed action, post-step state), in order, read
    from vla-eval's recording database (an entry's evaluation id ends with its subname)."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[tuple[str, int, int], list[dict]] = {}
        for eid, eval_id, episode in con.execute("SELECT eid, eval_id, episode_id FROM episode_results"):
            e = next((e for e in entries if str(eval_id).endswith("_" + e.subname)), None)
            if e is None or episode is None:
                continue
            rows = con.execute("SELECT step_id, fields FROM step_rows WHERE eid = ? ORDER BY step_id", (eid,))
            out[(e.suite, e.task_id, e.inits[int(episode)])] = [json.loads(f) for _, f in rows]
        return out
    finally:
        con.close()


def replay(
    suite: str,
    task_id: int,
    init_state: int,
    seed: int,
    steps: list[dict],
    runner=None,
    image_size: int | None = None,
) -> dict:
    """vla-eval's executed actions replayed in `r1vla eval`'s simulator, reset as `r1vla eval` resets that episode
    (init state, derived episode seed, wait steps). Compares each post-step state with the one vla-eval recorded:
    equal states mean both harnesses simulate the same episode for the same actions. With `runner` (the policy
    loaded as `r1vla eval` loads it, eval_libero.checkpoint.load_runner) the cameras render at `image_size` and,
    at every policy call of the episode, `r1vla eval`'s observation path gives the policy this state's
    observation: its actions (gripper rounded by sign, as both harnesses execute them) are compared with the ones
    vla-eval executed. Both equal over the whole episode: the two harnesses ran the same episode."""
    import numpy as np

    from eval_libero.runner import Row
    from eval_libero.scheduler import derive_seed
    from eval_libero.worker import raw_obs_for_lerobot
    from libero_core.sim import LiberoSim, state_from_obs
    from libero_core.suites import NUM_WAIT_STEPS

    ep_seed = derive_seed(seed, suite, task_id, init_state)
    sim = LiberoSim(suite, task_id, render=runner is not None, size=image_size or 256)
    out: dict = {"replay_first_dev_step": None, "replay_max_dev": 0.0, "replay_success_step": None}
    if runner is not None:
        out |= {"replay_first_action_dev_step": None, "replay_max_action_dev": 0.0}
        key = (suite, "none", task_id, init_state, seed)
        runner.begin(key, ep_seed)
    try:
        raw = sim.reset(init_state, NUM_WAIT_STEPS, seed=ep_seed)
        n = runner.n_action_steps if runner is not None else 0
        for k, row in enumerate(steps):
            if n and k % n == 0:
                acts = runner.act([Row(key, raw_obs_for_lerobot(sim, raw), sim.info.language, k)])[0]
                if isinstance(acts, str):
                    raise EvalError(f"replay of {suite} task {task_id} init {init_state}: {acts}")
                acts = np.asarray(acts, np.float32).copy()
                acts[:, -1] = np.where(acts[:, -1] < 0, -1.0, 1.0)
                done = np.asarray([r["action"] for r in steps[k : k + n]], np.float32)
                dev = float(np.abs(acts[: len(done)] - done).max())
                out["replay_max_action_dev"] = max(out["replay_max_action_dev"], dev)
                if dev > 0 and out["replay_first_action_dev_step"] is None:
                    out["replay_first_action_dev_step"] = k + 1
            raw, ok = sim.step(row["action"], render=bool(n) and (k + 1) % n == 0)
            dev = float(np.abs(state_from_obs(raw) - np.asarray(row["state"], np.float32)).max())
            out["replay_max_dev"] = max(out["replay_max_dev"], dev)
            if dev > 0 and out["replay_first_dev_step"] is None:
                out["replay_first_dev_step"] = k + 1
            if ok and out["replay_success_step"] is None:
                out["replay_success_step"] = k + 1
        return out
    finally:
        if runner is not None:
            runner.end(key)
        sim.close()
