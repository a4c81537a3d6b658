"""What `r1vla compare` refuses or flags (mixed runs, protocol mismatches, unmerged shards, faults) and its CLI."""

from __future__ import annotations

import json

import pytest
from synthetic_runs import CAPS, PROTO, QUIET, SHORT, make_records, write_run

from analysis.compare import CompareError, compare_runs
from libero_core.records import (
    shard_path,
    summarize,
    write_jsonl_atomic,
)


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
