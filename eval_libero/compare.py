"""`r1vla compare`: the transfer report. Success per suite with 95% CIs, and paired, replicate-aware tests of every
arm against a baseline, on the standard suites and under LIBERO-PRO perturbations.

    r1vla compare RUN... [--baseline LABEL_OR_RUNDIR] --out REPORT [--allow-protocol-mismatch]
                  [--bootstrap 2000] [--bootstrap-seed 0]

One run folder = one evaluation of one checkpoint. Runs sharing a label with different checkpoints are
training-seed replicates of that arm, paired across arms by `train_seed`. Writes REPORT/report.md,
REPORT/report.json, REPORT/per_suite.png (and per_perturbation.png when there are perturbations). Methods:
eval_libero/stats.py and the head of report.md. In Python: `compare_runs([Path(a), Path(b)], "sft", out)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from eval_libero.compare_analysis import ALPHA, N_BOOT, STANDARD, Cell, Episode, analyse  # noqa: F401
from eval_libero.records import EPISODES, dict_differences, episode_key, is_fault, read_jsonl


class CompareError(ValueError):
    """Runs that cannot be compared, explained in the message."""


@dataclass
class Run:
    dir: Path
    label: str
    protocol: dict
    checkpoint: str | None
    train_seed: int | None
    records: list[dict]
    unmerged_shards: list[str] = field(default_factory=list)

    @cached_property
    def cells(self) -> dict[Cell, dict[Episode, bool]]:
        out: dict[Cell, dict[Episode, bool]] = defaultdict(dict)
        for r in self.records:
            s, p, t, i, seed = episode_key(r)
            out[(s, p)][(t, i, seed)] = bool(r["success"])
        return dict(out)

    @cached_property
    def faults(self) -> dict:
        """Episodes that failed for a reason other than the step cap, counted by reason (text before ':')."""
        bad = [str(f) for r in self.records if (f := r.get("failure")) and not str(f).startswith("timeout")]
        reasons = Counter(f.split(":")[0].strip() or f for f in bad)
        return {"n": len(bad), "reasons": dict(sorted(reasons.items())), "examples": sorted(set(bad))[:3]}


def load_run(run: Path, log=print) -> Run:
    """A run folder; shard files not yet merged are read (read-only) and flagged."""
    if not run.is_dir():
        raise CompareError(f"run folder not found: {run}")
    shards = sorted(run.glob("episodes.rank*.jsonl"))
    if shards:
        log(
            f"warning: {run} has unmerged shard files ({', '.join(f.name for f in shards)}); read as they are"
        )
    records, seen = [], {}
    for f in [run / EPISODES, *shards]:
        got = read_jsonl(f)
        for lineno, why in got.bad_lines:
            log(f"{f}: line {lineno}: {why}; ignored")
        for r in got.records:
            i = seen.get(episode_key(r))
            if i is None:
                seen[episode_key(r)] = len(records)
                records.append(r)
            elif is_fault(records[i]):  # re-run by --retry-faults, not merged yet (as merge_shards does)
                records[i] = r
    if not records:
        raise CompareError(f"{run} has no recorded episodes ({EPISODES})")
    one = "; one run folder = one evaluation of one checkpoint"
    for fld in ("label", "checkpoint", "train_seed"):
        values = {json.dumps(r.get(fld)) for r in records}
        if len(values) > 1:
            raise CompareError(f"{run} mixes records of several {fld}s ({', '.join(sorted(values))}){one}")
    protocols = {json.dumps(r.get("protocol"), sort_keys=True) for r in records}
    if len(protocols) > 1:
        named = {f"protocol{i + 1}": json.loads(p) for i, p in enumerate(sorted(protocols))}
        raise CompareError(f"{run} mixes several protocols ({'; '.join(dict_differences(named))}){one}")
    r0 = records[0]
    seed = r0.get("train_seed")
    return Run(
        run,
        str(r0.get("label")),
        json.loads(protocols.pop()),
        r0.get("checkpoint"),
        None if seed is None else int(seed),
        records,
        [f.name for f in shards],
    )


def build_arms(runs: list[Run], log=print) -> dict[str, list[Run]]:
    """Arm name -> replicates. A run whose label and checkpoint repeat an earlier run's is its own arm."""
    arms: dict[str, list[Run]] = {}
    for run in runs:
        name = run.label
        if name in arms and any(r.checkpoint == run.checkpoint for r in arms[name]):
            name, i = f"{run.label} ({run.dir.name})", 2
            while name in arms:
                name, i = f"{run.label} ({run.dir.name} #{i})", i + 1
            log(
                f"{run.dir}: checkpoint {run.checkpoint} of {run.label!r} evaluated twice; its own arm {name!r}"
            )
        arms.setdefault(name, []).append(run)
    for name, reps in arms.items():
        seeds = [r.train_seed for r in reps if r.train_seed is not None]
        if dup := sorted({s for s in seeds if seeds.count(s) > 1}):
            raise CompareError(
                f"arm {name!r} has several checkpoints with train_seed {dup} ("
                + ", ".join(str(r.dir) for r in reps if r.train_seed in dup)
                + "); replicates must be different training seeds (give them different labels)"
            )
    return arms


def _short(reps: list[Run]) -> list[str]:
    """Folder names of the replicates, or their full paths where two names are the same."""
    names = [r.dir.name for r in reps]
    return names if len(set(names)) == len(names) else [str(r.dir) for r in reps]


def check_protocols(arms: dict[str, list[Run]], allow: bool) -> list[str]:
    """Differing protocol fields over all runs; refused (CompareError) unless `allow`."""
    for name, reps in arms.items():
        diffs = dict_differences({n: r.protocol for n, r in zip(_short(reps), reps, strict=True)})
        if diffs and not allow:
            raise CompareError(
                f"replicates of {name!r} were made under different protocols; differing fields:\n  "
                + "\n  ".join(diffs)
                + "\n(--allow-protocol-mismatch to compare anyway)"
            )
    named = {
        n if len(reps) == 1 else f"{n}/{short}": r.protocol
        for n, reps in arms.items()
        for short, r in zip(_short(reps), reps, strict=True)
    }
    diffs = dict_differences(named)
    if diffs and not allow:
        raise CompareError(
            "runs were made under different protocols; differing fields:\n  "
            + "\n  ".join(diffs)
            + "\n(--allow-protocol-mismatch to compare anyway)"
        )
    return diffs


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
    from eval_libero.compare_report import plot_perturbations, plot_suites, render_markdown

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
