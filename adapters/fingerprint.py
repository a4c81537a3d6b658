"""Backbone fingerprints: which Qwen2.5-VL checkpoint a trained policy was built on.

A policy checkpoint holds its head (and LoRA / full-mode weights) but a frozen backbone is reloaded from
`backbone_path`: pointed at the wrong folder (robot_r1 vs sft, the study's only variable), it would load
silently. The fingerprint says what the folder held: its config.json's sha256, its weight files' names and
sizes, and the sha256 of the raw bytes of a few small tensors read straight from the safetensors files
(independent of the dtype the model is loaded in; a few KB read, never the 15 GB).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

N_TENSORS = 3  # small tensors hashed: the first, middle and last (by name) of those with <= MAX_NUMEL values
MAX_NUMEL = 1 << 16


def checkpoint_folder(path: str) -> Path:
    """The local folder of a checkpoint given as a folder or a hub id already in the Hugging Face cache."""
    if Path(path).is_dir():
        return Path(path)
    from transformers.utils import cached_file

    return Path(cached_file(path, "config.json")).parent


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(path: str) -> dict:
    """{'config_sha256', 'weights': {file: bytes}, 'tensors': {name: sha256 of raw bytes}} of a checkpoint."""
    import torch
    from safetensors import safe_open

    folder = checkpoint_folder(path)
    files = sorted(folder.glob("*.safetensors"))
    small: list[tuple[str, Path]] = []
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                shape = st.get_slice(name).get_shape()
                if 0 < int(torch.Size(shape).numel()) <= MAX_NUMEL:
                    small.append((name, f))
    small.sort()
    picks = sorted({small[0], small[len(small) // 2], small[-1]}) if small else []
    tensors = {}
    for name, f in picks[:N_TENSORS]:
        with safe_open(str(f), framework="pt") as st:
            t = st.get_tensor(name).contiguous()
        tensors[name] = _sha(t.view(torch.uint8).numpy().tobytes())
    return {
        "config_sha256": _sha((folder / "config.json").read_bytes()),
        "weights": {f.name: f.stat().st_size for f in files},
        "tensors": tensors,
    }


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """Human-readable differences between two fingerprints ([] when they match)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            out.append(f"{key}: trained on {json.dumps(saved.get(key))}, now {json.dumps(now.get(key))}")
    return out
