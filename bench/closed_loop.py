"""Closed loop on this machine: an r1vla policy trained here succeeds in LIBERO, from its training starts and from
held-out ones. The check that rules out every training/evaluation convention mismatch (image flip, normalisation,
chunk order, gripper sign, observation/action alignment): a mismatch fails even the memorization half.

    .venv/bin/python bench/closed_loop.py --out DIR [--full] [--workers 2]

1. memorization: 20 scripted-expert demos of libero_object task 0 cycling over official init states 0-4
   (`r1vla demos --official-init-states --init-states 0-4 --noise 0.05 --labels expert --image-size 128`: the
   executed actions are perturbed, so the demos visit states off the expert's path, and each is labelled with the
   expert's own action there, DART-style), the r1vla policy trained on them through lerobot-train (`r1vla train`),
   evaluated with `r1vla eval` (which renders 128^2, as trained) on those same 5 states under the standard step
   cap (280).
2. generalisation: 20 such demos of the same task from LIBERO's randomized starts (recorded, never an official
   state), a policy trained on them the same way, evaluated on N official init states (10; all 50 with --full).
The recipe (tiny backbone in full mode, L1 head, 112^2 views; RECIPE below), STEPS steps at batch 8. The two
policies train at once, one torch thread each: the tiny model's steps are overhead-bound, so on 2 cores two
1-thread runs each make about the steps per second of one 2-thread run (measured: ~9.6 vs ~9.5).
Every step is resumable: re-running the same command skips what is done. The last line printed is
`closed-loop: memorized S/5, held-out H/N`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SUITE, TASK = "libero_object", 0
NOISE = 0.05  # std of the Gaussian added to the expert's executed arm actions (demos --noise)
STEPS = 9000  # training steps of each policy
FRAMES = 128  # camera resolution of the demos (demos --image-size); r1vla eval renders what the policy was trained on
RECIPE = [  # lerobot-train arguments of the r1vla policy, shared by both halves
    "--policy.type=r1vla",
    "--policy.backbone=tiny",
    "--policy.device=cpu",
    "--policy.backbone_mode=full",  # the random tiny backbone must learn features: frozen it cannot
    "--policy.head=l1",
    "--policy.image_size=112",  # 16 visual tokens per view
    "--policy.head_hidden=256",
    "--policy.head_layers=2",
    "--policy.n_action_steps=4",  # re-plan every 4 steps (the chunk holds 8)
    "--policy.optimizer_lr=3e-4",
    "--policy.optimizer_backbone_lr_scale=1.0",
    "--policy.scheduler_warmup_steps=200",
    "--policy.push_to_hub=false",
    "--batch_size=8",
    "--num_workers=0",
    "--log_freq=200",
]


def log(msg: str) -> None:
    print(f"[closed-loop {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def demos(out: Path, n: int, init_states: str | None, workers: int) -> Path:
    from demos.generate import DemoConfig, generate

    cfg = DemoConfig(
        suites=(SUITE,),
        tasks=str(TASK),
        episodes_per_task=n,
        out=str(out),
        workers=workers,
        noise=NOISE,
        labels="expert",
        image_size=FRAMES,
        official_init_states=init_states is not None,
        init_states=init_states,
        max_attempts=3 * n,
    )
    t0 = time.time()
    summary = generate(cfg)
    log(f"demos {out.name}: {summary[f'{SUITE}/{TASK}']['successes']} episodes ({time.time() - t0:.0f} s)")
    return out


def _train_args(data: Path, out: Path, steps: int, seed: int) -> list[str] | None:
    """lerobot-train's arguments for one run: None when it is complete, a resume when it has a checkpoint."""
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    state = out / "checkpoints" / "last" / "training_state" / "training_step.json"
    if state.exists() and json.loads(state.read_text())["step"] == steps:
        return None
    if (ckpt / "train_config.json").exists():  # interrupted after a checkpoint: resume from it
        return ["--resume=true", f"--config_path={ckpt / 'train_config.json'}", f"--steps={steps}"]
    if out.exists():  # interrupted before its first checkpoint: start again
        out.rename(out.with_name(f"{out.name}.incomplete-{int(time.time())}"))
    return [
        *RECIPE,
        "--dataset.repo_id=local/libero_demos",
        f"--dataset.root={data}",
        f"--output_dir={out}",
        f"--steps={steps}",
        f"--save_freq={max(steps // 4, 1)}",
        f"--seed={seed}",
    ]


def train(runs: list[tuple[Path, Path]], steps: int, seed: int, threads: int | None = None) -> list[Path]:
    """Train one policy per (dataset, output folder), the runs at once, each in its own `r1vla train` process
    with `threads` torch threads (None: torch's default). Returns the checkpoints."""
    env = (
        None
        if threads is None
        else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    )
    procs = []
    for data, out in runs:
        args = _train_args(data, out, steps, seed)
        if args is None:
            continue
        f = open(out.with_name(out.name + ".log"), "a")  # noqa: SIM115 (closed below)
        cmd = [sys.executable, "-m", "r1vla.train", *args]
        procs.append((out, subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=f, env=env), f, time.time()))
    failed = []
    for out, proc, f, t0 in procs:
        code = proc.wait()
        f.close()
        if code:
            failed.append(f"{out.name} (exit {code}; see {out.with_name(out.name + '.log')})")
        else:
            log(f"trained {out.name}: {steps} steps ({time.time() - t0:.0f} s)")
    if failed:
        raise SystemExit("training failed: " + ", ".join(failed) + "; re-run the same command to resume")
    return [out / "checkpoints" / "last" / "pretrained_model" for _, out in runs]


def evaluate(ckpt: Path, out: Path, init_states: str, workers: int) -> tuple[int, int]:
    """`r1vla eval` on libero_object task 0, standard protocol; returns (successes, episodes)."""
    from r1vla.cli import main

    t0 = time.time()
    args = ["eval", "--policy", str(ckpt), "--out", str(out), "--suites", SUITE, "--tasks", str(TASK)]
    if main([*args, "--init-states", init_states, "--workers", str(workers)]) != 0:
        raise SystemExit(f"r1vla eval failed on {ckpt}")
    block = json.loads((out / "summary.json").read_text())["suites"][SUITE]
    log(f"evaluated {out.name}: {block['successes']}/{block['n']} ({time.time() - t0:.0f} s)")
    return block["successes"], block["n"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work folder (re-run the same command to resume)")
    p.add_argument("--full", action="store_true", help="held-out evaluation on all 50 official init states")
    p.add_argument("--heldout", type=int, default=10, help="official init states of the held-out evaluation")
    p.add_argument("--demos", type=int, default=20, help="demos per half (4 per init state)")
    p.add_argument("--steps", type=int, default=STEPS, help="training steps of each policy")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    n_held = 50 if a.full else a.heldout

    mem = demos(out / "demos_official", a.demos, "0-4", a.workers)
    held = demos(out / "demos_random", a.demos, None, a.workers)
    ckpts = train([(mem, out / "train_memorize"), (held, out / "train_heldout")], a.steps, a.seed, threads=1)
    s, _ = evaluate(ckpts[0], out / "eval_memorize", "0-4", a.workers)
    h, n = evaluate(ckpts[1], out / "eval_heldout", f"0-{n_held - 1}", a.workers)

    log(f"total {time.time() - t0:.0f} s")
    print(f"closed-loop: memorized {s}/5, held-out {h}/{n}")


if __name__ == "__main__":
    main()
