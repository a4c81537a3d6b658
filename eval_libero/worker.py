"""The LIBERO worker process: one LiberoSim, whole action chunks, rendering only what is read.

Imports LIBERO and numpy only (no torch, no LeRobot): a worker is cheap to spawn and to replace. Protocol on its
pipe (eval_libero.scheduler is the other end):

    in  ("reset", spec)          start the episode `spec` (an EpisodeSpec)
        ("chunk", actions)       execute (n, 7) actions; the cameras render only on the last one (the observation
                                 the policy reads next), or on every step when the episode records a video
        ("abort", reason)        end the episode now (the policy failed)
        ("close",)               exit
    out ("obs", raw, instruction)     the observation after a reset or a chunk (see raw_obs_for_lerobot)
        ("done", result)              the episode ended: success, steps, video, first_obs_sha256
        ("error", traceback)          the simulator raised; the sim is rebuilt on the next reset
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import traceback
from typing import Any

import numpy as np

from libero_core.sim import CAMERAS, upright

RAW_KEYS = tuple(  # what LeRobot's LiberoEnv reads from a raw observation
    "agentview_image robot0_eye_in_hand_image robot0_eef_pos robot0_eef_quat robot0_gripper_qpos "
    "robot0_gripper_qvel robot0_joint_pos robot0_joint_vel".split()
)
VIDEO_FPS = 20  # the sim's control rate
RENDER_EVERY_STEP = (
    "R1VLA_RENDER_EVERY_STEP"  # =1: render the cameras on every step (to check on-demand rendering)
)


def raw_obs_for_lerobot(sim: Any, raw: dict) -> dict:
    """What LeRobot's LiberoEnv reads from a raw obs, plus the controller's eef rotation matrix it also reads."""
    out = {k: np.asarray(raw[k]).copy() for k in RAW_KEYS}
    out["eef_mat"] = np.asarray(sim.env.robots[0].controller.ee_ori_mat).copy()
    return out


def obs_digest(raw: dict) -> str:
    """Short sha256 of what a policy reads from a raw observation (cameras, eef pose, gripper): two runs that
    start an episode identically (same start state and fixture placement) have the same digest."""
    h = hashlib.sha256()
    for k in (*CAMERAS, "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"):
        h.update(np.ascontiguousarray(raw[k]).tobytes())
    return h.hexdigest()[:16]


class _Episode:
    """One episode in a worker: its spec, step count, video frames and first-observation digest."""

    def __init__(self, spec: Any, raw: dict):
        self.spec, self.steps, self.first = spec, 0, obs_digest(raw)
        self.frames: list | None = [] if spec.video else None
        self.add_frame(raw)

    def add_frame(self, raw: dict) -> None:
        if self.frames is not None:  # upright (dataset convention): agentview | wrist
            self.frames.append(np.concatenate([upright(raw[c]) for c in CAMERAS], 1))

    def result(self, success: bool) -> dict:
        out = {"success": success, "steps": self.steps, "video": None, "first_obs_sha256": self.first}
        if self.frames:
            try:
                import imageio.v2 as imageio

                os.makedirs(os.path.dirname(self.spec.video), exist_ok=True)
                imageio.mimwrite(self.spec.video, self.frames, fps=VIDEO_FPS, macro_block_size=1)
                out["video"] = self.spec.video
            except Exception as e:  # a video problem never fails the episode
                out["video_error"] = f"{type(e).__name__}: {e}"
        return out


def _run_chunk(sim: Any, ep: _Episode, actions: np.ndarray, every: bool) -> tuple[str, Any]:
    """Step through `actions`; ('done', result) at success or the step cap, else ('obs', raw) after the chunk."""
    if ep.spec.gripper == "sign":  # vla-eval's LIBERO rule: -1 if g < 0 else +1
        actions = actions.copy()
        actions[:, -1] = np.where(actions[:, -1] < 0, -1.0, 1.0)
    for i, a in enumerate(actions):
        last = i == len(actions) - 1
        need = last and ep.steps + 1 < ep.spec.max_steps  # the observation the policy reads next
        raw, ok = sim.step(a, render=every or ep.frames is not None or need)
        ep.steps += 1
        ep.add_frame(raw)
        if ok or ep.steps >= ep.spec.max_steps:
            return "done", ep.result(ok)
    return "obs", raw


def worker_main(
    conn: Any, wait_steps: int, image_size: int, cameras: tuple[str, ...], egl_device: int | None
) -> None:
    """Serve one pipe until "close" or until the other end goes away."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if egl_device is not None:  # one GPU per torchrun rank for rendering too
        os.environ.setdefault("MUJOCO_EGL_DEVICE_ID", str(egl_device))
    from libero_core.sim import LiberoSim

    every = os.environ.get(RENDER_EVERY_STEP) == "1"
    sim, where, ep = None, None, None
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
                task = (spec.suite, spec.task_id, spec.perturbation)
                if where != task:
                    if sim is not None:
                        sim.close()
                    sim = where = None  # stays None if the new env fails to build
                    sim = LiberoSim(*task[:2], size=image_size, perturbation=task[2], cameras=cameras)
                    where = task
                init = None if spec.start_state is not None else spec.init_state
                seed = spec.episode_seed if spec.reset_seed is None else spec.reset_seed
                raw = sim.reset(init, wait_steps, seed=seed % 2**32, start_state=spec.start_state)
                ep = _Episode(spec, raw)
                conn.send(("obs", raw_obs_for_lerobot(sim, raw), sim.info.language))
            elif msg[0] == "chunk":
                kind, body = _run_chunk(sim, ep, np.asarray(msg[1], dtype=np.float64), every)
                conn.send(
                    (kind, raw_obs_for_lerobot(sim, body) if kind == "obs" else body, sim.info.language)
                )
            else:  # abort
                conn.send(("done", ep.result(False), ""))
        except Exception:
            with contextlib.suppress(Exception):
                sim.close()
            sim = where = None
            conn.send(("error", traceback.format_exc(), ""))
    if sim is not None:
        sim.close()
