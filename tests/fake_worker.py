"""Test doubles that spawned processes can import cheaply (numpy only): fake raw LIBERO observations, workers
speaking eval_libero.worker's protocol without LIBERO, and the driver that runs the scheduler on them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

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


def _done(steps: int) -> tuple:
    return ("done", {"success": False, "steps": steps, "video": None, "first_obs_sha256": "x"}, "")


def _serve(conn, on_reset: Callable, sim_error: Callable = lambda spec: False) -> None:
    """The protocol loop of a fake worker: `on_reset(conn, spec)` answers a reset; a chunk for which
    `sim_error(spec)` holds gets a simulator error; any other chunk advances the episode by its length, which
    ends (unsuccessful) at spec.max_steps steps."""
    steps = 0
    while True:
        msg = conn.recv()
        if msg[0] == "close":
            return
        if msg[0] == "reset":
            spec, steps = msg[1], 0
            on_reset(conn, spec)
        elif msg[0] == "chunk" and sim_error(spec):
            conn.send(("error", "Traceback (most recent call last):\nValueError: physics exploded", ""))
        elif msg[0] == "chunk":
            steps += len(msg[1])
            conn.send(_done(steps) if steps >= spec.max_steps else ("obs", fake_raw(steps), "do it"))
        else:
            conn.send(_done(steps))


def _reset_with_faults(conn, spec) -> None:
    if spec.init_state == 1:
        time.sleep(3600)
    if spec.init_state == 2:
        os._exit(3)
    conn.send(("obs", fake_raw(spec.init_state), "do it"))


def _reset_then_die_at_4(conn, spec) -> None:
    conn.send(("obs", fake_raw(spec.init_state), "do it"))
    if spec.init_state == 4:
        conn.close()
        os._exit(5)


def faulty_worker(conn, *args) -> None:
    """A worker process speaking eval_libero.worker's protocol without LIBERO: init state 1 hangs at its reset,
    init state 2 dies, init state 3 raises inside the "simulator"; the others run 3-step episodes."""
    _serve(conn, _reset_with_faults, sim_error=lambda spec: spec.init_state == 3)


def dies_after_reply_worker(conn, *args) -> None:
    """Like `faulty_worker` without its faults, but at init state 4 it replies to the reset and exits at once:
    the scheduler's next write to it (the action chunk) meets a closed pipe."""
    _serve(conn, _reset_then_die_at_4)


def run_on_fake_workers(
    runner, init_states: Iterable[int], timeout_s: float, worker: Callable
) -> tuple[dict, list[str]]:
    """eval_libero.scheduler.run_episodes on 2 fake workers: libero_object task 0 at the given init states (eval
    seed 7, episode seed 100 + init state, 8 steps each). Returns the results by init state and the log lines."""
    from eval_libero.scheduler import EpisodeSpec, run_episodes

    specs = [EpisodeSpec(i, "libero_object", 0, i, 7, 100 + i, 8) for i in init_states]
    got, logs = {}, []
    run_episodes(
        specs,
        runner,
        2,
        lambda s, r: got.__setitem__(s.init_state, r),
        10,
        256,
        timeout_s,
        worker=worker,
        log=logs.append,
    )
    return got, logs
