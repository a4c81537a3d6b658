"""demos/: scripted-expert generation, LeRobotDataset writing (schema, crash safety, resume), HDF5 conversion, replay.

Fast tests use synthetic data; `libero` tests run real LIBERO episodes (one module-scoped generation of two
rendered episodes, interrupted after the first and resumed, is shared by them)."""

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

from demos.attempt import drop_noops
from demos.dataset import STAGING, DemoStore, features, load_meta, stage_attempt
from demos.generate import DemoConfig, next_attempts
from eval_libero.sim import IMAGE_KEY, STATE_KEY, WRIST_KEY
from r1vla.cli import main

REPO = Path(__file__).resolve().parents[1]
OBJECT_TASK = 1  # libero_object task 1 (cream cheese): the expert's shortest object episode (~135 steps)


# ----------------------------------------------------------------------------------------------- pure logic
def test_drop_noops_follows_openvla_rule():
    a = np.zeros((6, 7), np.float32)
    a[:, 6] = [-1, -1, 1, 1, 1, -1]  # gripper; motion all zero except step 3
    a[3, 0] = 0.5
    a[4, :6] = 3e-5  # tiny motion (norm 7e-5 < 1e-4), same gripper as the last kept -> no-op
    kept = drop_noops(a)
    # 0-2: zero motion and nothing kept yet (the first-action rule: only the motion test applies) -> dropped;
    # 3: motion -> kept; 4: tiny motion, same gripper as the last kept -> dropped; 5: gripper change -> kept
    np.testing.assert_array_equal(kept, a[[3, 5]])


def test_next_attempts_runs_waves_until_enough_successes():
    assert next_attempts({}, 3, 6) == [0, 1, 2]
    assert next_attempts({0: True, 2: False}, 3, 6) == [1]
    assert next_attempts({0: True, 1: False, 2: False}, 3, 6) == [3, 4]  # two missing -> a wave of two
    assert next_attempts({0: True, 1: True, 2: True}, 3, 6) == []
    assert next_attempts({k: False for k in range(6)}, 3, 6) == []  # cap reached


# ------------------------------------------------------------------------------------ store: crash safety
def _fake_episode(key: str, n: int, size: int = 32, value: float = 0.0) -> tuple[dict, dict]:
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    arrays = {
        IMAGE_KEY: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        WRIST_KEY: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        STATE_KEY: np.full((n, 8), value, np.float32),
        "action": rng.uniform(-1, 1, (n, 7)).astype(np.float32),
    }
    suite, task, attempt = key.split("/")
    rec = {
        "key": key,
        "task_key": f"{suite}/{task}",
        "suite": suite,
        "task_id": int(task),
        "attempt": int(attempt),
        "task": "put the thing in the basket",
        "success": True,
        "init_state_index": int(attempt),
    }
    return rec, arrays


def _episode_values(root: Path) -> list[float]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/libero_demos", root=root)
    return [float(ds[int(ep["dataset_from_index"])][STATE_KEY][0]) for ep in ds.meta.episodes]


def test_store_survives_a_crash_inside_a_commit(tmp_path, monkeypatch):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root, feats, cfg = tmp_path / "ds", features(image_size=32), {"source": "test"}
    store = DemoStore(root, feats, cfg)
    for i in range(2):
        stage_attempt(store.staging, *_fake_episode(f"libero_object/0/{i}", 5, value=i))
    stage_attempt(
        store.staging,
        {
            "key": "libero_object/0/9",
            "task_key": "libero_object/0",
            "suite": "libero_object",
            "task_id": 0,
            "attempt": 9,
            "task": "t",
            "success": False,
            "reason": "x",
        },
    )
    assert store.commit() == 2
    store.close()

    store = DemoStore(root, feats, cfg)  # a second run stages one more episode and dies while committing
    stage_attempt(store.staging, *_fake_episode("libero_object/0/2", 6, value=2))

    def die(self):  # like kill -9 after LeRobot wrote the episode but before the files were closed
        raise SystemExit("killed")

    monkeypatch.setattr(LeRobotDataset, "finalize", die)
    with pytest.raises(SystemExit):
        store.commit()
    store.close()
    monkeypatch.undo()

    store = DemoStore(
        root, feats, cfg
    )  # restart: rolls back the half commit, then commits the staged episode
    assert set(store.staged()) == {"libero_object/0/2"}
    assert store.commit() == 1
    store.close()
    assert _episode_values(root) == [0.0, 1.0, 2.0]
    meta = load_meta(root)
    assert [e["episode_index"] for e in meta["episodes"]] == [0, 1, 2]
    assert meta["tasks"]["libero_object/0"] == {
        "language": "put the thing in the basket",
        "attempts": 4,
        "successes": 3,
        "success_rate": 0.75,
    }

    # a crash between the commit point and the clean-up leaves staged copies of committed episodes: ignored
    rec, arrays = _fake_episode("libero_object/0/1", 5, value=1)
    stage_attempt(root / STAGING, rec, arrays)
    store = DemoStore(root, feats, cfg)
    assert store.staged() == {} and store.commit() == 0
    store.close()
    assert _episode_values(root) == [0.0, 1.0, 2.0]


def test_store_refuses_other_features_settings_and_foreign_folders(tmp_path):
    root = tmp_path / "ds"
    store = DemoStore(root, features(image_size=32), {"source": "test"})
    stage_attempt(store.staging, *_fake_episode("libero_object/0/0", 3))
    store.commit()
    store.close()
    with pytest.raises(ValueError, match="other features"):
        DemoStore(root, features(image_size=64), {"source": "test"})
    with pytest.raises(ValueError, match="other settings"):
        DemoStore(root, features(image_size=32), {"source": "test", "noise": 0.1})
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an r1vla demo dataset"):
        DemoStore(tmp_path / "foreign", features(image_size=32), {"source": "test"})


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert (
        main(
            ["demos", "--suites", "libero_objects", "--episodes-per-task", "1", "--out", str(tmp_path / "a")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown LIBERO suite" in err and "libero_object (object)" in err
    assert (
        main(
            [
                "demos",
                "--suites",
                "object",
                "--tasks",
                "10",
                "--episodes-per-task",
                "1",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "libero_object task id 10 out of range; valid: 0-9" in capsys.readouterr().err
    args = [
        "demos",
        "--suites",
        "object",
        "--tasks",
        "0",
        "--episodes-per-task",
        "1",
        "--out",
        str(tmp_path / "c"),
    ]
    assert main([*args, "--init-states", "0-4"]) == 2
    assert (
        "--init-states selects official init states: it needs --official-init-states"
        in capsys.readouterr().err
    )
    assert (
        main(
            [*args[:-3], "6", "--out", str(tmp_path / "c"), "--official-init-states", "--init-states", "0-4"]
        )
        == 2
    )
    assert (
        "more than 5 episodes per task from 5 init states repeat episodes exactly" in capsys.readouterr().err
    )
    assert main([*args, "--noise", "0.05", "--labels", "clean"]) == 2
    assert "--labels 'clean': choose one of executed, expert" in capsys.readouterr().err
    assert main([*args, "--image-size", "8"]) == 2
    assert "--image-size 8: choose a camera resolution in 16-1024 (default 256)" in capsys.readouterr().err
    assert main([*args, "--labels", "expert"]) == 2
    assert (
        "--labels expert differs from the executed actions only with --noise > 0" in capsys.readouterr().err
    )
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    other = LeRobotDataset.create(
        "local/other",
        10,
        root=tmp_path / "other",
        use_videos=False,
        features={"foo": {"dtype": "float32", "shape": (2,), "names": None}},
    )
    other.add_frame({"foo": np.zeros(2, np.float32), "task": "x"})
    other.save_episode()
    other.finalize()
    assert main([*args[:-1], str(tmp_path / "other")]) == 2
    assert "other features" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


# --------------------------------------------------------------------------------------------- HDF5
OBJECT0 = "pick up the alphabet soup and place it in the basket"


def _write_libero_hdf5(path: Path, n_demos: int = 2, T: int = 7, drop: tuple[str, ...] = ()) -> dict:
    import h5py

    rng = np.random.default_rng(0)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps(
            {"problem_name": "libero_tabletop_manipulation", "language_instruction": OBJECT0}
        )
        data.attrs["bddl_file_name"] = (
            "libero/bddl_files/libero_object/" + OBJECT0.replace(" ", "_") + ".bddl"
        )
        for i in range(n_demos):
            d = {
                "actions": rng.uniform(-1, 1, (T, 7)).astype(np.float64),
                "obs/agentview_rgb": rng.integers(0, 256, (T, 128, 128, 3), dtype=np.uint8),
                "obs/eye_in_hand_rgb": rng.integers(0, 256, (T, 128, 128, 3), dtype=np.uint8),
                "obs/ee_states": rng.normal(size=(T, 6)),
                "obs/gripper_states": rng.normal(size=(T, 2)),
                "obs/joint_states": rng.normal(size=(T, 7)),
                "states": rng.normal(size=(T, 20)),
            }
            d["actions"][:, 6] = np.sign(d["actions"][:, 6])
            for k, v in d.items():
                if k not in drop:
                    data.create_dataset(f"demo_{i}/{k}", data=v)
            demos[f"demo_{i}"] = d
    return demos


def _marked_frame(row: int, col: int, size: int = 128) -> np.ndarray:
    """A black raw frame with one red pixel at (row, col) of the stored (upside-down) array."""
    img = np.zeros((size, size, 3), np.uint8)
    img[row, col] = (255, 0, 0)
    return img


def test_convert_hdf5_matches_the_generated_format(tmp_path):
    import h5py
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from eval_libero.sim import frame_from_obs

    path = tmp_path / "KITCHEN_SCENE3_x_demo.hdf5"
    src = _write_libero_hdf5(path)
    with h5py.File(path, "r+") as f:  # demo_1, obs 2: a known pixel in an otherwise black frame
        f["data/demo_1/obs/agentview_rgb"][2] = src["demo_1"]["obs/agentview_rgb"][2] = _marked_frame(10, 20)
    for out, extra in ((tmp_path / "conv", []), (tmp_path / "conv128", ["--keep-size"])):
        assert main(["convert-hdf5", str(path), "--out", str(out), *extra]) == 0
    info = json.loads((tmp_path / "conv" / "meta" / "info.json").read_text())
    want = features()  # the schema `r1vla demos` writes
    assert {k: info["features"][k] for k in want} == {
        k: {**v, "shape": list(v["shape"])} for k, v in want.items()
    }
    assert info["fps"] == 10 and info["robot_type"] == "panda"
    ds = LeRobotDataset("local/libero_demos", root=tmp_path / "conv")
    assert (
        ds.num_episodes == 2 and ds.num_frames == 2 * 6
    )  # one step lost per demo to the obs-after-action shift
    d = src["demo_1"]
    item = ds[6 + 2]  # episode 1, frame 2 = obs[2] (recorded after actions[2]) paired with actions[3]
    # the raw pixel (row 10, col 20) of an upside-down 128^2 render lands at (117, 107) upright and mirrored
    small = LeRobotDataset("local/libero_demos", root=tmp_path / "conv128")[6 + 2][IMAGE_KEY]
    small = (small.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert small.shape == (128, 128, 3) and np.argwhere(small[..., 0] == 255).tolist() == [[117, 107]]
    raw = {
        "agentview_image": d["obs/agentview_rgb"][2],
        "robot0_eye_in_hand_image": d["obs/eye_in_hand_rgb"][2],
    }
    raw |= {
        "robot0_eef_pos": np.zeros(3),
        "robot0_eef_quat": np.array([0, 0, 0, 1.0]),
        "robot0_gripper_qpos": np.zeros(2),
    }
    assert np.array_equal(small, frame_from_obs(raw)[IMAGE_KEY])  # the one convention of eval_libero/sim.py
    big = (item[IMAGE_KEY].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # resized to 256^2
    r, c = np.unravel_index(np.argmax(big[..., 0]), big.shape[:2])
    assert 234 <= r <= 235 and 214 <= c <= 215 and big[..., 1:].max() == 0  # the same place, twice the size
    np.testing.assert_allclose(
        item[STATE_KEY].numpy(), np.r_[d["obs/ee_states"][2], d["obs/gripper_states"][2]], rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(item["action"].numpy(), d["actions"][3], rtol=0, atol=1e-6)
    assert item["task"] == OBJECT0
    rec = load_meta(tmp_path / "conv")["episodes"][1]
    assert (rec["suite"], rec["task_id"], rec["wait_steps"]) == ("libero_object", 0, 0)
    from demos.dataset import load_start_states

    assert rec["start"] == "hdf5 states[1]"
    np.testing.assert_array_equal(load_start_states(tmp_path / "conv")[1], d["states"][1])


def test_convert_hdf5_names_missing_keys(tmp_path, capsys):
    _write_libero_hdf5(tmp_path / "bad_demo.hdf5", n_demos=1, drop=("obs/joint_states", "obs/gripper_states"))
    assert main(["convert-hdf5", str(tmp_path / "bad_demo.hdf5"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "data/demo_0 is missing obs/gripper_states, obs/joint_states (" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- real LIBERO
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
    from demos.dataset import load_start_states
    from eval_libero.sim import init_states

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

    from eval_libero.sim import task_info

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
    from demos.dataset import EXECUTED_ACTIONS, load_episode_arrays
    from demos.replay import load_episode

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
    from demos.dataset import EXECUTED_ACTIONS, load_episode_arrays, load_start_states
    from demos.replay import load_episode, replay_episode

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
    from demos.dataset import load_start_states
    from demos.replay import reset_to
    from eval_libero.sim import frame_from_obs

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
