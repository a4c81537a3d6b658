"""Paired Δ of an arm against the baseline on the standard suites and their Average (analysis/compare.py):
estimates, McNemar per replicate pair, the Holm family, verdicts and the design's power. No file I/O.

The Holm family of one comparison is every standard suite with a p and the Average (so the family-wise error of
its verdicts, the Average's included, is at most α); each row carries the correction it was judged under
(`correction`) and its minimum detectable Δ at 80% power (`mde80`, analysis/power.py) from the seed and
cluster variance observed."""

from __future__ import annotations

import statistics
import zlib
from collections import defaultdict

import numpy as np

from analysis import power, stats
from analysis.runs import ALPHA, STANDARD, Run


def _rng(seed: int, *tag: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("|".join(tag).encode())])


def verdict(
    delta, ci, p, n_seeds: int, arm: str, base: str, alpha: float = ALPHA, pert: str | None = None
) -> str:
    """The claim the numbers support: about checkpoints below 3 training seeds, about backbones from 3. `p` is
    the corrected p (Holm); the row's `correction` says which family."""
    if not n_seeds or delta is None:
        return "not comparable (no shared episodes)"
    sig, up = p is not None and p < alpha, delta > 0
    if n_seeds >= 3:
        if sig and (ci[0] > 0 or ci[1] < 0):
            if pert is None:
                return f"{arm} transfers {'better' if up else 'worse'} than {base}"
            return f"{arm} loses {'more' if up else 'less'} under {pert} than {base}"
        return f"no detectable difference between the backbones ({n_seeds} training seeds)"
    if pert is None:
        v = (
            ("checkpoint better" if up else "checkpoint worse")
            if sig
            else "no detectable difference between the checkpoints"
        )
    else:
        v = (
            ("checkpoint loses more" if up else "checkpoint loses less")
            if sig
            else "no detectable difference in the drop between the checkpoints"
        )
    return v + (" (2 training seeds: too few for a backbone verdict)" if n_seeds == 2 else "")


def mcnemar(a: dict, b: dict, shared: list[tuple]) -> dict:
    """Discordant counts of the shared episodes (keys end with the evaluation seed; the rest is the cluster) and
    McNemar's p: exact McNemar when every cluster holds one episode, else the cluster sign test
    (`stats.mcnemar_clusters`: episodes of one (task, init state) are not independent pairs)."""
    k1 = sum(bool(a[e]) and not b[e] for e in shared)
    k2 = sum(bool(b[e]) and not a[e] for e in shared)
    net: dict[tuple, int] = defaultdict(int)
    for e in shared:
        net[e[:-1]] += int(bool(a[e])) - int(bool(b[e]))
    clustered = len(net) < len(shared)
    return {
        "n_shared": len(shared),
        "n_clusters": len(net),
        "run_only_success": k1,
        "baseline_only_success": k2,
        "p_value": stats.mcnemar_clusters(list(net.values())) if clustered else stats.mcnemar_exact(k1, k2),
        "test": "mcnemar_clusters" if clustered else "mcnemar",
    }


def _mde(row: dict, alpha_test: float) -> None:
    """Adds the row's power: mde80 (None: no variance, or no Δ up to ±100 pp detected 80% of the time) and the
    variances it came from."""
    seed_var, within = row.pop("_seed_var"), row.pop("_within_var")
    var = power.observed_var(row["n_seeds"], seed_var, within)
    m = power.mde(row["n_seeds"], var, alpha_test)
    row["mde80"] = m if m is not None and m <= 1.0 else None
    row["power"] = {
        "per_seed_var": var,
        "seed_var": seed_var,
        "within_var": within,
        "alpha_per_test": alpha_test,
        "detectable_within_100pp": m is not None and m <= 1.0,
    }


def paired(
    pairs: list[tuple[Run, Run]],
    suites: list[str],
    arm: str,
    base: str,
    n_boot: int,
    seed: int,
    alpha: float = ALPHA,
) -> dict:
    """Δ = arm − baseline per standard suite and for the Average, on the episodes each replicate pair shares.
    One pair: McNemar p (`mcnemar`), cluster-bootstrap CI (the Average: bootstrap CI and p). Several: per pair
    Δ_k (and its Average over the suites), CI and p of `stats.t_over_seeds`. Holm across the suites and the
    Average."""
    per_cell, tests = [], []
    for s in suites:
        reps, seeds = [], []
        for ra, rb in pairs:
            a, b = ra.cells.get((s, STANDARD), {}), rb.cells.get((s, STANDARD), {})
            shared = [e for e in a if e in b]
            reps.append({e: float(a[e]) - float(b[e]) for e in shared})
            seeds.append(
                {"train_seed": ra.train_seed, "baseline_train_seed": rb.train_seed, **mcnemar(a, b, shared)}
            )
        per_cell.append(reps)
        tests.append(seeds)
    ests = stats.Estimates(per_cell, n_boot, _rng(seed, "paired", arm, base), bounds=(-1.0, 1.0))
    est = ests.cells
    out: dict[str, dict] = {}
    for s, e, all_mc in zip(suites, est, tests, strict=True):
        mc = [t for t in all_mc if t["n_shared"]]
        one = e["n_seeds"] == 1
        out[s] = {
            "delta": e["point"],
            "delta_ci95": e["ci95"],
            "p_value": mc[0]["p_value"] if one else e["p"],
            "p_method": mc[0]["test"] if one else e["method"],
            "n_seeds": e["n_seeds"],
            "n_episodes": e["n_episodes"],
            "mcnemar_per_seed": mc,
            "_seed_var": e["seed_var"],
            "_within_var": e["within_var"],
        }
    ok = [j for j, e in enumerate(est) if e["n_episodes"]]
    avg: dict = {
        "delta": None,
        "delta_ci95": [None, None],
        "p_value": None,
        "p_method": "bootstrap",
        "n_episodes": 0,
        "n_seeds": 0,
        "suites": [suites[j] for j in ok],
        "mcnemar_per_seed": [],
        "_seed_var": None,
        "_within_var": None,
    }
    if ok:
        a = ests.average(ok)
        mc = []  # per replicate pair, pooled over the suites (information; not the Average's p)
        for i, (ra, rb) in enumerate(pairs):
            ea = {(s, *e): v for s in avg["suites"] for e, v in ra.cells.get((s, STANDARD), {}).items()}
            eb = {(s, *e): v for s in avg["suites"] for e, v in rb.cells.get((s, STANDARD), {}).items()}
            got = mcnemar(ea, eb, [e for e in ea if e in eb])
            if got["n_shared"]:
                mc.append({**{k: tests[ok[0]][i][k] for k in ("train_seed", "baseline_train_seed")}, **got})
        avg.update(
            delta=a["point"],
            delta_ci95=a["ci95"],
            p_value=a["p"],
            p_method=a["method"],
            n_seeds=len(mc),
            mcnemar_per_seed=mc,
            n_episodes=sum(est[j]["n_episodes"] for j in ok),
            _seed_var=a["seed_var"],
            _within_var=a["within_var"],
        )
    rows = {**out, "average": avg}
    names = [n for n, t in rows.items() if t["p_value"] is not None]
    n_suites = sum(n != "average" for n in names)
    correction = f"Holm over {len(names)} tests ({n_suites} suite{'s' * (n_suites != 1)}" + (
        " + the Average)" if "average" in names else ")"
    )
    for n, ph in zip(names, stats.holm([rows[n]["p_value"] for n in names]), strict=True):
        rows[n]["p_holm"] = ph
    for t in rows.values():
        t.setdefault("p_holm", None)
        t["correction"] = correction if t["p_holm"] is not None else "not tested"
        t["verdict"] = verdict(t["delta"], t["delta_ci95"], t["p_holm"], t["n_seeds"], arm, base, alpha)
        _mde(t, alpha / max(1, len(names)))
    return rows


def design(rows: dict) -> dict:
    """What `r1vla study --plan --pilot` reads: the comparison's seeds, shared episodes per seed and suite, the
    seed-to-seed variance τ² of a suite's Δ (median over the suites of max(0, sample variance − sampling
    variance); None with one seed) and one paired episode's variance (median of sampling variance × episodes)."""
    suites = [t for n, t in rows.items() if n != "average" and t["n_episodes"] and t["n_seeds"]]
    if not suites:
        return {}
    eps = [t["n_episodes"] / t["n_seeds"] for t in suites]
    within = [
        t["power"]["within_var"] * e for t, e in zip(suites, eps, strict=True) if t["power"]["within_var"]
    ]
    tau = [
        max(0.0, t["power"]["seed_var"] - (t["power"]["within_var"] or 0.0))
        for t in suites
        if t["power"]["seed_var"] is not None
    ]
    return {
        "n_seeds": max(t["n_seeds"] for t in suites),
        "n_suites": len(suites),
        "episodes_per_seed_per_suite": statistics.median(eps),
        "episode_var": statistics.median(within) if within else None,
        "seed_var": statistics.median(tau) if tau else None,
    }
