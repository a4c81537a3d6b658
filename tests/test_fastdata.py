"""r1vla.fastdata: action chunks read from a column cache equal LeRobot 0.6's own path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from libero_like import make_libero_like_dataset  # noqa: E402

SCRIPT = """
import sys, torch
from lerobot.datasets.dataset_reader import DatasetReader
from lerobot.datasets.lerobot_dataset import LeRobotDataset
root, patched = sys.argv[1], sys.argv[2] == "1"
if patched:
    from r1vla import fastdata
    fastdata.install()
    assert DatasetReader._query_hf_dataset is fastdata._query, "fastdata.install() did not patch LeRobot"
out = {}
for eps in (None, [1]):
    ds = LeRobotDataset("local/libero_like", root=root, episodes=eps,
                        delta_timestamps={"action": [i / 10 for i in range(8)], "observation.state": [-0.1, 0.0]})
    for i in (0, 5, len(ds) - 1):  # the last frame: action chunk padded past the episode's end
        item = ds[i]
        out[f"{eps}/{i}"] = {k: v for k, v in item.items() if torch.is_tensor(v)}
    # the patched path really served the low-dim chunks: both columns are cached, the images are not
    out[f"{eps}/cached"] = sorted(ds._ensure_reader().__dict__.get("_r1vla_columns", {}))
torch.save(out, sys.argv[3])
"""


def test_patched_queries_equal_lerobot(tmp_path):
    root = make_libero_like_dataset(tmp_path / "ds", episodes=2, frames=12)
    runs = {}
    for patched in ("0", "1"):  # separate processes: the patch is process-wide
        dump = tmp_path / f"items{patched}.pt"
        subprocess.run([sys.executable, "-c", SCRIPT, str(root), patched, str(dump)], check=True, timeout=300)
        import torch

        runs[patched] = torch.load(dump)
    assert runs["0"].keys() == runs["1"].keys()
    for eps in ("None", "[1]"):
        assert runs["0"].pop(f"{eps}/cached") == []  # unpatched: LeRobot's own path
        assert runs["1"].pop(f"{eps}/cached") == ["action", "observation.state"]
    for key, ref in runs["0"].items():
        new = runs["1"][key]
        assert ref.keys() == new.keys(), key
        for name in ref:
            assert torch.equal(ref[name], new[name]), (key, name)
    assert runs["1"]["[1]/11"]["action_is_pad"].sum() == 7  # padding past the end is LeRobot's own
