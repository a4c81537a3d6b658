"""Analysis behind `r1vla compare` (analysis/compare.py): replicate pairing, success rates, paired Δ vs the
baseline, drops under LIBERO-PRO perturbations and the verdicts, as the report dict. No file I/O; the statistics
themselves are in analysis/stats.py. Runs are `analysis.runs.Run` objects.

With >= 2 training seeds (replicates of an arm, or replicate pairs of two arms) every statistic is computed per
seed (pair) and its CI and p are `stats.t_over_seeds` over the seeds (ci_method / p_method "t_over_seeds", or
"t_over_seeds_floored" where the seeds' spread is below their own episode noise, ties included); with one: Wilson,
MOVER, McNemar (exact, or over clusters with several evaluation seeds) and the cluster bootstrap over (task,
init_state). The paired Δ (Holm over the suites and the Average, power): analysis/compare_paired.py."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from analysis import power, stats
from analysis.compare_paired import _rng, design, paired, verdict
from analysis.runs import ALPHA, N_BOOT, STANDARD, Cell, Episode, Run
from libero_core.records import rate_block
from libero_core.suites import SUITES


def pair_replicates(arm: list[Run], base: list[Run]) -> tuple[list[tuple[Run, Run]], list[str]]:
    """Replicate pairs (arm, baseline) matched by train_seed, and notes on how (and what was left out)."""
    sa, sb = [r.train_seed for r in arm], [r.train_seed for r in base]
    key = lambda r: (r.train_seed is None, r.train_seed or 0, str(r.dir))  # noqa: E731
    if None not in sa + sb and (shared := sorted(set(sa) & set(sb))):
        pairs = [(arm[sa.index(s)], base[sb.index(s)]) for s in shared]
        notes = []
        if out := sorted(set(sa) - set(shared)):
            notes.append(f"training seeds {out} have no baseline replicate: left out")
        if out := sorted(set(sb) - set(shared)):
            notes.append(f"baseline training seeds {out} have no replicate in this arm: left out")
        return pairs, notes
    a, b = sorted(arm, key=key), sorted(base, key=key)
    why = "train_seed unknown" if None in sa + sb else f"training seeds differ ({sorted(sa)} vs {sorted(sb)})"
    notes = (
        [f"{why}: replicates paired in sorted order"]
        if len(arm) > 1 or len(base) > 1 or None not in sa + sb
        else []
    )
    if len(a) != len(b):
        notes.append(f"{abs(len(a) - len(b))} unpaired replicate(s) left out")
    return list(zip(a, b, strict=False)), notes


# ---- statistics on clusters -----------------------------------------------------------------------------------


def rates(reps: list[Run], cells: list[Cell], n_boot: int, seed: int, tag: str) -> tuple[dict, dict | None]:
    """Success per cell and the Average over the cells (the mean of the cells' rates). One replicate: Wilson,
    and MOVER on the Wilson limits. Several: the mean of the replicates' rates (and of each replicate's own
    Average) with the t-interval over the replicates, clipped to [0, 1] (`stats.Estimates`)."""
    blocks: dict[str, dict] = {}
    if len(reps) == 1:
        for c in cells:
            b = rate_block(list(reps[0].cells.get(c, {}).values()))
            blocks[c[0] if c[1] == STANDARD else "/".join(c)] = {
                **b,
                "n_episodes": b["n"],
                "n_seeds": 1,
                "ci_method": "wilson",
            }
        got = [b for b in blocks.values() if b["n"]]
        if not got:
            return blocks, None
        lo, hi = stats.mover_mean(*zip(*[(b["success_rate"], *b["ci95"]) for b in got], strict=True))
        avg = {"success_rate": float(np.mean([b["success_rate"] for b in got])), "ci95": [lo, hi]}
        return blocks, {**avg, "ci_method": "mover", "n_episodes": sum(b["n"] for b in got), "n_seeds": 1}
    per_cell = [[{e: float(v) for e, v in r.cells.get(c, {}).items()} for r in reps] for c in cells]
    est = stats.Estimates(per_cell, n_boot, _rng(seed, "rate", tag), bounds=(0.0, 1.0))
    for c, e, pc in zip(cells, est.cells, per_cell, strict=True):
        blocks[c[0] if c[1] == STANDARD else "/".join(c)] = {
            "success_rate": e["point"],
            "ci95": e["ci95"],
            "n_episodes": e["n_episodes"],
            "n": e["n_episodes"],
            "successes": int(sum(sum(d.values()) for d in pc)),
            "n_seeds": e["n_seeds"],
            "ci_method": e["method"],
        }
    ok = [j for j, e in enumerate(est.cells) if e["n_episodes"]]
    if not ok:
        return blocks, None
    a = est.average(ok)
    return blocks, {
        "success_rate": a["point"],
        "ci95": a["ci95"],
        "ci_method": a["method"],
        "n_episodes": sum(e["n_episodes"] for e in est.cells),
        "n_seeds": len(reps),
    }


# ---- out of distribution (LIBERO-PRO perturbations) -----------------------------------------------------------


def _drop(r: Run, c: Cell) -> dict[Episode, float]:
    """Standard minus perturbed success on the (task, init state, seed) episodes a replicate ran both ways."""
    std, pert = r.cells.get((c[0], STANDARD), {}), r.cells.get(c, {})
    return {e: float(std[e]) - float(pert[e]) for e in pert if e in std}


def _delta_drop(ra: Run, rb: Run, c: Cell) -> dict[Episode, float]:
    da, db = _drop(ra, c), _drop(rb, c)
    return {e: da[e] - db[e] for e in da if e in db}


def _cell_order(cells) -> list[Cell]:
    rank = {s: i for i, s in enumerate(_suite_order({c[0] for c in cells}))}
    return sorted(cells, key=lambda c: (rank[c[0]], c[1]))


def _pert_cells(reps: list[Run]) -> list[Cell]:
    return _cell_order({c for r in reps for c in r.cells if c[1] != STANDARD})


def ood(
    arms: dict[str, list[Run]], base: str, n_boot: int, seed: int, alpha: float = ALPHA
) -> tuple[dict, dict]:
    """Per arm and suite/perturbation: success, drop from the standard suite, and vs the baseline the difference
    of drops (one replicate pair: cluster-bootstrap CI and p; several: `stats.t_over_seeds` of the per-pair
    difference of drops; Holm across the cells of one comparison). Returns (ood, left_out)."""
    out: dict[str, dict] = {}
    left: dict[str, dict] = {}
    for name, reps in arms.items():
        if not (cells := _pert_cells(reps)):
            continue
        succ, _ = rates(reps, cells, n_boot, seed, f"ood|{name}")
        est = stats.Estimates(
            [[_drop(r, c) for r in reps] for c in cells], n_boot, _rng(seed, "drop", name), bounds=(-1.0, 1.0)
        ).cells
        out[name] = {}
        for c, e in zip(cells, est, strict=True):
            b = succ["/".join(c)]
            out[name]["/".join(c)] = {
                "success": b["success_rate"],
                "success_ci95": b["ci95"],
                "ci_method": b["ci_method"],
                "n_episodes": b["n_episodes"],
                "n_seeds": b["n_seeds"],
                "drop": e["point"],
                "drop_ci95": e["ci95"],
                "n_drop_episodes": e["n_episodes"],
            }
    base_cells = set(_pert_cells(arms[base]))
    for name, reps in arms.items():
        mine = set(_pert_cells(reps))
        if name == base or not (mine or base_cells):
            continue
        if mine != base_cells:
            left[name] = {
                "only_in_arm": ["/".join(c) for c in _cell_order(mine - base_cells)],
                "only_in_baseline": ["/".join(c) for c in _cell_order(base_cells - mine)],
            }
        shared = _cell_order(mine & base_cells)
        pairs, _ = pair_replicates(reps, arms[base])
        per_cell = [[_delta_drop(ra, rb, c) for ra, rb in pairs] for c in shared]
        est = stats.Estimates(
            per_cell, n_boot, _rng(seed, "delta_drop", name, base), bounds=(-2.0, 2.0)
        ).cells
        adj = stats.holm([e["p"] for e in est])
        m = sum(p is not None for p in adj)
        for c, e, ph in zip(shared, est, adj, strict=True):
            var = power.observed_var(e["n_seeds"], e["seed_var"], e["within_var"])
            mde = power.mde(e["n_seeds"], var, alpha / max(1, m))
            out[name]["/".join(c)]["vs_baseline"] = {
                "delta_drop": e["point"],
                "delta_drop_ci95": e["ci95"],
                "p_value": e["p"],
                "p_holm": ph,
                "p_method": e["method"],
                "n_seeds": e["n_seeds"],
                "n_episodes": e["n_episodes"],
                "verdict": verdict(e["point"], e["ci95"], ph, e["n_seeds"], name, base, alpha, pert=c[1]),
                "correction": f"Holm over {m} suite/perturbation cell{'s' * (m != 1)}"
                if ph is not None
                else "not tested",
                "mde80": mde if mde is not None and mde <= 1.0 else None,
                "power": {"per_seed_var": var, "alpha_per_test": alpha / max(1, m)},
            }
    return out, left


# ---- the report -----------------------------------------------------------------------------------------------


def _suite_order(names) -> list[str]:
    order = list(SUITES)
    return sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s))


def analyse(
    arms: dict[str, list[Run]], base: str, n_boot: int = N_BOOT, boot_seed: int = 0, alpha: float = ALPHA
) -> dict:
    """The report dict (see compare_runs) of arms (name -> replicates) against the arm `base`; no file I/O."""
    warnings: list[str] = []
    rep: dict = {
        "baseline": base,
        "alpha": alpha,
        "n_bootstrap": n_boot,
        "bootstrap_seed": boot_seed,
        "runs": {},
    }
    std = {
        n: _suite_order({c[0] for r in reps for c in r.cells if c[1] == STANDARD}) for n, reps in arms.items()
    }
    for name, reps in arms.items():
        blocks, avg = rates(reps, [(s, STANDARD) for s in std[name]], n_boot, boot_seed, name)
        by_task = defaultdict(list)
        for r in reps:
            for (s, p), eps in r.cells.items():
                for (t, _, _), ok in eps.items():
                    if p == STANDARD:
                        by_task[(s, t)].append(ok)
        rank = {s: i for i, s in enumerate(std[name])}
        faults = Counter()
        for r in reps:
            faults.update(r.faults["reasons"])
            if r.unmerged_shards:
                warnings.append(
                    f"{r.dir}: unmerged shard files {r.unmerged_shards} (run `r1vla eval` again to merge)"
                )
            if r.faults["n"]:
                warnings.append(
                    f"{r.dir}: {r.faults['n']} episode(s) failed for a reason other than the step cap "
                    f"({', '.join(f'{k}: {v}' for k, v in r.faults['reasons'].items())}); counted as failures"
                )
        entry = {
            "label": reps[0].label,
            "protocol": reps[0].protocol,
            "replicates": [
                {
                    "dir": str(r.dir),
                    "checkpoint": r.checkpoint,
                    "train_seed": r.train_seed,
                    "n_episodes": len(r.records),
                    "unmerged_shards": r.unmerged_shards,
                    "faults": r.faults,
                }
                for r in reps
            ],
            "dirs": [str(r.dir) for r in reps],
            "checkpoints": [r.checkpoint for r in reps],
            "train_seeds": [r.train_seed for r in reps],
            "unmerged_shards": [str(r.dir / f) for r in reps for f in r.unmerged_shards],
            "faults": {"n": sum(faults.values()), "reasons": dict(sorted(faults.items()))},
            "suites": blocks,
            "average": avg,
            "tasks": {
                f"{s}/{t}": rate_block(v)
                for (s, t), v in sorted(by_task.items(), key=lambda kv: (rank[kv[0][0]], kv[0][1]))
            },
        }
        if name != base:
            pairs, notes = pair_replicates(reps, arms[base])
            entry["pairing"] = {
                "pairs": [
                    {
                        "train_seed": a.train_seed,
                        "baseline_train_seed": b.train_seed,
                        "dir": str(a.dir),
                        "baseline_dir": str(b.dir),
                    }
                    for a, b in pairs
                ],
                "notes": notes,
            }
            suites = _suite_order(set(std[name]) | set(std[base]))
            entry["paired"] = paired(pairs, suites, name, base, n_boot, boot_seed, alpha)
            entry["design"] = design(entry["paired"])
            warnings += [f"{name} vs {base}: {n}" for n in notes]
        rep["runs"][name] = entry
    if len({tuple(s) for s in std.values()}) > 1:
        warnings.append(
            "the arms cover different suites, so their Averages are not directly comparable "
            "(the paired Average uses only the suites both share)"
        )
    rep["ood"], rep["ood_left_out"] = ood(arms, base, n_boot, boot_seed, alpha)
    for name, lo in rep["ood_left_out"].items():
        warnings.append(
            f"{name} vs {base}: perturbation cells left out (not in both): only in {name}: "
            f"{lo['only_in_arm'] or 'none'}; only in {base}: {lo['only_in_baseline'] or 'none'}"
        )
    rep["warnings"] = warnings
    return rep
