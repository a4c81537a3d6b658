"""Rollouts: W LIBERO worker processes step in parallel; the policy runs once per step in the main process for
all workers whose action queue is empty (one batch).

Observations reach the policy exactly as in lerobot-eval (eval_libero.lerobot_compat.env_inputs), then: policy
preprocessor -> policy -> postprocessor -> env postprocessor -> numpy (7,) action. Workers import only LIBERO (no
torch, no LeRobot); this module imports torch/LeRobot lazily, on the policy side.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from eval_libero.sim import upright

RAW_KEYS = tuple(  # what LeRobot's LiberoEnv reads from a raw observation
    "agentview_image robot0_eye_in_hand_image robot0_eef_pos robot0_eef_quat robot0_gripper_qpos "
    "robot0_gripper_qvel robot0_joint_pos robot0_joint_vel".split()
)
VIDEO_FPS = 20  # the sim's control rate


@dataclass(frozen=True)
class EpisodeSpec:
    index: int  # position in the run's full, canonical episode list (sharding, video choice)
    suite: str
    task_id: int
    init_state: int
    seed: int  # the user's seed
    episode_seed: int  # derived from (seed, suite, task, init): seeds torch/numpy for this episode
    max_steps: int  # env steps after the wait steps
    video: str | None = None  # mp4 path, or None
    perturbation: str = "none"  # LIBERO-PRO variant of the suite ("none" = the standard suite)


def derive_seed(seed: int, suite: str, task_id: int, init_state: int) -> int:
    digest = hashlib.sha256(f"{seed}/{suite}/{task_id}/{init_state}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# ---- worker process (LIBERO only) -----------------------------------------------------------------------------


def raw_obs_for_lerobot(sim: Any, raw: dict) -> dict:
    """What LeRobot's LiberoEnv reads from a raw obs, plus the controller's eef rotation matrix it also reads."""
    out = {k: np.asarray(raw[k]).copy() for k in RAW_KEYS}
    out["eef_mat"] = np.asarray(sim.env.robots[0].controller.ee_ori_mat).copy()
    return out


def obs_digest(raw: dict) -> str:
    """Short sha256 of what the policy reads from a raw observation (both cameras, eef pose, gripper): two runs
    that start an episode identically (same init state and fixture placement) have the same digest."""
    h = hashlib.sha256()
    for k in (
        "agentview_image",
        "robot0_eye_in_hand_image",
        "robot0_eef_pos",
        "robot0_eef_quat",
        "robot0_gripper_qpos",
    ):
        h.update(np.ascontiguousarray(raw[k]).tobytes())
    return h.hexdigest()[:16]


def _finish(spec: EpisodeSpec, success: bool, steps: int, frames: list | None, first: str) -> dict:
    out = {"success": success, "steps": steps, "video": None, "first_obs_sha256": first}
    if frames:
        try:
            import imageio.v2 as imageio

            os.makedirs(os.path.dirname(spec.video), exist_ok=True)
            imageio.mimwrite(spec.video, frames, fps=VIDEO_FPS, macro_block_size=1)
            out["video"] = spec.video
        except Exception as e:  # a video problem never fails the episode
            out["video_error"] = f"{type(e).__name__}: {e}"
    return out


def worker_main(conn: Any, wait_steps: int, image_size: int) -> None:
    """Holds one LiberoSim (rebuilt when the task changes). Messages in: ("reset", spec), ("step", action, want_obs),
    ("abort",), ("close",). Out: ("obs", raw, language) or ("ok",) if the obs is not wanted (the policy has queued
    actions left), ("done", result), ("error", traceback)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from eval_libero.sim import LiberoSim

    sim, where, spec, steps, frames, first = None, None, None, 0, None, ""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break  # the main process is gone or interrupted
        if msg[0] == "close":
            break
        try:
            if msg[0] == "reset":
                spec = msg[1]
                if where != (spec.suite, spec.task_id):
                    if sim is not None:
                        sim.close()
                    sim = where = None  # stays None if the new env fails to build
                    sim = LiberoSim(spec.suite, spec.task_id, size=image_size)
                    where = (spec.suite, spec.task_id)
                raw = sim.reset(spec.init_state, wait_steps, seed=spec.episode_seed % 2**32)
                steps, frames, first = 0, ([] if spec.video else None), obs_digest(raw)
                _add_frame(frames, raw)
                conn.send(("obs", raw_obs_for_lerobot(sim, raw), sim.info.language))
            elif msg[0] == "step":
                raw, ok = sim.step(msg[1])
                steps += 1
                _add_frame(frames, raw)
                if ok or steps >= spec.max_steps:
                    conn.send(("done", _finish(spec, ok, steps, frames, first)))
                elif msg[2]:
                    conn.send(("obs", raw_obs_for_lerobot(sim, raw), sim.info.language))
                else:
                    conn.send(("ok",))
            else:  # abort
                conn.send(("done", _finish(spec, False, steps, frames, first)))
        except Exception:
            with contextlib.suppress(Exception):
                sim.close()
            sim = where = None
            conn.send(("error", traceback.format_exc()))
    if sim is not None:
        sim.close()


def _add_frame(frames: list | None, raw: dict) -> None:
    if frames is not None:  # upright (dataset convention): agentview | wrist
        views = (raw["agentview_image"], raw["robot0_eye_in_hand_image"])
        frames.append(np.concatenate([upright(v) for v in views], 1))


# ---- policy side ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: tuple  # episode key
    raw: dict  # raw obs from the worker
    task: str  # instruction
    step: int  # env steps taken so far in the episode


class PolicyRunner:
    """Actions for a batch of episodes. Modes: `batched` (one predict_action_chunk call for all rows),
    `per-episode` (predict_action_chunk per episode, each with its own RNG stream), `select` (select_action per
    episode with its own policy state and RNG: lerobot-eval's exact semantics, for policies with observation
    history or temporal ensembling). `auto` = select if chunking is not safe, else batched if the policy is
    deterministic (probed on the first batch), else per-episode: results never depend on the worker count."""

    MODES = ("auto", "batched", "per-episode", "select")

    def __init__(
        self, policy, preprocessor, postprocessor, env_preprocessor, env_postprocessor, mode: str = "auto"
    ):
        import lerobot.envs.libero  # noqa: F401  (imported here, not inside the first episode's timing)
        import torch

        self.policy, self.pre, self.post = policy, preprocessor, postprocessor
        self.env_pre, self.env_post, self.torch = env_preprocessor, env_postprocessor, torch
        cfg = policy.config
        self.n_action_steps = int(getattr(cfg, "n_action_steps", 1) or 1)
        history = (getattr(cfg, "n_obs_steps", 1) or 1) > 1 or getattr(cfg, "temporal_ensemble_coeff", None)
        chunk_ok = not history
        if mode not in self.MODES:
            raise ValueError(f"unknown policy-call mode {mode!r}; valid: {', '.join(self.MODES)}")
        if mode in ("batched", "per-episode") and not chunk_ok:
            raise ValueError(f"--policy-calls {mode}: the policy has obs history/ensembling; use select")
        self.mode = mode if mode != "auto" else ("probe" if chunk_ok else "select")
        skip = set(vars(torch.nn.Module())) | {"config"}
        self.state_names = [k for k in vars(policy) if k not in skip]
        self.rng: dict[tuple, tuple] = {}
        self.pstate: dict[tuple, dict] = {}
        device = next(iter(policy.parameters()), torch.zeros(0)).device
        self.cuda = device if device.type == "cuda" else None

    # -- per-episode RNG and policy state
    def _get_rng(self) -> tuple:
        cuda = self.torch.cuda.get_rng_state(self.cuda) if self.cuda else None
        return (self.torch.get_rng_state(), cuda, np.random.get_state())

    def _set_rng(self, state: tuple) -> None:
        self.torch.set_rng_state(state[0])
        if state[1] is not None:
            self.torch.cuda.set_rng_state(state[1], self.cuda)
        np.random.set_state(state[2])

    def begin(self, key: tuple, seed: int) -> None:
        self.torch.manual_seed(seed)
        np.random.seed(seed)
        self.rng[key] = self._get_rng()
        if self.mode == "select":
            self.policy.reset()
            self.pstate[key] = {n: getattr(self.policy, n) for n in self.state_names}

    def end(self, key: tuple) -> None:
        self.rng.pop(key, None)
        self.pstate.pop(key, None)

    # -- actions
    def _batch(self, rows: list[Row]) -> dict:
        from eval_libero.lerobot_compat import env_inputs

        return self.pre(env_inputs([r.raw for r in rows], [r.task for r in rows], self.env_pre))

    def _chunk(self, rows: list[Row]):
        with self.torch.inference_mode():
            return self.policy.predict_action_chunk(self._batch(rows))

    def _probe(self, rows: list[Row]) -> str:
        outs = []
        for s in (1, 2):
            self.torch.manual_seed(s)
            outs.append(self._chunk(rows))
        same = self.torch.equal(self.torch.nan_to_num(outs[0]), self.torch.nan_to_num(outs[1]))
        return "batched" if same else "per-episode"

    def act(self, rows: list[Row]) -> list[np.ndarray | str]:
        """Per row: an (n, 7) float array of actions to execute next, or a string saying why there is none."""
        if self.mode == "probe":
            self.mode = self._probe(rows)
        if self.mode == "batched":
            mix = hashlib.sha256(repr(sorted((r.key, r.step) for r in rows)).encode()).digest()
            self.torch.manual_seed(int.from_bytes(mix[:4], "little"))
            return self._post(self._chunk(rows), len(rows))
        out: list[np.ndarray | str] = []
        for r in rows:
            self._set_rng(self.rng[r.key])
            if self.mode == "select":
                for n, v in self.pstate[r.key].items():
                    setattr(self.policy, n, v)
                with self.torch.inference_mode():
                    a = self.policy.select_action(self._batch([r]))
                self.pstate[r.key] = {n: getattr(self.policy, n) for n in self.state_names}
                chunk = a.unsqueeze(1) if a.ndim == 2 else a
            else:
                chunk = self._chunk([r])
            self.rng[r.key] = self._get_rng()
            out += self._post(chunk, 1)
        return out

    def _post(self, chunk, n_rows: int) -> list[np.ndarray | str]:
        from lerobot.utils.constants import ACTION

        if chunk.ndim != 3 or chunk.shape[0] != n_rows:
            return [f"policy output of shape {tuple(chunk.shape)}; expected ({n_rows}, steps, 7)"] * n_rows
        steps = []
        try:
            for t in range(min(self.n_action_steps, chunk.shape[1])):
                a = self.env_post({ACTION: self.post(chunk[:, t])})[ACTION]
                steps.append(a.detach().to("cpu", self.torch.float32).numpy())
        except Exception as e:
            return [f"postprocessing output {tuple(chunk.shape)} failed: {type(e).__name__}: {e}"] * n_rows
        acts = np.stack(steps, 1)
        out: list[np.ndarray | str] = []
        for a in acts:
            if a.ndim != 2 or a.shape[1] != 7:
                out.append(f"action of shape {tuple(a.shape[1:])}; expected (7,)")
            elif not np.isfinite(a).all():
                out.append(f"non-finite action (NaN/inf) in {a.tolist()}")
            else:
                out.append(a)
        return out


# ---- the loop ---------------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, ctx: Any, wait_steps: int, image_size: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, wait_steps, image_size), daemon=True)
        self.proc.start()
        child.close()
        self.state = "idle"  # idle | reset | step (a reply is due) | wait (has an obs, needs an action)
        self.spec: EpisodeSpec | None = None

    def start(self, spec: EpisodeSpec, t0: float) -> None:
        self.spec, self.state, self.t0 = spec, "reset", t0
        self.queue: deque = deque()
        self.raw, self.task, self.steps, self.failure = None, "", 0, None
        self.sha = hashlib.sha256()
        self.conn.send(("reset", spec))

    def step(self) -> None:
        a = self.queue.popleft()
        self.sha.update(np.asarray(a, np.float32).tobytes())
        self.raw, self.state, self.steps = None, "step", self.steps + 1
        self.conn.send(("step", a, not self.queue))  # the obs is only needed when the policy runs next

    def result(self, res: dict, now: float) -> dict:
        timeout = f"timeout: no success in {self.spec.max_steps} steps"
        failure = self.failure or (None if res["success"] else timeout)
        return dict(
            success=bool(res["success"]),
            steps=res["steps"],
            failure=failure,
            wall_s=round(now - self.t0, 3),
            video=res["video"],
            actions_sha256=self.sha.hexdigest()[:16],
            first_obs_sha256=res["first_obs_sha256"],
            instruction=self.task,
        )

    def stop(self, graceful: bool) -> None:
        if graceful:  # idle: it exits at once
            try:
                self.conn.send(("close",))
            except OSError:
                pass
            self.proc.join(timeout=30)
        if self.proc.is_alive():  # mid-episode (an error in the main process): do not wait for it
            self.proc.terminate()
            self.proc.join(timeout=10)


def run_episodes(
    specs: list[EpisodeSpec],
    runner: PolicyRunner,
    workers: int,
    on_done: Callable[[EpisodeSpec, dict], None],
    wait_steps: int,
    image_size: int,
    log: Callable[[str], None] = print,
) -> int:
    """Run `specs` on `workers` processes; `on_done(spec, result)` is called as each episode ends. Returns the
    number of episodes lost to simulator errors or dead workers (not recorded: a re-run retries them)."""
    import time

    ctx = mp.get_context("spawn")
    pending = deque(specs)
    pool = [_Worker(ctx, wait_steps, image_size) for _ in range(max(1, min(workers, len(specs))))]
    lost = 0

    def assign(w: _Worker) -> None:
        w.state, w.spec = "idle", None
        if pending:  # prefer an episode of the task this worker's sim already holds (no env rebuild)
            last = w.__dict__.get("last_task")
            spec = next((s for s in pending if (s.suite, s.task_id) == last), pending[0])
            pending.remove(spec)
            w.last_task = (spec.suite, spec.task_id)
            runner.begin(_key(spec), spec.episode_seed)
            w.start(spec, time.time())

    try:
        for w in pool:
            assign(w)
        while any(w.state != "idle" for w in pool):
            busy = {w.conn: w for w in pool if w.state in ("reset", "step")}
            for conn in wait(list(busy)) if busy else []:
                w = busy[conn]
                try:
                    kind, *body = conn.recv()
                except (EOFError, OSError):
                    log(
                        f"worker died (exit {w.proc.exitcode}) in {_name(w.spec)}: not recorded; restarting it"
                    )
                    lost += 1
                    runner.end(_key(w.spec))
                    pool[pool.index(w)] = w = _Worker(ctx, wait_steps, image_size)
                    assign(w)
                    continue
                if kind == "obs":
                    w.raw, w.task, w.state = body[0], body[1], "wait"
                elif kind == "ok":
                    w.state = "wait"
                elif kind == "done":
                    if body[0].get("video_error"):
                        log(f"video of {_name(w.spec)} not written: {body[0]['video_error']}")
                    on_done(w.spec, w.result(body[0], time.time()))
                    runner.end(_key(w.spec))
                    assign(w)
                else:
                    log(f"simulator error in {_name(w.spec)} (not recorded; a re-run retries it):\n{body[0]}")
                    lost += 1
                    runner.end(_key(w.spec))
                    assign(w)
            for w in pool:
                if w.state == "wait" and w.queue:
                    w.step()
            need = [w for w in pool if w.state == "wait"]
            in_flight = [w for w in pool if w.state == "step" and not w.queue]  # will need the policy next
            if need and not in_flight:
                rows = [Row(_key(w.spec), w.raw, w.task, w.steps) for w in need]
                for w, acts in zip(need, runner.act(rows), strict=True):
                    if isinstance(acts, str):
                        w.failure, w.state = f"policy: {acts}", "step"
                        w.conn.send(("abort",))
                    else:
                        w.queue.extend(acts)
                        w.step()
    finally:
        for w in pool:
            w.stop(graceful=w.state == "idle")
    return lost


def _key(spec: EpisodeSpec) -> tuple:
    """The record key of a spec (eval_libero.records.episode_key)."""
    return (spec.suite, spec.perturbation, spec.task_id, spec.init_state, spec.seed)


def _name(s: EpisodeSpec) -> str:
    return f"{s.suite} task {s.task_id} init {s.init_state} seed {s.seed}"
