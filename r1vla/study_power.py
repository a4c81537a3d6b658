"""`r1vla study --plan`: the statistical power of the study's design before it runs: the minimum detectable Δ
(80% power, α 0.05 family-wise under Holm) for the configured training seeds and evaluation episodes, and the
training seeds a target Δ needs (`--target-delta`). The variance is a pilot run's (`--pilot`, the compare report
of an earlier study) or a stated default (analysis/power.py). Only the statistics: a GPU-memory plan can be
printed beside these lines by its own module."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis import power
from r1vla.study_config import StudyConfig


def pilot_design(path: str) -> dict:
    """The measured design of a compare report (REPORT/report.json or the folder): its first comparison's seed
    and episode variances (analysis/compare_paired.py `design`). ValueError naming the problem otherwise."""
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    try:
        rep = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(
            f"--pilot {path!r}: not a readable compare report.json ({type(e).__name__}: {e})"
        ) from None
    designs = [r["design"] for r in rep.get("runs", {}).values() if r.get("design")]
    if not designs or designs[0].get("episode_var") is None:
        raise ValueError(
            f"--pilot {path!r}: the report has no measured design (made by an older r1vla compare, or nothing "
            "was compared against the baseline); re-run `r1vla compare` on its runs"
        )
    return {**designs[0], "source": f"pilot {p}"}


def _episodes_per_suite(cfg: StudyConfig) -> dict[str, int]:
    from r1vla.study_layout import eval_tasks

    tasks, inits = eval_tasks(cfg)
    out: dict[str, int] = {}
    for suite, _ in tasks:
        out[suite] = out.get(suite, 0) + len(inits) * len(cfg.eval.seeds)
    return out


def power_plan_lines(
    cfg: StudyConfig, target_delta_pp: float | None = None, pilot: str | None = None
) -> list[str]:
    """The power part of `r1vla study --plan`, as printed lines."""
    if target_delta_pp is not None and not 0 < target_delta_pp <= 100:
        raise ValueError(f"--target-delta must be in (0, 100] percentage points, got {target_delta_pp:g}")
    eps = _episodes_per_suite(cfg)
    n_suites, n_seeds = len(eps), len(cfg.train.seeds)
    n_ep = min(eps.values())
    m = n_suites + 1  # Holm family of one comparison: the suites and the Average
    alpha = power.ALPHA / m
    if pilot:
        d = pilot_design(pilot)
        ep_var = d["episode_var"]
        seed_var = d["seed_var"]
        source = (
            d["source"] + f" ({d['n_seeds']} seed(s), {d['episodes_per_seed_per_suite']:g} episodes/suite)"
        )
        if seed_var is None:
            seed_var = power.DEFAULT_SEED_VAR
            source += "; one seed, so the seed variance is the default's"
    else:
        ep_var, seed_var, source = power.DEFAULT_EPISODE_VAR, power.DEFAULT_SEED_VAR, power.DEFAULT_SOURCE

    def var(n_episodes: int, average: bool) -> float:  # one seed's Δ; the Average: S independent suites
        v = seed_var + ep_var / n_episodes
        return v / n_suites if average else v

    def mde(n: int, n_episodes: int, average: bool) -> str:
        return power.fmt_pp(power.mde(n, var(n_episodes, average), alpha))

    others = [b.label for b in cfg.backbones if b.label != cfg.baseline]
    lines = [
        f"Statistical power (each of {', '.join(others) or 'no arm'} vs {cfg.baseline}; 80% power, α "
        f"{power.ALPHA:g} family-wise, Holm over {n_suites} suites + the Average: α/{m} = {alpha:.3g} per test):",
        f"  design: {n_seeds} training seed(s), {n_ep} episodes per suite and seed"
        + (f" (fewest of {sorted(set(eps.values()))})" if len(set(eps.values())) > 1 else "")
        + f", {len(cfg.eval.seeds)} evaluation seed(s)",
        f"  variance: {source}; a seed's Δ: seed-to-seed {seed_var:.4g} + one paired episode's {ep_var:.3g} / "
        "episodes",
        f"  minimum detectable Δ: {mde(n_seeds, n_ep, False)} pp per suite, {mde(n_seeds, n_ep, True)} pp on the "
        f"Average (with 10x the episodes: {mde(n_seeds, 10 * n_ep, False)} / {mde(n_seeds, 10 * n_ep, True)} pp; "
        f"with 10 training seeds: {mde(10, n_ep, False)} / {mde(10, n_ep, True)} pp)",
    ]
    if n_seeds < 3:
        lines.append(
            "  note: below 3 training seeds the verdicts are about the checkpoints, not the backbones"
        )
    if target_delta_pp is not None:
        t = target_delta_pp / 100
        need = [
            power.seeds_needed(t, seed_var / k, ep_var / k, n_ep, alpha) for k in (1, n_suites)
        ]  # k = n_suites: the Average of S independent suites
        say = ["more than 1000" if n is None else str(n) for n in need]
        lines.append(
            f"  training seeds for Δ = {target_delta_pp:g} pp at 80% power: {say[0]} per suite, {say[1]} on the "
            f"Average (at {n_ep} episodes per suite and seed)"
        )
    return lines


def add_power_arguments(parser: argparse.ArgumentParser) -> None:
    """`r1vla study --plan`'s power flags: --target-delta and --pilot (--plan itself: r1vla.gpu_stages)."""
    parser.add_argument(
        "--target-delta",
        type=float,
        default=None,
        metavar="PP",
        help="with --plan: the training seeds needed to detect this Δ (percentage points) at 80%% power",
    )
    parser.add_argument(
        "--pilot",
        default=None,
        metavar="REPORT",
        help="with --plan: take the variances from this compare report (folder or report.json)",
    )


def print_power_plan(args: argparse.Namespace, cfg: StudyConfig) -> int:
    """Print the power part of the plan (0), or the refusal of its flags (2)."""
    try:
        print("\n".join(power_plan_lines(cfg, args.target_delta, args.pilot)))
    except ValueError as e:
        print(f"r1vla study: {e}", file=sys.stderr)
        return 2
    return 0
