"""How the evaluation harness feeds and calls a policy: batching and RNG, inputs identical to LeRobot's env,
the render size and on-demand rendering, ACT's per-episode state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_probe import ecfg, features, make_runner, read, save_act, save_probe, strip
from fake_worker import fake_raw
from lerobot.configs.types import FeatureType, PolicyFeature

from eval_libero.run import evaluate


def test_policy_runner_batching_rng_and_faults(tmp_path, det_runner):
    from eval_libero.runner import Row

    rows = [Row(("s", 0, i, 7), fake_raw(i), "do it", 0) for i in range(3)]
    det = det_runner
    for r in rows:
        det.begin(r.key, 0)
    batched = det.act(rows)
    assert det.mode == "batched" and all(a.shape == (4, 7) for a in batched)
    assert np.allclose(det.act(rows[1:2])[0], batched[1], atol=1e-6)

    stoch = save_probe(tmp_path / "stoch", noise=0.1)
    for mode, n in (("auto", 4), ("select", 1)):
        together, alone = make_runner(stoch, mode), make_runner(stoch, mode)
        for i, r in enumerate(rows):
            together.begin(r.key, 100 + i)
        alone.begin(rows[2].key, 102)
        seq_t = [together.act(rows)[2] for _ in range(3)]  # episode 2 interleaved with two others
        seq_a = [alone.act(rows[2:])[0] for _ in range(3)]
        assert together.mode == ("per-episode" if mode == "auto" else "select") and seq_t[0].shape == (n, 7)
        assert all(np.array_equal(a, b) for a, b in zip(seq_t, seq_a, strict=True))
        assert not np.array_equal(seq_t[0], together.act(rows)[1])  # different episodes, different noise

    for fault, message in (
        ("nan", "policy_error: non-finite action"),
        ("shape", "policy_error: action of shape (5,); expected (7,)"),
        ("short", "policy_error: a chunk of 2 actions; n_action_steps asks for 4"),
        ("raise", "policy_error: RuntimeError: the policy broke"),
    ):
        runner = make_runner(save_probe(tmp_path / fault, bad_output=fault, noise=0.1))
        runner.begin(rows[0].key, 0)
        assert message in runner.act(rows[:1])[0]


@pytest.mark.libero
def test_lerobot_env_and_harness_give_the_policy_identical_inputs(probe):
    """LeRobot's own LiberoEnv (patched init states) and our LiberoSim, same task and init state: identical raw
    frames, identical policy inputs; and those equal the training-frame convention (frame_from_obs)."""
    import gymnasium as gym
    from lerobot.envs.libero import create_libero_envs
    from lerobot.envs.utils import preprocess_observation

    from eval_libero.lerobot_compat import env_inputs, is_patched, patch_lerobot_libero
    from eval_libero.worker import raw_obs_for_lerobot
    from libero_core.sim import IMAGE_KEY, STATE_KEY, WRIST_KEY, LiberoSim, frame_from_obs

    patch_lerobot_libero()
    patch_lerobot_libero()  # idempotent
    assert is_patched()
    kwargs = {"task_ids": [0], "obs_type": "pixels_agent_pos"}  # what lerobot-eval's LiberoEnv config passes
    venv = create_libero_envs("libero_object", 1, kwargs, env_cls=gym.vector.SyncVectorEnv)["libero_object"][
        0
    ]
    runner = make_runner(probe)
    try:
        obs_le, _ = venv.reset(seed=0)  # init state 0, then 10 wait steps
        le = runner.env_pre({**preprocess_observation(obs_le), "task": list(venv.call("task_description"))})
        sim = LiberoSim("libero_object", 0)
        raw = sim.reset(0)
        ours = env_inputs([raw_obs_for_lerobot(sim, raw)], [sim.info.language], runner.env_pre)
        assert np.array_equal(obs_le["pixels"]["image"][0], raw["agentview_image"])
        assert sorted(le) == sorted(ours) and le["task"] == ours["task"] == [sim.info.language]
        for k in (IMAGE_KEY, WRIST_KEY, STATE_KEY):
            assert torch.equal(le[k], ours[k]), k
        frame = frame_from_obs(raw)  # what the datasets / demo generator store
        chw = lambda img: torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255  # noqa: E731
        for k in (IMAGE_KEY, WRIST_KEY):
            assert torch.equal(ours[k], chw(frame[k])), k  # as LeRobotDataset decodes a stored frame
        assert torch.allclose(ours[STATE_KEY], torch.from_numpy(frame[STATE_KEY])[None], atol=1e-6)
        assert not torch.equal(ours[IMAGE_KEY], chw(raw["agentview_image"]))  # the flip is applied
        a, b = runner.pre(le), runner.pre(ours)
        assert all(torch.equal(a[k], b[k]) for k in (IMAGE_KEY, WRIST_KEY, STATE_KEY))
        obs2, _, term, trunc, _ = venv.step(np.zeros((1, 7), dtype=np.float32))  # LeRobot's env steps
        assert obs2["pixels"]["image"].shape == (1, 256, 256, 3) and not term[0]
        sim.close()
    finally:
        venv.close()


@pytest.mark.libero
def test_render_size_is_the_policys_camera_resolution():
    from types import SimpleNamespace

    from eval_libero.runner import render_size

    assert render_size(SimpleNamespace(**features(128))) == 128
    assert render_size(SimpleNamespace(**features())) == 256
    assert render_size(SimpleNamespace(input_features={})) == 256  # declares no camera: LIBERO's default
    odd = features(128)["input_features"]
    odd["observation.images.image2"] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 128, 96))
    with pytest.raises(ValueError, match=r"\(3, 128, 96\).*one \(C, S, S\) shape"):
        render_size(SimpleNamespace(input_features=odd))


@pytest.mark.libero
def test_a_policy_trained_on_128_pixel_frames_is_evaluated_on_them(tmp_path):
    """The cameras are rendered at the resolution of the policy's image features, recorded in the protocol (the
    probe refuses frames of another size, which would be a policy_error here)."""
    ckpt = save_probe(tmp_path / "p128" / "pretrained_model", image_size=128)
    (rec,) = read(evaluate(ecfg(ckpt, tmp_path / "run", init_states="0")))
    assert rec["failure"].startswith("timeout") and rec["protocol"]["image_size"] == 128


def test_render_on_demand_is_byte_identical_to_rendering_every_step(probe, reference, tmp_path, monkeypatch):
    """Cameras render only on the steps whose observation the policy reads: those frames equal every-step
    rendering byte for byte (same sim state), the other frames are black, and the records are identical."""
    from libero_core.sim import CAMERAS, LiberoSim

    every, lazy = LiberoSim("libero_object", 0), LiberoSim("libero_object", 0)
    acts = np.clip(np.random.default_rng(0).normal(0, 0.5, (24, 7)), -1, 1)
    acts[:, 6] = -1
    a, b = every.reset(0, seed=3), lazy.reset(0, seed=3)
    assert all(np.array_equal(a[c], b[c]) for c in CAMERAS)  # the reset renders the last wait step
    for t, x in enumerate(acts):
        a, _ = every.step(x)
        b, _ = lazy.step(x, render=t % 8 == 7)
        assert np.array_equal(a["robot0_eef_pos"], b["robot0_eef_pos"])
        for c in CAMERAS:
            assert np.array_equal(a[c], b[c]) if t % 8 == 7 else b[c].max() == 0
    every.close()
    lazy.close()

    monkeypatch.setenv("R1VLA_RENDER_EVERY_STEP", "1")  # the workers inherit it
    out = evaluate(ecfg(probe, tmp_path / "every", init_states="0,1", video_every=2))
    assert strip(read(out)) == strip(reference[1])


@pytest.mark.libero
def test_act_with_temporal_ensembling_is_the_same_at_one_and_two_workers(tmp_path):
    """select mode: each concurrent episode has its own copy of the policy's per-episode state (ACT's temporal
    ensembler), so interleaving episodes on two workers changes nothing."""
    ckpt = save_act(tmp_path / "act", temporal_ensemble_coeff=0.01, n_action_steps=1)
    one = read(evaluate(ecfg(ckpt, tmp_path / "w1", init_states="0,1", max_steps=4)))
    two = read(evaluate(ecfg(ckpt, tmp_path / "w2", init_states="0,1", max_steps=4, workers=2)))
    assert one[0]["policy_calls"] == "select" and strip(one) == strip(two)
    assert one[0]["actions_sha256"] != one[1]["actions_sha256"]
