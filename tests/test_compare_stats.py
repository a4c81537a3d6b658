"""The statistics of `r1vla compare` against hand computations (Wilson, McNemar, MOVER, t over seeds,
bootstrap)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import ttest_1samp
from synthetic_runs import QUIET, SU, cluster_var, floored_half, floored_t, seed_deltas, simulate, write_run

from analysis import stats
from analysis.compare import analyse, compare_runs
from libero_core.records import (
    wilson,
)


def test_wilson_matches_hand_computation():
    # p = 0.9, n = 50, z = 1.959964: center = (p + z²/2n)/(1 + z²/n) = 0.871462, half = 0.085063
    lo, hi = wilson(45, 50)
    assert lo == pytest.approx(0.786399, abs=2e-6) and hi == pytest.approx(0.956525, abs=2e-6)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))
    assert not hasattr(stats, "wilson")  # one implementation: libero_core.records (run summaries use it)


def test_mcnemar_exact_hand_computation():
    # 12 vs 2 discordant pairs: p = 2 * (C(14,0) + C(14,1) + C(14,2)) / 2^14 = 2 * 106 / 16384
    assert stats.mcnemar_exact(12, 2) == pytest.approx(212 / 16384, rel=1e-12)
    assert stats.mcnemar_exact(0, 15) == pytest.approx(2 / 2**15, rel=1e-12)
    assert stats.mcnemar_exact(3, 4) == pytest.approx(1.0) and stats.mcnemar_exact(0, 0) == 1.0


def test_mover_average_hand_computation():
    # 45/50 (Wilson [0.786398, 0.956524]) and 10/40 (Wilson [0.141871, 0.401940]); A = (0.9 + 0.25)/2 = 0.575
    # lo = A - sqrt(0.5²(0.9-0.786398)² + 0.5²(0.25-0.141871)²) = 0.496582
    # hi = A + sqrt(0.5²(0.956524-0.9)² + 0.5²(0.401940-0.25)²) = 0.656057
    (l1, u1), (l2, u2) = wilson(45, 50), wilson(10, 40)
    assert (l2, u2) == pytest.approx((0.141871, 0.401940), abs=2e-6)
    lo, hi = stats.mover_mean([0.9, 0.25], [l1, l2], [u1, u2])
    assert lo == pytest.approx(0.496582, abs=2e-6) and hi == pytest.approx(0.656057, abs=2e-6)
    # 10/10 and 0/490: lo = 0.5 - 0.5 (1 - 0.722467) = 0.361234, hi = 0.5 + 0.5 * 0.007779 = 0.503889
    lo, hi = stats.mover_mean([1.0, 0.0], [wilson(10, 10)[0], 0.0], [1.0, wilson(0, 490)[1]])
    assert lo == pytest.approx(0.361234, abs=2e-6) and hi == pytest.approx(0.503889, abs=2e-6)


def test_t_over_seeds_hand_computation():
    # per-seed Δ = [0.10, 0.20, 0.30]: mean 0.2, sd 0.1, t_{0.975, 2} = 4.302653, half = 4.302653 * 0.1 / sqrt(3)
    # = 0.248414; t = 0.2 / (0.1 / sqrt(3)) = 2 sqrt(3); with 2 df P(|T| > t) = 1 - t / sqrt(t² + 2) = 1 - sqrt(6/7)
    got = stats.t_over_seeds([0.10, 0.20, 0.30])
    assert got["point"] == pytest.approx(0.2, abs=1e-12)
    assert got["ci95"] == pytest.approx([-0.048414, 0.448414], abs=1e-6)
    assert got["p"] == pytest.approx(0.0741799, abs=1e-7) and got["p"] == pytest.approx(1 - math.sqrt(6 / 7))
    # n = 2: t_{0.975, 1} = 12.706205, half = 12.706205 * sqrt(0.02) / sqrt(2) = 1.270620, clipped to [-1, 1];
    # t = 2 with 1 df: p = 1 - (2/π) atan(2) = 0.295167
    got = stats.t_over_seeds([0.10, 0.30], bounds=(-1.0, 1.0))
    assert got["ci95"] == [-1.0, 1.0] and got["p"] == pytest.approx(0.295167, abs=1e-6)
    assert stats.t_over_seeds([0.10, 0.30])["ci95"] == pytest.approx(
        [0.2 - 1.270620, 0.2 + 1.270620], abs=1e-6
    )
    # success rates clip to [0, 1] and keep their point: [0.9, 1, 1] -> 0.966667 ± 4.302653 * 0.057735 / sqrt(3)
    got = stats.t_over_seeds([0.9, 1.0, 1.0], bounds=(0.0, 1.0))
    assert got["ci95"] == pytest.approx([0.823245, 1.0], abs=1e-6) and got["point"] == pytest.approx(29 / 30)
    assert stats.t_over_seeds([0.2, 0.2, 0.2]) is None and stats.t_over_seeds([0.2]) is None  # sd = 0, n = 1


def test_multi_seed_report_uses_t_over_seeds(tmp_path):
    """3 training-seed pairs on 100 shared libero_goal episodes; the baseline succeeds on episodes 0-49 in every
    seed, the arm also on 50 .. 50 + 10 (k + 1) in seed k: per-seed Δ = [0.10, 0.20, 0.30] exactly."""
    runs = []
    for k in range(3):
        base = [i < 50 for i in range(100)]
        arm = [i < 60 + 10 * k for i in range(100)]
        runs.append(write_run(tmp_path / f"sft{k}", "sft", {"libero_goal": base}, train_seed=k))
        runs.append(write_run(tmp_path / f"r1{k}", "r1", {"libero_goal": arm}, train_seed=k))
    rep = compare_runs(runs, "sft", tmp_path / "rep", **QUIET)
    pr = rep["runs"]["r1"]["paired"]
    for t in (pr["libero_goal"], pr["average"]):  # one suite: the Average is the same per-seed Δ
        assert t["delta"] == pytest.approx(0.2) and t["p_method"] == "t_over_seeds" and t["n_seeds"] == 3
        assert t["delta_ci95"] == pytest.approx([-0.048414, 0.448414], abs=1e-6)
        assert t["p_value"] == pytest.approx(0.0741799, abs=1e-7)
        assert t["verdict"] == "no detectable difference between the backbones (3 training seeds)"
    # one family: the suite and the Average (equal p): Holm gives both 2 p
    assert pr["libero_goal"]["p_holm"] == pytest.approx(2 * 0.0741799, abs=2e-7) == pr["average"]["p_holm"]
    assert [m["run_only_success"] for m in pr["libero_goal"]["mcnemar_per_seed"]] == [10, 20, 30]
    # the arm's per-seed rates 0.6, 0.7, 0.8: 0.7 ± 0.248414; the baseline's are all 0.5 (sd = 0): the t-interval
    # with s² floored at the seeds' own sampling variance 0.25 · 100/99 / 100, never the degenerate 0
    r1 = rep["runs"]["r1"]
    for b in (r1["suites"]["libero_goal"], r1["average"]):
        assert b["ci_method"] == "t_over_seeds" and b["success_rate"] == pytest.approx(0.7)
        assert b["ci95"] == pytest.approx([0.451586, 0.948414], abs=1e-6)
    sft = rep["runs"]["sft"]["suites"]["libero_goal"]
    half = 4.302653 * math.sqrt(0.25 * 100 / 99 / 100 / 3)
    assert sft["ci_method"] == "t_over_seeds_floored"
    assert sft["ci95"] == pytest.approx([0.5 - half, 0.5 + half], abs=1e-6)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "t-interval over training seeds" in md and "n − 1 degrees of freedom" in md
    assert "provisional" not in md and "(t_over_seeds)" in md
    # an effect the seeds agree on: significant, CI excluding 0
    assert stats.t_over_seeds([0.28, 0.30, 0.32])["p"] < 0.01


def test_average_of_unequal_suites_contains_its_point(tmp_path):
    a = write_run(tmp_path / "a", "sft", {"libero_object": [True] * 10, "libero_goal": [False] * 490})
    avg = compare_runs([a], None, tmp_path / "rep", **QUIET)["runs"]["sft"]["average"]
    assert avg["success_rate"] == 0.5 and avg["ci_method"] == "mover"
    assert avg["ci95"] == pytest.approx([0.361234, 0.503889], abs=2e-6)
    assert "50.0 [36.1, 50.4]" in (tmp_path / "rep" / "report.md").read_text()
    # several replicates and unequal suite sizes: the Average is the t-interval over the seeds' own Averages
    sizes = {"libero_spatial": 30, "libero_object": 500, "libero_goal": 100, "libero_10": 60}
    p = {
        "sft": dict(zip(SU, [0.9, 0.2, 0.5, 0.3], strict=True)),
        "r1": dict(zip(SU, [0.95, 0.3, 0.5, 0.2], strict=True)),
    }
    arms = simulate(np.random.default_rng(3), p, n_init=50, sizes=sizes)
    rep = analyse(arms, "sft", n_boot=1000)
    for arm in ("sft", "r1"):
        b = rep["runs"][arm]["average"]
        assert b["ci_method"].startswith("t_over_seeds") and b["ci95"][0] <= b["success_rate"] <= b["ci95"][1]
        assert b["success_rate"] == pytest.approx(
            np.mean([rep["runs"][arm]["suites"][s]["success_rate"] for s in SU])
        )
        per_seed = [np.mean([np.mean(list(r.cells[(s, "none")].values())) for s in SU]) for r in arms[arm]]
        within = np.mean([sum(cluster_var(r.cells[(s, "none")]) for s in SU) / 16 for r in arms[arm]])
        half = floored_half(per_seed, within)
        floored = within > np.var(per_seed, ddof=1)
        assert b["ci_method"] == ("t_over_seeds_floored" if floored else "t_over_seeds")
        assert b["ci95"] == pytest.approx([np.mean(per_seed) - half, np.mean(per_seed) + half], abs=1e-6)
    d = rep["runs"]["r1"]["paired"]["average"]
    per_seed = np.mean([seed_deltas(arms, "r1", "sft", s) for s in SU], axis=0)  # (3,) each pair's Δ Average
    by = {r.train_seed: r for r in arms["sft"]}
    within = np.mean(
        [
            sum(cluster_var({e: float(v) - float(by[r.train_seed].cells[(s, "none")][e])
                             for e, v in r.cells[(s, "none")].items()}) for s in SU) / 16
            for r in arms["r1"]
        ]
    )  # fmt: skip
    _, p_hand, method = floored_t(per_seed, within)
    assert d["delta_ci95"][0] <= d["delta"] <= d["delta_ci95"][1] and d["p_method"] == method
    assert d["p_value"] == pytest.approx(p_hand, rel=1e-9)
    if method == "t_over_seeds":
        assert d["p_value"] == pytest.approx(ttest_1samp(per_seed, 0.0).pvalue, rel=1e-9)
    # a replicate without libero_10: no per-seed Average for it, so the Average falls back to the bootstrap
    r = arms["r1"][2]
    arms["r1"][2] = replace(r, records=[x for x in r.records if x["suite"] != "libero_10"])
    r1 = analyse(arms, "sft", n_boot=1000)["runs"]["r1"]
    b, d = r1["average"], r1["paired"]["average"]
    assert b["ci_method"] == "bootstrap_incomplete" and b["ci95"][0] <= b["success_rate"] <= b["ci95"][1]
    assert d["p_method"] == "bootstrap_incomplete" and d["delta_ci95"][0] <= d["delta"] <= d["delta_ci95"][1]
    assert (
        r1["suites"]["libero_10"]["n_seeds"] == 2 and r1["suites"]["libero_10"]["ci_method"] == "t_over_seeds"
    )


def test_bootstrap_is_fast_and_reproducible():
    rng = np.random.default_rng(0)
    strata = [
        (rng.integers(-1, 2, (3, 500)).astype(float), np.ones((3, 500))) for _ in range(4)
    ]  # 3 x 4 x 500
    t = time.perf_counter()
    draws = stats.cluster_bootstrap(strata, 2000, np.random.default_rng(0))
    assert time.perf_counter() - t < 2.0 and draws.shape == (2000, 4)
    assert np.array_equal(draws, stats.cluster_bootstrap(strata, 2000, np.random.default_rng(0)))
    # a known case: one replicate, 200 clusters of ±1: the draws' SD is the standard error sd / sqrt(200)
    x = np.where(np.arange(200) % 2 == 0, 1.0, -1.0)[None, :]
    d = stats.cluster_bootstrap([(x, np.ones_like(x))], 4000, np.random.default_rng(1))[:, 0]
    assert d.mean() == pytest.approx(0.0, abs=0.01) and d.std() == pytest.approx(1 / math.sqrt(200), rel=0.05)
