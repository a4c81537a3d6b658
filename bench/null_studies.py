"""The package's own Monte-Carlo check of `r1vla compare`: synthetic studies with known truth, written as real run
folders (episodes.jsonl as `r1vla eval` writes them) and compared as a user would (`compare_runs`, the function
behind `r1vla compare`), then scored against the truth.

    python bench/null_studies.py [--studies 200] [--power-studies 100] [--bootstrap 2000] [--seed 0]

Design (issue 22's independent check): 4 suites x 10 tasks x 10 init states, one evaluation seed (100 episodes per
suite and arm); per-(task, init state) success q ~ Beta(2, 2), shared by the arms (what pairing removes);
training-seed effects u ~ N(0, 0.3²) on the logit scale per seed and suite, shared by the two arms trained with
that seed (the study trains every backbone with the same seed, head init and data order), plus optionally an
arm x seed effect (--arm-seed-sd, default 0): P(success) = expit(logit q + u + δ). With it 0 the checkpoints of one
seed are equally good under the null, so the one-seed verdicts (about the checkpoints) are also scored. Null studies: δ = 0, so every true Δ is 0. Power studies: 3 seeds, δ on libero_goal solved so its true Δ
(the mean over its cells of E_u[expit(logit q + u + δ)] − E_u[expit(logit q + u)], Gauss-Hermite) is +10 pp.

Prints, per setting, the share of null studies with at least one false verdict line (FWER, the Average's
included), the 95% CI coverage of the true Δ (all suites and Averages; and on the cells whose per-seed Δs tie),
the power at +10 pp, the median MDE the reports state, and last the line
    null studies: FWER F (seeds 1) / F (seeds 3), coverage C, tie coverage T, power P at +10 pp
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.compare import compare_runs  # noqa: E402
from libero_core.records import write_jsonl_atomic  # noqa: E402

SUITES = ["libero_spatial", "libero_object", "libero_goal", "libero_10"]
TASKS, INITS, SEED_SD, TARGET = 10, 10, 0.3, 0.10
PROTOCOL = {"name": "standard", "max_steps": dict.fromkeys(SUITES, 300), "num_wait_steps": 10}
GH_X, GH_W = np.polynomial.hermite_e.hermegauss(40)  # E over N(0, 1): sum(w f(x)) / sqrt(2 pi)
GH_W = GH_W / GH_W.sum()


def expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def true_delta(logit_q: np.ndarray, delta: float) -> float:
    """Mean over the cells of E_u[expit(logit q + u + δ)] − E_u[expit(logit q + u)], u ~ N(0, SEED_SD²)."""
    u = SEED_SD * GH_X[:, None]
    return float(GH_W @ (expit(logit_q[None] + u + delta) - expit(logit_q[None] + u)).mean(axis=1))


def solve_delta(logit_q: np.ndarray, target: float) -> float:
    from scipy.optimize import brentq

    return float(brentq(lambda d: true_delta(logit_q, d) - target, 0.0, 5.0))


def records(label, seed, probs, rng) -> list[dict]:
    ck = hashlib.sha256(f"{label}/{seed}".encode()).hexdigest()[:12]
    out = []
    for s, p in zip(SUITES, probs, strict=True):
        ok = rng.random(p.shape) < p
        for t in range(TASKS):
            for i in range(INITS):
                out.append(
                    dict(suite=s, perturbation="none", task_id=t, init_state=i, seed=7, success=bool(ok[t, i]),
                         steps=10, failure=None if ok[t, i] else "timeout: no success in 300 steps", label=label,
                         checkpoint=ck, train_seed=seed, protocol=PROTOCOL)
                )  # fmt: skip
    return out


def study(
    rng, n_seeds: int, effect_suite: str | None, root: Path, n_boot: int, arm_seed_sd: float = 0.0
) -> dict:
    """One synthetic study: run folders under root, `compare_runs`, and the truth per row."""
    logit_q = np.log((q := rng.beta(2, 2, (len(SUITES), TASKS, INITS))) / (1 - q))  # (S, T, I)
    delta = np.zeros(len(SUITES))
    truth = dict.fromkeys(SUITES, 0.0)
    if effect_suite:
        j = SUITES.index(effect_suite)
        delta[j] = solve_delta(logit_q[j].ravel(), TARGET)
        truth[effect_suite] = TARGET
    truth["average"] = float(np.mean(list(truth.values())))
    dirs = []
    for seed in range(n_seeds):
        u = rng.normal(0, SEED_SD, len(SUITES))  # this training seed's effect per suite, on both arms
        for arm, d in (("sft", np.zeros(len(SUITES))), ("r1", delta)):
            w = u + rng.normal(0, arm_seed_sd, len(SUITES)) if arm_seed_sd else u
            probs = [expit(logit_q[s] + w[s] + d[s]) for s in range(len(SUITES))]
            run = root / f"{arm}_seed{seed}"
            run.mkdir(parents=True)
            write_jsonl_atomic(run / "episodes.jsonl", records(arm, seed, probs, rng))
            dirs.append(run)
    rep = compare_runs(dirs, "sft", root / "report", log=lambda m: None, n_boot=n_boot)
    return {"paired": rep["runs"]["r1"]["paired"], "truth": truth}


def tied(row: dict) -> bool:
    """The per-seed Δs (from each seed pair's discordant counts) are all equal (>= 2 seeds)."""
    d = [
        (m["run_only_success"] - m["baseline_only_success"]) / m["n_shared"] for m in row["mcnemar_per_seed"]
    ]
    return len(d) >= 2 and max(d) - min(d) < 1e-12


def score(results: list[dict], effect_suite: str | None) -> dict:
    false = hits = n = tie_hits = ties = found = 0
    mde = []
    for r in results:
        bad = False
        for name, row in r["paired"].items():
            lo, hi = row["delta_ci95"]
            cover = lo <= r["truth"][name] <= hi
            hits, n = hits + cover, n + 1
            if tied(row):
                tie_hits, ties = tie_hits + cover, ties + 1
            claim = not row["verdict"].startswith(("no detectable", "not comparable"))
            bad = bad or (claim and r["truth"][name] == 0)  # a verdict line where there is no difference
            if name == effect_suite and claim and row["delta"] > 0:
                found += 1
        false += bad
        if (m := r["paired"]["average"].get("mde80")) is not None:
            mde.append(m)
        else:
            mde.append(np.inf)
    return {
        "fwer": false / len(results),
        "cover": (hits, n),
        "ties": (tie_hits, ties),
        "power": found / len(results),
        "mde_avg": float(np.median(mde)),
    }


def wilson_pct(k: int, n: int) -> str:
    from libero_core.records import wilson

    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=200, help="null studies per seed setting (1, 2, 3 seeds)")
    ap.add_argument(
        "--power-studies", type=int, default=100, help="3-seed studies with +10 pp on libero_goal"
    )
    ap.add_argument("--bootstrap", type=int, default=2000, help="compare's bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arm-seed-sd", type=float, default=0.0, help="arm x seed logit SD (default 0)")
    ap.add_argument("--plots", action="store_true", help="also draw each report's figures (slow, not scored)")
    args = ap.parse_args()
    if not args.plots:  # the figures change nothing scored here and cost half of each compare call
        import analysis.compare_report as cr

        cr.plot_suites = cr.plot_perturbations = lambda rep, path: None
    rng = np.random.default_rng(args.seed)
    settings = [(1, None, args.studies), (2, None, args.studies), (3, None, args.studies)]
    settings.append((3, "libero_goal", args.power_studies))
    scores, t0 = {}, time.time()
    with tempfile.TemporaryDirectory(prefix="null_studies_") as tmp:
        for n_seeds, eff, count in settings:
            t1, res = time.time(), []
            for k in range(count):
                root = Path(tmp) / f"s{n_seeds}_{eff}_{k}"
                res.append(study(rng, n_seeds, eff, root, args.bootstrap, args.arm_seed_sd))
                shutil.rmtree(root)
            sc = scores[(n_seeds, eff)] = score(res, eff)
            what = "null" if eff is None else f"+{100 * TARGET:.0f} pp on {eff}"
            (h, n), (th, tn) = sc["cover"], sc["ties"]
            print(
                f"{count} studies, {n_seeds} seed(s), {what}: "
                + (f"FWER {wilson_pct(round(sc['fwer'] * count), count)}, " if eff is None else "")
                + f"coverage {100 * h / n:.1f}% of {n} CIs, "
                + (f"tie coverage {100 * th / tn:.1f}% of {tn} tied CIs, " if tn else "no tied CIs, ")
                + (f"power {100 * sc['power']:.0f}%, " if eff else "")
                + f"median MDE 80% of the Average {100 * sc['mde_avg']:.0f} pp "
                f"({(time.time() - t1) / count:.2f} s per study)",
                flush=True,
            )
    hits = sum(s["cover"][0] for s in scores.values())
    n = sum(s["cover"][1] for s in scores.values())
    th = sum(s["ties"][0] for s in scores.values())
    tn = sum(s["ties"][1] for s in scores.values())
    print(
        f"(every study written as real run folders and compared with compare_runs, B = {args.bootstrap}"
        + ("" if args.plots else ", figures not drawn")
        + "; "
        f"{time.time() - t0:.0f} s in all; tie coverage over {tn} tied CIs)"
    )
    print(
        f"null studies: FWER {100 * scores[(1, None)]['fwer']:.1f}% (seeds 1) / "
        f"{100 * scores[(3, None)]['fwer']:.1f}% (seeds 3), coverage {100 * hits / n:.1f}%, "
        f"tie coverage {100 * th / max(1, tn):.1f}%, power {100 * scores[(3, 'libero_goal')]['power']:.0f}% at "
        f"+{100 * TARGET:.0f} pp"
    )
    print(json.dumps({f"{k[0]}_{k[1]}": v for k, v in scores.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
