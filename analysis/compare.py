"""`r1vla compare`: the transfer report. Success per suite with 95% CIs, and paired, replicate-aware tests of every
arm against a baseline, on the standard suites and under LIBERO-PRO perturbations.

    r1vla compare RUN... [--baseline LABEL_OR_RUNDIR] --out REPORT [--allow-protocol-mismatch]
                  [--bootstrap 2000] [--bootstrap-seed 0]

One run folder = one evaluation of one checkpoint. Runs sharing a label with different checkpoints are
training-seed replicates of that arm, paired across arms by `train_seed`. Writes REPORT/report.md,
REPORT/report.json, REPORT/per_suite.png (and per_perturbation.png when there are perturbations). Methods:
analysis/stats.py and the head of report.md. In Python: `compare_runs([Path(a), Path(b)], "sft", out)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.compare_analysis import analyse
from analysis.runs import ALPHA, N_BOOT, CompareError, Run, build_arms, check_protocols, load_run


def compare_runs(
    run_dirs: list[Path],
    baseline: str | None,
    out: Path,
    allow_protocol_mismatch: bool = False,
    log=print,
    n_boot: int = N_BOOT,
    boot_seed: int = 0,
    alpha: float = ALPHA,
) -> dict:
    """Write report.md / report.json / per_suite.png (+ per_perturbation.png) into `out`; returns the report
    dict. `baseline` is an arm name, a label or a run folder (default: the first run's arm)."""
    from analysis.compare_report import plot_perturbations, plot_suites, render_markdown

    if not run_dirs:
        raise CompareError("no run folders given")
    if int(n_boot) < 100:
        raise CompareError(f"--bootstrap must be at least 100 resamples, got {n_boot}")
    if not 0 < alpha < 1:
        raise CompareError(f"alpha must be in (0, 1), got {alpha}")
    arms = build_arms([load_run(Path(d), log) for d in run_dirs], log)
    base = next(iter(arms)) if baseline is None else _find(arms, baseline)
    diffs = check_protocols(arms, allow_protocol_mismatch)
    rep = {**analyse(arms, base, int(n_boot), int(boot_seed), alpha), "protocol_differences": diffs}
    for w in rep["warnings"]:
        log(f"warning: {w}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=2, sort_keys=True))
    (out / "report.md").write_text(render_markdown(rep))
    plot_suites(rep, out / "per_suite.png")
    if rep["ood"]:
        plot_perturbations(rep, out / "per_perturbation.png")
    return rep


def _find(arms: dict[str, list[Run]], baseline: str) -> str:
    for test in (
        lambda n, reps: baseline == n,
        lambda n, reps: baseline == reps[0].label,
        lambda n, reps: any(Path(baseline).resolve() == r.dir.resolve() for r in reps),
    ):
        if hits := [n for n, reps in arms.items() if test(n, reps)]:
            return hits[0]
    raise CompareError(
        f"baseline {baseline!r} is none of the runs; give an arm, label or folder of: "
        + "; ".join(f"{n} ({', '.join(str(r.dir) for r in reps)})" for n, reps in arms.items())
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", nargs="+", help="run folders written by `r1vla eval` (several per label = replicates)"
    )
    p.add_argument(
        "--baseline", default=None, help="arm, label or folder of the baseline (default: the first)"
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument(
        "--allow-protocol-mismatch", action="store_true", help="compare runs made under different protocols"
    )
    p.add_argument(
        "--bootstrap", type=int, default=N_BOOT, metavar="N", help=f"bootstrap resamples (default {N_BOOT})"
    )
    p.add_argument("--bootstrap-seed", type=int, default=0, help="RNG seed of the bootstrap (default 0)")


def run(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        compare_runs(
            [Path(r) for r in args.runs],
            args.baseline,
            Path(args.out),
            args.allow_protocol_mismatch,
            log=log,
            n_boot=args.bootstrap,
            boot_seed=args.bootstrap_seed,
        )
    except CompareError as e:
        print(f"r1vla compare: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "report.md").read_text())
    return 0
