"""Test doubles that spawned processes can import cheaply (numpy only): fake raw LIBERO observations and a
worker speaking eval_libero.worker's protocol without LIBERO."""

from __future__ import annotations

import os
import time

import numpy as np


def fake_raw(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    sizes = dict(eef_pos=3, eef_quat=4, gripper_qpos=2, gripper_qvel=2, joint_pos=7, joint_vel=7)
    raw = {f"robot0_{k}": rng.normal(size=n) for k, n in sizes.items()}
    for k in ("agentview_image", "robot0_eye_in_hand_image"):
        raw[k] = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return {
        **raw,
        "robot0_eef_quat": raw["robot0_eef_quat"] / np.linalg.norm(raw["robot0_eef_quat"]),
        "eef_mat": np.eye(3),
    }


def faulty_worker(conn, *args) -> None:
    """A worker process speaking eval_libero.worker's protocol without LIBERO: init state 1 hangs at its reset,
    init state 2 dies, init state 3 raises inside the "simulator"; the others run 3-step episodes."""
    steps = 0
    while True:
        msg = conn.recv()
        if msg[0] == "close":
            return
        if msg[0] == "reset":
            spec, steps = msg[1], 0
            if spec.init_state == 1:
                time.sleep(3600)
            if spec.init_state == 2:
                os._exit(3)
            conn.send(("obs", fake_raw(spec.init_state), "do it"))
        elif msg[0] == "chunk" and spec.init_state == 3:
            conn.send(("error", "Traceback (most recent call last):\nValueError: physics exploded", ""))
        elif msg[0] == "chunk":
            steps += len(msg[1])
            done = steps >= spec.max_steps
            res = {"success": False, "steps": steps, "video": None, "first_obs_sha256": "x"}
            conn.send(("done", res, "") if done else ("obs", fake_raw(steps), "do it"))
        else:
            conn.send(
                ("done", {"success": False, "steps": steps, "video": None, "first_obs_sha256": "x"}, "")
            )


def dies_after_reply_worker(conn, *args) -> None:
    """Like `faulty_worker` without its faults, but at init state 4 it replies to the reset and exits at once:
    the scheduler's next write to it (the action chunk) meets a closed pipe."""
    steps = 0
    while True:
        msg = conn.recv()
        if msg[0] == "close":
            return
        if msg[0] == "reset":
            spec, steps = msg[1], 0
            conn.send(("obs", fake_raw(spec.init_state), "do it"))
            if spec.init_state == 4:
                conn.close()
                os._exit(5)
        elif msg[0] == "chunk":
            steps += len(msg[1])
            res = {"success": False, "steps": steps, "video": None, "first_obs_sha256": "x"}
            conn.send(("done", res, "") if steps >= spec.max_steps else ("obs", fake_raw(steps), "do it"))
        else:
            conn.send(
                ("done", {"success": False, "steps": steps, "video": None, "first_obs_sha256": "x"}, "")
            )
