"""Fixtures shared by several test files; each is built once per test session, on first use."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Qwen2.5-VL checkpoint (seed 0), built once per test session into a tmp folder."""
    from adapters import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("backbone") / "tiny-qwen2_5_vl")


# ---- evaluation: the probe policy (tests/eval_probe.py) --------------------------------------------------------


@pytest.fixture(scope="session")
def probe(tmp_path_factory) -> Path:
    """A stochastic probe checkpoint (noise 0.05)."""
    from eval_probe import save_probe

    return save_probe(tmp_path_factory.mktemp("ckpt") / "pretrained_model", noise=0.05)


@pytest.fixture(scope="session")
def reference(probe, tmp_path_factory) -> tuple[Path, list[dict]]:
    """One worker, init states 0 and 1 of libero_object task 0, 3 steps each."""
    from eval_probe import ecfg, read

    from eval_libero.run import evaluate

    out = evaluate(ecfg(probe, tmp_path_factory.mktemp("ref") / "run", init_states="0,1", video_every=2))
    return out, read(out)


@pytest.fixture
def det_runner(tmp_path):
    """The policy runner of a deterministic probe checkpoint (saved under tmp_path / "det"), on the CPU."""
    from eval_probe import make_runner, save_probe

    return make_runner(save_probe(tmp_path / "det"))


# ---- reasoning: a LIBERO-like source dataset and its MCQA -----------------------------------------------------


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Path:
    from libero_like import make_libero_like_dataset

    return make_libero_like_dataset(tmp_path_factory.mktemp("src") / "ds", episodes=6, frames=40)


@pytest.fixture(scope="session")
def mcqa(source, tmp_path_factory) -> Path:
    from reasoning.mcqa import MCQAConfig, build_mcqa

    out = tmp_path_factory.mktemp("mcqa") / "mcqa"
    build_mcqa(str(source), out, config=MCQAConfig(seed=0, heldout_episodes=1))
    return out
