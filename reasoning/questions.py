"""Robot-R1-style multiple-choice questions from one episode: prompts, options, distractors, letters.

Three kinds (Robot-R1, arXiv 2506.00070, Sec. 3): given the agentview image of the current frame,
- `waypoint`: which position the end effector reaches at the next keypoint (the current position is given);
- `state`: where the end effector is now (no position given);
- `movement`: which direction it moves from now to the next keypoint (the current position is given).

Positions are [X, Y, Z] in whole centimetres from a fixed reference point (metadata of the MCQA set), on the
LIBERO world axes worded as adapters/prompts.py's AXIS_WORDS: the directions as seen in the shown agentview frame
(X front = toward the camera, Y left = the image's left, Z up), checked on rendered pixels. A movement is the phrase of the dominant axes
of the displacement: every axis whose |d| >= `dominance` x max |d| and >= `move_min_cm`, in X, Y, Z order
("move front and down"). Position distractors are at least `min_dist_cm` from the answer and from each other;
movement distractors differ from the answer and from each other on at least `min_axis_diff` axes.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from adapters.prompts import AXIS_WORDS, ROBOT_R1_AXES, ROBOT_R1_SYSTEM, CoordFormat

KINDS = ("waypoint", "state", "movement")
LETTERS = "ABCDEFGH"
FORMAT_INSTRUCTION = (
    "Think about the scene step by step inside <think> </think>, then give only the letter of the correct "
    "option inside <answer> </answer>."
)
DIRECT_INSTRUCTION = "Give only the letter of the correct option inside <answer> </answer>."
# the last line of every question: GRPO (and CoT SFT) reason first; Robot-R1's Direct SFT baseline answers only
ANSWER_FORMATS = {"think": FORMAT_INSTRUCTION, "direct": DIRECT_INSTRUCTION}
QUESTIONS = {
    "waypoint": "Which position will the gripper reach at the next keypoint (its next grasp, release or stop)?",
    "state": "Where is the gripper now?",
    "movement": "How will the gripper move from now until the next keypoint (its next grasp, release or stop)?",
}


@dataclass(frozen=True)
class OptionRule:
    options: int = 4  # options per question (1 answer + options-1 distractors), 2..8
    min_dist_cm: float = 3.0  # position distractors: min distance (cm) to the answer and to each other
    perturb_cm: float = 15.0  # synthetic position distractors: answer + U(-perturb, perturb) cm per axis
    min_axis_diff: int = 1  # movement distractors: axes that must differ from the answer and each other
    dominance: float = 0.5  # movement: an axis is named when |d| >= dominance * max|d| ...
    move_min_cm: float = 1.0  # ... and |d| >= this many cm
    gripper_width_cm: float = 8.0  # the scale the prompt states: the Panda's open gripper is about 8 cm wide

    def __post_init__(self) -> None:
        if not 2 <= self.options <= len(LETTERS):
            raise ValueError(f"options must be in 2..{len(LETTERS)}; got {self.options}")
        if self.min_dist_cm <= 0 or self.perturb_cm <= self.min_dist_cm or not 1 <= self.min_axis_diff <= 3:
            raise ValueError(
                "need min_dist_cm > 0, perturb_cm > min_dist_cm and min_axis_diff in 1..3; got "
                f"{self.min_dist_cm}, {self.perturb_cm}, {self.min_axis_diff}"
            )

    def as_dict(self) -> dict:
        return asdict(self)


def cm_format(reference_m: np.ndarray) -> CoordFormat:
    """The questions' coordinate format: whole centimetres from the reference point, LIBERO world axes."""
    return CoordFormat("cm", tuple(float(v) for v in reference_m), 0)  # type: ignore[arg-type]


def to_cm(position_m: np.ndarray, reference_m: np.ndarray) -> list[int]:
    """World position (m) -> whole centimetres from the reference point (cm_format's numbers)."""
    return cm_format(reference_m).values(position_m)


def fmt_position(cm: list[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in cm) + "]"


def movement_labels(delta_cm: np.ndarray, rule: OptionRule) -> tuple[int, int, int] | None:
    """Per-axis label -1/0/+1 of the dominant axes of `delta_cm`, or None when nothing moves enough."""
    d = np.asarray(delta_cm, dtype=np.float64)
    big = np.abs(d).max()
    if big < rule.move_min_cm:
        return None
    keep = (np.abs(d) >= rule.dominance * big) & (np.abs(d) >= rule.move_min_cm)
    return tuple(int(np.sign(v)) if k else 0 for v, k in zip(d, keep, strict=True))  # type: ignore[return-value]


def movement_phrase(labels: tuple[int, int, int]) -> str:
    words = [AXIS_WORDS[i][0 if s < 0 else 1] for i, s in enumerate(labels) if s]
    return "move " + (words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1])


ALL_MOVEMENTS = [lab for lab in itertools.product((-1, 0, 1), repeat=3) if any(lab)]  # 26 directions


def position_distractors(
    answer: list[int], pool: np.ndarray, rule: OptionRule, rng: np.random.Generator
) -> list[list[int]]:
    """`options - 1` positions (cm) >= min_dist_cm from `answer` and from each other. Candidates: the
    episode's own positions (`pool`, (N, 3) cm, in random order), then random perturbations of the answer."""
    chosen: list[np.ndarray] = [np.asarray(answer, dtype=np.float64)]
    cands = [pool[i] for i in rng.permutation(len(pool))] if len(pool) else []
    need = rule.options - 1
    tries = 0
    while len(chosen) <= need:
        if cands:
            c = np.asarray(cands.pop(), dtype=np.float64)
        else:
            c = np.rint(chosen[0] + rng.uniform(-rule.perturb_cm, rule.perturb_cm, 3))
            tries += 1
            if tries > 10000:
                raise RuntimeError(f"could not place {need} distractors {rule.min_dist_cm} cm apart")
        if all(np.linalg.norm(c - o) >= rule.min_dist_cm for o in chosen):
            chosen.append(c)
    return [[int(v) + 0 for v in c] for c in chosen[1:]]


def movement_distractors(
    answer: tuple[int, int, int], rule: OptionRule, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """`options - 1` directions differing from `answer` and from each other on >= min_axis_diff axes."""
    chosen = [answer]
    for i in rng.permutation(len(ALL_MOVEMENTS)):
        c = ALL_MOVEMENTS[i]
        if all(sum(a != b for a, b in zip(c, o, strict=True)) >= rule.min_axis_diff for o in chosen):
            chosen.append(c)
            if len(chosen) == rule.options:
                return chosen[1:]
    raise ValueError(
        f"only {len(chosen) - 1} movement distractors differ on >= {rule.min_axis_diff} axes; "
        f"lower min_axis_diff or options ({rule.options})"
    )


def question_text(
    kind: str, task: str, current_cm: list[int] | None, options: list[str], rule: OptionRule
) -> str:
    """The user text of one question (the image comes first in the chat turn)."""
    lines = [
        f"# {ROBOT_R1_SYSTEM}",
        f"## Task description\n{task}",
        "## Visual Input\nthird-person view of the workspace",
        f"## Coordinate System\n{ROBOT_R1_AXES}",
        f"{cm_format(np.ones(3)).describe()} Scale: the open gripper is about {rule.gripper_width_cm:g} cm wide.",
    ]
    if current_cm is not None:
        lines.append(f"## Current Robot State Position: {fmt_position(current_cm)}")
    lines.append(f"## Question\n{QUESTIONS[kind]}")
    lines += [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    lines.append(FORMAT_INSTRUCTION)
    return "\n".join(lines)


def balanced_letters(n: int, options: int, rng: np.random.Generator) -> list[int]:
    """n correct-option indices: consecutive blocks of `options` are random permutations of 0..options-1, so
    every letter is correct within one time of n / options."""
    out: list[int] = []
    while len(out) < n:
        out += rng.permutation(options).tolist()
    return out[:n]


def place_answer(answer: str, distractors: list[str], letter: int) -> list[str]:
    """Options with the answer at index `letter` and the distractors in their (random) order elsewhere."""
    opts = list(distractors)
    opts.insert(letter, answer)
    return opts


def with_answer_format(prompt: list[dict], fmt: str) -> list[dict]:
    """The chat `prompt` of an MCQA row with its last line (the answer-format instruction) set to `fmt`'s."""
    if fmt not in ANSWER_FORMATS:
        from hints import unknown

        raise unknown("answer format", fmt, list(ANSWER_FORMATS))
    out = [dict(m) for m in prompt]
    head, _, last = out[-1]["content"].rpartition("\n")
    if last not in ANSWER_FORMATS.values():
        raise ValueError(f"the prompt does not end with an answer-format instruction: {last!r}")
    out[-1]["content"] = f"{head}\n{ANSWER_FORMATS[fmt]}"
    return out
