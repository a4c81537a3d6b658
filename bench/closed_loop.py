"""Closed loop on this machine: an r1vla policy trained here succeeds in LIBERO, from its training starts and from
held-out ones. The check that rules out every training/evaluation convention mismatch (image flip, normalisation,
chunk order, gripper sign, observation/action alignment): a mismatch fails even the memorization half.

    .venv/bin/python bench/closed_loop.py --out DIR [--full] [--workers 2]

1. memorization: 20 scripted-expert demos of libero_object task 0 cycling over official init states 0-4
   (`r1vla demos --official-init-states --init-states 0-4 --noise 0.05`: the expert's actions perturbed, so the
   demos show recoveries), the r1vla policy trained on them through lerobot-train (`r1vla train`), evaluated with
   `r1vla eval` on those same 5 states under the standard step cap (280).
2. generalisation: 20 noisy demos of the same task from LIBERO's randomized starts (recorded, never an official
   state), a policy trained on them the same way, evaluated on N official init states (10; all 50 with --full).
The recipe (tiny backbone in full mode, L1 head, 112^2 views; RECIPE below) trains in ~10 minutes of CPU.
Every step is resumable: re-running the same command skips what is done. The last line printed is
`closed-loop: memorized S/5, held-out H/N`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SUITE, TASK = "libero_object", 0
NOISE = 0.05  # std of the Gaussian added to the expert's arm actions (demos --noise)
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
        official_init_states=init_states is not None,
        init_states=init_states,
        max_attempts=3 * n,
    )
    t0 = time.time()
    summary = generate(cfg)
    log(f"demos {out.name}: {summary[f'{SUITE}/{TASK}']['successes']} episodes ({time.time() - t0:.0f} s)")
    return out


def train(data: Path, out: Path, steps: int, seed: int) -> Path:
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    state = out / "checkpoints" / "last" / "training_state" / "training_step.json"
    if state.exists() and json.loads(state.read_text())["step"] == steps:
        return ckpt
    if (ckpt / "train_config.json").exists():  # interrupted after a checkpoint: resume from it
        args = ["--resume=true", f"--config_path={ckpt / 'train_config.json'}", f"--steps={steps}"]
    else:
        if out.exists():  # interrupted before its first checkpoint: start again
            out.rename(out.with_name(f"{out.name}.incomplete-{int(time.time())}"))
        args = [
            *RECIPE,
            "--dataset.repo_id=local/libero_demos",
            f"--dataset.root={data}",
            f"--output_dir={out}",
            f"--steps={steps}",
            f"--save_freq={max(steps // 4, 1)}",
            f"--seed={seed}",
        ]
    t0 = time.time()
    with open(out.with_name(out.name + ".log"), "a") as f:
        proc = subprocess.run([sys.executable, "-m", "r1vla.train", *args], cwd=REPO, stdout=f, stderr=f)
    if proc.returncode:
        raise SystemExit(f"training failed (exit {proc.returncode}); see {out.with_name(out.name + '.log')}")
    log(f"trained {out.name}: {steps} steps ({time.time() - t0:.0f} s)")
    return ckpt


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
    p.add_argument("--memorize-steps", type=int, default=6000)
    p.add_argument("--heldout-steps", type=int, default=6000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    n_held = 50 if a.full else a.heldout

    data = demos(out / "demos_official", a.demos, "0-4", a.workers)
    ckpt = train(data, out / "train_memorize", a.memorize_steps, a.seed)
    s, _ = evaluate(ckpt, out / "eval_memorize", "0-4", a.workers)

    data = demos(out / "demos_random", a.demos, None, a.workers)
    ckpt = train(data, out / "train_heldout", a.heldout_steps, a.seed)
    h, n = evaluate(ckpt, out / "eval_heldout", f"0-{n_held - 1}", a.workers)

    log(f"total {time.time() - t0:.0f} s")
    print(f"closed-loop: memorized {s}/5, held-out {h}/{n}")


if __name__ == "__main__":
    main()
