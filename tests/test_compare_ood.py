"""Out-of-distribution drops in `r1vla compare` and the difference of drops between checkpoints."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from synthetic_runs import QUIET, floored_t, make_records, write_run

from analysis.compare import Run, analyse, build_arms, compare_runs


def ood_cells(std: float, lan: float, n: int = 500, extra: dict | None = None) -> dict:
    """Standard libero_goal and its `lan` variant on the same 500 episodes; success on init states < 50*rate."""
    ok = lambda rate: [(i // 10) % 50 < round(50 * rate) for i in range(n)]  # noqa: E731
    return {"libero_goal": ok(std), ("libero_goal", "lan"): ok(lan), **(extra or {})}


def test_ood_drops_and_difference_of_drops(tmp_path):
    base = write_run(tmp_path / "sft", "sft", ood_cells(0.8, 0.4))  # loses 40 pp
    run = write_run(
        tmp_path / "r1", "r1", ood_cells(0.8, 0.7, extra={("libero_goal", "object"): [True] * 20})
    )
    rep = compare_runs([base, run], "sft", tmp_path / "rep", **QUIET)
    o = rep["ood"]
    assert o["sft"]["libero_goal/lan"]["drop"] == pytest.approx(0.4) and o["r1"]["libero_goal/lan"][
        "drop"
    ] == pytest.approx(0.1)
    assert (
        o["r1"]["libero_goal/lan"]["success"] == pytest.approx(0.7)
        and o["r1"]["libero_goal/lan"]["n_seeds"] == 1
    )
    lo, hi = o["r1"]["libero_goal/lan"]["drop_ci95"]
    assert lo <= 0.1 <= hi
    vs = o["r1"]["libero_goal/lan"]["vs_baseline"]
    assert (
        vs["delta_drop"] == pytest.approx(-0.3)
        and vs["delta_drop_ci95"][1] < 0
        and vs["p_method"] == "bootstrap"
    )
    assert vs["p_value"] == pytest.approx(1 / 2000) and vs["p_holm"] == pytest.approx(1 / 2000)
    assert vs["verdict"] == "checkpoint loses less"
    assert "vs_baseline" not in o["r1"]["libero_goal/object"]  # only r1 ran it: left out, and said so
    assert rep["ood_left_out"] == {"r1": {"only_in_arm": ["libero_goal/object"], "only_in_baseline": []}}
    assert any("left out" in w and "libero_goal/object" in w for w in rep["warnings"])
    assert rep["runs"]["r1"]["suites"]["libero_goal"]["success_rate"] == pytest.approx(0.8)  # standard only
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Out of distribution" in md and "difference of drops" in md and "checkpoint loses less" in md
    assert (tmp_path / "rep" / "per_perturbation.png").read_bytes()[:4] == b"\x89PNG"


def test_ood_three_seeds_and_no_difference():
    # sft loses 0.40 in every seed; r1 loses 0.10, 0.12, 0.14: Δ drop per seed -0.30, -0.28, -0.26: mean -0.28,
    # sd 0.02, CI -0.28 ± 4.302653 * 0.02 / sqrt(3) = [-0.329683, -0.230317]; t = -14 sqrt(3), 2 df:
    # p = 1 - |t| / sqrt(t² + 2) = 1 - sqrt(588 / 590)
    recs = {("sft", t): ood_cells(0.8, 0.4) for t in range(3)} | {
        ("r1", t): ood_cells(0.8, 0.7 - 0.02 * t) for t in range(3)
    }

    def mk(lab, t, cells):
        return Run(Path(f"{lab}{t}"), lab, {}, f"{lab}{t}", t, make_records(lab, cells, train_seed=t))

    # Each seed's own episode noise: 500 one-episode clusters of a 0/−1 difference with mean y: y(1 − y) / 499,
    # 0.000403 on average, just above sd² = 0.0004: the floored t-interval, s² = 0.000403
    within = np.mean([abs(y) * (1 - abs(y)) / 499 for y in (-0.30, -0.28, -0.26)])
    half, p_hand, method = floored_t([-0.30, -0.28, -0.26], within)
    assert method == "t_over_seeds_floored" and half > 4.302653 * 0.02 / math.sqrt(3)
    rep = analyse(build_arms([mk(lab, t, c) for (lab, t), c in recs.items()]), "sft", n_boot=500)
    r1 = rep["ood"]["r1"]["libero_goal/lan"]
    vs = r1["vs_baseline"]
    assert vs["delta_drop"] == pytest.approx(-0.28) and vs["p_method"] == method
    assert vs["delta_drop_ci95"] == pytest.approx([-0.28 - half, -0.28 + half], abs=1e-6)
    assert vs["p_value"] == pytest.approx(p_hand, rel=1e-6) and vs["p_holm"] == vs["p_value"]
    assert vs["verdict"] == "r1 loses less under lan than sft"
    within = np.mean([y * (1 - y) / 499 for y in (0.10, 0.12, 0.14)])  # r1's drops: 0/1 per cluster
    half, _, method = floored_t([0.10, 0.12, 0.14], within)
    assert r1["drop"] == pytest.approx(0.12) and r1["drop_ci95"] == pytest.approx(
        [0.12 - half, 0.12 + half], abs=1e-6
    )
    assert r1["ci_method"].startswith("t_over_seeds") and r1["success"] == pytest.approx(0.68)
    # sft's seeds are identical (sd = 0): its success is the t-interval floored at the episode noise, and so is
    # a Δ drop the seeds agree on exactly (−0.3 each: 0.3 · 0.7 / 499); never the degenerate sd = 0
    assert rep["ood"]["sft"]["libero_goal/lan"]["ci_method"] == "t_over_seeds_floored"
    recs |= {("r1", t): ood_cells(0.8, 0.7) for t in range(3)}
    rep = analyse(build_arms([mk(lab, t, c) for (lab, t), c in recs.items()]), "sft", n_boot=500)
    vs = rep["ood"]["r1"]["libero_goal/lan"]["vs_baseline"]
    half, p_hand, _ = floored_t([-0.3, -0.3, -0.3], 0.3 * 0.7 / 499)
    assert vs["p_method"] == "t_over_seeds_floored" and vs["p_value"] == pytest.approx(p_hand, rel=1e-6)
    assert vs["delta_drop_ci95"] == pytest.approx([-0.3 - half, -0.3 + half], abs=1e-6)
    assert vs["delta_drop_ci95"][1] < 0 and vs["verdict"] == "r1 loses less under lan than sft"
    same = analyse(
        build_arms([mk("sft", 0, ood_cells(0.8, 0.5)), mk("r1", 0, ood_cells(0.8, 0.5))]), "sft", n_boot=500
    )
    vs = same["ood"]["r1"]["libero_goal/lan"]["vs_baseline"]
    assert vs["delta_drop"] == 0.0 and vs["p_value"] == 1.0
    assert vs["verdict"] == "no detectable difference in the drop between the checkpoints"


def test_figures_with_one_suite_and_one_perturbation_raise_no_deprecation(tmp_path):
    """The tiny study's shape (one suite, one variant): matplotlib read 1-element error bars given as a list of
    arrays through `math.isfinite(array)`, which NumPy deprecates and will make an error."""
    runs = [write_run(tmp_path / n, n, ood_cells(0.5, 0.3, n=20)) for n in ("sft", "r1")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        compare_runs(runs, "sft", tmp_path / "rep", **QUIET)
    assert (tmp_path / "rep" / "per_perturbation.png").read_bytes()[:4] == b"\x89PNG"
