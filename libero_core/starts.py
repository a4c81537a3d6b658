"""The one reader of a demo dataset's recorded starts, written by demos/dataset.py beside the LeRobot files:

    meta/r1vla_demos.json        per-episode origin (suite, task_id, seed, ...): `load_meta`
    meta/start_states.npz        episode_<index> -> the flattened MuJoCo state it started from: `load_start_states`
    meta/executed_actions.npz    episode_<index> -> (T, 7) actions executed where `action` holds other labels

`r1vla replay` (demos), `r1vla eval --start-states` (eval_libero) and the study's train/eval overlap check (r1vla)
all read starts here; `recorded_starts` groups them by (suite, task) in episode order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

META_FILE = "r1vla_demos.json"  # meta/r1vla_demos.json: config, attempts, per-episode origin
START_STATES = "start_states.npz"  # meta/start_states.npz: episode_<index> -> flattened start sim state
EXECUTED_ACTIONS = (
    "executed_actions.npz"  # meta/executed_actions.npz: episode_<index> -> (T, 7) executed actions
)


class Start(NamedTuple):
    episode: int  # the dataset's episode index
    state: np.ndarray  # (n_sim_state,) flattened MuJoCo state, LIBERO's init-state layout
    seed: int | None  # the demo's reset seed (its fixture placement), when recorded


def load_meta(root: str | Path) -> dict:
    """Our metadata of a demo dataset (raises a clear error when the folder has none)."""
    path = Path(root) / "meta" / META_FILE
    if not path.exists():
        raise ValueError(
            f"{root} has no {path.relative_to(root)}: not a dataset written by r1vla demos/convert-hdf5"
        )
    return json.loads(path.read_text())


def load_start_states(root: str | Path) -> dict[int, np.ndarray]:
    """episode index -> start sim state, from meta/start_states.npz ({} when the dataset records none)."""
    return load_episode_arrays(root, START_STATES)


def load_episode_arrays(root: str | Path, name: str) -> dict[int, np.ndarray]:
    """episode index -> array, from the per-episode meta file `name` ({} when absent)."""
    path = Path(root) / "meta" / name
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {int(k.removeprefix("episode_")): z[k] for k in z.files}


def recorded_starts(
    root: str | Path, episodes: Iterable[int] | None = None
) -> dict[tuple[str, int], list[Start]]:
    """(suite, task) -> the recorded starts of the dataset's episodes (all, or those in `episodes`) that name
    their LIBERO task, in the metadata's episode order. Raises ValueError when `root` has no r1vla metadata."""
    meta, states = load_meta(root), load_start_states(root)
    wanted = None if episodes is None else set(episodes)
    out: dict[tuple[str, int], list[Start]] = {}
    for e in meta["episodes"]:
        i = e["episode_index"]
        if i in states and e.get("suite") and (wanted is None or i in wanted):
            out.setdefault((e["suite"], int(e["task_id"])), []).append(
                Start(int(i), states[i], e.get("seed"))
            )
    return out
