"""Synthetic episode records and runs with known answers for the `r1vla compare` tests, and the statistics
those tests compute by hand."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from analysis.compare import Run, build_arms
from libero_core.records import (
    write_jsonl_atomic,
)

SU = ["libero_spatial", "libero_object", "libero_goal", "libero_10"]
CAPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
PROTO = {"name": "standard", "max_steps": CAPS, "max_steps_override": None, "num_wait_steps": 10}
SHORT = {**PROTO, "max_steps": dict.fromkeys(CAPS, 10), "max_steps_override": 10}
QUIET = {"log": lambda m: None}


def outcomes(both: int, run_only: int, base_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Paired outcome lists (run, baseline) with the given contingency counts, interleaved."""
    pairs = (
        [(True, True)] * both
        + [(True, False)] * run_only
        + [(False, True)] * base_only
        + [(False, False)] * neither
    )
    pairs = pairs[::2] + pairs[1::2]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def make_records(label, by_cell, seeds=(7,), train_seed=0, protocol=PROTO, checkpoint=None, failure=None):
    """by_cell: {suite or (suite, perturbation): [success, ...]}. Episode i of a cell -> task i % 10, init state
    (i // 10) % 50, eval seed seeds[i // 500]. `failure(i)` -> the failure string of a failed episode."""
    ck = checkpoint or hashlib.sha256(f"{label}/{train_seed}".encode()).hexdigest()[:12]
    recs = []
    for cell, succ in by_cell.items():
        suite, pert = (cell, "none") if isinstance(cell, str) else cell
        for i, ok in enumerate(succ):
            fail = None if ok else (failure(i) if failure else "timeout: no success in 300 steps")
            recs.append(
                dict(suite=suite, perturbation=pert, task_id=i % 10, init_state=(i // 10) % 50, seed=seeds[i // 500],
                     success=bool(ok), steps=5, failure=fail, label=label, checkpoint=ck, train_seed=train_seed,
                     protocol=protocol, instruction="put the bowl on the plate")
            )  # fmt: skip
    return recs


def write_run(path: Path, label: str, by_cell: dict, **kw) -> Path:
    path.mkdir(parents=True)
    write_jsonl_atomic(path / "episodes.jsonl", make_records(label, by_cell, **kw))
    return path


def simulate(rng, p, train_seeds=(0, 1, 2), seed_sd=0.03, cluster_sd=0.15, n_init=10, sizes=None):
    """Arms {label: list[Run]} in memory. P(success) of arm a, suite s, training seed t, cluster (task, init):
    p[a][s] + u[a, t] + v[s, cluster], u ~ N(0, seed_sd) a per-seed random effect, v ~ U(±cluster_sd) shared by
    the arms (what pairing removes). Every term but p has mean 0, so the true Δ_s is p[a][s] − p[base][s]."""
    v = {s: rng.uniform(-cluster_sd, cluster_sd, (10, n_init)) for s in p[next(iter(p))]}
    runs = []
    for a, ps in p.items():
        for t in train_seeds:
            u = rng.normal(0, seed_sd)
            recs = []
            for s, ps_s in ps.items():
                n = (sizes or {}).get(s, 10 * n_init)
                for j in range(n):
                    k, i = j % 10, (j // 10) % n_init
                    ok = bool(rng.random() < ps_s + u + v[s][k, i])
                    recs.append(
                        dict(suite=s, task_id=k, init_state=i, seed=7 + j // (10 * n_init), success=ok)
                    )
            runs.append(Run(Path(f"{a}{t}"), a, {}, f"{a}{t}", t, recs))
    return build_arms(runs, log=lambda m: None)


def seed_deltas(arms, arm, base, suite):
    """Per training seed (paired by train_seed), by hand: mean(arm − baseline) over the shared episodes."""
    by_seed = {r.train_seed: r for r in arms[base]}
    out = []
    for r in arms[arm]:
        a, b = r.cells[(suite, "none")], by_seed[r.train_seed].cells[(suite, "none")]
        out.append(np.mean([float(a[e]) - float(b[e]) for e in a if e in b]))
    return out


def cluster_var(d: dict) -> float:
    """By hand: the cluster-robust sampling variance of mean(d) over (task, init state) clusters,
    C/(C − 1) Σ_c (sum_c − ȳ n_c)² / N² (the floor of the t-interval over seeds, stats.within_variance)."""
    num: dict = {}
    for e, v in d.items():
        n, k = num.get(e[:2], (0.0, 0))
        num[e[:2]] = (n + float(v), k + 1)
    tot = sum(k for _, k in num.values())
    y = sum(n for n, _ in num.values()) / tot
    return len(num) / (len(num) - 1) * sum((n - y * k) ** 2 for n, k in num.values()) / tot**2


def floored_half(values, within: float) -> float:
    """Half-width of the 95% t-interval over seeds with s² = max(sd², within)."""
    return floored_t(values, within)[0]


def floored_t(values, within: float) -> tuple[float, float, str]:
    """By hand: half-width, two-sided p and method of the t-interval/test over seeds with s² = max(sd², within)."""
    from scipy.stats import t as t_dist

    n, sd2 = len(values), float(np.var(values, ddof=1))
    se = math.sqrt(max(sd2, within) / n)
    p = float(2 * t_dist.sf(abs(np.mean(values)) / se, n - 1))
    return float(t_dist.ppf(0.975, n - 1)) * se, p, "t_over_seeds_floored" if within > sd2 else "t_over_seeds"
