"""Rendering of the `r1vla compare` report dict (analysis/compare.py): report.md, per_suite.png and
per_perturbation.png. Reads only the dict; computes nothing statistical."""

from __future__ import annotations

from pathlib import Path

from libero_core.suites import SUITES

TITLE = {s.name: s.title for s in SUITES.values()}


def _t(cell: str) -> str:
    """'libero_goal' -> 'Goal'; 'libero_goal/lan' -> 'Goal/lan'."""
    s, _, p = cell.partition("/")
    return TITLE.get(s, s) + (f"/{p}" if p else "")


def _pp(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(ci) -> str:
    return "" if not ci or ci[0] is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _rate(b: dict | None) -> str:
    if not b or not b.get("n_episodes"):
        return "–"
    seeds = f", {b['n_seeds']} seeds" if b.get("n_seeds", 1) > 1 else ""
    return f"{_pp(b['success_rate'])}{_ci(b['ci95'])} (n={b['n_episodes']}{seeds})"


def _delta(x, ci) -> str:
    return "–" if x is None else f"{100 * x:+.1f}{_ci(ci)}"


def _p(p) -> str:
    return "–" if p is None else f"{p:.3g}"


def render_markdown(rep: dict) -> str:
    runs, base, alpha = rep["runs"], rep["baseline"], rep["alpha"]
    suites = _suites(rep)
    lines = [
        "# LIBERO transfer report",
        "",
        f"Baseline: **{base}**. α = {alpha:g}. Bootstrap: B = {rep['n_bootstrap']} resamples, RNG seed "
        f"{rep['bootstrap_seed']} (`--bootstrap`, `--bootstrap-seed`). Rates and differences in %.",
        "",
        "- **Several training seeds:** every multi-seed 95% CI (success, Average, Δ, drop, Δ drop) is a "
        "t-interval over training seeds: the statistic is computed per seed (pair) on its own episodes, then "
        "mean ± t(0.975, n − 1 degrees of freedom) · s / √n over the n seeds, p from the t-test against 0 "
        "(method `t_over_seeds`; success intervals clipped to [0, 1]). s² is the seeds' sample variance, but "
        "never less than their own episode (cluster) sampling variance: a seed's value varies at least that "
        "much, so tied or nearly tied seeds (common with discrete outcomes) cannot shrink the interval "
        "(`t_over_seeds_floored`: the random-effects meta-analysis over seeds with the modified Hartung-Knapp "
        "interval, never narrower than the fixed-effect one). Named fallbacks: `bootstrap_incomplete` (an "
        "Average whose seeds ran different suites: the pooled two-stage cluster bootstrap), `bootstrap_sd0` "
        "(identical seeds and no episode noise at all).",
        "- **Success** with a 95% CI: one replicate (training seed) per arm: Wilson; several: the mean of the "
        "replicates' rates. **Average** = mean of the suite rates; CI: MOVER on the suites' Wilson limits "
        "(one replicate), so it contains the average for any suite sizes; several: as above.",
        "- **Δ vs the baseline** on the episodes both share (suite, task, init state, seed) within each pair of "
        "replicates with the same training seed. One replicate pair: 95% CI from a paired cluster bootstrap over "
        "(task, init state), percentile; p: exact McNemar (`mcnemar`), or with several evaluation seeds per "
        "(task, init state) the exact sign test over those clusters (`mcnemar_clusters`: their episodes are not "
        "independent pairs); the Average's p: the bootstrap's. Several: over the seeds, as above. "
        "**p (Holm): across the standard suites and the Average of one comparison** (one family: at most α "
        "family-wise error over all its verdicts); every verdict names the correction it carries.",
        "- **Verdicts** with one or two training seeds are about the checkpoints; a verdict about the backbones "
        f"needs ≥ 3 paired training seeds, a Δ CI that excludes 0 and p (Holm) < {alpha:g}.",
        "- **MDE 80%**: the smallest Δ this design detects with 80% power at α/m per test (m the Holm family, "
        "what a lone effect must pass), from the observed variance of one seed's Δ (seed and cluster variance; "
        "with one seed the episode noise only). Where the MDE is large, 'no detectable difference' means the "
        "design could not have seen it, not that there is none: more training seeds help most.",
        "- Episodes that failed for a fault (not the step cap: policy error, worker death, simulator error) count "
        "as failures; they are counted per run below.",
        "",
    ]
    if rep["protocol_differences"]:
        lines += ["**Warning: protocols differ** (compared anyway):", ""]
        lines += [f"- {d}" for d in rep["protocol_differences"]] + [""]
    if rep["warnings"]:
        lines += ["## Warnings", ""] + [f"- **Warning:** {w}" for w in rep["warnings"]] + [""]
    lines += [
        "## Runs",
        "",
        "| arm | folder | checkpoint | train seed | episodes | faults |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in runs.items():
        for x in r["replicates"]:
            f = x["faults"]["n"]
            faults = (
                f"**{f} ⚠** ({', '.join(f'{k}: {v}' for k, v in x['faults']['reasons'].items())})"
                if f
                else "0"
            )
            shards = " (unmerged shards ⚠)" if x["unmerged_shards"] else ""
            seed = "–" if x["train_seed"] is None else x["train_seed"]
            lines.append(
                f"| {n} | {x['dir']}{shards} | {x['checkpoint']} | {seed} | {x['n_episodes']} | {faults} |"
            )
    lines += ["", "## Success per suite", "", "| arm | " + " | ".join(map(_t, suites)) + " | Average |"]
    lines.append("|---" * (len(suites) + 2) + "|")
    for n, r in runs.items():
        lines.append(
            f"| {n} | "
            + " | ".join(_rate(r["suites"].get(s)) for s in suites)
            + f" | {_rate(r['average'])} |"
        )
    for n, r in runs.items():
        if "paired" in r:
            lines += _comparison(n, base, r)
    if rep["ood"]:
        lines += _ood(rep)
    lines += _tasks(runs, suites)
    lines += ["", "## Verdicts", ""]
    for n, r in runs.items():
        if "paired" in r:
            cells = "; ".join(
                f"{_t(s) if s != 'average' else 'Average'}: {_verdict(t)}" for s, t in r["paired"].items()
            )
            lines.append(f"- **{n}** vs {base}: {cells}")
            ood = [(c, x["vs_baseline"]) for c, x in rep["ood"].get(n, {}).items() if "vs_baseline" in x]
            if ood:
                lines.append(
                    "  - drop under perturbation: " + "; ".join(f"{_t(c)}: {_verdict(v)}" for c, v in ood)
                )
    return "\n".join(lines) + "\n"


def _mde(t: dict) -> str:
    """The minimum detectable Δ in pp; '> 100' where no Δ up to 100 pp is detected 80% of the time, '–' where
    there is no variance to compute it from."""
    if t.get("mde80") is not None:
        return f"{100 * t['mde80']:.1f}"
    return "> 100" if ((t.get("power") or {}).get("per_seed_var") or 0) > 0 else "–"


def _verdict(t: dict) -> str:
    """A verdict with the correction it carries and, where nothing was found, what could have been found."""
    if t.get("p_holm") is None:
        return t["verdict"]
    mde = f"; MDE 80% {_mde(t)} pp" if t["verdict"].startswith("no detectable") and _mde(t) != "–" else ""
    return f"{t['verdict']} ({t.get('correction', 'Holm')}{mde})"


def _suites(rep: dict) -> list[str]:
    names = {s for r in rep["runs"].values() for s in r["suites"]}
    order = list(SUITES)
    return sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s))


def _comparison(n: str, base: str, r: dict) -> list[str]:
    pairs = ", ".join(f"{p['train_seed']}/{p['baseline_train_seed']}" for p in r["pairing"]["pairs"])
    lines = ["", f"## {n} vs {base}", "", f"Replicate pairs (train seed {n}/{base}): {pairs or 'none'}."]
    lines += [f"**Pairing:** {note}." for note in r["pairing"]["notes"]]
    lines += [
        "",
        "| suite | seeds | shared episodes | Δ (pp) [95% CI] | p | p (Holm) | MDE 80% (pp) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, t in r["paired"].items():
        name = "Average" if s == "average" else _t(s)
        p = f"{_p(t['p_value'])} ({t['p_method']})" if t["p_value"] is not None else "–"
        lines.append(
            f"| {name} | {t['n_seeds']} | {t['n_episodes']} | {_delta(t['delta'], t['delta_ci95'])} | {p} "
            f"| {_p(t['p_holm'])} | {_mde(t)} | {_verdict(t)} |"
        )
    avg = r["paired"].get("average", {})
    if avg.get("power") and _mde(avg) != "–":
        lines += [
            "",
            f"**Power:** with {avg['n_seeds']} training seed(s) and these episodes, a true Δ on the Average smaller "
            f"than {_mde(avg)} pp is found less often than 4 times in 5 (α {avg['power']['alpha_per_test']:.3g} per "
            "test under Holm); per suite: the MDE column. Seed variance dominates: more training seeds shrink the "
            "MDE far more than more episodes (`r1vla study --plan --target-delta`).",
        ]
    elif avg.get("power"):
        lines += [
            "",
            "**Power:** not computable: the paired episodes show no variance at all (every one alike).",
        ]
    lines += [
        "",
        "McNemar per training seed (Average row: pooled over its suites, for information; `mcnemar_clusters`: "
        "the sign test over (task, init state) clusters, several evaluation seeds each):",
        "",
        "| suite | train seed | shared | clusters | run-only / base-only success | p (test) |",
        "|---|---|---|---|---|---|",
    ]
    for s, t in r["paired"].items():
        for m in t["mcnemar_per_seed"]:
            lines.append(
                f"| {'Average' if s == 'average' else _t(s)} | {m['train_seed']}/{m['baseline_train_seed']} "
                f"| {m['n_shared']} | {m['n_clusters']} | {m['run_only_success']} / {m['baseline_only_success']} "
                f"| {_p(m['p_value'])} ({m['test']}) |"
            )
    return lines


def _ood(rep: dict) -> list[str]:
    ood, base = rep["ood"], rep["baseline"]
    cells = list(dict.fromkeys(c for a in ood.values() for c in a))
    lines = [
        "",
        "## Out of distribution (LIBERO-PRO perturbations)",
        "",
        "Drop = standard-suite success − perturbed success, paired on (task, init state, seed) within a replicate; "
        "95% CI: cluster bootstrap with one replicate, t-interval over training seeds with several.",
        "",
        "| suite/perturbation | " + " | ".join(f"{a} success | {a} drop" for a in ood) + " |",
        "|---" * (2 * len(ood) + 1) + "|",
    ]
    for c in cells:
        row = []
        for a in ood.values():
            x = a.get(c)
            row += (
                ["–", "–"]
                if not x
                else [
                    f"{_pp(x['success'])}{_ci(x['success_ci95'])} (n={x['n_episodes']})",
                    _delta(x["drop"], x["drop_ci95"]),
                ]
            )
        lines.append(f"| {_t(c)} | " + " | ".join(row) + " |")
    for n, a in ood.items():
        vs = {c: x["vs_baseline"] for c, x in a.items() if "vs_baseline" in x}
        if n == base or not (vs or n in rep["ood_left_out"]):
            continue
        lines += [
            "",
            f"### {n} vs {base}: difference of drops",
            "",
            f"Δ drop = drop({n}) − drop({base}); negative: {n} loses less. p: with one replicate pair the two-sided "
            "bootstrap p (McNemar does not apply to a difference of two paired differences); with several, the "
            "t-test over training seeds; p (Holm): across the suite/perturbation cells of this comparison.",
            "",
            "| suite/perturbation | seeds | episodes | Δ drop (pp) [95% CI] | p (method) | p (Holm) | MDE 80% (pp) "
            "| verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c, v in vs.items():
            lines.append(
                f"| {_t(c)} | {v['n_seeds']} | {v['n_episodes']} | {_delta(v['delta_drop'], v['delta_drop_ci95'])} "
                f"| {_p(v['p_value'])} ({v['p_method']}) | {_p(v['p_holm'])} | {_mde(v)} | {_verdict(v)} |"
            )
        if lo := rep["ood_left_out"].get(n):
            lines += [
                "",
                f"Left out (not run by both): only {n}: {', '.join(map(_t, lo['only_in_arm'])) or 'none'}; "
                f"only {base}: {', '.join(map(_t, lo['only_in_baseline'])) or 'none'}.",
            ]
    return lines


def _tasks(runs: dict, suites: list[str]) -> list[str]:
    rank = {s: i for i, s in enumerate(suites)}
    tasks = sorted(
        {t for r in runs.values() for t in r["tasks"]},
        key=lambda k: (rank.get(k.split("/")[0], len(rank)), int(k.split("/")[1])),
    )
    lines = [
        "",
        "## Per task (success %, pooled over replicates)",
        "",
        "| suite/task | " + " | ".join(runs) + " |",
    ]
    lines.append("|---" * (len(runs) + 1) + "|")
    for t in tasks:
        cells = [
            f"{100 * b['success_rate']:.0f} ({b['successes']}/{b['n']})" if (b := r["tasks"].get(t)) else "–"
            for r in runs.values()
        ]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def _plain(err: list) -> list[list[float]]:
    """Error bars (lower, upper) as plain lists: matplotlib reads the first of 1-element arrays (one group) through
    `math.isfinite(array)`, which NumPy deprecates (and will make an error)."""
    return [[float(v) for v in e] for e in err]


def _bars(ax, groups: list[str], series: dict[str, list[dict | None]], key: str = "success_rate") -> None:
    import numpy as np

    width = 0.8 / max(1, len(series))
    for i, (n, blocks) in enumerate(series.items()):
        ok = [b is not None and b.get(key) is not None for b in blocks]
        y = np.array([100 * b[key] if o else np.nan for b, o in zip(blocks, ok, strict=True)])
        ci = [b.get("ci95") or b.get("success_ci95") if o else None for b, o in zip(blocks, ok, strict=True)]
        lo = np.array([100 * c[0] if c and c[0] is not None else np.nan for c in ci])
        hi = np.array([100 * c[1] if c and c[1] is not None else np.nan for c in ci])
        x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        err = [np.nan_to_num(np.clip(y - lo, 0, None)), np.nan_to_num(np.clip(hi - y, 0, None))]
        ax.bar(x, y, width, label=n, yerr=_plain(err), capsize=3)
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)


def _figure(ncols: int, width: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, 3.8), squeeze=False)
    return plt, fig, axes[0]


def plot_suites(rep: dict, path: Path) -> None:
    """Left: success per suite and arm with 95% CIs. Right: Δ vs the baseline per suite with its CI."""
    import numpy as np

    runs = rep["runs"]
    groups = _suites(rep) + ["average"]
    names = [_t(g) if g != "average" else "Average" for g in groups]
    others = [n for n, r in runs.items() if "paired" in r]
    plt, fig, (ax, *rest) = _figure(
        2 if others else 1, 2 + 1.3 * len(groups) * max(1, len(runs) / 2) * (2 if others else 1)
    )
    series = {
        n: [r["suites"].get(g) if g != "average" else r["average"] for g in groups] for n, r in runs.items()
    }
    _bars(ax, names, series)
    ax.set_title(f"LIBERO success, 95% CI (baseline: {rep['baseline']})", fontsize=9)
    if others:
        dx = rest[0]
        for i, n in enumerate(others):
            t = [runs[n]["paired"].get(g, {}) for g in groups]
            y = np.array([100 * x["delta"] if x.get("delta") is not None else np.nan for x in t])
            lo = np.array([100 * x["delta_ci95"][0] if x.get("delta") is not None else np.nan for x in t])
            hi = np.array([100 * x["delta_ci95"][1] if x.get("delta") is not None else np.nan for x in t])
            x = np.arange(len(groups)) + (i - (len(others) - 1) / 2) * 0.15
            dx.errorbar(
                x, y, yerr=_plain([np.nan_to_num(y - lo), np.nan_to_num(hi - y)]), fmt="o", capsize=3, label=n
            )
        dx.axhline(0, color="k", lw=0.8)
        dx.set_xticks(np.arange(len(groups)), names, fontsize=8)
        dx.set_ylabel(f"Δ vs {rep['baseline']} (pp)")
        dx.set_title("paired Δ, 95% CI", fontsize=9)
        dx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_perturbations(rep: dict, path: Path) -> None:
    """Success per suite/perturbation and arm with 95% CIs."""
    ood = rep["ood"]
    cells = list(dict.fromkeys(c for a in ood.values() for c in a))
    plt, fig, (ax,) = _figure(1, 2 + 1.3 * len(cells) * max(1, len(ood) / 2))
    _bars(ax, [_t(c) for c in cells], {n: [a.get(c) for c in cells] for n, a in ood.items()}, key="success")
    ax.set_title("LIBERO-PRO success per perturbation, 95% CI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
