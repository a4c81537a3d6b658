"""Episode records (jsonl repair, shard merge) and `r1vla compare` on synthetic runs with known answers.
No LIBERO, no policy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy.stats import binomtest

from eval_libero.compare import CompareError, compare_runs, mcnemar, protocol_differences
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
from eval_libero.run import protocol_dict

PROTO = protocol_dict("standard", None)


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


def write_run(path: Path, label: str, by_suite: dict[str, list[bool]], seeds=(7,), protocol=PROTO) -> Path:
    """Episode i of a suite -> task i % 10, init state (i // 10) % 50, seed seeds[i // 500]."""
    recs = []
    for suite, succ in by_suite.items():
        for i, ok in enumerate(succ):
            recs.append(
                {
                    "suite": suite,
                    "task_id": i % 10,
                    "init_state": (i // 10) % 50,
                    "seed": seeds[i // 500],
                    "success": ok,
                    "steps": 5,
                    "label": label,
                    "protocol": protocol,
                    "checkpoint": label,
                }
            )
    path.mkdir(parents=True)
    write_jsonl_atomic(path / "episodes.jsonl", recs)
    return path


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


def test_wilson_matches_hand_computation():
    # p = 0.9, n = 50, z = 1.959964: center = (p + z²/2n)/(1 + z²/n) = 0.871462, half = 0.085063
    lo, hi = wilson(45, 50)
    assert lo == pytest.approx(0.786399, abs=2e-6) and hi == pytest.approx(0.956525, abs=2e-6)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_mcnemar_is_scipy_binomtest_on_discordant_pairs():
    run, base = outcomes(30, 12, 2, 6)
    t = mcnemar(list(zip(run, base, strict=True)))
    assert (t["run_only_success"], t["baseline_only_success"], t["n_shared"]) == (12, 2, 50)
    assert t["p_value"] == binomtest(12, 14, 0.5).pvalue
    assert t["delta"] == pytest.approx((42 - 32) / 50)
    assert mcnemar([(True, True), (False, False)])["p_value"] == 1.0


def test_compare_known_answer(tmp_path):
    obj_b, obj_a = outcomes(30, 12, 2, 6)  # B clearly better on object
    goal_b, goal_a = outcomes(20, 3, 4, 23)  # no detectable difference on goal
    spat_c, spat_a = outcomes(10, 0, 15, 25)  # C clearly worse on spatial
    a = write_run(
        tmp_path / "a", "sft", {"libero_object": obj_a, "libero_goal": goal_a, "libero_spatial": spat_a}
    )
    b = write_run(tmp_path / "b", "robot_r1", {"libero_object": obj_b, "libero_goal": goal_b})
    c = write_run(tmp_path / "c", "base", {"libero_spatial": spat_c})
    rep = compare_runs([b, a, c], baseline="sft", out=tmp_path / "rep")

    assert rep["baseline"] == "sft"
    pb, pc = rep["runs"]["robot_r1"]["paired"], rep["runs"]["base"]["paired"]
    assert pb["libero_object"]["p_value"] == binomtest(12, 14, 0.5).pvalue
    assert pb["libero_object"]["verdict"] == "better"
    assert pb["libero_goal"]["p_value"] == binomtest(3, 7, 0.5).pvalue
    assert pb["libero_goal"]["verdict"].startswith("no detectable difference")
    assert (
        pc["libero_spatial"]["verdict"] == "worse"
        and pc["libero_spatial"]["p_value"] == binomtest(0, 15).pvalue
    )
    assert pb["all"]["n_shared"] == 100 and pb["all"]["p_value"] == binomtest(15, 21, 0.5).pvalue

    s = rep["runs"]["sft"]["suites"]["libero_object"]
    assert (s["successes"], s["n"]) == (32, 50) and s["ci95"] == list(wilson(32, 50))
    avg = rep["runs"]["sft"]["average"]
    assert avg["success_rate"] == pytest.approx((32 / 50 + 24 / 50 + 25 / 50) / 3)
    assert rep["runs"]["sft"]["tasks"]["libero_object/0"]["n"] == 5

    md = (tmp_path / "rep" / "report.md").read_text()
    assert "robot_r1 vs sft" in md and "| libero_goal/9 |" in md and "better" in md and "worse" in md
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["baseline"] == "sft"
    assert (tmp_path / "rep" / "per_suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pairs_are_matched_per_seed_and_pooled(tmp_path):
    # 2 seeds x 500 episodes; the run wins on seed 7 episodes only: pairing must be by (suite, task, init, seed)
    base = [i % 2 == 0 for i in range(1000)]
    run = [(i % 2 == 0) or (i < 500 and i % 10 == 1) for i in range(1000)]
    a = write_run(tmp_path / "a", "sft", {"libero_goal": base}, seeds=(7, 8))
    b = write_run(tmp_path / "b", "r1", {"libero_goal": run}, seeds=(7, 8))
    t = compare_runs([a, b], baseline=str(a), out=tmp_path / "rep")["runs"]["r1"]["paired"]["libero_goal"]
    assert (t["n_shared"], t["run_only_success"], t["baseline_only_success"]) == (1000, 50, 0)
    assert t["p_value"] == binomtest(50, 50).pvalue and t["verdict"] == "better"


def test_protocol_mismatch_refused_with_fields(tmp_path):
    a = write_run(tmp_path / "a", "sft", {"libero_object": [True] * 10})
    b = write_run(
        tmp_path / "b", "r1", {"libero_object": [False] * 10}, protocol=protocol_dict("standard", 10)
    )
    with pytest.raises(CompareError) as e:
        compare_runs([a, b], baseline=None, out=tmp_path / "rep")
    msg = str(e.value)
    assert "max_steps.libero_object: sft=280, r1=10" in msg and "max_steps_override" in msg
    assert "num_wait_steps" not in msg and not (tmp_path / "rep").exists()
    rep = compare_runs([a, b], baseline=None, out=tmp_path / "rep", allow_protocol_mismatch=True)
    assert rep["protocol_differences"] and "protocols differ" in (tmp_path / "rep" / "report.md").read_text()
    diffs = protocol_differences(
        {"x": protocol_dict("standard", None), "y": protocol_dict("lerobot044", None)}
    )
    assert diffs == ["max_steps.libero_spatial: x=220, y=280", "name: x=standard, y=lerobot044"]


def test_bad_inputs(tmp_path):
    a = write_run(tmp_path / "a", "sft", {"libero_object": [True] * 4})
    with pytest.raises(CompareError, match="baseline 'nope' is none of the runs.*sft"):
        compare_runs([a], baseline="nope", out=tmp_path / "rep")
    with pytest.raises(CompareError, match="run folder not found"):
        compare_runs([tmp_path / "missing"], baseline=None, out=tmp_path / "rep")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no recorded episodes"):
        compare_runs([tmp_path / "empty"], baseline=None, out=tmp_path / "rep")


def test_cli_and_summary_agree(tmp_path, capsys):
    from r1vla.cli import main

    succ = [True] * 7 + [False] * 13
    a = write_run(tmp_path / "a", "sft", {"libero_goal": succ})
    b = write_run(
        tmp_path / "b", "r1", {"libero_goal": succ[::-1]}, protocol=protocol_dict("lerobot044", None)
    )
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "rep")]) == 2
    assert "max_steps.libero_spatial" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "rep"), "--allow-protocol-mismatch"]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    recs = [json.loads(x) for x in (a / "episodes.jsonl").read_text().splitlines()]
    assert (
        rep["runs"]["sft"]["suites"]["libero_goal"]["ci95"]
        == summarize(recs)["suites"]["libero_goal"]["ci95"]
    )
