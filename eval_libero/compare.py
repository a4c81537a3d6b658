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
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from eval_libero import stats
from eval_libero.records import EPISODES, dict_differences, episode_key, rate_block, read_jsonl
from eval_libero.suites import SUITES

ALPHA = 0.05
N_BOOT = 2000
STANDARD = "none"  # the perturbation of the standard suites
Cell = tuple[str, str]  # (suite, perturbation)
Episode = tuple[
    int, int, int
]  # (task_id, init_state, seed) within a cell; clusters are (task_id, init_state)


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
    records, seen = [], set()
    for f in [run / EPISODES, *shards]:
        got = read_jsonl(f)
        for lineno, why in got.bad_lines:
            log(f"{f}: line {lineno}: {why}; ignored")
        for r in got.records:
            if episode_key(r) not in seen:
                seen.add(episode_key(r))
                records.append(r)
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


def check_protocols(arms: dict[str, list[Run]], allow: bool) -> list[str]:
    """Differing protocol fields over all runs; refused (CompareError) unless `allow`."""
    for name, reps in arms.items():
        diffs = dict_differences({r.dir.name: r.protocol for r in reps})
        if diffs and not allow:
            raise CompareError(
                f"replicates of {name!r} were made under different protocols; differing fields:\n  "
                + "\n  ".join(diffs)
                + "\n(--allow-protocol-mismatch to compare anyway)"
            )
    named = {
        n if len(reps) == 1 else f"{n}/{r.dir.name}": r.protocol for n, reps in arms.items() for r in reps
    }
    diffs = dict_differences(named)
    if diffs and not allow:
        raise CompareError(
            "runs were made under different protocols; differing fields:\n  "
            + "\n  ".join(diffs)
            + "\n(--allow-protocol-mismatch to compare anyway)"
        )
    return diffs


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


def _arrays(per_rep: list[dict[Episode, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate {episode: value} -> num, den (R, C): value sums and episode counts per (task, init) cluster."""
    clusters = sorted({e[:2] for d in per_rep for e in d})
    col = {c: j for j, c in enumerate(clusters)}
    num, den = np.zeros((len(per_rep), len(clusters))), np.zeros((len(per_rep), len(clusters)))
    for i, d in enumerate(per_rep):
        for e, v in d.items():
            num[i, col[e[:2]]] += v
            den[i, col[e[:2]]] += 1
    return num, den


def _rng(seed: int, *tag: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("|".join(tag).encode())])


def _estimate(per_cell: list[list[dict[Episode, float]]], n_boot: int, rng) -> tuple[list[dict], np.ndarray]:
    """Point, bootstrap CI and p of the replicate-mean statistic of each cell; and the draws (B, cells)."""
    strata = [_arrays(reps) for reps in per_cell]
    draws = stats.cluster_bootstrap(strata, n_boot, rng)
    out = []
    for j, (num, den) in enumerate(strata):
        point = stats.replicate_mean(num, den)
        lo, hi = stats.percentile_ci(draws[:, j], point)
        ok = bool(den.sum())
        out.append(
            {
                "point": point if ok else None,
                "ci95": [lo, hi] if ok else [None, None],
                "p_boot": stats.bootstrap_p(draws[:, j]) if ok else None,
                "n_episodes": int(den.sum()),
                "n_seeds": int((den.sum(axis=1) > 0).sum()),
            }
        )
    return out, draws


def _avg(draws: np.ndarray, points: list[float]) -> tuple[float, list[float], float]:
    """Average over strata: point, percentile CI and bootstrap p from the same (stratified) draws (B, S)."""
    with np.errstate(all="ignore"):
        d = np.nanmean(draws, axis=1) if draws.shape[1] else np.full(draws.shape[0], np.nan)
    point = float(np.mean(points))
    return point, list(stats.percentile_ci(d, point)), stats.bootstrap_p(d)


def rates(reps: list[Run], cells: list[Cell], n_boot: int, seed: int, tag: str) -> tuple[dict, dict | None]:
    """Success per cell (Wilson with one replicate, else the two-stage bootstrap) and the Average over the
    cells (MOVER on the Wilson limits with one replicate, else the stratified bootstrap)."""
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
    est, draws = _estimate(per_cell, n_boot, _rng(seed, "rate", tag))
    for c, e, pc in zip(cells, est, per_cell, strict=True):
        blocks[c[0] if c[1] == STANDARD else "/".join(c)] = {
            "success_rate": e["point"],
            "ci95": e["ci95"],
            "n_episodes": e["n_episodes"],
            "n": e["n_episodes"],
            "successes": int(sum(sum(d.values()) for d in pc)),
            "n_seeds": e["n_seeds"],
            "ci_method": "bootstrap",
        }
    if not cells:
        return blocks, None
    point, ci, _ = _avg(draws, [e["point"] for e in est])
    n = sum(e["n_episodes"] for e in est)
    return blocks, {
        "success_rate": point,
        "ci95": ci,
        "ci_method": "bootstrap",
        "n_episodes": n,
        "n_seeds": len(reps),
    }


def verdict(
    delta, ci, p, n_seeds: int, arm: str, base: str, alpha: float = ALPHA, pert: str | None = None
) -> str:
    """The claim the numbers support: about checkpoints below 3 training seeds, about backbones from 3."""
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


def paired(
    pairs: list[tuple[Run, Run]],
    suites: list[str],
    arm: str,
    base: str,
    n_boot: int,
    seed: int,
    alpha: float = ALPHA,
) -> dict:
    """Δ = arm − baseline per standard suite and for the Average, on the episodes each replicate pair shares."""
    per_cell, tests = [], []
    for s in suites:
        reps, seeds = [], []
        for ra, rb in pairs:
            a, b = ra.cells.get((s, STANDARD), {}), rb.cells.get((s, STANDARD), {})
            shared = [e for e in a if e in b]
            reps.append({e: float(a[e]) - float(b[e]) for e in shared})
            k1, k2 = sum(a[e] and not b[e] for e in shared), sum(b[e] and not a[e] for e in shared)
            seeds.append(
                {"train_seed": ra.train_seed, "baseline_train_seed": rb.train_seed, "n_shared": len(shared),
                 "run_only_success": k1, "baseline_only_success": k2, "p_value": stats.mcnemar_exact(k1, k2)}
            )  # fmt: skip
        per_cell.append(reps)
        tests.append(seeds)
    est, draws = _estimate(per_cell, n_boot, _rng(seed, "paired", arm, base))
    out: dict[str, dict] = {}
    for s, e, all_mc in zip(suites, est, tests, strict=True):
        mc = [t for t in all_mc if t["n_shared"]]
        p = mc[0]["p_value"] if e["n_seeds"] == 1 else e["p_boot"]
        out[s] = {"delta": e["point"], "delta_ci95": e["ci95"], "p_value": p, "p_method": "mcnemar" if e["n_seeds"] == 1 else "bootstrap",
                  "n_seeds": e["n_seeds"], "n_episodes": e["n_episodes"], "mcnemar_per_seed": mc}  # fmt: skip
    for s, ph in zip(suites, stats.holm([out[s]["p_value"] for s in suites]), strict=True):
        out[s]["p_holm"] = ph
        t = out[s]
        t["verdict"] = verdict(t["delta"], t["delta_ci95"], ph, t["n_seeds"], arm, base, alpha)
    ok = [j for j, e in enumerate(est) if e["n_episodes"]]
    avg: dict = {"delta": None, "delta_ci95": [None, None], "p_value": None, "p_holm": None, "p_method": "bootstrap",
                 "n_episodes": 0, "n_seeds": 0, "suites": [suites[j] for j in ok], "mcnemar_per_seed": []}  # fmt: skip
    if ok:
        point, ci, p = _avg(draws[:, ok], [est[j]["point"] for j in ok])
        mc = []  # per replicate pair, pooled over the suites (information; the Average's p is the bootstrap's)
        for i in range(len(pairs)):
            n, k1, k2 = (
                sum(tests[j][i][k] for j in ok)
                for k in ("n_shared", "run_only_success", "baseline_only_success")
            )
            if n:
                mc.append({**tests[ok[0]][i], "n_shared": n, "run_only_success": k1, "baseline_only_success": k2,
                           "p_value": stats.mcnemar_exact(k1, k2)})  # fmt: skip
        n_seeds = len(mc)
        avg.update(delta=point, delta_ci95=ci, p_value=p, n_seeds=n_seeds, mcnemar_per_seed=mc,
                   n_episodes=sum(est[j]["n_episodes"] for j in ok))  # fmt: skip
    avg["verdict"] = verdict(
        avg["delta"], avg["delta_ci95"], avg["p_value"], avg["n_seeds"], arm, base, alpha
    )
    return {**out, "average": avg}


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
    of drops (bootstrap CI and p, Holm across the cells of one comparison). Returns (ood, left_out)."""
    out: dict[str, dict] = {}
    left: dict[str, dict] = {}
    for name, reps in arms.items():
        if not (cells := _pert_cells(reps)):
            continue
        succ, _ = rates(reps, cells, n_boot, seed, f"ood|{name}")
        est, _ = _estimate([[_drop(r, c) for r in reps] for c in cells], n_boot, _rng(seed, "drop", name))
        out[name] = {}
        for c, e in zip(cells, est, strict=True):
            b = succ["/".join(c)]
            out[name]["/".join(c)] = {
                "success": b["success_rate"], "success_ci95": b["ci95"], "ci_method": b["ci_method"],
                "n_episodes": b["n_episodes"], "n_seeds": b["n_seeds"],
                "drop": e["point"], "drop_ci95": e["ci95"], "n_drop_episodes": e["n_episodes"],
            }  # fmt: skip
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
        est, _ = _estimate(per_cell, n_boot, _rng(seed, "delta_drop", name, base))
        adj = stats.holm([e["p_boot"] for e in est])
        for c, e, ph in zip(shared, est, adj, strict=True):
            out[name]["/".join(c)]["vs_baseline"] = {
                "delta_drop": e["point"], "delta_drop_ci95": e["ci95"], "p_value": e["p_boot"], "p_holm": ph,
                "p_method": "bootstrap", "n_seeds": e["n_seeds"], "n_episodes": e["n_episodes"],
                "verdict": verdict(e["point"], e["ci95"], ph, e["n_seeds"], name, base, alpha, pert=c[1]),
            }  # fmt: skip
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
                warnings.append(f"{r.dir}: {r.faults['n']} episode(s) failed for a reason other than the step cap "
                                f"({', '.join(f'{k}: {v}' for k, v in r.faults['reasons'].items())}); counted as failures")  # fmt: skip
        entry = {
            "label": reps[0].label,
            "protocol": reps[0].protocol,
            "replicates": [
                {"dir": str(r.dir), "checkpoint": r.checkpoint, "train_seed": r.train_seed,
                 "n_episodes": len(r.records), "unmerged_shards": r.unmerged_shards, "faults": r.faults}
                for r in reps
            ],  # fmt: skip
            "dirs": [str(r.dir) for r in reps],
            "checkpoints": [r.checkpoint for r in reps],
            "train_seeds": [r.train_seed for r in reps],
            "unmerged_shards": [str(r.dir / f) for r in reps for f in r.unmerged_shards],
            "faults": {"n": sum(faults.values()), "reasons": dict(sorted(faults.items()))},
            "suites": blocks,
            "average": avg,
            "tasks": {f"{s}/{t}": rate_block(v) for (s, t), v in sorted(by_task.items(), key=lambda kv: (rank[kv[0][0]], kv[0][1]))},
        }  # fmt: skip
        if name != base:
            pairs, notes = pair_replicates(reps, arms[base])
            entry["pairing"] = {
                "pairs": [{"train_seed": a.train_seed, "baseline_train_seed": b.train_seed, "dir": str(a.dir),
                           "baseline_dir": str(b.dir)} for a, b in pairs],
                "notes": notes,
            }  # fmt: skip
            suites = _suite_order(set(std[name]) | set(std[base]))
            entry["paired"] = paired(pairs, suites, name, base, n_boot, boot_seed, alpha)
            warnings += [f"{name} vs {base}: {n}" for n in notes]
        rep["runs"][name] = entry
    if len({tuple(s) for s in std.values()}) > 1:
        warnings.append("the arms cover different suites, so their Averages are not directly comparable "
                        "(the paired Average uses only the suites both share)")  # fmt: skip
    rep["ood"], rep["ood_left_out"] = ood(arms, base, n_boot, boot_seed, alpha)
    for name, lo in rep["ood_left_out"].items():
        warnings.append(f"{name} vs {base}: perturbation cells left out (not in both): only in {name}: "
                        f"{lo['only_in_arm'] or 'none'}; only in {base}: {lo['only_in_baseline'] or 'none'}")  # fmt: skip
    rep["warnings"] = warnings
    return rep


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
        compare_runs([Path(r) for r in args.runs], args.baseline, Path(args.out), args.allow_protocol_mismatch,
                     log=log, n_boot=args.bootstrap, boot_seed=args.bootstrap_seed)  # fmt: skip
    except CompareError as e:
        print(f"r1vla compare: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "report.md").read_text())
    return 0
