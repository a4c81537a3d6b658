"""A tiny LeRobotDataset v3 with the hub LIBERO datasets' feature names, written offline for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

STATE_NAMES = ["x", "y", "z", "axis_angle1", "axis_angle2", "axis_angle3", "gripper_qpos1", "gripper_qpos2"]


def make_libero_like_dataset(
    root: Path, episodes: int = 2, frames: int = 24, size: int = 64, wrist_key: str = "image2", seed: int = 0
) -> Path:
    """Random images, smooth random-walk states and actions in LIBERO's ranges; image dtype (no FFmpeg)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    image = {"dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channels"]}
    features = {
        "observation.images.image": image,
        f"observation.images.{wrist_key}": image,
        "observation.state": {"dtype": "float32", "shape": (8,), "names": {"motors": STATE_NAMES}},
        "action": {
            "dtype": "float32",
            "shape": (7,),
            "names": {"motors": ["dx", "dy", "dz", "drx", "dry", "drz", "g"]},
        },
    }
    ds = LeRobotDataset.create(
        repo_id="local/libero_like",
        fps=10,
        features=features,
        root=root,
        robot_type="panda",
        use_videos=False,
        image_writer_threads=0,
    )
    rng = np.random.default_rng(seed)
    tasks = ["put the bowl on the plate", "pick up the alphabet soup and place it in the basket"]
    for ep in range(episodes):
        state = np.array([-0.1, 0.0, 0.5, 3.1, 0.0, 0.0, 0.039, -0.039], dtype=np.float32)
        for _ in range(frames):
            action = np.clip(rng.normal(0, 0.4, 7), -1, 1).astype(np.float32)
            action[6] = 1.0 if rng.random() < 0.5 else -1.0
            ds.add_frame(
                {
                    "observation.images.image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                    f"observation.images.{wrist_key}": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                    "observation.state": state.copy(),
                    "action": action,
                    "task": tasks[ep % len(tasks)],
                }
            )
            state[:3] += 0.01 * action[:3]
        ds.save_episode()
    ds.finalize()
    return root
