"""Action chunks from a column cache: a speed fix for LeRobot 0.6's DatasetReader on image datasets.

To fetch `action[t : t + H]`, LeRobot 0.6's `DatasetReader._query_hf_dataset` reads `hf_dataset[key][rows]`
through the dataset's torch transform: ~25 ms per query on this 2-core machine whatever the chunk length
(measured 2026-12-03: 16 queries 0.40 s, more than reading the 16 frames' two 256² images, 0.04 s), ~0.2 s of a
tiny training step at batch 8. (LeRobot 0.4.4 decoded every future frame's images instead: 0.5 s per sample.)
`install()` makes `_query_hf_dataset` read non-visual keys from a per-reader cache of that column as a numpy array
(built once from Arrow, no transform); visual keys take LeRobot's own path. The values are identical
(tests/test_fastdata.py). `r1vla train`, `r1vla study` and the offline metric call it; bare `lerobot-train`
works without it, only slower.
"""

from __future__ import annotations

import numpy as np
import torch

_ORIGINAL = None


def _query(self, query_indices: dict[str, list[int]]) -> dict:
    cache = self.__dict__.setdefault("_r1vla_columns", {})
    visual = set(self._meta.video_keys) | set(self._meta.image_keys)
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
    from lerobot.datasets.dataset_reader import DatasetReader

    if _ORIGINAL is None:
        _ORIGINAL = DatasetReader._query_hf_dataset
        DatasetReader._query_hf_dataset = _query
