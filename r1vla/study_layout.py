"""What the study's stages, report, power and GPU plans share about its layout: the name of a stage's run folder
(`<stage>/<label>/seed<seed>`) and the (suite, task) pairs and init states the evaluation covers."""

from __future__ import annotations

from r1vla.study_config import BackboneSpec, StudyConfig


def run_name(stage: str, b: BackboneSpec, seed: int) -> str:
    return f"{stage}/{b.label}/seed{seed}"


def eval_tasks(cfg: StudyConfig) -> tuple[list[tuple[str, int]], list[int]]:
    """The (suite, task) pairs and official init-state indices the study evaluates on."""
    from libero_core.suites import N_INIT_STATES, parse_index_list, parse_suites

    e = cfg.eval
    tasks = [
        (s.name, t)
        for s in parse_suites(list(e.suites))
        for t in parse_index_list(e.tasks, s.n_tasks, "task")
    ]
    return tasks, parse_index_list(e.init_states, N_INIT_STATES, "init state")
