"""LIBERO simulation and THE observation convention shared by demos, evaluation and training.

Convention (identical to the hub's LIBERO LeRobot datasets and LeRobot's LIBERO env pipeline):
  images   raw 256x256 renders rotated 180 deg (`raw[::-1, ::-1]`): upright, mirrored left-right
           `observation.images.image` = agentview (third person), `observation.images.image2` = wrist
  state    (8,) float32 = eef pos (3) + robosuite quat2axisangle(robot0_eef_quat) (3) + gripper qpos (2)
  action   (7,) OSC_POSE delta [dx, dy, dz, drx, dry, drz, g], gripper -1 open / +1 close
  timing   an observation is recorded before its action; reset = official init state + 10 dummy steps
"""

from __future__ import annotations

import atexit
import math
import os
from dataclasses import dataclass

import numpy as np

from libero_core.suites import DUMMY_ACTION, IMAGE_SIZE, NUM_WAIT_STEPS, resolve_suite
from libero_core.tasks import init_states, task_of

os.environ.setdefault("MUJOCO_GL", "egl")

IMAGE_KEY = "observation.images.image"  # agentview, third person
WRIST_KEY = "observation.images.image2"  # robot0_eye_in_hand
STATE_KEY = "observation.state"
STATE_NAMES = ["x", "y", "z", "axis_angle1", "axis_angle2", "axis_angle3", "gripper_qpos1", "gripper_qpos2"]
ACTION_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """robosuite's quat2axisangle (xyzw in, axis*angle out), without sign canonicalisation: angle in [0, 2pi]."""
    w = float(np.clip(quat[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return np.asarray(quat[:3], dtype=np.float64) * 2.0 * math.acos(w) / den


def state_from_obs(raw_obs: dict) -> np.ndarray:
    """(8,) float32 state of a raw LIBERO observation."""
    return np.concatenate(
        [
            raw_obs["robot0_eef_pos"],
            quat2axisangle(raw_obs["robot0_eef_quat"]),
            raw_obs["robot0_gripper_qpos"],
        ]
    ).astype(np.float32)


def upright(raw_image: np.ndarray) -> np.ndarray:
    """THE image convention: a raw LIBERO render (..., H, W, 3), upside down, rotated 180 deg -> upright and
    mirrored left-right, as the hub datasets and LeRobot's env pipeline store it. Works on one frame or a stack."""
    return np.ascontiguousarray(np.asarray(raw_image)[..., ::-1, ::-1, :])


def frame_from_obs(raw_obs: dict) -> dict[str, np.ndarray]:
    """Raw LIBERO observation -> dataset/policy frame: upright uint8 HWC images + 8-D state."""
    return {
        IMAGE_KEY: upright(raw_obs["agentview_image"]),
        WRIST_KEY: upright(raw_obs["robot0_eye_in_hand_image"]),
        STATE_KEY: state_from_obs(raw_obs),
    }


@dataclass(frozen=True)
class TaskInfo:
    suite: str  # standard LIBERO suite name, e.g. libero_object
    task_id: int  # index in the suite (a LIBERO-PRO variant's task of the same name)
    name: str  # LIBERO task name (bddl stem)
    language: str  # the instruction the policy receives (libero_core.perturbations.instruction)
    bddl_file: str  # absolute path of the task's BDDL file (the variant's, for a perturbation)
    n_init_states: int  # official init states (50)
    perturbation: str = "none"  # LIBERO-PRO variant ("none" = the standard suite)


def task_info(suite_name: str, task_id: int, perturbation: str = "none") -> TaskInfo:
    from libero.libero import get_libero_path

    from libero_core.perturbations import instruction

    bench, i = task_of(suite_name, task_id, perturbation)
    task = bench.get_task(i)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    lang = instruction(resolve_suite(suite_name).name, task_id, perturbation)
    n = len(init_states(suite_name, task_id, perturbation))
    return TaskInfo(resolve_suite(suite_name).name, task_id, task.name, lang, bddl, n, perturbation)


CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")  # raw camera observations: third person, wrist


class LiberoSim:
    """One LIBERO task: reset to an official init state, a recorded start state or a randomized placement; step,
    check success. `render=False` builds no renderer (~100 steps/s instead of ~5): physics are identical, so a
    plan made without rendering can be re-rendered by replaying its actions.

    Rendering on demand: with a renderer, `step(action, render=False)` skips the cameras (their observation is
    then black), `render=True` renders them exactly as every-step rendering would (robosuite samples camera
    observables inside `env.step`; we only gate their sensor, so the frame comes from the same sim state, byte
    for byte). `cameras` names the cameras that ever render (default both); the others stay black."""

    def __init__(
        self,
        suite_name: str,
        task_id: int,
        render: bool = True,
        size: int = IMAGE_SIZE,
        perturbation: str = "none",
        cameras: tuple[str, ...] = CAMERAS,
    ):
        from libero.libero.envs import OffScreenRenderEnv

        self.info = task_info(suite_name, task_id, perturbation)
        self.render, self.cameras, self._render_now = render, tuple(cameras), True
        self._init_states = init_states(suite_name, task_id, perturbation)
        kwargs = {"camera_heights": size, "camera_widths": size}
        if not render:
            kwargs.update(has_offscreen_renderer=False, use_camera_obs=False)
        self.env = OffScreenRenderEnv(bddl_file_name=self.info.bddl_file, **kwargs)
        self.env.seed(0)
        atexit.register(self.close)  # free GL contexts before EGL's own atexit terminates the display

    def _gate_cameras(self) -> None:
        """Wrap each camera observable's sensor (robosuite re-creates them at every hard reset)."""
        observables = self.env.env._observables
        for name in CAMERAS if self.render else ():
            obs = observables[name]
            real, blank = obs._sensor, np.zeros(obs._data_shape, np.uint8)
            use = name in self.cameras

            def gated(cache, real=real, blank=blank, use=use):
                return real(cache) if use and self._render_now else blank

            gated.__modality__ = real.__modality__
            obs._sensor = gated

    def reset(
        self,
        init_index: int | None = None,
        wait_steps: int = NUM_WAIT_STEPS,
        seed: int | None = None,
        start_state: np.ndarray | None = None,
    ) -> dict:
        """Start an episode, then take `wait_steps` dummy steps; returns the raw obs. The start (a flattened MuJoCo
        state, the layout of LIBERO's init states) is, in order of precedence: `start_state`; official init state
        `init_index` (mod 50); else LIBERO's own randomized placement of the task's BDDL regions, sampled at reset.
        LIBERO re-places fixtures (cabinets, stoves, racks: not part of a start state) and samples the randomized
        placement from the global numpy RNG at every reset; `seed` makes both, and so the episode, reproducible.
        The start used is kept in `self.start_state`."""
        if seed is not None:
            self.env.seed(seed)
        self._render_now = False  # nothing before the last wait step is ever read
        self.env.reset()
        self._gate_cameras()
        if start_state is None:
            start_state = (
                self.sim_state()
                if init_index is None
                else self._init_states[init_index % len(self._init_states)]
            )
        self.start_state = np.asarray(start_state, dtype=np.float64).copy()
        self._render_now = wait_steps == 0
        obs = self.env.set_init_state(self.start_state)
        for i in range(wait_steps):
            self._render_now = i == wait_steps - 1
            obs, _, _, _ = self.env.step(list(DUMMY_ACTION))
        self._render_now = True
        return obs

    def step(self, action, render: bool = True) -> tuple[dict, bool]:
        """Apply a 7-D action; returns (raw obs, success). Success = LIBERO's goal predicate. With
        `render=False` the cameras are skipped (black frames in the obs)."""
        self._render_now = render
        try:
            obs, _, _, _ = self.env.step(np.asarray(action, dtype=np.float64).tolist())
        finally:
            self._render_now = True
        return obs, bool(self.env.check_success())

    def sim_state(self) -> np.ndarray:
        return np.asarray(self.env.sim.get_state().flatten())

    def close(self) -> None:
        """Idempotent; also runs at interpreter exit."""
        if getattr(self, "env", None) is not None:
            self.env.close()
            self.env = None
        atexit.unregister(self.close)
