from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Qwen2.5-VL checkpoint (seed 0), built once per test session into a tmp folder."""
    from adapters import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("backbone") / "tiny-qwen2_5_vl")
