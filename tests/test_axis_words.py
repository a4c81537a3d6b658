"""Axis words match the image that is shown. Oracle: rendered pixels. The gripper's visual geoms are painted
magenta in a real LIBERO scene; the end effector moves along world +X, +Y, +Z (OSC delta actions); the painted
pixels' centroid moves in the frame as stored (libero_core/sim.py's convention: rotated 180 deg). The word the MCQA
(reasoning/questions.py movement phrases) and the VLA prompt (adapters/prompts.py robot_r1 style) use for each
axis' + direction must name that image direction."""

from __future__ import annotations

import re

import numpy as np
import pytest

# what a word means in an image, (column, row) sign: plain English, independent of the package
MEANING = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "front": (0, 1), "back": (0, -1)}
# "front" = toward the camera, which looks down at the table from in front of the robot: lower in the image


def _paint(sim) -> list[int]:
    m = sim.env.env.sim.model
    ids = [i for i in range(m.ngeom) if re.match(r"gripper0_.*_visual$", m.geom_id2name(i) or "")]
    m.geom_matid[ids] = -1  # a material would override the colour
    m.geom_rgba[ids] = [1.0, 0.0, 1.0, 1.0]
    return ids


def _centroid(image: np.ndarray) -> np.ndarray:
    r, g, b = (image[..., k].astype(int) for k in range(3))
    rows, cols = np.nonzero((r > 150) & (g < 60) & (b > 150))
    assert len(rows) > 10, "the painted gripper is not visible"
    return np.array([cols.mean(), rows.mean()])


def _image_moves(sim, axis: int, steps: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(world displacement m, image displacement (col, row) px) of `steps` full +axis OSC actions."""
    from libero_core.sim import IMAGE_KEY, frame_from_obs

    sim.reset(init_index=0)
    _paint(sim)  # robosuite rebuilds the model at a hard reset: paint after it
    obs, _ = sim.step([0.0] * 7)
    p0, c0 = obs["robot0_eef_pos"].copy(), _centroid(frame_from_obs(obs)[IMAGE_KEY])
    action = [0.0] * 7
    action[axis] = 1.0
    for k in range(steps):
        obs, _ = sim.step(action, render=k == steps - 1)
    return obs["robot0_eef_pos"] - p0, _centroid(frame_from_obs(obs)[IMAGE_KEY]) - c0


def _prompt_plus_words() -> list[str]:
    from adapters.prompts import build_prompt

    text = build_prompt("robot_r1", "put the bowl on the plate", [0.1, 0.0, 1.0, 0, 0, 0, 0, 0])
    return [re.search(rf"{a} (?:\w+\(−\)/)?(\w+)\(\+\)", text).group(1) for a in "XYZ"]


def _mcqa_plus_words() -> list[str]:
    from reasoning.questions import movement_phrase

    return [movement_phrase(tuple(int(i == a) for i in range(3))).removeprefix("move ") for a in range(3)]


@pytest.mark.libero
def test_axis_words_match_the_rendered_frame():
    from libero_core.sim import LiberoSim

    words = {"prompt": _prompt_plus_words(), "mcqa": _mcqa_plus_words()}
    sim = LiberoSim("libero_object", 0, render=True, size=128, cameras=("agentview_image",))
    try:
        for axis in range(3):
            world, pixels = _image_moves(sim, axis)
            assert world[axis] > 0.05 and np.abs(world).argmax() == axis  # it moved along +axis
            main = int(np.abs(pixels).argmax())
            seen = [0, 0]
            seen[main] = int(np.sign(pixels[main]))
            assert abs(pixels[main]) >= 3, (
                f"axis {'XYZ'[axis]}: the gripper barely moved in the image {pixels}"
            )
            for where, w in words.items():
                assert MEANING[w[axis]] == tuple(seen), (
                    f"{where} calls +{'XYZ'[axis]} {w[axis]!r}, but the gripper moves {pixels} (col, row) px in the "
                    "shown frame"
                )
    finally:
        sim.close()
