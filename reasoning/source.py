"""Reading a LeRobot LIBERO dataset for the MCQA builder: open it, check its features, hash its data, and
fetch encoded agentview frames without decoding more than needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

STATE_KEY, ACTION_KEY, IMAGE_KEY = "observation.state", "action", "observation.images.image"


def open_dataset(dataset: str, repo_id: str | None = None) -> LeRobotDataset:
    """LeRobotDataset from a local folder (`dataset` is a directory) or a hub repo id."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if Path(dataset).expanduser().is_dir():
        root = Path(dataset).expanduser().resolve()
        return LeRobotDataset(repo_id or f"local/{root.name}", root=root)
    return LeRobotDataset(repo_id or dataset)


def check_features(features: dict, image_key: str) -> None:
    """ValueError naming what the questions need and is missing, and what the dataset has."""
    need = {STATE_KEY: "eef xyz in its first 3 numbers", ACTION_KEY: "gripper command in action[6]"}
    need[image_key] = "the agentview image"
    missing = [f"{k} ({why})" for k, why in need.items() if k not in features]
    if not missing:
        if features[STATE_KEY]["shape"][0] < 3 or features[ACTION_KEY]["shape"][0] < 7:
            missing = [f"{STATE_KEY} with >= 3 dims and {ACTION_KEY} with >= 7 dims"]
    if missing:
        found = ", ".join(f"{k} {tuple(v.get('shape', ()))}" for k, v in features.items())
        raise ValueError(
            f"this dataset lacks what the MCQA questions need: {'; '.join(missing)}. Found features: {found}"
        )


class Frames:
    """Encoded frames of one camera: the stored PNG/JPEG bytes of an image dataset (never decoded), or the
    decoded video frame re-encoded as PNG."""

    def __init__(self, ds, key: str):
        self.ds, self.key = ds, key
        self.video = key in ds.meta.video_keys
        self.column = None if self.video else ds.hf_dataset.select_columns([key]).with_format("arrow")

    def __call__(self, rel_index: int) -> bytes:
        if self.video:
            import io

            from PIL import Image

            chw = self.ds[rel_index][self.key].numpy()  # (3, H, W) float in [0, 1]
            hwc = np.ascontiguousarray((chw.transpose(1, 2, 0) * 255).round().astype(np.uint8))
            buf = io.BytesIO()
            Image.fromarray(hwc).save(buf, format="PNG")
            return buf.getvalue()
        cell = self.column[int(rel_index)].column(self.key)[0].as_py()
        return cell["bytes"] if cell.get("bytes") else Path(cell["path"]).read_bytes()


def data_hash(cols: dict[str, np.ndarray], tasks: list[str]) -> str:
    h = hashlib.sha256()
    for k in sorted(cols):
        h.update(k.encode())
        h.update(np.ascontiguousarray(cols[k]).tobytes())
    h.update(json.dumps(tasks).encode())
    return h.hexdigest()
