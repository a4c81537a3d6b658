"""`r1vla compare`: the transfer report. Success per suite with Wilson 95% CIs, and paired tests against a baseline.

    r1vla compare RUN_A RUN_B ... [--baseline LABEL_OR_RUNDIR] --out REPORT [--allow-protocol-mismatch]

Writes REPORT/report.md, REPORT/report.json and REPORT/per_suite.png. The paired test uses only the episodes both
runs share (same suite, task, init state and seed), pooled over seeds: McNemar's exact test, i.e. a two-sided
binomial test (scipy.stats.binomtest, p = 1/2) on the discordant pairs. Runs made under different protocols are
refused, naming the fields that differ. In Python: `compare_runs([Path(a), Path(b)], baseline="sft", out=...)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from eval_libero.records import EPISODES, dict_differences, episode_key, rate_block, read_jsonl
from eval_libero.suites import SUITES

ALPHA = 0.05


class CompareError(ValueError):
    """Runs that cannot be compared, explained in the message."""


def load_run(run: Path, log=print) -> tuple[str, dict, list[dict]]:
    """(label, protocol, records) of a run folder; shard files not yet merged are included (read-only)."""
    if not run.is_dir():
        raise CompareError(f"run folder not found: {run}")
    records, seen = [], set()
    for f in [run / EPISODES, *sorted(run.glob("episodes.rank*.jsonl"))]:
        got = read_jsonl(f)
        for lineno, why in got.bad_lines:
            log(f"{f}: line {lineno}: {why}; ignored")
        for r in got.records:
            if episode_key(r) not in seen:
                seen.add(episode_key(r))
                records.append(r)
    if not records:
        raise CompareError(f"{run} has no recorded episodes ({EPISODES})")
    labels = {str(r.get("label")) for r in records}
    protocols = {json.dumps(r.get("protocol"), sort_keys=True) for r in records}
    if len(labels) > 1 or len(protocols) > 1:
        raise CompareError(
            f"{run} mixes several labels or protocols ({sorted(labels)}); one run = one evaluation"
        )
    return labels.pop(), json.loads(protocols.pop()), records


def protocol_differences(protocols: dict[str, dict]) -> list[str]:
    """'field: A=x, B=y' for every protocol field that is not the same in all runs."""
    return dict_differences(protocols)


def mcnemar(pairs: list[tuple[bool, bool]]) -> dict:
    """Exact McNemar test on (run, baseline) outcome pairs: binomial test of the discordant pairs."""
    from scipy.stats import binomtest

    b = sum(1 for x, y in pairs if x and not y)  # run succeeded, baseline failed
    c = sum(1 for x, y in pairs if y and not x)
    p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    n = len(pairs)
    delta = (sum(x for x, _ in pairs) - sum(y for _, y in pairs)) / n if n else None
    return {"n_shared": n, "run_only_success": b, "baseline_only_success": c, "delta": delta, "p_value": p}


def verdict(test: dict, alpha: float = ALPHA) -> str:
    if not test["n_shared"]:
        return "not comparable (no shared episodes)"
    if test["p_value"] < alpha:
        return "better" if test["run_only_success"] > test["baseline_only_success"] else "worse"
    return f"no detectable difference at α={alpha:g}"


def _suite_order(names) -> list[str]:
    order = list(SUITES)
    return sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s))


def run_stats(records: list[dict]) -> dict:
    by_suite, by_task = defaultdict(list), defaultdict(list)
    for r in records:
        by_suite[r["suite"]].append(bool(r["success"]))
        by_task[(r["suite"], int(r["task_id"]))].append(bool(r["success"]))
    suites = {s: rate_block(by_suite[s]) for s in _suite_order(by_suite)}
    rates = [b["success_rate"] for b in suites.values()]
    pooled = rate_block([bool(r["success"]) for r in records])
    average = {**pooled, "success_rate": sum(rates) / len(rates), "pooled_rate": pooled["success_rate"]}
    tasks = {f"{s}/{t}": rate_block(v) for (s, t), v in sorted(by_task.items())}
    return {"suites": suites, "average": average, "tasks": tasks}


def compare_runs(
    run_dirs: list[Path], baseline: str | None, out: Path, allow_protocol_mismatch: bool = False, log=print
) -> dict:
    """Write report.md / report.json / per_suite.png into `out`; returns the report dict. `baseline` is a run's
    label or folder (default: the first run)."""
    if not run_dirs:
        raise CompareError("no run folders given")
    runs: dict[str, dict] = {}
    for d in map(Path, run_dirs):
        label, protocol, records = load_run(d, log)
        name = label if label not in runs else f"{label} ({d.name})"
        runs[name] = {"dir": str(d), "label": label, "protocol": protocol, "records": records}
    names = list(runs)
    base = names[0] if baseline is None else _find(runs, baseline)
    diffs = protocol_differences({n: r["protocol"] for n, r in runs.items()})
    if diffs and not allow_protocol_mismatch:
        raise CompareError(
            "runs were made under different protocols; differing fields:\n  "
            + "\n  ".join(diffs)
            + "\n(--allow-protocol-mismatch to compare anyway)"
        )
    base_idx = {episode_key(r): bool(r["success"]) for r in runs[base]["records"]}
    report = {"baseline": base, "alpha": ALPHA, "protocol_differences": diffs, "runs": {}}
    for n, r in runs.items():
        entry = {"dir": r["dir"], "label": r["label"], "protocol": r["protocol"], **run_stats(r["records"])}
        if n != base:
            idx = {episode_key(x): bool(x["success"]) for x in r["records"]}
            shared = [k for k in idx if k in base_idx]
            entry["paired"] = {}
            for s in [*entry["suites"], "all"]:
                test = mcnemar([(idx[k], base_idx[k]) for k in shared if s in ("all", k[0])])
                entry["paired"][s] = {**test, "verdict": verdict(test)}
        report["runs"][n] = entry
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    (out / "report.md").write_text(render_markdown(report))
    plot(report, out / "per_suite.png")
    return report


def _find(runs: dict[str, dict], baseline: str) -> str:
    for n, r in runs.items():
        if baseline in (n, r["label"]) or Path(baseline).resolve() == Path(r["dir"]).resolve():
            return n
    raise CompareError(
        f"baseline {baseline!r} is none of the runs; give a label or folder of: "
        + ", ".join(f"{n} ({r['dir']})" for n, r in runs.items())
    )


def _pct(b: dict) -> str:
    if not b["n"]:
        return "–"
    lo, hi = b["ci95"]
    return f"{100 * b['success_rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={b['n']})"


def render_markdown(rep: dict) -> str:
    runs, base = rep["runs"], rep["baseline"]
    suites = _suite_order({s for r in runs.values() for s in r["suites"]})
    title = {**{s.name: s.title for s in SUITES.values()}, "all": "All (pooled)"}
    lines = [
        "# LIBERO transfer report",
        "",
        f"Baseline: **{base}**. Success rate in % with Wilson 95% CI; average = mean of the suite rates "
        "(its CI: Wilson on all episodes pooled). Paired test: exact McNemar on episodes both runs share "
        f"(suite, task, init state, seed), α = {rep['alpha']}.",
        "",
    ]
    if rep["protocol_differences"]:
        lines += (
            ["**Warning: protocols differ** (compared anyway):", ""]
            + [f"- {d}" for d in rep["protocol_differences"]]
            + [""]
        )
    lines += [
        "## Success per suite",
        "",
        "| run | " + " | ".join(title.get(s, s) for s in suites) + " | Average |",
        "|---" * (len(suites) + 2) + "|",
    ]
    for n, r in runs.items():
        cells = [_pct(r["suites"][s]) if s in r["suites"] else "–" for s in suites]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {_pct(r['average'])} |")
    if len({tuple(r["suites"]) for r in runs.values()}) > 1:
        lines += ["", "Note: the runs cover different suites, so their averages are not directly comparable."]
    for n, r in runs.items():
        if n == base:
            continue
        lines += [
            "",
            f"## {n} vs {base}",
            "",
            "| suite | shared | Δ (pp) | run-only / base-only success | p | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for s, t in r["paired"].items():
            d = "–" if t["delta"] is None else f"{100 * t['delta']:+.1f}"
            lines.append(
                f"| {title.get(s, s)} | {t['n_shared']} | {d} | {t['run_only_success']} / "
                f"{t['baseline_only_success']} | {t['p_value']:.4g} | {t['verdict']} |"
            )
    rank = {s: i for i, s in enumerate(suites)}
    tasks = sorted(
        {t for r in runs.values() for t in r["tasks"]},
        key=lambda k: (rank[k.split("/")[0]], int(k.split("/")[1])),
    )
    lines += [
        "",
        "## Per task (success %)",
        "",
        "| suite/task | " + " | ".join(runs) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    for t in tasks:
        cells = [
            (
                f"{100 * b['success_rate']:.0f} ({b['successes']}/{b['n']})"
                if (b := r["tasks"].get(t))
                else "–"
            )
            for r in runs.values()
        ]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "## Verdicts", ""]
    for n, r in runs.items():
        if n != base:
            lines += [
                f"- **{n}** vs {base}: "
                + "; ".join(f"{title.get(s, s)}: {t['verdict']}" for s, t in r["paired"].items())
            ]
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = rep["runs"]
    suites = _suite_order({s for r in runs.values() for s in r["suites"]})
    title = {s.name: s.title for s in SUITES.values()}
    groups = suites + ["average"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(groups) * max(1, len(runs) / 2), 3.6))
    for i, (n, r) in enumerate(runs.items()):
        blocks = [r["suites"].get(s) if s != "average" else r["average"] for s in groups]
        y = np.array([100 * b["success_rate"] if b and b["n"] else np.nan for b in blocks])
        lo = np.array([100 * b["ci95"][0] if b and b["n"] else np.nan for b in blocks])
        hi = np.array([100 * b["ci95"][1] if b and b["n"] else np.nan for b in blocks])
        x = np.arange(len(groups)) + (i - (len(runs) - 1) / 2) * width
        ax.bar(x, y, width, label=n, yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)], capsize=3)
    ax.set_xticks(np.arange(len(groups)), [title.get(g, g.capitalize()) for g in groups])
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"LIBERO success, 95% Wilson CI (baseline: {rep['baseline']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders written by `r1vla eval`")
    p.add_argument(
        "--baseline", default=None, help="label or folder of the baseline run (default: the first)"
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument(
        "--allow-protocol-mismatch", action="store_true", help="compare runs made under different protocols"
    )


def run(args: argparse.Namespace) -> int:
    try:
        rep = compare_runs(
            [Path(r) for r in args.runs], args.baseline, Path(args.out), args.allow_protocol_mismatch
        )
    except CompareError as e:
        print(f"r1vla compare: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "report.md").read_text())
    return 0 if rep else 1
