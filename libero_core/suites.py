"""Per-suite constants in one table, and the one place suite names are resolved.

Step caps count env steps *after* the 10 wait steps. Two named protocols for new runs:
  standard   — OpenVLA / OpenVLA-OFT / openpi: Spatial 220, Object 280, Goal 300, Long 520
  lerobot06  — LeRobot 0.6's LIBERO env (`lerobot.envs.libero.TASK_SUITE_MAX_STEPS`): Spatial 280, the rest
               equal; 20 Hz control, 10 wait steps. Its camera renders 360x360 unless `--env.observation_height/
               width` say otherwise: the render size is recorded separately (`protocol.image_size`).
Runs recorded under LeRobot 0.4.4's protocol name (`lerobot044`, the same caps) still load and compare: the
caps are recorded in every run, and `compare` checks those, not the name.
"""

from __future__ import annotations

from dataclasses import dataclass

from hints import unknown


@dataclass(frozen=True)
class Suite:
    name: str  # LIBERO's benchmark name
    short: str  # the short alias accepted everywhere
    title: str  # for reports
    n_tasks: int  # tasks in the suite
    max_steps: dict[str, int]  # protocol name -> step cap after the wait steps


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        #      name             short      title      tasks  caps per protocol
        Suite("libero_spatial", "spatial", "Spatial", 10, {"standard": 220, "lerobot06": 280}),
        Suite("libero_object", "object", "Object", 10, {"standard": 280, "lerobot06": 280}),
        Suite("libero_goal", "goal", "Goal", 10, {"standard": 300, "lerobot06": 300}),
        Suite("libero_10", "long", "Long", 10, {"standard": 520, "lerobot06": 520}),
    )
}
PROTOCOLS = ("standard", "lerobot06")
N_INIT_STATES = 50  # official init states per task
NUM_WAIT_STEPS = 10  # dummy steps after reset, while objects settle
IMAGE_SIZE = 256  # camera resolution LIBERO renders by default, as the hub datasets
DUMMY_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # no motion, gripper open
_ALIASES = {
    **{s.name: s.name for s in SUITES.values()},
    **{s.short: s.name for s in SUITES.values()},
    "libero_long": "libero_10",
    "10": "libero_10",
}


def _valid() -> str:
    return ", ".join(f"{s.name} ({s.short})" for s in SUITES.values())


def resolve_suite(name: str) -> Suite:
    """`libero_goal`, `goal` (any case) -> the Suite; a clear error naming the valid choices otherwise."""
    key = name.strip().lower()
    if key not in _ALIASES:
        raise unknown("LIBERO suite", name, list(_ALIASES), valid=_valid())
    return SUITES[_ALIASES[key]]


def parse_suites(text: str | list[str]) -> list[Suite]:
    """'spatial,object' or ['spatial', 'object'] -> Suites, in the given order, without duplicates."""
    names = [n for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ValueError(f"no suite given; valid: {_valid()}")
    out: list[Suite] = []
    for n in names:
        s = resolve_suite(n)
        if s not in out:
            out.append(s)
    return out


def parse_index_list(text: str | None, upper: int, what: str) -> list[int]:
    """'0,3,5-7' -> [0, 3, 5, 6, 7]; None -> all of range(upper). Each index must be in [0, upper)."""
    if text is None or str(text).strip() in ("", "all"):
        return list(range(upper))
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            rng = range(int(lo), int(hi) + 1) if hi else [int(lo)]
        except ValueError:
            raise ValueError(f"bad {what} {part!r}: use numbers and ranges like '0,3,5-7'") from None
        for i in rng:
            if not 0 <= i < upper:
                raise ValueError(f"{what} {i} out of range; valid: 0-{upper - 1}")
            if i not in out:
                out.append(i)
    return out


def max_steps(suite: Suite, protocol: str) -> int:
    if protocol not in suite.max_steps:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return suite.max_steps[protocol]
