"""`r1vla serve` (vla-eval's LeRobot bridge) and `r1vla crosscheck` (vla-eval's LIBERO against `r1vla eval`).

Policies: a tiny untrained r1vla (the plugin) and a tiny random ACT (a stock LeRobot policy), both trained (their
input features say) on 64x64 frames, so LIBERO renders small.
"""

from __future__ import annotations

import csv
import json
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from eval_probe import features  # noqa: E402
from r1vla_small import STATS, make_config  # noqa: E402

from r1vla.cli import main  # noqa: E402


def save_r1vla(path: Path) -> Path:
    from policies.r1vla import R1VLAPolicy, make_r1vla_pre_post_processors

    cfg = make_config("l1")  # 64x64 cameras, 8-D state, min-max stats
    torch.manual_seed(0)
    R1VLAPolicy(cfg).save_pretrained(path)
    for pipeline in make_r1vla_pre_post_processors(cfg, STATS):
        pipeline.save_pretrained(path)
    return path


def save_act64(path: Path) -> Path:
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    dims = dict(dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1)
    cfg = ACTConfig(device="cpu", use_vae=False, chunk_size=4, n_action_steps=4, **dims, **features(64))
    cfg.pretrained_backbone_weights = None
    torch.manual_seed(0)
    ACTPolicy(cfg).save_pretrained(path)
    for pipeline in make_act_pre_post_processors(cfg, dataset_stats=None):
        pipeline.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def r1vla_ckpt(tmp_path_factory) -> Path:
    return save_r1vla(tmp_path_factory.mktemp("r1vla") / "pretrained_model")


@pytest.fixture(scope="module")
def act_ckpt(tmp_path_factory) -> Path:
    return save_act64(tmp_path_factory.mktemp("act") / "pretrained_model")


# ---- bad input ------------------------------------------------------------------------------------------------


def test_port_in_use_is_a_clear_error(r1vla_ckpt, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--policy", str(r1vla_ckpt), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port} on 127.0.0.1 is already in use" in err and "Traceback" not in err


def test_folder_that_is_not_a_lerobot_policy_is_a_clear_error(tmp_path, capsys):
    assert main(["serve", "--policy", str(tmp_path), "--port", "0"]) == 2
    assert "is not a LeRobot pretrained_model folder (missing config.json" in capsys.readouterr().err
    for f in ("policy_preprocessor.json", "policy_postprocessor.json", "model.safetensors"):
        (tmp_path / f).write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    assert main(["serve", "--policy", str(tmp_path), "--port", "0"]) == 2
    assert "has no LeRobot policy 'type' (a transformers model folder?)" in capsys.readouterr().err


def test_vla_eval_version_not_written_for_is_a_clear_error(r1vla_ckpt, tmp_path, monkeypatch, capsys):
    from importlib import metadata  # what hints.versions reads

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda p: "0.9.1" if p == "vla-eval" else real(p))
    assert main(["serve", "--policy", str(r1vla_ckpt)]) == 2
    err = capsys.readouterr().err
    assert "vla-eval 0.9.1 is installed; r1vla serve/crosscheck were written for vla-eval 0.8.*" in err
    assert main(["crosscheck", "--policy", str(r1vla_ckpt), "--out", str(tmp_path / "cc")]) == 2
    assert "vla-eval 0.9.1 is installed" in capsys.readouterr().err


def test_eval_gripper_sign_rounds_like_vla_eval_and_is_checked(tmp_path):
    """`r1vla eval --gripper sign` executes -1 if g < 0 else +1 (vla-eval's LIBERO rule, 0 -> +1); raw keeps g."""
    from fake_worker import fake_raw

    from eval_libero.plan import EvalConfig, EvalError, plan_episodes
    from eval_libero.scheduler import EpisodeSpec
    from eval_libero.worker import _Episode, _run_chunk

    class Sim:
        sent: list = []

        def step(self, a, render=True):
            self.sent.append(np.asarray(a).copy())
            return fake_raw(1), False

    chunk = np.zeros((4, 7))
    chunk[:, -1] = [-0.2, 0.0, 0.3, -1.0]
    for mode, want in (("sign", [-1, 1, 1, -1]), ("raw", [-0.2, 0.0, 0.3, -1.0])):
        sim = Sim()
        sim.sent = []
        spec = EpisodeSpec(0, "libero_object", 0, 0, 7, 1, 10, gripper=mode)
        assert _run_chunk(sim, _Episode(spec, fake_raw(0)), chunk, False)[0] == "obs"
        assert [a[-1] for a in sim.sent] == want
    assert chunk[:, -1].tolist() == [-0.2, 0.0, 0.3, -1.0]  # the policy's chunk is not changed
    with pytest.raises(EvalError, match="unknown --gripper 'round'; valid: raw, sign"):
        plan_episodes(EvalConfig(policy="x", out=str(tmp_path), suites="object", gripper="round"), tmp_path)


# ---- the same observation, the same inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["r1vla", "act"])
def test_recorded_observation_gives_the_same_policy_inputs_and_action(which, r1vla_ckpt, act_ckpt):
    """One LIBERO observation (init state 0, 5 steps in) through `r1vla eval`'s path (LeRobot's LIBERO pipeline,
    eval_libero.runner) and through vla-eval's LIBERO observation + `r1vla serve`'s bridge: the tensors the
    policy receives and the actions it returns. Images, prompt and task are byte-equal; the state's axis-angle
    is computed in float64 by vla-eval and in float32 by LeRobot, so it may differ in its last float32 bit."""
    from vla_eval.benchmarks.libero.benchmark import LIBEROBenchmark
    from vla_eval.model_servers.base import SessionContext

    from eval_libero.checkpoint import load_policy_config, load_runner
    from eval_libero.runner import Row
    from eval_libero.worker import raw_obs_for_lerobot
    from libero_core.sim import LiberoSim
    from r1vla.serve import make_server

    ckpt = {"r1vla": r1vla_ckpt, "act": act_ckpt}[which]
    sim = LiberoSim("libero_object", 0, size=64)
    raw = sim.reset(0)
    for _ in range(5):
        raw, _ = sim.step([0.3, -0.2, 0.1, 0.05, 0.02, -0.03, 1.0])
    runner = load_runner(ckpt, load_policy_config(ckpt, "cpu"), ["libero_object"], "batched")
    key = ("libero_object", "none", 0, 0, 7)
    runner.begin(key, 7)
    row = Row(key, raw_obs_for_lerobot(sim, raw), sim.info.language, 5)
    ours, our_actions = runner._batch([row]), runner.act([row])[0]

    bench = LIBEROBenchmark(
        suite="libero_object", send_wrist_image=True, send_state=True, quat_no_antipodal=True
    )
    bench._env = sim.env  # make_obs reads the controller's pose too
    obs = bench.make_obs(raw, {"name": sim.info.language})
    server = make_server(str(ckpt))
    assert server.get_observation_params() == {
        "send_state": True,
        "send_wrist_image": True,
        "quat_no_antipodal": True,
    }
    seen: dict = {}
    predict = server._policy.predict_action_chunk
    server._policy.predict_action_chunk = lambda batch, **kw: seen.update(batch) or predict(batch, **kw)
    theirs = server.predict(obs, SessionContext("s", "e"))["actions"]
    sim.close()

    tensors = sorted(k for k, v in ours.items() if isinstance(v, torch.Tensor))
    assert tensors == sorted(k for k, v in seen.items() if isinstance(v, torch.Tensor))
    for k in tensors:
        assert ours[k].dtype == seen[k].dtype and ours[k].shape == seen[k].shape, k
        if k != "observation.state":
            assert torch.equal(ours[k], seen[k]), k  # images, tokens: byte-equal
    for k in ("task", "prompt"):
        assert ours.get(k) == seen.get(k), k
    a, b = ours["observation.state"], seen["observation.state"]
    assert torch.equal(a[:, :3], b[:, :3]) and torch.equal(a[:, 6:], b[:, 6:])  # position, gripper
    torch.testing.assert_close(a, b, rtol=0, atol=2.5e-7)  # axis-angle: float32 vs float64 arithmetic
    n = len(our_actions)
    assert n == server.chunk_size and np.allclose(our_actions, theirs[:n], rtol=0, atol=1e-5)


# ---- end to end -------------------------------------------------------------------------------------------------


def test_crosscheck_two_short_episodes_through_serve_and_vla_eval(r1vla_ckpt, tmp_path, capsys):
    """`r1vla crosscheck`: 2 episodes of 6 steps (init states 0 and 2, the latter through the mapping) through
    `r1vla serve` + vla-eval's LIBERO in this process, and through `r1vla eval`; the table and the lines. The
    replay of vla-eval's episodes in r1vla eval's simulator and policy path matches them step for step; the same
    replay from another init state, or rendered at another size than vla-eval was, does not."""
    from eval_libero.checkpoint import load_policy_config, load_runner
    from eval_libero.scheduler import derive_seed
    from r1vla import vlaeval

    out = tmp_path / "cc"
    args = ["crosscheck", "--policy", str(r1vla_ckpt), "--out", str(out), "--init-states", "0,2"]
    assert main([*args, "--max-steps", "6", "--timeout", "300"]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "crosscheck.csv")))
    assert [(r["init_state"], r["r1vla_steps"], r["vla_eval_steps"]) for r in rows] == [
        ("0", "6", "6"),
        ("2", "6", "6"),
    ]
    assert all(r["vla_eval_failure"] == "" and r["reason"] == "" for r in rows)  # the server answered in time
    assert all(r["replay_first_dev_step"] == r["replay_first_action_dev_step"] == "" for r in rows)
    assert re.search(r"^crosscheck: agreement 2/2, r1vla 0/2, vla-eval 0/2$", printed, re.M)
    assert re.search(
        r"^success 95% Wilson CI: r1vla \[0\.00, 0\.66\], vla-eval \[0\.00, 0\.66\]$", printed, re.M
    )
    assert (
        "recorded states in 2/2 episodes, and r1vla eval's policy path gives vla-eval's actions in 2/2"
        in printed
    )
    cfg = json.loads((out / "vla-eval" / "config.json").read_text())
    first, second = cfg["benchmarks"]  # aligned seeding: one entry per episode, r1vla eval's episode seed
    assert first["benchmark"] == "vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark"
    assert second["benchmark"] == "r1vla.vlaeval:InitStatesLIBERO" and second["params"]["init_states"] == [2]
    assert [b["params"]["env_seed"] for b in (first, second)] == [
        derive_seed(7, "libero_object", 0, i) for i in (0, 2)
    ]
    assert second["params"]["quat_no_antipodal"] is True and second["max_steps"] == 6
    r1 = [json.loads(x) for x in (out / "r1vla" / "episodes.jsonl").read_text().splitlines()]
    assert {(r["protocol"]["gripper"], r["protocol"]["image_size"]) for r in r1} == {("sign", 64)}
    assert "one policy call" in (out / "serve.log").read_text()

    (db,) = (out / "vla-eval").glob("recording-*.sqlite")
    entries = vlaeval.plan_entries({"libero_object": {0: [0, 2]}}, 7, True)
    steps = vlaeval.recorded_steps(db, entries)[("libero_object", 0, 2)]
    assert len(steps) == 6
    runner = load_runner(r1vla_ckpt, load_policy_config(r1vla_ckpt, "cpu"), ["libero_object"], "auto")
    same = vlaeval.replay("libero_object", 0, 2, 7, steps, runner, 64)
    assert same["replay_first_dev_step"] is None and same["replay_first_action_dev_step"] is None
    assert vlaeval.replay("libero_object", 0, 1, 7, steps)["replay_first_dev_step"] == 1
    other = vlaeval.replay("libero_object", 0, 2, 7, steps, runner, 128)  # the policy then sees other pixels
    assert other["replay_first_dev_step"] is None and other["replay_first_action_dev_step"] == 1
