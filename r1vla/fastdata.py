"""Action chunks without decoding images: a speed fix for LeRobot 0.4.4's LeRobotDataset on image datasets.

To fetch `action[t : t + H]`, LeRobot 0.4.4 reads the H rows through the dataset's torch transform, which
decodes and converts *every* column of those rows, both cameras included: 2H PNG decodes per sample that are
thrown away (measured: ~0.5 s per sample with H=8 on this 2-core machine, 90% of a tiny training step).
`install()` makes `_query_hf_dataset` read non-visual keys from a per-dataset cache of that column as a
numpy array (built once from Arrow, no image decoding); visual keys take LeRobot's own path. The values are
identical (tests/test_fastdata.py). `r1vla train`, `r1vla study` and the offline metric call it; bare
`lerobot-train` works without it, only slower.
"""

from __future__ import annotations

import numpy as np
import torch

_ORIGINAL = None


def _query(self, query_indices: dict[str, list[int]]) -> dict:
    cache = self.__dict__.setdefault("_r1vla_columns", {})
    visual = set(self.meta.video_keys) | set(self.meta.image_keys)
    result, rest = {}, {}
    for key, q_idx in query_indices.items():
        if key in visual:
            rest[key] = q_idx
            continue
        if key not in cache:  # the column alone, as numpy: no transform, no image decoding
            cache[key] = np.asarray(self.hf_dataset.with_format("numpy", columns=[key])[key])
        rel = (
            q_idx
            if self._absolute_to_relative_idx is None
            else [self._absolute_to_relative_idx[i] for i in q_idx]
        )
        result[key] = torch.from_numpy(cache[key][rel])
    if rest:
        result.update(_ORIGINAL(self, rest))
    return result


def install() -> None:
    """Idempotent."""
    global _ORIGINAL
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if _ORIGINAL is None:
        _ORIGINAL = LeRobotDataset._query_hf_dataset
        LeRobotDataset._query_hf_dataset = _query
