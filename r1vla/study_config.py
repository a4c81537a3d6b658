"""The study's configuration: a readable YAML file, validated whole before any work starts.

name: tiny
baseline: sft                       # the label every other backbone is compared against
backbones:                          # label -> backbone preset key and checkpoint (hub id or folder)
  - {label: robot_r1, key: robot_r1, path: /ckpt/robot-r1}
  - {label: sft, key: sft, path: /ckpt/sft}
data: {source: generate, suites: [libero_object], tasks: "0", episodes_per_task: 3, heldout_per_task: 1}
policy: {head: flow, backbone_mode: frozen}        # any --policy.* field of the r1vla policy
train: {steps: 60000, batch_size: 32, seeds: [42, 43, 44]}   # every backbone once per seed
eval: {suites: [spatial, object, goal, long], init_states: "0-49", seeds: [7], protocol: standard,
       perturbations: [lan, object, swap, task]}
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from adapters import get_preset
from hints import did_you_mean, unknown
from libero_core.perturbations import parse_perturbations
from libero_core.suites import PROTOCOLS, parse_index_list, parse_suites, resolve_suite

DATA_SOURCES = ("generate", "local", "hub")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class BackboneSpec:
    label: str  # name in reports; unique
    key: str  # adapters preset: qwen2_5_vl | robot_r1 | sft | tiny
    path: str | None = None  # hub id or local folder (required for robot_r1 / sft)
    standin_seed: int | None = None  # build a tiny random stand-in with this seed at `path` (tests only)
    build: str | None = None  # sft | grpo: train this backbone from `base` on the study's MCQA (reasoning/)
    base: str | None = (
        None  # build: a backbone key (tiny, qwen2_5_vl) or a Qwen2.5-VL checkpoint path / hub id
    )
    build_args: dict = field(
        default_factory=dict
    )  # build: reasoning TrainConfig fields (steps, lr, lora, ...)


@dataclass(frozen=True)
class MCQASpec:
    kinds: tuple[str, ...] = ("waypoint", "state", "movement")  # Robot-R1's three question kinds
    heldout_episodes: int | None = None  # unused by the study: its MCQA holds out the study's held-out demos
    per_segment: int = 2  # current frames per keypoint segment
    seed: int = 0  # frames, distractors, letters, held-out episodes
    probe: bool = True  # report each built backbone's held-out MCQA accuracy (and the base's)
    probe_limit: int | None = None  # probe on the first N held-out questions (None = all)
    probe_max_new_tokens: int = 1024  # generation budget per answer


@dataclass(frozen=True)
class DataSpec:
    source: str = "generate"  # generate (scripted expert) | local (a LeRobotDataset folder) | hub
    repo_id: str = "local/libero_demos"  # dataset repo id (hub: e.g. HuggingFaceVLA/libero)
    root: str | None = None  # local dataset folder (source=local)
    suites: tuple[str, ...] = ("libero_object",)  # generate: suites to demonstrate
    tasks: str | None = None  # generate: task ids, e.g. "0,3" (None = all)
    episodes_per_task: int = 10  # generate: training episodes per task
    heldout_per_task: int = 1  # episodes per task kept out of training for the offline action error
    noise: float = 0.0  # generate: expert action noise
    workers: int = 1  # generate: env processes
    seed: int = 0  # generate: expert seed (and the randomized start placements)
    official_init_states: bool = False  # generate: start from official init states (refused if evaluated on)


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 60000  # optimisation steps
    batch_size: int = (
        32  # the global batch: split over the launcher's processes (refused if it does not divide)
    )
    seeds: tuple[int, ...] = (
        42,
        43,
        44,
    )  # one run per backbone and seed; a seed fixes head init and data order
    num_workers: int = 4  # dataloader workers
    save_freq: int = 10000  # checkpoint every N steps (an interrupted run resumes from the last one)
    log_freq: int = 100  # TensorBoard / console logging
    device: str = "auto"  # auto = cuda when available, else cpu
    launcher: tuple[
        str, ...
    ] = ()  # e.g. [accelerate, launch, --num_processes, "8"]; empty = auto: accelerate
    #   (scaleout/ddp.yaml) over every visible GPU when there are several, else one process
    extra_args: tuple[str, ...] = ()  # passed to lerobot-train verbatim


@dataclass(frozen=True)
class BuildSpec:
    """How the backbone builds (`backbones[].build`) run: one subprocess each, through this launcher."""

    launcher: tuple[str, ...] = ()  # e.g. [accelerate, launch, --config_file, scaleout/fsdp.yaml,
    #   --num_processes, "8"]; empty = auto: accelerate over every visible GPU when there are several
    #   (FSDP above 1 B parameters), else one process


@dataclass(frozen=True)
class EvalSpec:
    suites: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
    tasks: str | None = None  # None = all 10 per suite
    init_states: str | None = None  # None = all 50
    seeds: tuple[int, ...] = (7,)  # evaluation seeds (paired across backbones)
    max_steps: int | None = None  # override the protocol's step caps (smoke runs; recorded)
    protocol: str = "standard"  # standard (OpenVLA/openpi caps) | lerobot06 (LeRobot 0.6 env caps)
    workers: int = 1  # env worker processes
    video_every: int = 0  # save every N-th episode as mp4 (0 = none)
    perturbations: tuple[str, ...] = ()  # LIBERO-PRO variants of each suite (lan, object, swap, task)
    train_starts: int = 0  # also evaluate N training start states per task (memorization), 0 = no


@dataclass(frozen=True)
class StudyConfig:
    name: str
    backbones: tuple[BackboneSpec, ...]
    baseline: str
    data: DataSpec = DataSpec()
    policy: dict = field(default_factory=dict)
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    mcqa: MCQASpec = (
        MCQASpec()
    )  # the questions built backbones train on (used only if a backbone has `build`)
    standin_note: bool = False  # the report says plainly that stand-in backbones were used
    backbone: BuildSpec = BuildSpec()  # how backbone builds are launched

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls, raw: dict, where: str):
    """A frozen dataclass from a dict, naming unknown fields and their closest valid one."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping, got {type(raw).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ValueError(
                f"unknown field {where}.{key}{did_you_mean(key, names)}; valid: {', '.join(names)}"
            )
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    return cls(
        **{k: tuple(v) if "tuple" in str(types[k]) and isinstance(v, list) else v for k, v in raw.items()}
    )


def from_dict(raw: dict) -> StudyConfig:
    raw = dict(raw)
    backbones = tuple(_build(BackboneSpec, b, "backbones[]") for b in raw.pop("backbones", []))
    sections = {
        "data": DataSpec,
        "train": TrainSpec,
        "eval": EvalSpec,
        "mcqa": MCQASpec,
        "backbone": BuildSpec,
    }
    built = {k: _build(cls, raw.pop(k, {}), k) for k, cls in sections.items()}
    cfg = _build(StudyConfig, {**raw, "backbones": backbones}, "study")
    return validate(dataclasses.replace(cfg, **built))


def load(path: str | Path) -> StudyConfig:
    with open(path, encoding="utf-8") as f:
        return from_dict(yaml.safe_load(f) or {})


def with_paths(cfg: StudyConfig, assignments: list[str]) -> StudyConfig:
    """Apply `--backbone LABEL=PATH` overrides (the checkpoints of a preset's backbones)."""
    labels = {b.label: b for b in cfg.backbones}
    for item in assignments:
        label, sep, path = item.partition("=")
        if not sep or label not in labels:
            raise ValueError(f"--backbone {item!r}: use LABEL=PATH with LABEL one of {', '.join(labels)}")
        labels[label] = dataclasses.replace(labels[label], path=path)
    return validate(dataclasses.replace(cfg, backbones=tuple(labels.values())))


def validate(cfg: StudyConfig) -> StudyConfig:
    """Every check that can fail before any work starts."""
    if not cfg.backbones:
        raise ValueError("the study names no backbones (backbones: [{label, key, path}, ...])")
    labels = [b.label for b in cfg.backbones]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"backbone label(s) {dupes} appear twice; labels must be unique: {labels}")
    if cfg.baseline not in labels:
        raise ValueError(f"baseline {cfg.baseline!r} is not a backbone label; valid: {', '.join(labels)}")
    for b in cfg.backbones:
        preset = get_preset(b.key)  # unknown key -> error with the valid keys
        if b.build is not None:
            _check_build(b)
            continue  # built by the study itself
        if b.standin_seed is not None:
            continue  # built by the study itself
        if preset.path_required and not b.path:
            raise ValueError(
                f"backbone {b.label!r} ({b.key}) needs a checkpoint: {preset.description} "
                f"Set its path in the config or pass --backbone {b.label}=/path/to/checkpoint"
            )
        if b.path and not os.path.isdir(b.path) and not HUB_ID.match(b.path):
            raise ValueError(
                f"backbone {b.label!r}: checkpoint {b.path!r} is neither a folder on this machine "
                "nor a hub id (org/name)"
            )
    if cfg.data.source not in DATA_SOURCES:
        raise ValueError(f"unknown data.source {cfg.data.source!r}; valid: {', '.join(DATA_SOURCES)}")
    if cfg.data.source == "local" and not (cfg.data.root and os.path.isdir(cfg.data.root)):
        raise ValueError(
            f"data.source=local needs data.root, an existing dataset folder; got {cfg.data.root!r}"
        )
    if cfg.data.source == "generate":
        for s in parse_suites(list(cfg.data.suites)):
            parse_index_list(cfg.data.tasks, s.n_tasks, f"{s.name} task id")
        if cfg.data.official_init_states:  # attempt k starts from official init state k mod 50
            d = cfg.data
            possible = set(range(min(50, 2 * (d.episodes_per_task + d.heldout_per_task))))
            both = sorted(possible & set(parse_index_list(cfg.eval.init_states, 50, "init state")))
            if both:
                raise ValueError(
                    f"data.official_init_states: demos may start from official init states {sorted(possible)}, and "
                    f"eval.init_states includes {both}: success there would be measured on training starts. "
                    "Evaluate other init states, or generate from randomized starts (official_init_states: false)"
                )
    for s in parse_suites(list(cfg.eval.suites)):
        parse_index_list(cfg.eval.tasks, s.n_tasks, f"{s.name} task id")
    parse_index_list(cfg.eval.init_states, 50, "init state")
    if cfg.eval.protocol not in PROTOCOLS:
        raise ValueError(f"unknown eval.protocol {cfg.eval.protocol!r}; valid: {', '.join(PROTOCOLS)}")
    parse_perturbations(list(cfg.eval.perturbations))
    seeds = list(cfg.train.seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(x, int) for x in seeds):
        raise ValueError(f"train.seeds must be distinct integers, e.g. [42, 43, 44]; got {seeds}")
    if (
        cfg.train.launcher
    ):  # the global batch over the launcher's processes (auto launchers: checked by the plan)
        from scaleout import processes, split_batch

        split_batch(cfg.train.batch_size, processes(cfg.train.launcher))
    if cfg.eval.train_starts < 0:
        raise ValueError(f"eval.train_starts must be >= 0; got {cfg.eval.train_starts}")
    for key in cfg.policy:
        if key in ("backbone", "backbone_path", "type", "device"):
            raise ValueError(f"policy.{key} is set per backbone / by the study; remove it from `policy:`")
    _check_policy_fields(cfg.policy)
    if cfg.policy.get("prompt_style") is not None:
        from adapters.prompts import check_prompt_style

        check_prompt_style(cfg.policy["prompt_style"])
    if cfg.policy.get("prompt_coords", "auto") != "auto":
        from adapters.prompts import parse_coord_format

        parse_coord_format(cfg.policy["prompt_coords"])
    return cfg


def one_prompt(policy: dict, backbone_paths: dict[str, str | None]) -> dict:
    """The one prompt style and coordinate format of every arm: `policy.prompt_style` (default robot_r1, the built
    backbones' training prompt) and `policy.prompt_coords` (default: the format the built backbones recorded,
    which must agree, given to every arm; with none recorded, adapters.prompts.DEFAULT_FORMAT)."""
    from adapters.prompts import DEFAULT_FORMAT
    from policies.r1vla.configuration_r1vla import recorded_coords, resolve_coords

    per_arm = {label: recorded_coords(path) for label, path in backbone_paths.items()}
    coords = policy.get("prompt_coords") or "auto"
    if coords == "auto":
        found = sorted({c for c in per_arm.values() if c})
        if len(found) > 1:
            raise ValueError(
                f"the arms' backbones learned different coordinate formats ({per_arm}); one prompt serves every "
                "arm: set policy.prompt_coords to one of them"
            )
        coords = found[0] if found else DEFAULT_FORMAT
    style = policy.get("prompt_style") or "robot_r1"
    return {"style": style, "coordinates": resolve_coords(coords, None), "per_arm_recorded": per_arm}


def _check_build(b: BackboneSpec) -> None:
    from reasoning.recipes import METHODS, TrainConfig

    if b.build not in METHODS:
        raise unknown(f"build method of backbone {b.label!r}", b.build, METHODS)
    if not b.base:
        raise ValueError(
            f"backbone {b.label!r}: build: {b.build} needs a base (a backbone key or checkpoint)"
        )
    if b.path or b.standin_seed is not None:
        raise ValueError(
            f"backbone {b.label!r}: a built backbone takes no path / standin_seed (the study writes it)"
        )
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("method",)]
    for key in b.build_args:
        if key not in names:
            raise ValueError(
                f"backbone {b.label!r}: unknown build_args field {key!r}{did_you_mean(key, names)}; valid: {', '.join(names)}"
            )
    TrainConfig(method=b.build, **b.build_args)  # value checks


def _check_policy_fields(policy: dict) -> None:
    from policies.r1vla import R1VLAConfig

    names = [f.name for f in dataclasses.fields(R1VLAConfig)]
    for key in policy:
        if key not in names:
            raise ValueError(
                f"unknown policy field {key!r}{did_you_mean(key, names)}; see policies/r1vla/configuration_r1vla.py"
            )


def _suites(*names: str) -> tuple[str, ...]:
    return tuple(resolve_suite(n).name for n in names)


# tiny builds: a handful of CPU steps on the 0.35 M-parameter stand-in (the paper's settings are the defaults)
# both at one learning rate (reasoning/recipes.py LR_RULE: the SFT twin shares GRPO's), scaled up for 2-40 steps
TINY_LR = 1e-3
TINY_SFT = {"steps": 40, "lr": TINY_LR, "batch": 8, "micro_batch": 8, "limit": 16}
TINY_GRPO = {"steps": 2, "lr": TINY_LR, "batch": 2, "micro_batch": 1, "limit": 8, "max_completion_length": 16}

# Robot-R1 App. F: GR00T-N1.5-style flow head on a frozen Qwen2.5-VL-7B, batch 32, 60k steps, 4 suites, standard
# protocol, 10 tasks x 50 init states; GR00T's LIBERO augmentation; 3 training seeds per backbone (6 trainings of
# 60k x 32: see bench/bench_gpu.py for the hours per training on one GPU); every checkpoint on the 4 suites and
# their 4 LIBERO-PRO variants (10,000 episodes each). Needs GPUs and the two checkpoints.
PAPER = StudyConfig(
    name="paper",
    backbones=(BackboneSpec("robot_r1", "robot_r1"), BackboneSpec("sft", "sft")),
    baseline="sft",
    data=DataSpec(source="hub", repo_id="HuggingFaceVLA/libero", heldout_per_task=1),
    policy={"head": "flow", "backbone_mode": "frozen", "augment": True},
    train=TrainSpec(steps=60000, batch_size=32, seeds=(42, 43, 44)),
    eval=EvalSpec(
        suites=_suites("spatial", "object", "goal", "long"),
        seeds=(7,),
        workers=8,
        perturbations=("lan", "object", "swap", "task"),
    ),
)

PRESETS: dict[str, StudyConfig] = {
    "paper": PAPER,
    # Robot-R1 and its SFT twin built here from the same base and the same questions (Robot-R1's MCQA from the
    # hub's LIBERO data; GRPO at the paper's settings: 5 samples, T=1.0, lr 1e-6, batch 128, 5 epochs), the base
    # model as a third arm, then the `paper` policy and evaluation. Needs GPUs (GRPO on the 7B: several GPU-hours).
    "paper-r1": dataclasses.replace(
        PAPER,
        name="paper-r1",
        policy=dict(PAPER.policy),  # its own dict: nothing shared and mutable between presets
        backbones=(
            # one prompt (5 completions of up to 1024 tokens) per device and forward: the (5, 1325, 152064)
            # logits of four prompts would not fit an 80 GiB GPU next to vLLM (`r1vla study --plan`)
            BackboneSpec(
                "robot_r1",
                "robot_r1",
                build="grpo",
                base="Qwen/Qwen2.5-VL-7B-Instruct",
                build_args={"micro_batch": 1},
            ),
            BackboneSpec("sft", "sft", build="sft", base="Qwen/Qwen2.5-VL-7B-Instruct"),
            BackboneSpec("base", "qwen2_5_vl"),
        ),
    ),
    # The embedded default: both arms built here from the same tiny random Qwen2.5-VL and the same questions
    # (Robot-R1-style MCQA from the demos generated here): `robot_r1` by GRPO, `sft` by SFT (a few CPU steps:
    # the arms differ by training method, not by a random seed), loaded through the robot_r1 / sft code path;
    # 2 training seeds, a short CPU fine-tune, the standard step caps, one LIBERO-PRO variant. <= 30 min on 2 cores.
    "tiny": StudyConfig(
        name="tiny",
        backbones=(
            BackboneSpec("robot_r1", "robot_r1", build="grpo", base="tiny", build_args=TINY_GRPO),
            BackboneSpec("sft", "sft", build="sft", base="tiny", build_args=TINY_SFT),
        ),
        baseline="sft",
        data=DataSpec(
            source="generate",
            suites=("libero_object",),
            tasks="0,1",
            episodes_per_task=3,
            heldout_per_task=1,
            workers=2,
        ),
        policy={"head": "l1", "image_size": 112, "head_hidden": 128, "head_layers": 2},
        train=TrainSpec(
            steps=300, batch_size=8, seeds=(42, 43), num_workers=0, save_freq=100, log_freq=10, device="cpu"
        ),
        eval=EvalSpec(
            suites=("libero_object",),
            tasks="0,1",
            init_states="0-1",
            seeds=(7,),
            workers=2,
            perturbations=("lan",),
            train_starts=1,
        ),
        mcqa=MCQASpec(heldout_episodes=2, probe_limit=16, probe_max_new_tokens=16),
        standin_note=True,
    ),
}


def preset(name: str) -> StudyConfig:
    if name not in PRESETS:
        raise unknown("study preset", name, list(PRESETS))
    return PRESETS[name]
