"""Issue 22's statistics of `r1vla compare`: tied training seeds cannot shrink an interval below their episode
noise, the Average is in the Holm family and every verdict names its correction, every report states its
design's minimum detectable Δ, McNemar counts clusters (not episodes) with several evaluation seeds, and
`r1vla study --plan` states the power before a study. No LIBERO, no policy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, nct
from scipy.stats import t as t_dist
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from synthetic_runs import PROTO, QUIET, write_run

from analysis import power
from analysis.compare import compare_runs
from libero_core.records import write_jsonl_atomic


def tied_runs(tmp_path: Path, n_seeds: int = 3) -> list[Path]:
    """n_seeds pairs on 100 libero_goal episodes: in seed k the arm alone succeeds on 20 episodes and the
    baseline alone on 10, each seed on other episodes: every per-seed Δ is exactly +0.10 (tied)."""
    runs = []
    for k in range(n_seeds):
        r = [(i + 7 * k) % 100 for i in range(100)]  # seed k's episodes, rotated
        arm = [x < 70 for x in r]  # both on r < 50, the arm alone on 50 <= r < 70
        base = [x < 50 or 70 <= x < 80 for x in r]  # the baseline alone on 70 <= r < 80
        runs.append(write_run(tmp_path / f"sft{k}", "sft", {"libero_goal": base}, train_seed=k))
        runs.append(write_run(tmp_path / f"r1{k}", "r1", {"libero_goal": arm}, train_seed=k))
    return runs


def test_tied_seeds_keep_the_seed_variance(tmp_path):
    """Per-seed Δ = +0.10 three times. The old fallback (a pooled bootstrap, `bootstrap_sd0`) gave an interval of
    the episode noise of all seeds pooled (~6x narrower than a t-interval) that excluded 0 and claimed a backbone
    effect. Now: the t-interval over seeds with s² floored at each seed's own sampling variance, by hand
    100/99 · (20 · 0.9² + 10 · 1.1² + 70 · 0.1²) / 100² = 0.0029293 per seed."""
    rep = compare_runs(tied_runs(tmp_path), "sft", tmp_path / "rep", **QUIET)
    t = rep["runs"]["r1"]["paired"]["libero_goal"]
    within = 100 / 99 * (20 * 0.81 + 10 * 1.21 + 70 * 0.01) / 100**2
    se = math.sqrt(within / 3)
    half = float(t_dist.ppf(0.975, 2)) * se
    assert t["delta"] == pytest.approx(0.1) and t["p_method"] == "t_over_seeds_floored"
    assert t["delta_ci95"] == pytest.approx([0.1 - half, 0.1 + half], abs=1e-9)
    assert t["delta_ci95"][0] < 0 < t["delta_ci95"][1]  # 0.1 ± 0.134: the tie does not make it certain
    assert t["p_value"] == pytest.approx(2 * t_dist.sf(0.1 / se, 2), rel=1e-9)
    assert t["verdict"] == "no detectable difference between the backbones (3 training seeds)"
    # two seeds: t with 1 degree of freedom, never narrower than its floor
    rep2 = compare_runs(tied_runs(tmp_path / "two", 2), "sft", tmp_path / "rep2", **QUIET)
    t2 = rep2["runs"]["r1"]["paired"]["libero_goal"]
    assert t2["delta_ci95"][1] - t2["delta_ci95"][0] >= 2 * float(t_dist.ppf(0.975, 1)) * math.sqrt(
        within / 2
    ) - 1e-9 or t2["delta_ci95"] == [-1.0, 1.0]


def test_average_is_in_the_holm_family(tmp_path):
    """One seed, four suites with a small effect each: the Average's bootstrap p is below 0.05, but it is one of
    5 tests; uncorrected it read 'checkpoint better' next to corrected suite verdicts."""
    cells_a, cells_b = {}, {}
    for s in ("libero_spatial", "libero_object", "libero_goal", "libero_10"):
        base = [i % 2 == 0 for i in range(100)]
        arm = list(base)
        for i in range(9):  # the arm alone succeeds on 9 episodes, the baseline alone on 5
            arm[2 * i + 1] = True
        for i in range(5):
            arm[2 * (i + 20)] = False
        cells_a[s], cells_b[s] = arm, base
    a = write_run(tmp_path / "a", "sft", cells_b)
    b = write_run(tmp_path / "b", "r1", cells_a)
    pr = compare_runs([a, b], "sft", tmp_path / "rep", **QUIET)["runs"]["r1"]["paired"]
    avg = pr["average"]
    assert avg["delta"] == pytest.approx(0.04) and avg["p_value"] < 0.05  # significant on its own
    names = ["libero_spatial", "libero_object", "libero_goal", "libero_10", "average"]
    holm = multipletests([pr[n]["p_value"] for n in names], method="holm")[1]
    assert [pr[n]["p_holm"] for n in names] == pytest.approx(list(holm))
    assert avg["p_holm"] >= 0.05 and avg["verdict"] == "no detectable difference between the checkpoints"
    assert {pr[n]["correction"] for n in names} == {"Holm over 5 tests (4 suites + the Average)"}
    md = (tmp_path / "rep" / "report.md").read_text()
    verdicts = md.split("## Verdicts")[1]
    assert verdicts.count("(Holm over 5 tests (4 suites + the Average); MDE 80% ") == 5


def test_every_report_states_its_minimum_detectable_delta(tmp_path):
    """The MDE at 80% power and α/m per test (m = 2: the suite and the Average), from the observed per-seed
    variance: the t-test over 3 seeds at that Δ has power 0.8 (statsmodels TTestPower, independently)."""
    runs = []
    for k in range(3):  # per-seed Δ 0.10, 0.20, 0.30 on 100 episodes (sd 0.1 > the episode noise)
        base = [i < 50 for i in range(100)]
        arm = [i < 60 + 10 * k for i in range(100)]
        runs.append(write_run(tmp_path / f"sft{k}", "sft", {"libero_goal": base}, train_seed=k))
        runs.append(write_run(tmp_path / f"r1{k}", "r1", {"libero_goal": arm}, train_seed=k))
    rep = compare_runs(runs, "sft", tmp_path / "rep", **QUIET)
    t = rep["runs"]["r1"]["paired"]["libero_goal"]
    assert t["power"]["per_seed_var"] == pytest.approx(0.01) and t["power"]["alpha_per_test"] == 0.025
    # the power of the t-test over 3 seeds at Δ = MDE, from scipy's noncentral t (statsmodels' TTestPower returns
    # NaN there: its lower tail overflows)
    crit = float(t_dist.isf(0.025 / 2, 2))
    nc = t["mde80"] / 0.1 * math.sqrt(3)
    assert nct.sf(crit, 2, nc) + np.nan_to_num(nct.cdf(-crit, 2, nc)) == pytest.approx(0.8, abs=1e-6)
    d = rep["runs"]["r1"]["design"]
    assert d["n_seeds"] == 3 and d["episodes_per_seed_per_suite"] == 100 and d["seed_var"] > 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "MDE 80% (pp)" in md and f"| {100 * t['mde80']:.1f} |" in md and "**Power:**" in md
    # one seed: the z-test on the episode noise alone
    one = compare_runs(runs[:2], "sft", tmp_path / "rep1", **QUIET)["runs"]["r1"]["paired"]["libero_goal"]
    z = 2.241402727604947 + 0.8416212335729143  # z_{1 - 0.025/2} + z_{0.8}
    assert one["mde80"] == pytest.approx(z * math.sqrt(one["power"]["within_var"]), rel=1e-9)


def test_mde_and_seeds_needed():
    assert power.mde(5, 0.04, 0.05) == pytest.approx(
        TTestPower().solve_power(nobs=5, alpha=0.05, power=0.8) * 0.2
    )
    assert power.mde(2, 0.01, 0.01) == math.inf or power.mde(2, 0.01, 0.01) > 1  # 1 df at α 0.01
    assert power.mde(3, None, 0.05) is None and power.mde(3, 0.0, 0.05) is None
    n = power.seeds_needed(0.10, 0.0072, 0.4, 100, 0.01)
    var = 0.0072 + 0.4 / 100
    assert power.mde(n, var, 0.01) <= 0.10 < power.mde(n - 1, var, 0.01)
    # more episodes barely help, more seeds do: 10x the episodes vs 3x the seeds
    assert power.mde(3, 0.0072 + 0.4 / 1000, 0.01) > power.mde(9, var, 0.01)


def test_mcnemar_counts_clusters_with_several_evaluation_seeds(tmp_path):
    """20 (task, init state) clusters x 10 evaluation seeds, outcomes equal across the seeds of a cluster: the arm
    alone succeeds in 6 clusters, the baseline alone in 2. Episodes as pairs: exact McNemar of 60 vs 20
    (p ≈ 1e-5). The clusters are the independent units: the sign test of 6 vs 2, p = 0.289."""
    for label, wins in (("sft", {6, 7}), ("r1", {0, 1, 2, 3, 4, 5})):
        recs = []
        for c in range(20):
            for seed in range(10):
                ok = c in wins or c >= 14
                recs.append(dict(suite="libero_goal", perturbation="none", task_id=c % 10, init_state=c // 10,
                                 seed=seed, success=ok, failure=None if ok else "timeout: no success in 300 steps",
                                 label=label, checkpoint=label * 3, train_seed=0, protocol=PROTO))  # fmt: skip
        (tmp_path / label).mkdir()
        write_jsonl_atomic(tmp_path / label / "episodes.jsonl", recs)
    pr = compare_runs([tmp_path / "sft", tmp_path / "r1"], "sft", tmp_path / "rep", **QUIET)["runs"]["r1"]
    t = pr["paired"]["libero_goal"]
    assert t["p_value"] == pytest.approx(binomtest(6, 8).pvalue) and t["p_method"] == "mcnemar_clusters"
    m = t["mcnemar_per_seed"][0]
    assert (m["run_only_success"], m["baseline_only_success"], m["n_clusters"]) == (60, 20, 20)
    assert t["verdict"] == "no detectable difference between the checkpoints"
    assert pr["paired"]["average"]["mcnemar_per_seed"][0]["test"] == "mcnemar_clusters"


def test_study_plan_states_the_power(tmp_path, capsys):
    from r1vla.cli import main

    assert main(["study", "--preset", "tiny", "--plan", "--target-delta", "10"]) == 0
    out = capsys.readouterr().out
    assert "minimum detectable Δ:" in out and "training seeds for Δ = 10 pp at 80% power:" in out
    assert power.DEFAULT_SOURCE in out
    assert main(["study", "--preset", "paper", "--plan"]) == 0  # no checkpoint paths needed for a plan
    assert "3 training seed(s), 500 episodes per suite and seed" in capsys.readouterr().out
    # the paper preset: its seeds and episodes, the default variance; seeds needed by hand
    from r1vla import study_config
    from r1vla.study_layout import eval_tasks
    from r1vla.study_power import power_plan_lines

    cfg = study_config.preset("paper")
    tasks, inits = eval_tasks(cfg)
    n_ep = len(inits) * len(cfg.eval.seeds) * len({t for s, t in tasks if s == tasks[0][0]})
    n_suites = len({s for s, _ in tasks})
    alpha = 0.05 / (n_suites + 1)
    lines = power_plan_lines(cfg, 10)
    mde = power.mde(len(cfg.train.seeds), power.DEFAULT_SEED_VAR + power.DEFAULT_EPISODE_VAR / n_ep, alpha)
    assert f"minimum detectable Δ: {power.fmt_pp(mde)} pp per suite" in "\n".join(lines)
    need = power.seeds_needed(0.1, power.DEFAULT_SEED_VAR, power.DEFAULT_EPISODE_VAR, n_ep, alpha)
    assert f"at 80% power: {need} per suite" in lines[-1]
    # from a pilot: a compare report's measured design
    rep_dir = tmp_path / "rep"
    compare_runs(tied_runs(tmp_path), "sft", rep_dir, **QUIET)
    design = json.loads((rep_dir / "report.json").read_text())["runs"]["r1"]["design"]
    lines = power_plan_lines(cfg, 10, str(rep_dir))
    assert f"pilot {rep_dir / 'report.json'}" in lines[2]
    need = power.seeds_needed(0.1, design["seed_var"], design["episode_var"], n_ep, alpha)
    assert f"at 80% power: {need} per suite" in lines[-1]
    assert np.isclose(design["episode_var"], 100 / 99 * (20 * 0.81 + 10 * 1.21 + 70 * 0.01) / 100)
