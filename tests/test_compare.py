"""Episode records (jsonl repair, shard merge), the statistics of `r1vla compare` against hand computations, and
`r1vla compare` on synthetic runs with known answers (replicates, pairing, refusals, OOD drops, faults, CLI).
No LIBERO, no policy."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_1samp
from statsmodels.stats.multitest import multipletests

from eval_libero import stats
from eval_libero.compare import CompareError, Run, analyse, build_arms, compare_runs
from eval_libero.compare_analysis import verdict
from eval_libero.records import (
    RecordWriter,
    done_marker,
    load_records,
    merge_shards,
    read_jsonl,
    shard_path,
    summarize,
    wilson,
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


# ---- records --------------------------------------------------------------------------------------------------


def test_records_corrupt_truncated_and_duplicate_lines(tmp_path):
    recs = [dict(suite="libero_goal", task_id=t, init_state=0, seed=7, success=t == 1) for t in range(3)]
    lines = [json.dumps(recs[0]), "{not json", json.dumps(recs[1]), json.dumps(recs[0]), json.dumps(recs[2])]
    path = tmp_path / "episodes.jsonl"
    path.write_text("\n".join(lines) + '\n{"suite": "libero_goal", "task_id": 1')  # killed mid-write
    logs: list[str] = []
    assert load_records(path, logs.append) == recs
    assert any("line 2: corrupt record" in m for m in logs)
    assert any("line 6: truncated line" in m for m in logs)
    assert any("line 4" in m and "duplicate" in m for m in logs)
    assert path.read_text().count("\n") == 3 and not read_jsonl(path).bad_lines  # rewritten cleanly


def test_merge_shards_dedups_sorts_and_cleans(tmp_path):
    recs = [
        dict(suite="libero_object", task_id=0, init_state=i, seed=7, success=i % 2 == 0) for i in range(4)
    ]
    for rank, part in ((1, [recs[3], recs[1]]), (0, [recs[2], recs[0], recs[3]])):
        w = RecordWriter(shard_path(tmp_path, rank))
        for r in part:
            w.append(r)
        w.close()
        done_marker(tmp_path, rank, 2).write_text("")
    assert merge_shards(tmp_path, print) == recs == read_jsonl(tmp_path / "episodes.jsonl").records
    assert sorted(p.name for p in tmp_path.iterdir()) == [".merge.lock", "episodes.jsonl"]


# ---- statistics against hand computations ---------------------------------------------------------------------


def test_wilson_matches_hand_computation():
    # p = 0.9, n = 50, z = 1.959964: center = (p + z²/2n)/(1 + z²/n) = 0.871462, half = 0.085063
    lo, hi = wilson(45, 50)
    assert lo == pytest.approx(0.786399, abs=2e-6) and hi == pytest.approx(0.956525, abs=2e-6)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))
    assert wilson is stats.wilson  # one implementation, importable from records


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
    assert pr["libero_goal"]["p_holm"] == pytest.approx(0.0741799, abs=1e-7)  # a family of one suite
    assert [m["run_only_success"] for m in pr["libero_goal"]["mcnemar_per_seed"]] == [10, 20, 30]
    # the arm's per-seed rates 0.6, 0.7, 0.8: 0.7 ± 0.248414; the baseline's are all 0.5 (sd = 0): the pooled
    # two-stage bootstrap instead, an interval of the episode noise that contains 0.5
    r1 = rep["runs"]["r1"]
    for b in (r1["suites"]["libero_goal"], r1["average"]):
        assert b["ci_method"] == "t_over_seeds" and b["success_rate"] == pytest.approx(0.7)
        assert b["ci95"] == pytest.approx([0.451586, 0.948414], abs=1e-6)
    sft = rep["runs"]["sft"]["suites"]["libero_goal"]
    assert sft["ci_method"] == "bootstrap_sd0" and sft["ci95"][0] < 0.5 < sft["ci95"][1]
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
        assert b["ci_method"] == "t_over_seeds" and b["ci95"][0] <= b["success_rate"] <= b["ci95"][1]
        assert b["success_rate"] == pytest.approx(
            np.mean([rep["runs"][arm]["suites"][s]["success_rate"] for s in SU])
        )
        per_seed = [np.mean([np.mean(list(r.cells[(s, "none")].values())) for s in SU]) for r in arms[arm]]
        half = 4.302653 * np.std(per_seed, ddof=1) / math.sqrt(3)
        assert b["ci95"] == pytest.approx([np.mean(per_seed) - half, np.mean(per_seed) + half], abs=1e-6)
    d = rep["runs"]["r1"]["paired"]["average"]
    assert d["delta_ci95"][0] <= d["delta"] <= d["delta_ci95"][1] and d["p_method"] == "t_over_seeds"
    per_seed = np.mean([seed_deltas(arms, "r1", "sft", s) for s in SU], axis=0)  # (3,) each pair's Δ Average
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


# ---- synthetic studies with known answers ---------------------------------------------------------------------


def test_compare_known_answer_one_seed(tmp_path):
    obj_b, obj_a = outcomes(30, 12, 2, 6)  # B clearly better on object
    goal_b, goal_a = outcomes(20, 3, 4, 23)  # no detectable difference on goal
    spat_c, spat_a = outcomes(10, 0, 15, 25)  # C clearly worse on spatial
    a = write_run(
        tmp_path / "a", "sft", {"libero_object": obj_a, "libero_goal": goal_a, "libero_spatial": spat_a}
    )
    b = write_run(tmp_path / "b", "robot_r1", {"libero_object": obj_b, "libero_goal": goal_b})
    c = write_run(tmp_path / "c", "base", {"libero_spatial": spat_c})
    rep = compare_runs([b, a, c], baseline="sft", out=tmp_path / "rep", **QUIET)

    assert rep["baseline"] == "sft"
    pb, pc = rep["runs"]["robot_r1"]["paired"], rep["runs"]["base"]["paired"]
    obj = pb["libero_object"]
    assert obj["p_value"] == pytest.approx(212 / 16384) and obj["p_method"] == "mcnemar"
    assert obj["mcnemar_per_seed"] == [
        {"train_seed": 0, "baseline_train_seed": 0, "n_shared": 50, "run_only_success": 12,
         "baseline_only_success": 2, "p_value": pytest.approx(212 / 16384)}
    ]  # fmt: skip
    assert obj["delta"] == pytest.approx(10 / 50) and obj["delta_ci95"][0] <= 0.2 <= obj["delta_ci95"][1]
    assert obj["p_holm"] == pytest.approx(2 * 212 / 16384) and obj["verdict"] == "checkpoint better"
    assert pb["libero_goal"]["p_value"] == pytest.approx(1.0)
    assert pb["libero_goal"]["verdict"] == "no detectable difference between the checkpoints"
    assert pb["libero_spatial"]["verdict"] == "not comparable (no shared episodes)"  # robot_r1 ran no spatial
    assert pb["average"]["suites"] == ["libero_object", "libero_goal"] and pb["average"]["p_holm"] is None
    assert (
        pc["libero_spatial"]["p_value"] == pytest.approx(2 / 2**15)
        and pc["libero_spatial"]["verdict"] == "checkpoint worse"
    )

    s = rep["runs"]["sft"]["suites"]["libero_object"]
    assert (s["successes"], s["n_episodes"], s["n_seeds"]) == (32, 50, 1) and s["ci95"] == list(
        wilson(32, 50)
    )
    avg = rep["runs"]["sft"]["average"]
    assert avg["success_rate"] == pytest.approx((32 / 50 + 24 / 50 + 25 / 50) / 3)
    assert avg["ci95"][0] <= avg["success_rate"] <= avg["ci95"][1]
    assert rep["runs"]["sft"]["tasks"]["libero_object/0"]["n"] == 5

    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## robot_r1 vs sft" in md and "| libero_goal/9 |" in md and "checkpoint better" in md
    assert "Average is not in the Holm family" in md and "not in family" in md
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["baseline"] == "sft"
    assert (tmp_path / "rep" / "per_suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "rep" / "per_perturbation.png").exists()


def test_eval_seeds_are_paired_by_key(tmp_path):
    # 2 eval seeds x 500 episodes; the run wins on seed 7 only: pairing is by (suite, task, init, seed)
    base = [i % 2 == 0 for i in range(1000)]
    run = [(i % 2 == 0) or (i < 500 and i % 10 == 1) for i in range(1000)]
    a = write_run(tmp_path / "a", "sft", {"libero_goal": base}, seeds=(7, 8))
    b = write_run(tmp_path / "b", "r1", {"libero_goal": run}, seeds=(7, 8))
    t = compare_runs([a, b], baseline=str(a), out=tmp_path / "rep", **QUIET)["runs"]["r1"]["paired"][
        "libero_goal"
    ]
    m = t["mcnemar_per_seed"][0]
    assert (t["n_episodes"], m["run_only_success"], m["baseline_only_success"]) == (1000, 50, 0)
    assert t["p_value"] == pytest.approx(2 / 2**50) and t["verdict"] == "checkpoint better"


def test_three_seeds_clear_effect_transfers_and_holm(tmp_path):
    p = {"sft": dict.fromkeys(SU, 0.4), "r1": {**dict.fromkeys(SU, 0.7), "libero_10": 0.42}}
    arms = simulate(np.random.default_rng(0), p, n_init=50)
    rep = analyse(arms, "sft", n_boot=2000)
    pr = rep["runs"]["r1"]["paired"]
    for s in SU:
        t = pr[s]
        assert t["n_seeds"] == 3 and t["p_method"] == "t_over_seeds" and len(t["mcnemar_per_seed"]) == 3
        assert t["delta_ci95"][0] <= p["r1"][s] - 0.4 <= t["delta_ci95"][1]  # covers the true Δ
        d = seed_deltas(arms, "r1", "sft", s)  # the t-test of the per-seed Δ, by hand
        half = 4.302653 * np.std(d, ddof=1) / math.sqrt(3)
        assert t["delta"] == pytest.approx(np.mean(d)) and t["p_value"] == pytest.approx(
            ttest_1samp(d, 0).pvalue
        )
        assert t["delta_ci95"] == pytest.approx([np.mean(d) - half, np.mean(d) + half], abs=1e-6)
    assert pr["libero_goal"]["verdict"] == "r1 transfers better than sft"
    assert pr["libero_10"]["verdict"] == "no detectable difference between the backbones (3 training seeds)"
    raw = [pr[s]["p_value"] for s in SU]
    assert [pr[s]["p_holm"] for s in SU] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    order = np.argsort(raw)  # Holm by hand: (m - i) p_(i), running maximum, capped at 1
    hand = np.minimum(1, np.maximum.accumulate([(4 - i) * raw[j] for i, j in enumerate(order)]))
    assert [pr[SU[j]]["p_holm"] for j in order] == pytest.approx(list(hand))
    rates = rep["runs"]["r1"]["suites"]["libero_goal"]
    assert (
        rates["n_seeds"] == 3
        and rates["ci_method"] == "t_over_seeds"
        and rates["ci95"][0] <= 0.7 <= rates["ci95"][1]
    )
    assert rep["runs"]["r1"]["pairing"]["notes"] == []
    # the same data with one and two training seeds: verdicts about checkpoints. One: McNemar on 500 episodes;
    # two: a t-test with 1 degree of freedom (t_{0.975, 1} = 12.7), too weak to detect it after Holm
    one = analyse(simulate(np.random.default_rng(0), p, train_seeds=(0,), n_init=50), "sft")
    assert one["runs"]["r1"]["paired"]["libero_goal"]["verdict"] == "checkpoint better"
    assert one["runs"]["r1"]["paired"]["libero_goal"]["p_method"] == "mcnemar"
    two = analyse(simulate(np.random.default_rng(0), p, train_seeds=(0, 1), n_init=50), "sft")
    t = two["runs"]["r1"]["paired"]["libero_goal"]
    assert t["p_method"] == "t_over_seeds" and t["n_seeds"] == 2
    assert t["delta_ci95"][0] < 0 and t["p_holm"] > 0.05
    suffix = " (2 training seeds: too few for a backbone verdict)"
    assert t["verdict"] == "no detectable difference between the checkpoints" + suffix
    assert verdict(0.3, [0.2, 0.4], 0.01, 2, "r1", "sft") == "checkpoint better" + suffix


def test_delta_ci_coverage():
    """Over 60 simulated 3-seed studies with a per-seed SD of 10 pp (a per-seed random effect per arm, shared
    cluster effects) the 95% CI of the Δ Average and of each suite's Δ covers the true Δ at least 90% of the
    time (the two-stage bootstrap it replaces: 78% and 88%)."""
    p = {
        "sft": dict(zip(SU, [0.5, 0.6, 0.4, 0.3], strict=True)),
        "r1": dict(zip(SU, [0.55, 0.6, 0.5, 0.35], strict=True)),
    }
    true = {s: p["r1"][s] - p["sft"][s] for s in SU}
    rng = np.random.default_rng(1)
    hit_avg = hit_suite = 0
    n = 60
    for _ in range(n):
        pr = analyse(simulate(rng, p, seed_sd=0.10), "sft", n_boot=200)["runs"]["r1"]["paired"]
        assert {pr[s]["p_method"] for s in [*SU, "average"]} == {"t_over_seeds"}
        lo, hi = pr["average"]["delta_ci95"]
        hit_avg += lo <= np.mean(list(true.values())) <= hi
        hit_suite += sum(pr[s]["delta_ci95"][0] <= true[s] <= pr[s]["delta_ci95"][1] for s in SU)
    assert hit_avg / n >= 0.90 and hit_suite / (4 * n) >= 0.90, (hit_avg, hit_suite)


def test_replicates_pairing_by_train_seed(tmp_path):
    runs = []
    for label, seeds in (("sft", (0, 1, 2)), ("r1", (1, 2, 3))):
        for t in seeds:
            ok = [(i + t) % 3 == 0 for i in range(40)]
            runs.append(write_run(tmp_path / f"{label}{t}", label, {"libero_goal": ok}, train_seed=t))
    rep = compare_runs(runs, "sft", tmp_path / "rep", **QUIET)
    r1 = rep["runs"]["r1"]
    assert r1["train_seeds"] == [1, 2, 3] and len(set(r1["checkpoints"])) == 3
    assert [(x["train_seed"], x["baseline_train_seed"]) for x in r1["pairing"]["pairs"]] == [(1, 1), (2, 2)]
    assert r1["pairing"]["notes"] == [
        "training seeds [3] have no baseline replicate: left out",
        "baseline training seeds [0] have no replicate in this arm: left out",
    ]
    assert r1["paired"]["libero_goal"]["n_seeds"] == 2 and r1["paired"]["libero_goal"]["delta"] == 0.0
    assert "training seeds [3] have no baseline replicate" in (tmp_path / "rep" / "report.md").read_text()
    # disjoint seed sets: paired in sorted order, said so
    arms = build_arms([Run(Path(f"x{t}"), lab, {}, f"{lab}{t}", t, make_records(lab, {"libero_goal": [True] * 4}))
                       for lab, t in (("sft", 0), ("sft", 1), ("r1", 5), ("r1", 6))], log=lambda m: None)  # fmt: skip
    r1 = analyse(arms, "sft", n_boot=200)["runs"]["r1"]
    assert r1["pairing"]["notes"] == [
        "training seeds differ ([5, 6] vs [0, 1]): replicates paired in sorted order"
    ]
    assert [(x["train_seed"], x["baseline_train_seed"]) for x in r1["pairing"]["pairs"]] == [(5, 0), (6, 1)]


# ---- refusals and flags ---------------------------------------------------------------------------------------


def test_run_mixing_labels_or_protocols_refused(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    recs = make_records("sft", {"libero_goal": [True] * 3}) + make_records(
        "r1", {"libero_object": [True] * 3}
    )
    write_jsonl_atomic(mixed / "episodes.jsonl", recs)
    with pytest.raises(CompareError, match=r"mixes records of several labels \(\"r1\", \"sft\"\)"):
        compare_runs([mixed], None, tmp_path / "rep", **QUIET)
    proto = tmp_path / "proto"
    proto.mkdir()
    recs = make_records("sft", {"libero_goal": [True] * 3}) + make_records(
        "sft", {"libero_object": [True] * 3}, protocol=SHORT
    )
    write_jsonl_atomic(proto / "episodes.jsonl", recs)
    with pytest.raises(CompareError, match=r"mixes several protocols \(.*max_steps\.libero_goal: protocol1="):
        compare_runs([proto], None, tmp_path / "rep", **QUIET)


def test_protocol_mismatch_refused_with_fields(tmp_path):
    a = write_run(tmp_path / "a", "sft", {"libero_object": [True] * 10})
    b = write_run(tmp_path / "b", "r1", {"libero_object": [False] * 10}, protocol=SHORT)
    with pytest.raises(CompareError) as e:
        compare_runs([a, b], baseline=None, out=tmp_path / "rep", **QUIET)
    msg = str(e.value)
    assert "max_steps.libero_object: sft=280, r1=10" in msg and "max_steps_override" in msg
    assert "num_wait_steps" not in msg and not (tmp_path / "rep").exists()
    rep = compare_runs([a, b], baseline=None, out=tmp_path / "rep", allow_protocol_mismatch=True, **QUIET)
    assert rep["protocol_differences"] and "protocols differ" in (tmp_path / "rep" / "report.md").read_text()
    # replicates of one label under different protocols: refused, naming the fields
    c = write_run(tmp_path / "c", "sft", {"libero_object": [True] * 10}, train_seed=1, protocol=SHORT)
    with pytest.raises(CompareError, match=r"(?s)replicates of 'sft' were made under different protocols.*"
                       r"max_steps\.libero_object: a=280, c=10"):  # fmt: skip
        compare_runs([a, c], baseline=None, out=tmp_path / "rep2", **QUIET)


def test_same_checkpoint_twice_is_its_own_arm(tmp_path):
    a = write_run(tmp_path / "a", "sft", {"libero_goal": [True] * 10})
    b = write_run(tmp_path / "b", "sft", {"libero_goal": [True] * 10})  # same label, same checkpoint hash
    logs: list[str] = []
    rep = compare_runs([a, b], "sft", tmp_path / "rep", log=logs.append)
    assert list(rep["runs"]) == ["sft", "sft (b)"] and rep["runs"]["sft (b)"]["dirs"] == [str(b)]
    assert any("evaluated twice" in m for m in logs)
    assert rep["runs"]["sft (b)"]["paired"]["libero_goal"]["delta"] == 0.0


def test_unmerged_shards_are_read_and_flagged(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    recs = make_records("sft", {"libero_goal": [True, False, True, True]})
    write_jsonl_atomic(run / "episodes.jsonl", recs[:2])
    write_jsonl_atomic(shard_path(run, 1), recs[2:])
    before = shard_path(run, 1).read_bytes()
    logs: list[str] = []
    rep = compare_runs([run], None, tmp_path / "rep", log=logs.append)
    arm = rep["runs"]["sft"]
    assert arm["suites"]["libero_goal"]["n_episodes"] == 4 and arm["replicates"][0]["unmerged_shards"] == [
        "episodes.rank1.jsonl"
    ]
    assert any("unmerged shard" in m for m in logs) and any("unmerged shard" in w for w in rep["warnings"])
    assert "unmerged shards ⚠" in (tmp_path / "rep" / "report.md").read_text()
    assert shard_path(run, 1).read_bytes() == before and not (run / ".merge.lock").exists()  # read-only


def test_not_comparable_when_nothing_is_shared(tmp_path):
    a = write_run(tmp_path / "a", "sft", {"libero_goal": [True] * 10}, seeds=(7,))
    b = write_run(tmp_path / "b", "r1", {"libero_goal": [False] * 10}, seeds=(8,))  # other eval seed
    pr = compare_runs([a, b], "sft", tmp_path / "rep", **QUIET)["runs"]["r1"]["paired"]
    for t in (pr["libero_goal"], pr["average"]):
        assert (
            t["verdict"] == "not comparable (no shared episodes)"
            and t["delta"] is None
            and t["n_episodes"] == 0
        )
    assert "not comparable (no shared episodes)" in (tmp_path / "rep" / "report.md").read_text()


def test_bad_inputs(tmp_path):
    a = write_run(tmp_path / "a", "sft", {"libero_object": [True] * 4})
    with pytest.raises(CompareError, match=r"baseline 'nope' is none of the runs.*sft \(.*a\)"):
        compare_runs([a], baseline="nope", out=tmp_path / "rep", **QUIET)
    with pytest.raises(CompareError, match="run folder not found"):
        compare_runs([tmp_path / "missing"], baseline=None, out=tmp_path / "rep", **QUIET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no recorded episodes"):
        compare_runs([tmp_path / "empty"], baseline=None, out=tmp_path / "rep", **QUIET)
    with pytest.raises(CompareError, match="--bootstrap must be at least 100 resamples, got 5"):
        compare_runs([a], None, tmp_path / "rep", n_boot=5, **QUIET)
    b = write_run(tmp_path / "b", "sft", {"libero_object": [True] * 4}, checkpoint="0123456789ab")
    with pytest.raises(CompareError, match=r"arm 'sft' has several checkpoints with train_seed \[0\]"):
        compare_runs([a, b], None, tmp_path / "rep", **QUIET)


# ---- out of distribution --------------------------------------------------------------------------------------


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

    rep = analyse(build_arms([mk(lab, t, c) for (lab, t), c in recs.items()]), "sft", n_boot=500)
    r1 = rep["ood"]["r1"]["libero_goal/lan"]
    vs = r1["vs_baseline"]
    assert vs["delta_drop"] == pytest.approx(-0.28) and vs["p_method"] == "t_over_seeds"
    assert vs["delta_drop_ci95"] == pytest.approx([-0.329683, -0.230317], abs=1e-6)
    assert (
        vs["p_value"] == pytest.approx(1 - math.sqrt(588 / 590), rel=1e-6) and vs["p_holm"] == vs["p_value"]
    )
    assert vs["verdict"] == "r1 loses less under lan than sft"
    assert r1["drop"] == pytest.approx(0.12) and r1["drop_ci95"] == pytest.approx(
        [0.070317, 0.169683], abs=1e-6
    )
    assert r1["ci_method"] == "t_over_seeds" and r1["success"] == pytest.approx(0.68)
    # sft's seeds are identical (sd = 0): its success falls back to the pooled bootstrap, and so does a Δ drop
    # the seeds agree on exactly
    assert rep["ood"]["sft"]["libero_goal/lan"]["ci_method"] == "bootstrap_sd0"
    recs |= {("r1", t): ood_cells(0.8, 0.7) for t in range(3)}
    rep = analyse(build_arms([mk(lab, t, c) for (lab, t), c in recs.items()]), "sft", n_boot=500)
    vs = rep["ood"]["r1"]["libero_goal/lan"]["vs_baseline"]
    assert vs["p_method"] == "bootstrap_sd0" and vs["delta_drop_ci95"][1] < 0 and vs["p_value"] == 1 / 500
    assert vs["verdict"] == "r1 loses less under lan than sft"
    same = analyse(
        build_arms([mk("sft", 0, ood_cells(0.8, 0.5)), mk("r1", 0, ood_cells(0.8, 0.5))]), "sft", n_boot=500
    )
    vs = same["ood"]["r1"]["libero_goal/lan"]["vs_baseline"]
    assert vs["delta_drop"] == 0.0 and vs["p_value"] == 1.0
    assert vs["verdict"] == "no detectable difference in the drop between the checkpoints"


# ---- faults and the CLI ---------------------------------------------------------------------------------------


def test_faults_are_counted_and_warned(tmp_path):
    def failure(i):
        return (
            "policy_error: FloatingPointError: nan in actions"
            if i < 3
            else "timeout: no success in 300 steps"
        )

    a = write_run(tmp_path / "a", "sft", {"libero_goal": [False] * 10 + [True] * 5}, failure=failure)
    b = write_run(tmp_path / "b", "r1", {"libero_goal": [False] * 15})
    logs: list[str] = []
    rep = compare_runs([a, b], "sft", tmp_path / "rep", log=logs.append)
    assert rep["runs"]["sft"]["faults"] == {"n": 3, "reasons": {"policy_error": 3}}
    assert rep["runs"]["sft"]["replicates"][0]["faults"]["n"] == 3 and rep["runs"]["r1"]["faults"]["n"] == 0
    assert any("3 episode(s) failed for a reason other than the step cap" in m for m in logs)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**3 ⚠** (policy_error: 3)" in md and "**Warning:**" in md


def test_cli_and_summary_agree(tmp_path, capsys):
    from r1vla.cli import main

    succ = [True] * 7 + [False] * 13
    a = write_run(tmp_path / "a", "sft", {"libero_goal": succ})
    b = write_run(tmp_path / "b", "r1", {"libero_goal": succ[::-1]}, protocol=SHORT)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "rep")]) == 2
    assert "max_steps.libero_goal: sft=300, r1=10" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "rep"), "--baseline", "nope"]) == 2
    assert "baseline 'nope' is none of the runs" in capsys.readouterr().err
    argv = ["compare", str(a), str(b), "--out", str(tmp_path / "rep"), "--allow-protocol-mismatch"]
    assert main(argv + ["--bootstrap", "500", "--bootstrap-seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "# LIBERO transfer report" in out and "B = 500 resamples, RNG seed 3" in out
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["n_bootstrap"] == 500 and rep["bootstrap_seed"] == 3
    recs = [json.loads(x) for x in (a / "episodes.jsonl").read_text().splitlines()]
    assert (
        rep["runs"]["sft"]["suites"]["libero_goal"]["ci95"]
        == summarize(recs)["suites"]["libero_goal"]["ci95"]
    )
    first = rep["runs"]["r1"]["paired"]["average"]["delta_ci95"]
    assert main(argv + ["--bootstrap", "500", "--bootstrap-seed", "3"]) == 0  # reproducible
    assert (
        json.loads((tmp_path / "rep" / "report.json").read_text())["runs"]["r1"]["paired"]["average"][
            "delta_ci95"
        ]
        == first
    )


def test_runs_recorded_under_the_lerobot044_protocol_still_compare(tmp_path):
    old = {**PROTO, "name": "lerobot044", "max_steps": {**CAPS, "libero_spatial": 280}}  # LeRobot 0.4.4 runs
    a = write_run(tmp_path / "a", "sft", {"libero_spatial": [True, False] * 5}, protocol=old)
    b = write_run(tmp_path / "b", "r1", {"libero_spatial": [True] * 10}, protocol=old)
    rep = compare_runs([a, b], baseline="sft", out=tmp_path / "rep", **QUIET)
    assert not rep["protocol_differences"] and (tmp_path / "rep" / "report.md").exists()
