"""Episodes on W LIBERO worker processes, overlapping policy inference with stepping.

Each worker receives a whole action chunk and steps through it on its own (rendering only the observation the
policy reads next); it asks for a new chunk only when its chunk is used up or its episode ends. The policy runs in
this process, in one batch for every worker that is waiting, while the others keep stepping. Faults end only
their episode, recorded with the reason: `policy_error: ...` (eval_libero.runner), `sim_error: ...` (the simulator
raised), `worker_died: ...` (the process vanished), `worker_timeout` (no answer within `timeout_s`; the worker is
killed). A fresh worker takes over, and the run goes on.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from eval_libero.worker import worker_main

WORKER_TIMEOUT_S = 300.0  # default: a reset builds an env (~5-20 s), a chunk takes seconds


@dataclass(frozen=True)
class EpisodeSpec:
    index: int  # position in the run's full, canonical episode list (sharding, video choice)
    suite: str  # standard suite name
    task_id: int
    init_state: int  # official init state index, or the index into `--start-states` episodes
    seed: int  # the user's seed
    episode_seed: int  # derived from the episode key: seeds the fixture placement and the policy's randomness
    max_steps: int  # env steps after the wait steps
    video: str | None = None  # mp4 path, or None
    perturbation: str = "none"  # LIBERO-PRO variant of the suite ("none" = the standard suite)
    start_state: Any = field(default=None, compare=False)  # a recorded start sim state (overrides init_state)
    reset_seed: int | None = (
        None  # seeds LIBERO's reset (fixtures) instead of episode_seed: a demo's own seed
    )
    gripper: str = "raw"  # "sign": the gripper command is executed as -1 if < 0 else +1 (eval_libero.plan)


def derive_seed(seed: int, suite: str, task_id: int, init_state: int) -> int:
    """The episode's seed. A perturbed episode shares its standard twin's seed (paired comparisons)."""
    digest = hashlib.sha256(f"{seed}/{suite}/{task_id}/{init_state}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def spec_key(spec: EpisodeSpec) -> tuple:
    """The record key of a spec (libero_core.records.episode_key)."""
    return (spec.suite, spec.perturbation, spec.task_id, spec.init_state, spec.seed)


def _name(s: EpisodeSpec) -> str:
    p = "" if s.perturbation == "none" else f" ({s.perturbation})"
    return f"{s.suite}{p} task {s.task_id} init {s.init_state} seed {s.seed}"


class _Worker:
    """One worker process and the episode it runs. States: idle | busy (a reply is due) | ready (needs actions)."""

    def __init__(self, ctx: Any, args: tuple, target: Callable = worker_main):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.state, self.spec, self.deadline, self.dead = "idle", None, float("inf"), None

    def send(self, msg: tuple, timeout_s: float) -> None:
        """Every message to the worker goes through here. A worker that died after its last reply makes the
        write fail (BrokenPipeError): the worker is then marked `dead` (busy, due now) and the scheduler's loop
        replaces it and records the episode as `worker_died`, as when it dies mid-episode."""
        self.dead = None
        try:
            self.conn.send(msg)
        except OSError as e:  # BrokenPipeError, ConnectionResetError: the process is gone
            self.dead = f"{type(e).__name__}"
            self.state, self.deadline = "busy", time.monotonic()
            return
        self.state, self.deadline = "busy", time.monotonic() + timeout_s

    def start(self, spec: EpisodeSpec, timeout_s: float) -> None:
        self.spec, self.t0, self.raw, self.task, self.steps, self.failure = (
            spec,
            time.time(),
            None,
            "",
            0,
            None,
        )
        self.sha = hashlib.sha256()
        self.send(("reset", spec), timeout_s)

    def chunk(self, actions: np.ndarray, timeout_s: float) -> None:
        self.sha.update(np.asarray(actions, np.float32).tobytes())
        self.steps += len(actions)
        self.raw = None
        self.send(("chunk", actions), timeout_s)

    def record(self, res: dict) -> dict:
        timeout = f"timeout: no success in {self.spec.max_steps} steps"
        return dict(
            success=bool(res["success"]),
            steps=res["steps"],
            failure=self.failure or (None if res["success"] else timeout),
            wall_s=round(time.time() - self.t0, 3),
            video=res.get("video"),
            actions_sha256=self.sha.hexdigest()[:16],
            first_obs_sha256=res.get("first_obs_sha256"),
            instruction=self.task,
        )

    def fault(self, why: str) -> dict:
        """The record of an episode that a fault ended (no result from the worker)."""
        return {**self.record({"success": False, "steps": self.steps}), "failure": why}

    def stop(self, graceful: bool) -> None:
        if graceful:  # idle: it exits at once
            try:
                self.conn.send(("close",))
            except OSError:
                pass
            self.proc.join(timeout=30)
        if self.proc.is_alive():  # mid-episode, hung, or an error in this process: do not wait for it
            self.proc.kill()
            self.proc.join(timeout=10)


def run_episodes(
    specs: list[EpisodeSpec],
    runner: Any,
    workers: int,
    on_done: Callable[[EpisodeSpec, dict], None],
    wait_steps: int,
    image_size: int,
    timeout_s: float = WORKER_TIMEOUT_S,
    egl_device: int | None = None,
    log: Callable[[str], None] = print,
    worker: Callable = worker_main,
) -> None:
    """Run `specs` on `workers` processes with `runner` (eval_libero.runner.PolicyRunner); `on_done(spec, record)`
    is called as each episode ends, faults included (see the module docstring). `worker` is the process target
    (eval_libero.worker.worker_main; tests pass one that misbehaves)."""
    from eval_libero.runner import Row, cameras_read

    ctx = mp.get_context("spawn")
    args = (wait_steps, image_size, cameras_read(runner.policy.config), egl_device)
    pending = deque(specs)
    pool = [_Worker(ctx, args, worker) for _ in range(max(1, min(workers, len(specs))))]

    def assign(w: _Worker) -> None:
        w.state, w.spec = "idle", None
        if pending:  # prefer an episode of the task this worker's sim already holds (no env rebuild)
            last = w.__dict__.get("last_task")
            spec = next((s for s in pending if (s.suite, s.task_id, s.perturbation) == last), pending[0])
            pending.remove(spec)
            w.last_task = (spec.suite, spec.task_id, spec.perturbation)
            runner.begin(spec_key(spec), spec.episode_seed)
            w.start(spec, timeout_s)

    def finish(w: _Worker, record: dict) -> _Worker:
        on_done(w.spec, record)
        runner.end(spec_key(w.spec))
        assign(w)
        return w

    def replace(w: _Worker, why: str) -> None:
        log(f"{why} in {_name(w.spec)}: recorded as failed; a fresh worker takes over")
        w.stop(graceful=False)
        new = _Worker(ctx, args, worker)
        new.__dict__.update(
            spec=w.spec, t0=w.t0, raw=None, task=w.task, steps=w.steps, failure=None, sha=w.sha
        )
        pool[pool.index(w)] = new
        finish(new, new.fault(why))

    try:
        for w in pool:
            assign(w)
        while any(w.state != "idle" for w in pool):
            ready = [w for w in pool if w.state == "ready"]
            if ready:  # one batch for every waiting worker; the busy ones keep stepping meanwhile
                rows = [Row(spec_key(w.spec), w.raw, w.task, w.steps) for w in ready]
                for w, acts in zip(ready, runner.act(rows), strict=True):
                    if isinstance(acts, str):
                        w.failure = acts
                        w.send(("abort", acts), timeout_s)
                    else:
                        w.chunk(acts, timeout_s)
            for w in [w for w in pool if w.state == "busy" and w.dead]:  # a write to it failed: it is gone
                w.proc.join(timeout=10)
                replace(w, f"worker_died: exit code {w.proc.exitcode} ({w.dead} on write)")
            busy = {w.conn: w for w in pool if w.state == "busy"}
            if not busy:
                continue
            horizon = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
            for conn in wait(list(busy), timeout=horizon):
                w = busy[conn]
                try:
                    kind, body, task = conn.recv()
                except (EOFError, OSError):
                    w.proc.join(timeout=10)  # reap it, to read its exit code
                    replace(w, f"worker_died: exit code {w.proc.exitcode}")
                    continue
                if kind == "obs":
                    w.raw, w.task, w.state = body, task, "ready"
                elif kind == "done":
                    if body.get("video_error"):
                        log(f"video of {_name(w.spec)} not written: {body['video_error']}")
                    finish(w, w.record(body))
                else:
                    log(f"simulator error in {_name(w.spec)} (recorded as failed):\n{body}")
                    finish(w, w.fault(f"sim_error: {body.strip().splitlines()[-1]}"))
            now = time.monotonic()
            for w in [w for w in pool if w.state == "busy" and w.deadline < now]:
                replace(w, "worker_timeout")
    finally:
        for w in pool:
            w.stop(graceful=w.state == "idle")
