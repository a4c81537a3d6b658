"""The closed-loop check at one start state (bench/closed_loop.py's memorization half, one state): a policy trained
here by lerobot-train on four of the script's demos (noisy execution, expert labels, 128² frames) from official init
state 1 of libero_object task 0, with the script's recipe and step count, must succeed from that state in
`r1vla eval` under the standard step cap. Any mismatch between the training and evaluation conventions (image flip,
normalisation, chunk order, gripper sign, observation/action alignment, camera resolution) fails it. ~20 minutes on
2 cores (estimated from the script's runs: 4 demos ~1.5 min, 9,000 steps at ~9.5 steps/s): marked slow, run before every stop (`pytest -m slow`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _closed_loop():
    spec = importlib.util.spec_from_file_location("closed_loop", REPO / "bench/closed_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.libero
@pytest.mark.timeout(2400)
def test_policy_trained_here_succeeds_from_its_training_start(tmp_path):
    cl = _closed_loop()
    data = cl.demos(tmp_path / "demos", 4, "1", workers=2)
    (ckpt,) = cl.train([(data, tmp_path / "train")], cl.STEPS, seed=1)
    successes, n = cl.evaluate(ckpt, tmp_path / "eval", "1", workers=1)
    assert (successes, n) == (1, 1)
