"""Real LIBERO evaluation runs at short caps: workers and ranks, seeded fixtures, kill and resume, broken
policies, a replayed expert that succeeds."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from eval_probe import PY, ROOT, ecfg, read, save_probe, strip

from eval_libero.run import EvalConfig, EvalError, evaluate

# libero_goal task 6 ("put the cream cheese in the bowl"), init state 0: a scripted expert's actions, recorded
# without rendering, stored as int8 (action * 127). Replayed from the 10 wait steps on, LIBERO's goal predicate
# first holds after the last (102nd) action.
PLAN_B64 = (
    "f3+BAPEAgX9/gf/y/4F/f4H+9f6Bf3+B/vj+gX9/gf77/oF/f4H+/v+Bf3+B/gH/gX9/gv4D/4F/f6n9BACBf3/L/QYAgX9g5f0H"
    "AIF/Q/f+BwCBeysC/wgBgWAYCAAHAoFHCwoABgKBMgEJAQQCgSD7BQICAoER96cD/wKBBPWnA/0Bgfr2pwP7AYHy9qcD+QGB7fen"
    "A/gAger4pwP3AIHp+acD9wCB6fqnAvgAgev6pwL4AIHt+6cC+QCB8P2nAfoAgfT+pwH8AIH4/7cB/QCB+wDNAP4Agf8B3wD/AIEC"
    "AewAAACBBAH1AAEAfwUC+wACAH8GAf8AAgB/BwEBAAIAfwcBAgACAH8GAQMAAgB/BgADAAIAfwUAAwACAH8EAAIAAQB/BAACAAEA"
    "fwP/AQABAH8C/wEAAQB/Av8BAAAAfwAAfwAAAH8AAH8AAAB/AAB/Af8AfwAAfwH/AH8AAH8B/wB/AAB/Af8AfwAAfwH/AH8AAH8B"
    "AAB/AAB/AAAAfwAAfwAAAH8AAH8AAQB/AAB/AAEAfwAAfwABAH8AAGMAAgB/AABGAAIAfwAAMAACAH+BgSAAAgB/gYETAf8Bf5SB"
    "BAP6AX+pgfgE+AJ/u4HxBPcCf8yB7wT4An/agfED+QF/54H0AvsBf/KE+QL+AX/8pf4BAAF/BMIDAAIAfwvZCAAEAH8Q6gv/Bv9/"
    "E/YO/wf/fxT9D/8H/38UAbT/B/9/EwO0/wb/fxAEtP8F/38NBLT/BP9/CQO0/wP/fwYCtP8C/38EArQAAQB/AgG0AAAAfwABtAAA"
    "AH//ALQA/wB//gC0AP8Af/4AtAD/AH/+ALQA/wB//gC0AP8Af/4AxwD/AH//ANkAAAB/AADnAAAAfwEA8AAAAH8AAAAAAACBAAAA"
    "AAEAgQAAAAABAIEAAAAAAQCBAAAAAAEAgQAAAAABAIEAAAAAAACB"
)


@pytest.mark.libero
def test_two_workers_and_two_ranks_equal_one_worker(probe, reference, tmp_path, monkeypatch):
    ref_dir, ref = reference
    assert [(r["init_state"], r["steps"], r["success"]) for r in ref] == [(0, 3, False), (1, 3, False)]
    r = ref[0]
    assert r["failure"] == "timeout: no success in 3 steps" and r["policy_calls"] == "per-episode"
    assert r["protocol"]["max_steps"]["libero_object"] == 3 and r["protocol"]["max_steps_override"] == 3
    assert r["label"] == "eval_probe" and len(r["checkpoint"]) == 12
    assert r["instruction"] == "pick up the alphabet soup and place it in the basket"
    assert ref[0]["actions_sha256"] != ref[1]["actions_sha256"]  # the actions depend on the observations
    assert Path(ref[0]["video"]).stat().st_size > 0 and ref[1]["video"] is None  # --video-every 2
    summary = json.loads((ref_dir / "summary.json").read_text())
    assert summary["suites"]["libero_object"]["n"] == 2 and summary["missing"] == 0
    assert list((ref_dir / "tb").glob("events.out.tfevents.*"))

    assert strip(read(evaluate(ecfg(probe, tmp_path / "w2", init_states="0,1", workers=2)))) == strip(ref)

    ranks = tmp_path / "ranks"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        evaluate(ecfg(probe, ranks, init_states="0,1"))
        if rank == 0:
            shard = [json.loads(x) for x in (ranks / "episodes.rank0.jsonl").read_text().splitlines()]
            assert [r["init_state"] for r in shard] == [0] and not (ranks / "episodes.jsonl").exists()
    assert strip(read(ranks)) == strip(ref) and not list(ranks.glob("episodes.rank*"))
    assert json.loads((ranks / "summary.json").read_text())["suites"] == summary["suites"]

    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    logs: list[str] = []
    evaluate(ecfg(probe, ref_dir, init_states="0,1", video_every=2), logs.append)
    assert any("2 recorded, 0 to run" in m for m in logs) and read(ref_dir) == ref  # resume: nothing re-run
    with pytest.raises(
        EvalError, match="different evaluation .*protocol.max_steps.libero_object: recorded=3, now=280"
    ):
        evaluate(ecfg(probe, ref_dir, init_states="0,1", max_steps=None))


@pytest.mark.libero
def test_fixture_placement_is_seeded_per_episode(probe, tmp_path):
    """libero_goal re-places its fixtures (cabinet, stove) from the global numpy RNG at every reset. The same
    episode run alone, after another episode, and on two workers starts identically and takes the same actions;
    another evaluation seed places the fixtures elsewhere."""
    goal = dict(suites="goal", tasks="1", max_steps=3)
    alone = read(evaluate(EvalConfig(str(probe), str(tmp_path / "alone"), init_states="1", **goal)))
    after = read(evaluate(EvalConfig(str(probe), str(tmp_path / "after"), init_states="0,1", **goal)))
    two = read(
        evaluate(
            EvalConfig(str(probe), str(tmp_path / "two"), init_states="0,1", seeds="7,8", workers=2, **goal)
        )
    )
    pick = lambda recs, i, s: next(r for r in recs if (r["init_state"], r["seed"]) == (i, s))  # noqa: E731
    ref = pick(alone, 1, 7)
    for other in (pick(after, 1, 7), pick(two, 1, 7)):
        assert (other["first_obs_sha256"], other["actions_sha256"]) == (
            ref["first_obs_sha256"],
            ref["actions_sha256"],
        )
    assert pick(two, 1, 8)["first_obs_sha256"] != ref["first_obs_sha256"]

    from libero_core.sim import LiberoSim

    sim = LiberoSim("libero_goal", 1, render=False)
    m = sim.env.sim.model
    fixtures = [i for i in range(m.nbody) if any(w in m.body_id2name(i) for w in ("cabinet", "stove"))]
    place = lambda: sim.env.sim.data.body_xpos[fixtures].copy()  # noqa: E731
    sim.reset(1, seed=123)
    a = place()
    sim.reset(0, seed=5)
    sim.reset(1, seed=123)
    b = place()
    sim.reset(1, seed=124)
    c = place()
    sim.close()
    assert fixtures and np.array_equal(a, b) and np.abs(a - c).max() > 1e-3


@pytest.mark.libero
def test_kill_and_resume_loses_nothing(probe, reference, tmp_path):
    out = tmp_path / "run"
    code = "import sys; sys.path[:0] = ['tests', '.']; import eval_probe; from r1vla.cli import main; sys.exit(main(sys.argv[1:]))"
    args = f"eval --policy {probe} --out {out} --suites object --tasks 0 --init-states 0-2 --max-steps 3"
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [PY, "-c", code, *args.split()], cwd=ROOT, stdout=log, stderr=log, start_new_session=True
        )
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if (out / "episodes.jsonl").exists() and (out / "episodes.jsonl").read_text().count("\n") >= 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the eval and its LIBERO workers, mid-episode
        proc.wait()
    before = read(out)
    assert 1 <= len(before) < 3
    with open(out / "episodes.jsonl", "a") as f:
        f.write('{"suite": "libero_object", "task_id": 0, "init_st')  # as if killed mid-write
    logs: list[str] = []
    evaluate(ecfg(probe, out, init_states="0-2"), logs.append)
    assert any(f"line {len(before) + 1}: truncated line" in m for m in logs)
    after = read(out)
    assert after[: len(before)] == before and len(after) == 3
    assert sorted(r["init_state"] for r in after) == [0, 1, 2]
    assert strip(after[:2]) == strip(reference[1])  # and a new process reproduces the same episodes


@pytest.mark.libero
def test_broken_policy_episodes_are_recorded_as_failures(tmp_path):
    """A NaN-producing checkpoint is evaluated to the end: every episode recorded as failed with its reason, the
    run exits normally, a re-run adds nothing, and --retry-faults runs them again."""
    ckpt = save_probe(tmp_path / "nan", bad_output="nan")
    out = evaluate(ecfg(ckpt, tmp_path / "run", init_states="0,1"))
    recs = read(out)
    assert [(r["success"], r["steps"]) for r in recs] == [(False, 0), (False, 0)]
    assert all(r["failure"].startswith("policy_error: non-finite action") for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faults"] == {"policy_error": 2} and summary["missing"] == 0
    logs: list[str] = []
    evaluate(ecfg(ckpt, tmp_path / "run", init_states="0,1"), logs.append)
    assert any("2 recorded, 0 to run" in m for m in logs) and read(out) == recs
    logs.clear()
    evaluate(ecfg(ckpt, tmp_path / "run", init_states="0,1", retry_faults=True), logs.append)
    assert any("0 recorded, 2 to run" in m for m in logs) and len(read(out)) == 2


@pytest.mark.libero
def test_replayed_expert_succeeds_and_ends_at_first_success(tmp_path):
    q = np.frombuffer(base64.b64decode(PLAN_B64), dtype=np.int8).reshape(-1, 7)
    plan = (q.astype(np.float32) / 127).tolist()
    ckpt = save_probe(tmp_path / "plan", plan=plan, chunk_size=len(plan), n_action_steps=len(plan))
    out = evaluate(ecfg(ckpt, tmp_path / "run", suites="goal", tasks="6", init_states="0", max_steps=None))
    (r,) = read(out)
    assert r["success"] is True and r["steps"] == len(plan) == 102 and r["failure"] is None
    assert json.loads((out / "summary.json").read_text())["suites"]["libero_goal"]["success_rate"] == 1.0
