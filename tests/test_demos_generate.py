"""Scripted-expert generation on real LIBERO: resume, starts, the hub schema, labels, replay, kill -9.

One module-scoped generation of two rendered episodes, interrupted after the first and resumed, is shared by
the `libero` tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from demos.dataset import STAGING, features
from demos.generate import DemoConfig
from libero_core.sim import IMAGE_KEY, STATE_KEY, WRIST_KEY
from libero_core.starts import load_meta
from r1vla.cli import main

REPO = Path(__file__).resolve().parents[1]
OBJECT_TASK = 1  # libero_object task 1 (cream cheese): the expert's shortest object episode (~135 steps)


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two noisy libero_object episodes (128² frames) labelled with the expert's actions before the noise (DART): the first run
    is interrupted (Ctrl-C) right after its first episode is finished, the second run of the same command resumes.
    Returns (root, records seen per run)."""
    from demos.generate import generate

    root = tmp_path_factory.mktemp("demos") / "ds"
    cfg = DemoConfig(
        suites=("object",),
        tasks=str(OBJECT_TASK),
        episodes_per_task=2,
        out=str(root),
        noise=0.05,
        labels="expert",
        image_size=128,  # the hub's 256 is the default; 128 renders faster
    )
    seen: list[list[dict]] = [[], []]

    def stop_after_first_success(rec):
        seen[0].append(rec)
        if rec["success"]:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        generate(cfg, on_result=stop_after_first_success)
    first = load_meta(root)
    summary = generate(cfg, on_result=seen[1].append)
    return root, first, summary, seen


@pytest.mark.libero
def test_interrupted_generation_resumes_without_duplicates(generated):
    root, first, summary, seen = generated
    assert len(first["episodes"]) == 1  # the finished episode survived the interruption
    assert summary[f"libero_object/{OBJECT_TASK}"]["successes"] == 2
    resumed = {r["key"] for r in seen[1]}
    assert not resumed & {r["key"] for r in seen[0]}  # nothing was attempted twice
    meta = load_meta(root)
    keys = [e["key"] for e in meta["episodes"]]
    assert len(keys) == len(set(keys)) == 2
    assert not list((root / STAGING).glob("*.npz"))


@pytest.mark.libero
def test_generated_starts_are_randomized_recorded_and_never_official(generated):
    """No train/eval leakage: every episode starts from LIBERO's randomized placement under its recorded seed, its
    start state is stored in meta/start_states.npz, and it differs from all 50 official init states."""
    from libero_core.sim import init_states
    from libero_core.starts import load_start_states

    root = generated[0]
    meta, starts = load_meta(root), load_start_states(root)
    assert meta["config"]["starts"] == "randomized"
    official = init_states("libero_object", OBJECT_TASK)  # (50, n)
    assert sorted(starts) == sorted(e["episode_index"] for e in meta["episodes"]) == [0, 1]
    for e in meta["episodes"]:
        assert e["start"] == "random" and "init_state_index" not in e and isinstance(e["seed"], int)
        start = starts[e["episode_index"]]
        assert start.shape == official.shape[1:] and np.abs(official - start).max(axis=1).min() > 1e-4
    assert np.abs(starts[0] - starts[1]).max() > 1e-4


@pytest.mark.libero
def test_generated_dataset_has_the_hub_schema_and_loads_with_action_chunks(generated):
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from libero_core.sim import task_info

    root = generated[0]
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["fps"] == 10 and info["robot_type"] == "panda" and info["codebase_version"] == "v3.0"
    for k in (IMAGE_KEY, WRIST_KEY):
        assert info["features"][k] == {
            "dtype": "image",
            "shape": [128, 128, 3],  # --image-size 128; the default is the hub's 256:
            "names": ["height", "width", "channel"],
        }
        assert features()[k]["shape"] == (256, 256, 3) and DemoConfig((), None, 1, "").image_size == 256
    assert info["features"][STATE_KEY] == {"dtype": "float32", "shape": [8], "names": ["state"]}
    assert info["features"]["action"] == {"dtype": "float32", "shape": [7], "names": ["actions"]}
    ds = LeRobotDataset(
        "local/libero_demos", root=root, delta_timestamps={"action": [i / 10 for i in range(8)]}
    )
    assert ds.num_episodes == 2
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch[IMAGE_KEY].shape == batch[WRIST_KEY].shape == (4, 3, 128, 128)
    assert (
        batch[IMAGE_KEY].dtype == torch.float32
        and 0 <= batch[IMAGE_KEY].min()
        and batch[IMAGE_KEY].max() <= 1
    )
    assert batch[STATE_KEY].shape == (4, 8) and batch[STATE_KEY].dtype == torch.float32
    assert batch["action"].shape == (4, 8, 7) and batch["action"].dtype == torch.float32
    assert batch["action_is_pad"].shape == (4, 8)
    assert set(batch["task"]) == {task_info("libero_object", OBJECT_TASK).language}
    cols = ds.hf_dataset.select_columns(["action", STATE_KEY]).with_format("numpy")[:]
    actions, states = cols["action"], cols[STATE_KEY]
    assert set(np.unique(actions[:, 6])) <= {-1.0, 1.0} and {-1.0, 1.0} <= set(np.unique(actions[:, 6]))
    assert np.all(states[:, 3] > 2.5)  # top-down gripper: axis-angle x ~ pi (no sign canonicalisation)
    meta = load_meta(root)
    assert meta["tasks"][f"libero_object/{OBJECT_TASK}"]["successes"] == 2
    for e in meta["episodes"]:
        assert (e["suite"], e["task_id"], e["wait_steps"]) == ("libero_object", OBJECT_TASK, 10)
        assert e["replay_max_dev"] == 0.0 and e["length"] == e["kept_steps"]


@pytest.mark.libero
def test_expert_labels_are_the_actions_before_the_noise(generated):
    """`--labels expert`: the `action` column is the expert's action, the executed one (noise of std 0.05 on the
    6 motion dims, gripper untouched) is in meta/executed_actions.npz, step for step."""
    from demos.replay import load_episode
    from libero_core.starts import EXECUTED_ACTIONS, load_episode_arrays

    root = generated[0]
    assert load_meta(root)["config"]["labels"] == "expert"
    executed = load_episode_arrays(root, EXECUTED_ACTIONS)
    assert sorted(executed) == [0, 1]
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/libero_demos", root=root)
    diffs = []
    for e in (0, 1):
        _, labels, _ = load_episode(ds, e, frames=False)
        assert executed[e].shape == labels.shape
        assert np.array_equal(executed[e][:, 6], labels[:, 6])
        diffs.append(np.abs(executed[e][:, :6] - labels[:, :6]))
    diff = np.concatenate(diffs)
    assert 0.02 < diff.mean() < 0.06 and diff.max() < 0.5  # E|N(0, 0.05)| = 0.04


@pytest.mark.libero
def test_replaying_the_dataset_succeeds_with_identical_states(generated):
    from demos.replay import replay

    results = replay(generated[0], log=lambda *_: None)
    assert [r.success for r in results] == [True, True]
    assert max(r.max_state_dev for r in results) < 1e-6
    assert all(r.success_step == r.steps - 1 for r in results)  # the last recorded action completes the task


@pytest.mark.libero
def test_replay_catches_a_gripper_polarity_bug(generated):
    """The same episode with the gripper convention inverted (+1 = open) must fail and deviate."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from demos.attempt import _sim
    from demos.replay import load_episode, replay_episode
    from libero_core.starts import EXECUTED_ACTIONS, load_episode_arrays, load_start_states

    root = generated[0]
    rec = load_meta(root)["episodes"][0]
    states, _, _ = load_episode(LeRobotDataset("local/libero_demos", root=root), 0, frames=False)
    flipped = load_episode_arrays(root, EXECUTED_ACTIONS)[0].copy()  # what was executed
    flipped[:, 6] *= -1
    start = load_start_states(root)[0]
    bad = replay_episode(_sim("libero_object", OBJECT_TASK, False), rec, states, flipped, start_state=start)
    assert not bad.success and bad.max_state_dev > 0.01


@pytest.mark.libero
def test_frames_equal_lerobots_libero_pipeline(generated):
    """Dataset frame 0 == our frame_from_obs == LeRobot's LiberoEnv formatting + preprocess_observation +
    LiberoProcessorStep, on the same raw observation."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.envs.libero import LiberoEnv
    from lerobot.envs.utils import preprocess_observation
    from lerobot.processor.env_processor import LiberoProcessorStep

    from demos.attempt import _sim
    from demos.replay import reset_to
    from libero_core.sim import frame_from_obs
    from libero_core.starts import load_start_states

    root = generated[0]
    rec = load_meta(root)["episodes"][0]
    sim = _sim("libero_object", OBJECT_TASK, True, 128)  # the rendering env the generation used
    raw = reset_to(sim, rec, load_start_states(root)[0])  # its start and fixture placement
    fake_env = type(
        "E",
        (),
        {
            "camera_name": ["agentview_image", "robot0_eye_in_hand_image"],
            "camera_name_mapping": {"agentview_image": "image", "robot0_eye_in_hand_image": "image2"},
            "_env": sim.env,
            "obs_type": "pixels_agent_pos",
        },
    )()

    def batch(x):  # what gym's SyncVectorEnv does to each observation leaf (batch of one env)
        return {k: batch(v) for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)[None]

    formatted = batch(LiberoEnv._format_raw_obs(fake_env, raw))
    lerobot_obs = LiberoProcessorStep()._process_observation(preprocess_observation(formatted))
    ours = frame_from_obs(raw)
    ds = LeRobotDataset("local/libero_demos", root=root)
    item = ds[0]
    for k in (IMAGE_KEY, WRIST_KEY):
        mine = torch.from_numpy(ours[k]).permute(2, 0, 1).float() / 255
        assert torch.equal(lerobot_obs[k][0], mine)
        assert torch.equal(item[k], mine)  # what was stored is what LeRobot's eval pipeline feeds a policy
    np.testing.assert_allclose(lerobot_obs[STATE_KEY][0].numpy(), ours[STATE_KEY], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(item[STATE_KEY].numpy(), ours[STATE_KEY])


@pytest.mark.libero
@pytest.mark.slow
def test_kill_9_mid_generation_then_rerun_gives_all_finished_episodes(tmp_path):
    """The real thing: SIGKILL the CLI as soon as its first episode is staged, then re-run the same command."""
    out = tmp_path / "ds"
    cmd = [
        sys.executable,
        "-m",
        "r1vla.cli",
        "demos",
        "--suites",
        "object",
        "--tasks",
        str(OBJECT_TASK),
        "--episodes-per-task",
        "2",
        "--out",
        str(out),
        "--noise",
        "0.05",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        staged = (
            [json.loads(p.read_text()) for p in (out / STAGING).glob("*.attempt.json")]
            if out.exists()
            else []
        )
        if any(r["success"] for r in staged):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "generation ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_with = {
        r["key"]
        for r in (json.loads(p.read_text()) for p in (out / STAGING).glob("*.attempt.json"))
        if r["success"]
    }
    assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0
    meta = load_meta(out)
    keys = [e["key"] for e in meta["episodes"]]
    assert len(keys) == len(set(keys)) == 2 and killed_with <= set(keys)
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/libero_demos", root=out)
    assert ds.num_episodes == 2 and ds.num_frames == sum(e["length"] for e in meta["episodes"])
    shutil.rmtree(out)


@pytest.mark.libero
def test_plan_only_measures_the_expert_without_writing(tmp_path, capsys):
    """`--plan-only` on the knob task (TurnKnob primitive): one unrendered attempt, per-attempt JSON, no dataset."""
    out = tmp_path / "results.json"
    assert (
        main(
            [
                "demos",
                "--suites",
                "goal",
                "--tasks",
                "7",
                "--episodes-per-task",
                "1",
                "--plan-only",
                "--official-init-states",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    (rec,) = json.loads(out.read_text())
    assert (rec["suite"], rec["task_id"], rec["init_state_index"], rec["success"]) == (
        "libero_goal",
        7,
        0,
        True,
    )
    assert 0 < rec["planned_steps"] <= rec["max_steps"] == 300
    assert "libero_goal/7" in capsys.readouterr().out and list(tmp_path.iterdir()) == [out]
