"""demos/ without LIBERO: the no-op rule, attempt waves, the crash-safe DemoStore and the CLI's refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from demos.attempt import drop_noops
from demos.dataset import STAGING, DemoStore, features, stage_attempt
from demos.generate import next_attempts
from libero_core.sim import IMAGE_KEY, STATE_KEY, WRIST_KEY
from libero_core.starts import load_meta
from r1vla.cli import main


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
