"""Where a study's training episodes started, and the check that no evaluation episode starts there too.

An evaluation on LIBERO's official init states measures generalisation only if no training episode started
from one of them: `r1vla demos` starts from LIBERO's randomized placement and records every start
(meta/start_states.npz); with `--official-init-states` (memorization checks) or converted HDF5 demos, starts may
coincide with evaluation states, and the study refuses to evaluate there. A state equals another when their max
absolute difference is below TOLERANCE (the flattened MuJoCo state, LIBERO's init-state layout).
"""

from __future__ import annotations

import numpy as np

from libero_core.starts import Start, load_meta, load_start_states, recorded_starts

TOLERANCE = 1e-4


def provenance(root: str | None) -> str:
    """One sentence on where the dataset's episodes started (for the report)."""
    if root is None:
        return (
            "unknown: a hub dataset records no start states, so overlap with evaluation states is not checked"
        )
    try:
        meta = load_meta(root)
    except ValueError:
        return "unknown: the dataset has no r1vla metadata (meta/r1vla_demos.json), overlap is not checked"
    cfg = meta.get("config") or {}
    n = len(load_start_states(root))
    if cfg.get("source") == "scripted_expert":
        how = {
            "randomized": "LIBERO's randomized placement (seeded per episode)",
            "official_init_states": "LIBERO's official init states (--official-init-states)",
        }
        return f"{how.get(cfg.get('starts'), 'official init states (a dataset made before randomized starts)')}; {n} start states recorded"
    return f"{cfg.get('source', 'unknown source')}: {n} start states recorded from the files"


def training_starts(root: str | None, episodes: list[int]) -> dict[tuple[str, int], list[Start]]:
    """(suite, task) -> the recorded starts of the given training episodes ({} when the dataset records none)."""
    if root is None:
        return {}
    try:
        return recorded_starts(root, episodes)
    except ValueError:  # no r1vla metadata: provenance() says so
        return {}


def overlaps(
    starts: dict[tuple[str, int], list[Start]],
    tasks: list[tuple[str, int]],
    init_states: list[int],
    perturbations: tuple[str, ...] = (),
) -> list[str]:
    """'suite task t init state i (perturbation p) = training episode e (max |diff| d)' for every evaluation
    start that equals a training start."""
    from libero_core.sim import init_states as official

    found = []
    for suite, task in tasks:
        train = starts.get((suite, task), [])
        if not train:
            continue
        for p in ("none", *perturbations):
            states = official(suite, task, p)
            for ep, s, _ in train:
                if s.shape != states.shape[1:]:
                    continue  # another scene (a perturbed variant with other objects)
                diff = np.abs(states[init_states] - s).max(axis=1)
                for i, d in zip(init_states, diff, strict=True):
                    if d < TOLERANCE:
                        tag = "" if p == "none" else f" ({p})"
                        found.append(
                            f"{suite} task {task} init state {i}{tag} = training episode {ep} (max |diff| {d:.1e})"
                        )
    return found
