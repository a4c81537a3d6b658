"""Prompt styles: how a task instruction (and the raw robot state) becomes the user text.

The prompt is built in the policy's processor pipeline, before normalisation, so it sees the raw
state; the backbone only receives the finished text. The style is a config choice independent of the
backbone preset (a preset only supplies a default).

- `plain`: the instruction as is.
- `robot_r1`: the prompt layout Robot-R1 was trained with (its paper's waypoint-prediction template):
  the system line, the task, the coordinate axes and the current end-effector position taken from
  the first 3 numbers of the raw 8-D LIBERO state, rounded to 3 decimals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hints import unknown

ROBOT_R1_SYSTEM = "You are Franka Robot Assistant: Task Planning and Execution System"
ROBOT_R1_AXES = "X front(+)/back(−), Y left(−)/right(+), Z down(−)/up(+)"


def _plain(instruction: str, state: Sequence[float] | torch.Tensor | None) -> str:
    return instruction


def _eef_position(state: Sequence[float] | torch.Tensor) -> list[float]:
    values = torch.as_tensor(state, dtype=torch.float64).detach().cpu()
    if values.ndim != 1 or values.numel() < 3:
        raise ValueError(
            "robot_r1 prompt: state must be one sample's 1-D raw state starting with the eef position "
            f"(x, y, z); got shape {tuple(values.shape)}"
        )
    return [round(v, 3) + 0.0 for v in values[:3].tolist()]  # + 0.0 turns -0.0 into 0.0


def _robot_r1(instruction: str, state: Sequence[float] | torch.Tensor | None) -> str:
    if state is None:
        raise ValueError("prompt style 'robot_r1' needs the raw state (its first 3 numbers: eef x, y, z)")
    x, y, z = _eef_position(state)
    return (
        f"# {ROBOT_R1_SYSTEM}\n"
        f"## Task description\n{instruction}\n"
        "## Visual Input\nthird-person view of the workspace, then wrist camera view\n"
        f"## Coordinate System\n{ROBOT_R1_AXES}\n"
        f"## Current Robot State Position: [{x:.3f}, {y:.3f}, {z:.3f}]\n"
        "Let's determine the next robot action to execute the task"
    )


PROMPT_STYLES: dict[str, Callable[[str, Sequence[float] | torch.Tensor | None], str]] = {
    "plain": _plain,
    "robot_r1": _robot_r1,
}


def check_prompt_style(style: str) -> str:
    """`style` if it is a known prompt style, else ValueError naming the valid ones."""
    if style not in PROMPT_STYLES:
        raise unknown("prompt style", style, sorted(PROMPT_STYLES))
    return style


def build_prompt(style: str, instruction: str, state: Sequence[float] | torch.Tensor | None = None) -> str:
    """The user text for one sample. `state`: the raw (unnormalised) state, 1-D; only `robot_r1` reads it.

    >>> build_prompt("plain", "put the bowl on the plate")
    'put the bowl on the plate'
    """
    return PROMPT_STYLES[check_prompt_style(style)](instruction, state)
