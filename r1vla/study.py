"""`r1vla study`: demonstrations -> fine-tune each backbone (same head, data, seeds) -> evaluate per suite ->
transfer report against the baseline.

Every stage writes under OUT and records itself in OUT/stages/<stage>.json when complete; a re-run skips
complete stages, so an interrupted study resumes where it stopped and a failed stage leaves the earlier
stages' outputs intact.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from r1vla import gpu_stages, study_config, study_power
from r1vla.stages import StageFailed, StageRunner
from r1vla.study_config import BackboneSpec, StudyConfig
from r1vla.study_layout import eval_tasks, run_name

REPO = Path(__file__).resolve().parents[1]


class Study(StageRunner):
    """The study's stages, in order; bookkeeping (markers, resume, the config as run) in r1vla/stages.py."""

    def __init__(self, cfg: StudyConfig, out: Path, log: Callable[[str], None] = print, budget=None):
        super().__init__(out, cfg.to_dict(), log)
        self.cfg = cfg
        self.budget = budget  # GPUs for the plan and the launchers (r1vla.gpu_plan.Budget); None = those seen

    # --- stages --------------------------------------------------------------------------------------------
    def run(self) -> Path:
        self.budget = gpu_stages.check_study(self.cfg, self.budget, self.log)  # refuses what cannot finish
        self.write_config()
        data = self.stage("data", self.prepare_data)
        self.stage("starts", lambda: self.check_starts(data))  # refuses before any training
        built = [b for b in self.cfg.backbones if b.build]
        mcqa = self.stage("mcqa", lambda: self.build_mcqa(data)) if built else None
        backbones = {
            b.label: self.stage(f"backbone/{b.label}", lambda b=b: self.prepare_backbone(b, mcqa))
            for b in self.cfg.backbones
        }
        paths = {label: bb.get("path") for label, bb in backbones.items()}
        prompt = self.stage("prompt", lambda: study_config.one_prompt(self.cfg.policy, paths))  # every arm's
        if built and self.cfg.mcqa.probe:  # each built backbone's reasoning, and its base's
            for name, path in {
                **{f"base:{b.base}": b.base for b in built},
                **{b.label: backbones[b.label]["path"] for b in built},
            }.items():
                self.stage(f"probe/{name}", lambda p=path: self.probe(p, mcqa))
        self.stage("offline/mean_action", lambda: self.mean_action(data))
        for seed in self.cfg.train.seeds:
            for b in self.cfg.backbones:
                path = backbones[b.label]["path"]
                stage = run_name("train", b, seed)
                self.stage(stage, lambda b=b, s=seed, p=path: self.train(b, s, p, data, prompt))
            self.stage(f"identity/seed{seed}", lambda s=seed: self.check_identity(s))
        for seed in self.cfg.train.seeds:
            for b in self.cfg.backbones:
                self.stage(run_name("offline", b, seed), lambda b=b, s=seed: self.offline(b, s, data))
                self.stage(run_name("eval", b, seed), lambda b=b, s=seed: self.evaluate(b, s))
                if self.cfg.eval.train_starts and data["root"]:
                    stage = run_name("eval_train", b, seed)
                    self.stage(stage, lambda b=b, s=seed: self.evaluate_train(b, s, data))
        self.stage("report", lambda: self.report(data))
        return self.out / "report.md"

    def build_mcqa(self, data: dict) -> dict:
        from reasoning.mcqa import MCQAConfig, build_mcqa

        m = self.cfg.mcqa
        cfg = MCQAConfig(  # held out: the study's held-out demonstrations, never in the training questions
            kinds=tuple(m.kinds),
            heldout_ids=tuple(int(e) for e in data["heldout_episodes"]),
            per_segment=m.per_segment,
            seed=m.seed,
        )
        out = self.out / "mcqa"
        summary = build_mcqa(
            data["root"] or data["repo_id"], out, repo_id=data["repo_id"], config=cfg, overwrite=True
        )
        return {"path": str(out), "summary": summary}

    def probe(self, backbone: str, mcqa: dict) -> dict:
        from reasoning.base import resolve_base
        from reasoning.probe import probe

        m = self.cfg.mcqa
        res = probe(
            resolve_base(backbone),
            mcqa["path"],
            "heldout",
            limit=m.probe_limit,
            max_new_tokens=m.probe_max_new_tokens,
        )
        return {"backbone": backbone, **res}

    def prepare_backbone(self, b: BackboneSpec, mcqa: dict | None = None) -> dict:
        if b.build:
            from reasoning.train import PROVENANCE

            out = self.out / "backbones" / b.label
            launcher, cmd = gpu_stages.build_command(self.cfg, b, self.budget, mcqa["path"], out)
            self.log("[study] " + " ".join(cmd))
            if subprocess.run(cmd, cwd=REPO).returncode != 0 or not out.is_dir():
                raise RuntimeError(f"backbone build exited with an error: {' '.join(cmd)}")
            prov = json.loads((out / PROVENANCE).read_text())
            keep = ("drift", "answer_format", "coordinates", "precision")
            return {
                "path": str(out),
                "built": b.build,
                "base": b.base,
                "launcher": launcher,
                **{k: prov.get(k) for k in keep},
            }
        if b.standin_seed is None:
            return {"path": b.path}
        from adapters import build_tiny_checkpoint

        folder = self.out / "backbones" / f"{b.label}-tiny-seed{b.standin_seed}"
        if not folder.exists():
            build_tiny_checkpoint(folder, seed=b.standin_seed)
        return {"path": str(folder), "standin": True}

    def prepare_data(self) -> dict:
        from r1vla.offline import heldout_episodes

        d = self.cfg.data
        if d.source == "generate":
            from demos.generate import DemoConfig, generate

            root = self.out / "data" / "demos"
            summary = generate(
                DemoConfig(
                    suites=tuple(d.suites),
                    tasks=d.tasks,
                    out=str(root),
                    seed=d.seed,
                    episodes_per_task=d.episodes_per_task + d.heldout_per_task,
                    noise=d.noise,
                    workers=d.workers,
                    repo_id=d.repo_id,
                    official_init_states=d.official_init_states,
                )
            )
            repo_id, root_s = d.repo_id, str(root)
        else:
            summary, repo_id, root_s = None, d.repo_id, d.root
        train, held = heldout_episodes(repo_id, root_s, d.heldout_per_task)
        if not train:
            raise ValueError("no training episodes left after holding out episodes; generate more")
        return {
            "repo_id": repo_id,
            "root": root_s,
            "train_episodes": train,
            "heldout_episodes": held,
            "expert": summary,
        }

    def check_starts(self, data: dict) -> dict:
        """Refuse to evaluate on an init state a training episode started from (before any training)."""
        from r1vla import starts

        train = starts.training_starts(data["root"], data["train_episodes"])
        tasks, inits = eval_tasks(self.cfg)
        found = starts.overlaps(train, tasks, inits, tuple(self.cfg.eval.perturbations))
        if found:
            raise ValueError(
                f"{len(found)} evaluation start(s) equal training starts, so success there would be measured on "
                "training data:\n  "
                + "\n  ".join(found[:20])
                + "\nEvaluate other init states (eval.init_states), or generate demos from randomized starts "
                "(data.official_init_states: false)"
            )
        return {"provenance": starts.provenance(data["root"]), "compared": sum(map(len, train.values()))}

    def train_args(
        self, b: BackboneSpec, seed: int, backbone_path: str | None, data: dict, prompt: dict
    ) -> list[str]:
        """lerobot-train's arguments: equal for every backbone of a seed but the backbone's own and the folder."""
        t = self.cfg.train
        policy = {**self.cfg.policy, "prompt_style": prompt["style"], "prompt_coords": prompt["coordinates"]}
        args = ["--policy.type=r1vla", *(f"--policy.{k}={_cli(v)}" for k, v in policy.items())]
        args += [
            f"--policy.backbone={b.key}",
            *([f"--policy.backbone_path={backbone_path}"] if backbone_path else []),
            f"--policy.device={_device(t.device)}",
            "--policy.push_to_hub=false",
            f"--dataset.repo_id={data['repo_id']}",
            *([f"--dataset.root={data['root']}"] if data["root"] else []),
            f"--dataset.episodes={data['train_episodes']}",
            f"--output_dir={self.out / 'train' / b.label / f'seed{seed}'}",
            f"--steps={t.steps}",
            f"--batch_size={gpu_stages.vla_batch(self.cfg, self.budget)[1]}",  # per process (global / processes)
            f"--seed={seed}",
            f"--num_workers={t.num_workers}",
            f"--save_freq={min(t.save_freq, t.steps)}",
            f"--log_freq={t.log_freq}",
            *t.extra_args,
        ]
        return args

    def train(self, b: BackboneSpec, seed: int, backbone_path: str | None, data: dict, prompt: dict) -> dict:
        t = self.cfg.train
        launcher, per_process = gpu_stages.vla_batch(self.cfg, self.budget)
        run = self.out / "train" / b.label / f"seed{seed}"
        ckpt = run / "checkpoints" / "last" / "pretrained_model"
        args = full = self.train_args(b, seed, backbone_path, data, prompt)
        last_cfg = ckpt / "train_config.json"
        if last_cfg.exists():  # interrupted after a checkpoint: lerobot-train resumes from it
            args = ["--resume=true", f"--config_path={last_cfg}", f"--steps={t.steps}"]
            self.log(f"[study] {run_name('train', b, seed)}: resuming from {last_cfg.parent.parent}")
        elif run.exists():  # interrupted before the first checkpoint: keep it aside, start again
            aside = run.with_name(f"seed{seed}.incomplete-{int(time.time())}")
            run.rename(aside)
            self.log(f"[study] {run} had no checkpoint yet: moved to {aside}, starting again")
        cmd = [*launcher, *([] if launcher else [sys.executable]), "-m", "r1vla.train", *args]
        self.log("[study] " + " ".join(cmd))
        proc = subprocess.run(cmd, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"training exited with code {proc.returncode}")
        step = json.loads((run / "checkpoints/last/training_state/training_step.json").read_text())["step"]
        if step != t.steps:
            raise RuntimeError(f"training stopped at step {step} of {t.steps}")
        return {
            "checkpoint": str(ckpt),
            "tensorboard": str(run / "tensorboard"),
            "steps": step,
            "seed": seed,
            "args": full,
            "resumed": args is not full,
            "global_batch": t.batch_size,
            "processes": t.batch_size // per_process,
            "per_process_batch": per_process,
        }

    def check_identity(self, seed: int) -> dict:
        """One seed, one head init and one data order for every backbone (their r1vla_run.json), else refuse."""
        keys = ("head_init_sha256", "first_batch_indices_sha256")
        ids = {}
        for b in self.cfg.backbones:
            ckpt = Path(self.done(run_name("train", b, seed))["checkpoint"])
            run = json.loads((ckpt / "r1vla_run.json").read_text())
            ids[b.label] = {k: run[k] for k in keys}
        differ = [k for k in keys if len({i[k] for i in ids.values()}) > 1]
        if differ:
            raise ValueError(
                f"seed {seed}: the backbones' training runs differ in {differ} ({ids}): the comparison would "
                "differ in more than the backbone"
            )
        return {"seed": seed, **next(iter(ids.values()))}

    def mean_action(self, data: dict) -> dict:
        from policies.r1vla import R1VLAConfig
        from r1vla.offline import mean_action_l1

        cfg = R1VLAConfig(**self.cfg.policy, device="cpu")
        args = (data["repo_id"], data["root"], data["train_episodes"], data["heldout_episodes"])
        return mean_action_l1(*args, cfg.chunk_size, cfg.n_action_steps)

    def offline(self, b: BackboneSpec, seed: int, data: dict) -> dict:
        from r1vla.offline import evaluate_checkpoint

        ckpt = Path(self.done(run_name("train", b, seed))["checkpoint"])
        device = _device(self.cfg.train.device)
        args = (data["repo_id"], data["root"], data["heldout_episodes"])
        trained = evaluate_checkpoint(ckpt, *args, device=device)
        untrained = evaluate_checkpoint(ckpt, *args, untrained=True, device=device)
        return {
            "heldout_l1": trained["l1"],
            "untrained_l1": untrained["l1"],
            "frames": trained["frames"],
            "per_dim": trained["per_dim"],
            "episodes": data["heldout_episodes"],
        }

    def eval_config(self, b: BackboneSpec, seed: int, out: Path, **overrides):
        from eval_libero.run import EvalConfig

        e = self.cfg.eval
        kw = dict(
            policy=self.done(run_name("train", b, seed))["checkpoint"],
            out=str(out),
            suites=",".join(e.suites),
            tasks=e.tasks,
            init_states=e.init_states,
            seeds=",".join(map(str, e.seeds)),
            max_steps=e.max_steps,
            protocol=e.protocol,
            workers=e.workers,
            video_every=e.video_every,
            device=_device(self.cfg.train.device),
            label=b.label,
            perturbations=",".join(e.perturbations) or None,
        )
        return EvalConfig(**{**kw, **overrides})

    def evaluate(self, b: BackboneSpec, seed: int) -> dict:
        from eval_libero.run import evaluate

        cfg = self.eval_config(b, seed, self.out / "eval" / b.label / f"seed{seed}")
        return {"run": str(evaluate(cfg, log=self.log))}

    def evaluate_train(self, b: BackboneSpec, seed: int, data: dict) -> dict:
        """Success from the arm's own training starts: memorization, the closed loop's first sanity check."""
        from eval_libero.run import evaluate
        from r1vla.starts import training_starts

        n = self.cfg.eval.train_starts
        starts = training_starts(data["root"], data["train_episodes"])
        picked = sorted(st.episode for eps in starts.values() for st in eps[:n])
        cfg = self.eval_config(
            b,
            seed,
            self.out / "eval_train" / b.label / f"seed{seed}",
            start_states=data["root"],
            tasks=None,
            init_states=",".join(map(str, picked)),
            perturbations=None,
        )
        return {"run": str(evaluate(cfg, log=self.log)), "episodes": picked}

    def report(self, data: dict) -> dict:
        from analysis.compare import compare_runs
        from r1vla.study_report import render_report

        runs = [
            Path(self.done(run_name("eval", b, s))["run"])
            for s in self.cfg.train.seeds
            for b in self.cfg.backbones
        ]
        cmp = compare_runs(runs, baseline=self.cfg.baseline, out=self.out / "compare")
        (self.out / "report.md").write_text(render_report(self, data, cmp))
        return {"report": str(self.out / "report.md"), "compare": str(self.out / "compare")}


def _cli(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--config", help="study YAML (see r1vla/study_config.py)")
    src.add_argument(
        "--preset", default=None, help=f"one of {', '.join(study_config.PRESETS)} (default: tiny)"
    )
    parser.add_argument("--out", default=None, help="results folder (default: runs/<study name>)")
    parser.add_argument(
        "--backbone",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="checkpoint of a backbone label, e.g. --backbone robot_r1=/ckpt/robot-r1",
    )
    parser.add_argument(
        "--dump-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    gpu_stages.add_plan_arguments(parser)  # --plan, --gpus, --gpu-memory, ...
    study_power.add_power_arguments(parser)  # --target-delta, --pilot


def run(args: argparse.Namespace) -> int:
    plan = args.plan or args.target_delta is not None or args.pilot
    try:
        cfg = study_config.load(args.config) if args.config else study_config.preset(args.preset or "tiny")
        if not plan or args.backbone:  # the plan reads seeds and episodes only: no checkpoints needed
            cfg = study_config.with_paths(cfg, args.backbone)
    except ValueError as e:
        print(f"r1vla study: {e}", file=sys.stderr)
        return 2
    if args.dump_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if not args.plan and (args.target_delta is not None or args.pilot):
        print("r1vla study: --target-delta and --pilot apply to --plan", file=sys.stderr)
        return 2
    if args.plan and args.gpus is None and args.gpu_memory is None and gpu_stages.detected_budget() is None:
        print("GPU plan: no GPU seen here; give --gpus N --gpu-memory GiB to plan the GPU stages\n")
        return study_power.print_power_plan(args, cfg)  # the statistical power needs no GPU
    try:
        budget, rc = gpu_stages.plan_command(args, cfg)  # --plan: printed, rc; else the GPUs to plan for
    except ValueError as e:
        print(f"r1vla study: {e}", file=sys.stderr)
        return 2
    if rc is not None:  # --plan: the GPU stages above, the design's statistical power below
        print()
        return study_power.print_power_plan(args, cfg) or rc
    out = Path(args.out or REPO / "runs" / cfg.name)
    try:
        report = Study(cfg, out, budget=budget).run()
    except (StageFailed, ValueError) as e:
        print(f"r1vla study: {e}", file=sys.stderr)
        return 1
    print(f"[study] report: {report}")
    return 0
