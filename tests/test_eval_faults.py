"""Evaluation faults and refusals (issue 22): a hung, dead or erroring worker ends only its episode, and one
that dies after replying is recorded as `worker_died` while the run goes on; `--retry-faults` re-runs faults that
an earlier torchrun already merged; every refusal of bad input by a command prints its message and exits non-zero
without a traceback. No LIBERO simulation: the scheduler runs fake workers, and the bookkeeping tests replace the
episode loop with a recorder."""

from __future__ import annotations

import json
import time

from eval_probe import ecfg, save_probe
from fake_worker import dies_after_reply_worker, faulty_worker, run_on_fake_workers

from eval_libero import run as run_mod
from eval_libero.run import evaluate
from libero_core import records as rec_io
from r1vla.cli import main


class SlowFor:
    """A runner that waits before acting for init state 4, so its worker has surely exited by the next write."""

    def __init__(self, runner):
        self.runner = runner
        self.policy = runner.policy

    def act(self, rows):
        if any(r.key[3] == 4 for r in rows):
            time.sleep(0.5)
        return self.runner.act(rows)

    def __getattr__(self, name):
        return getattr(self.runner, name)


def test_faults_end_only_their_episode(det_runner):
    """A hung worker is killed after the timeout, a dead one replaced, a simulator error recorded; every episode
    gets a record with its reason and the others run to their end."""
    t0 = time.time()
    got, logs = run_on_fake_workers(det_runner, range(6), 3.0, faulty_worker)
    assert time.time() - t0 < 60 and sorted(got) == list(range(6))
    assert got[1]["failure"] == "worker_timeout" and got[2]["failure"] == "worker_died: exit code 3"
    assert got[3]["failure"] == "sim_error: ValueError: physics exploded" and got[3]["steps"] == 4
    for i in (0, 4, 5):
        assert got[i]["failure"] == "timeout: no success in 8 steps" and got[i]["steps"] == 8
    assert any("worker_timeout in libero_object task 0 init 1" in m for m in logs)


def test_worker_dead_after_replying_is_recorded_and_the_run_goes_on(det_runner):
    """Init state 4's worker replies to the reset and exits: writing the chunk to it raised BrokenPipeError out of
    run_episodes (the run aborted); now that episode is `worker_died` and the others run to their end."""
    got, logs = run_on_fake_workers(SlowFor(det_runner), range(3, 7), 30.0, dies_after_reply_worker)
    assert sorted(got) == [3, 4, 5, 6]
    assert got[4]["failure"].startswith("worker_died: exit code 5") and not got[4]["success"]
    for i in (3, 5, 6):
        assert got[i]["failure"] == "timeout: no success in 8 steps" and got[i]["steps"] == 8
    assert any("worker_died" in m and "init 4" in m for m in logs)


def _fake_episode_loop(outcome):
    """A stand-in for eval_libero.run._run: records each planned episode as `outcome(spec)` says (no LIBERO)."""

    def fake(cfg, run, ckpt, policy_cfg, meta, todo, known, own, rank, world, device, log):
        w = rec_io.RecordWriter(own)
        for s in todo:
            key = dict(zip(rec_io.KEY_FIELDS, run_mod.spec_key(s), strict=True))
            w.append({**key, "episode_seed": s.episode_seed, "steps": 3, **outcome(s), **meta})
        w.close()

    return fake


def test_retry_faults_after_a_torchrun_merge(tmp_path, monkeypatch):
    """Two ranks run init states 0-3; init state 1 ends by a fault; the last rank merges the shards. A second
    torchrun with --retry-faults ran nothing (the faults were in episodes.jsonl, which no rank looked at); now the
    rank that owns the episode runs it again and the merge keeps the new record."""
    ckpt = save_probe(tmp_path / "ckpt")
    out = tmp_path / "run"

    def first(s):
        if s.init_state == 1:
            return {"success": False, "failure": "worker_died: exit code 9"}
        return {"success": False, "failure": "timeout: no success in 3 steps"}

    def second(s):
        return {"success": True, "failure": None}

    for fake, retry in ((first, False), (second, True)):
        monkeypatch.setattr(run_mod, "_run", _fake_episode_loop(fake))
        logs: list[str] = []
        for rank in (0, 1):
            evaluate(
                ecfg(ckpt, out, init_states="0-3", rank=rank, world_size=2, retry_faults=retry), logs.append
            )
        recs = {r["init_state"]: r for r in rec_io.read_jsonl(out / "episodes.jsonl").records}
        assert sorted(recs) == [0, 1, 2, 3] and not list(out.glob("episodes.rank*"))
    assert recs[1]["success"] and recs[1]["failure"] is None  # run again, and the new record merged
    assert [recs[i]["success"] for i in (0, 2, 3)] == [False] * 3  # the others were not run again
    assert any("--retry-faults: 1 merged episode(s) of rank 1" in m for m in logs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faults"] == {} and summary["missing"] == 0


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `r1vla ARGV` run in this process; an exception escaping main is a traceback."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_refusals_are_messages_not_tracebacks(tmp_path, capsys, monkeypatch):
    ckpt = save_probe(tmp_path / "ckpt")
    monkeypatch.setattr(run_mod, "_run", _fake_episode_loop(lambda s: {"success": True, "failure": None}))
    out = str(tmp_path / "run")
    base = ["eval", "--policy", str(ckpt), "--out", out, "--suites", "object", "--tasks", "0"]
    assert _cli([*base, "--init-states", "0", "--max-steps", "3"], capsys)[0] == 0
    cases = [  # (argv, what the message names)
        ([*base, "--init-states", "0"], "holds episodes of a different evaluation"),  # protocol mismatch
        ([*base, "--workers", "0"], "--workers must be >= 1"),
        ([*base, "--suites", "objekt"], "objekt"),
        ([*base, "--protocol", "nope"], "invalid choice: 'nope'"),
        (["eval", "--out", out], "the following arguments are required: --policy"),
        (
            ["compare", out, "--out", str(tmp_path / "rep"), "--bootstrap", "5"],
            "--bootstrap must be at least 100",
        ),
        (["study", "--preset", "nope"], "unknown study preset 'nope'"),
        (["study", "--plan", "--target-delta", "0"], "--target-delta must be in (0, 100]"),
        (["study", "--plan", "--pilot", str(tmp_path / "none")], "not a readable compare report.json"),
        (["study", "--target-delta", "10"], "--target-delta and --pilot apply to --plan"),
        (["nope"], "unknown command 'nope'"),
    ]
    for argv, message in cases:
        rc, err = _cli(argv, capsys)
        assert rc != 0 and message in err, (argv, rc, err)


def test_overlapping_starts_are_a_message(tmp_path, capsys, monkeypatch):
    """`r1vla study` refusing to evaluate on training starts: the message, exit 1, no traceback."""
    import dataclasses

    import yaml
    from test_study import _fake_demos, smallest

    from r1vla.study import Study

    cfg = smallest()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, official_init_states=True),
        eval=dataclasses.replace(cfg.eval, init_states="5"),
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    root = str(_fake_demos(tmp_path / "d", [0, 5]))
    fake = {
        "repo_id": "local/x",
        "root": root,
        "train_episodes": [0, 1],
        "heldout_episodes": [],
        "expert": None,
    }
    monkeypatch.setattr(Study, "prepare_data", lambda self: fake)
    rc, err = _cli(["study", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "s")], capsys)
    assert rc == 1 and "libero_object task 0 init state 5 = training episode 1" in err


def test_backbone_mismatch_is_a_message(tmp_path, capsys, monkeypatch):
    """`r1vla eval` of a checkpoint refused by its policy for another backbone (the policy's own check raises while
    LeRobot's make_policy builds it): the message, exit 2, no traceback (it was an 11-frame traceback ending in
    ValueError). The policy's refusal is stood in for here (so the test also runs on the code before it had its
    own exception class); the end-to-end case with a real r1vla checkpoint is the next test."""
    import lerobot.policies.factory as factory

    import policies.r1vla.configuration_r1vla as conf

    refusal = getattr(conf, "BackboneMismatchError", ValueError)  # ValueError before issue 22
    message = "the checkpoint X was trained on another backbone than Y: pass --allow-backbone-mismatch"

    def refuse(*args, **kwargs):
        raise refusal(message)

    monkeypatch.setattr(factory, "make_policy", refuse)
    argv = ["eval", "--policy", str(save_probe(tmp_path / "ckpt")), "--out", str(tmp_path / "run")]
    rc, err = _cli(
        [*argv, "--suites", "object", "--tasks", "0", "--init-states", "0", "--max-steps", "3"], capsys
    )
    assert rc == 2 and message in err


def test_backbone_mismatch_end_to_end(tmp_path, capsys, tiny_backbone_dir):
    """A real r1vla checkpoint trained on the tiny backbone (seed 0), evaluated with --backbone-path of another
    (seed 1): refused with the policy's explanation, exit 2, no traceback, nothing recorded."""
    from r1vla_small import STATS, make_config

    from adapters import build_tiny_checkpoint
    from policies.r1vla import R1VLAPolicy, make_r1vla_pre_post_processors

    other = build_tiny_checkpoint(tmp_path / "tiny-seed1", seed=1)
    ckpt = tmp_path / "ckpt"
    cfg = make_config(backbone="robot_r1", backbone_path=str(tiny_backbone_dir))
    R1VLAPolicy(cfg).save_pretrained(ckpt)
    for proc in make_r1vla_pre_post_processors(cfg, STATS):
        proc.save_pretrained(ckpt)
    argv = [
        "eval",
        "--policy",
        str(ckpt),
        "--out",
        str(tmp_path / "run"),
        "--suites",
        "object",
        "--tasks",
        "0",
    ]
    rc, err = _cli([*argv, "--init-states", "0", "--max-steps", "3", "--backbone-path", str(other)], capsys)
    assert rc == 2 and "trained on another backbone" in err and "--allow-backbone-mismatch" in err
    assert not rec_io.read_jsonl(tmp_path / "run" / "episodes.jsonl").records
