"""Converting LIBERO's HDF5 demonstrations into the generated dataset format (synthetic HDF5, no LIBERO)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from demos.dataset import features
from libero_core.sim import IMAGE_KEY, STATE_KEY
from libero_core.starts import load_meta
from r1vla.cli import main

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

    from libero_core.sim import frame_from_obs

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
    assert np.array_equal(small, frame_from_obs(raw)[IMAGE_KEY])  # the one convention of libero_core/sim.py
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
    from libero_core.starts import load_start_states

    assert rec["start"] == "hdf5 states[1]"
    np.testing.assert_array_equal(load_start_states(tmp_path / "conv")[1], d["states"][1])


def test_convert_hdf5_names_missing_keys(tmp_path, capsys):
    _write_libero_hdf5(tmp_path / "bad_demo.hdf5", n_demos=1, drop=("obs/joint_states", "obs/gripper_states"))
    assert main(["convert-hdf5", str(tmp_path / "bad_demo.hdf5"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "data/demo_0 is missing obs/gripper_states, obs/joint_states (" in err
    assert not (tmp_path / "out").exists()
