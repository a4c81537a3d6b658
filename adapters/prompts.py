"""Prompt styles: how a task instruction (and the raw robot state) becomes the user text.

The prompt is built in the policy's processor pipeline, before normalisation, so it sees the raw
state; the backbone only receives the finished text. The style is a config choice independent of the
backbone preset (a preset only supplies a default); a study uses one style for every arm.

- `plain`: the instruction as is.
- `robot_r1`: the prompt layout Robot-R1 was trained with (its paper's waypoint-prediction template):
  the system line, the task, the coordinate axes and the current end-effector position, written in the
  backbone's coordinate format (`CoordFormat`: the one its MCQA questions used, from r1vla_provenance.json).

Axis words (AXIS_WORDS) describe the frames this package shows (libero_core/sim.py: agentview rotated 180 deg,
upright and mirrored), measured by rendering (tests/test_axis_words.py): the camera faces the robot, so world
+X moves the gripper toward the camera (lower in the image), +Y to the image's left, +Z up. The MCQA
(reasoning/questions.py) and this prompt use the same words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hints import unknown

ROBOT_R1_SYSTEM = "You are Franka Robot Assistant: Task Planning and Execution System"
# (word for the − direction, word for the + direction) of world X, Y, Z as seen in the shown third-person frame
AXIS_WORDS = (("back", "front"), ("right", "left"), ("down", "up"))
ROBOT_R1_AXES = (
    f"X {AXIS_WORDS[0][1]}(+)/{AXIS_WORDS[0][0]}(−), Y {AXIS_WORDS[1][1]}(+)/{AXIS_WORDS[1][0]}(−), "
    f"Z {AXIS_WORDS[2][0]}(−)/{AXIS_WORDS[2][1]}(+), as seen in the third-person image "
    f"({AXIS_WORDS[0][1]} = toward the camera)"
)
FRAME = "libero_world"  # LIBERO's world axes (robosuite robot0_eef_pos)


@dataclass(frozen=True)
class CoordFormat:
    """How a position is written: (p − reference_m) in `unit`, rounded to `decimals`, on the LIBERO world axes.
    `spec()` is its one-line name, recorded in provenance, policy configs and eval protocols."""

    unit: str  # m | cm
    reference_m: tuple[float, float, float]  # origin of the written coordinates, in world metres
    decimals: int  # digits after the point (0: whole units)
    frame: str = FRAME

    def __post_init__(self) -> None:
        if self.unit not in ("m", "cm") or self.decimals < 0 or len(self.reference_m) != 3:
            raise ValueError(
                f"coordinate format needs unit m|cm, decimals >= 0 and a 3-D reference; got {self}"
            )

    def spec(self) -> str:
        ref = ",".join(f"{float(v):.4f}" for v in self.reference_m)
        return f"{self.unit}@{ref}/{self.decimals}"

    def values(self, position_m: Sequence[float] | np.ndarray) -> list:
        """World position (m) -> the written numbers (ints when decimals == 0)."""
        scale = 100.0 if self.unit == "cm" else 1.0
        p = np.asarray(position_m, dtype=np.float64)[:3] - np.asarray(self.reference_m, dtype=np.float64)
        v = np.rint(scale * p * 10**self.decimals) / 10**self.decimals
        return [int(x) + 0 for x in v] if self.decimals == 0 else [float(x) + 0.0 for x in v]

    def text(self, position_m: Sequence[float] | np.ndarray) -> str:
        return "[" + ", ".join(f"{v:.{self.decimals}f}" for v in self.values(position_m)) + "]"

    def describe(self) -> str:
        unit = "cm" if self.unit == "cm" else "metres"
        if not any(self.reference_m):
            return f"Positions are [X, Y, Z] in {unit} in the world frame."
        return (
            f"Positions are [X, Y, Z] in {unit} from a fixed reference point (0, 0, 0): the gripper's usual "
            "position at the start of a task."
        )


# named formats for backbones without a recorded one (external checkpoints): Robot-R1's own coordinate format is
# not published with weights; `world_m3` (absolute world metres, 3 decimals) is this package's documented choice
NAMED_FORMATS = {"world_m3": CoordFormat("m", (0.0, 0.0, 0.0), 3)}
DEFAULT_FORMAT = "world_m3"


def parse_coord_format(spec: str) -> CoordFormat:
    """A named format (world_m3) or a spec `UNIT@X,Y,Z/DECIMALS` (e.g. cm@-0.1500,0.0000,1.0500/0)."""
    if spec in NAMED_FORMATS:
        return NAMED_FORMATS[spec]
    try:
        unit, rest = spec.split("@")
        ref, dec = rest.split("/")
        xyz = tuple(float(v) for v in ref.split(","))
        return CoordFormat(unit, xyz, int(dec))  # type: ignore[arg-type]
    except ValueError:
        raise unknown(
            "coordinate format",
            spec,
            list(NAMED_FORMATS),
            valid=f"{', '.join(NAMED_FORMATS)} or UNIT@X,Y,Z/DEC",
        ) from None


def _plain(instruction: str, state: Sequence[float] | torch.Tensor | None, coords: CoordFormat) -> str:
    return instruction


def _eef_position(state: Sequence[float] | torch.Tensor) -> list[float]:
    values = torch.as_tensor(state, dtype=torch.float64).detach().cpu()
    if values.ndim != 1 or values.numel() < 3:
        raise ValueError(
            "robot_r1 prompt: state must be one sample's 1-D raw state starting with the eef position "
            f"(x, y, z); got shape {tuple(values.shape)}"
        )
    return values[:3].tolist()


def _robot_r1(instruction: str, state: Sequence[float] | torch.Tensor | None, coords: CoordFormat) -> str:
    if state is None:
        raise ValueError("prompt style 'robot_r1' needs the raw state (its first 3 numbers: eef x, y, z)")
    return (
        f"# {ROBOT_R1_SYSTEM}\n"
        f"## Task description\n{instruction}\n"
        "## Visual Input\nthird-person view of the workspace, then wrist camera view\n"
        f"## Coordinate System\n{ROBOT_R1_AXES}\n{coords.describe()}\n"
        f"## Current Robot State Position: {coords.text(_eef_position(state))}\n"
        "Let's determine the next robot action to execute the task"
    )


PROMPT_STYLES: dict[str, Callable[[str, Sequence[float] | torch.Tensor | None, CoordFormat], str]] = {
    "plain": _plain,
    "robot_r1": _robot_r1,
}


def check_prompt_style(style: str) -> str:
    """`style` if it is a known prompt style, else ValueError naming the valid ones."""
    if style not in PROMPT_STYLES:
        raise unknown("prompt style", style, sorted(PROMPT_STYLES))
    return style


def build_prompt(
    style: str,
    instruction: str,
    state: Sequence[float] | torch.Tensor | None = None,
    coords: str | CoordFormat = DEFAULT_FORMAT,
) -> str:
    """The user text for one sample. `state`: the raw (unnormalised) state, 1-D; only `robot_r1` reads it, and
    writes its eef position in `coords` (a CoordFormat, a named format or a spec).

    >>> build_prompt("plain", "put the bowl on the plate")
    'put the bowl on the plate'
    """
    fmt = coords if isinstance(coords, CoordFormat) else parse_coord_format(coords)
    return PROMPT_STYLES[check_prompt_style(style)](instruction, state, fmt)
