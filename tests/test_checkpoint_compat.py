"""Checkpoints written by the LeRobot 0.4.4 package (lerobot_policy_r1vla 0.1.0, transformers 4.57) under LeRobot 0.6.

`tests/data/r1vla_0.1.0_lerobot0.4.4/` was written by `r1vla train` of commit eccecd8 in its own LeRobot 0.4.4 /
transformers 4.57.6 / Python 3.11 environment (tiny backbone, frozen, l1 head, 2 steps). Its config, processors
and weights load under LeRobot 0.6; its backbone (the tiny preset as transformers 4.57 built it) is not the tiny
preset transformers 5 builds, so it is refused as another backbone, naming the stack that wrote it, unless the
user points at that backbone or allows the mismatch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from eval_libero.checkpoint import load_policy_config, load_runner
from eval_libero.plan import EvalError
from policies.r1vla.modeling_r1vla import RUN_FILE, checkpoint_writer

OLD = Path(__file__).parent / "data" / "r1vla_0.1.0_lerobot0.4.4"


def test_a_lerobot044_checkpoint_is_refused_naming_the_stack_that_wrote_it(tmp_path):
    ckpt = Path(shutil.copytree(OLD, tmp_path / "ckpt"))
    cfg = load_policy_config(ckpt, "cpu")  # the 0.4.4 config.json parses under LeRobot 0.6
    with pytest.raises(
        ValueError, match=r"lerobot_policy_r1vla 0\.1\.0 on LeRobot 0\.4\.4.*another backbone"
    ):
        load_runner(ckpt, cfg, ["libero_object"], "auto")


def test_a_lerobot044_checkpoint_loads_and_acts_when_the_mismatch_is_allowed(tmp_path):
    ckpt = Path(shutil.copytree(OLD, tmp_path / "ckpt"))
    cfg = load_policy_config(ckpt, "cpu", allow_backbone_mismatch=True)
    runner = load_runner(ckpt, cfg, ["libero_object"], "auto")
    policy, pre, post = runner.policy, runner.pre, runner.post
    state = torch.tensor([[-0.1, 0.0, 0.5, 3.1, 0.0, 0.0, 0.039, -0.039]])
    obs = {
        "observation.images.image": torch.rand(1, 3, 64, 64),
        "observation.images.image2": torch.rand(1, 3, 64, 64),
        "observation.state": state,
        "task": ["put the bowl on the plate"],
    }
    with torch.no_grad():
        action = post(policy.select_action(pre(obs)))
    assert action.shape == (1, 7) and torch.isfinite(action).all()
    assert len(policy.model.head.state_dict()) > 0  # the trained head came from the 0.4.4 safetensors


def test_new_checkpoints_record_their_stack(tmp_path):
    import json

    ckpt = Path(shutil.copytree(OLD, tmp_path / "ckpt"))
    run = json.loads((ckpt / RUN_FILE).read_text())
    run["versions"] = {"lerobot_policy_r1vla": "0.2.0", "lerobot": "0.6.1", "transformers": "5.5.4"}
    (ckpt / RUN_FILE).write_text(json.dumps(run))
    assert (
        checkpoint_writer(ckpt)
        == "written by lerobot_policy_r1vla 0.2.0 on LeRobot 0.6.1 / transformers 5.5.4"
    )
    with pytest.raises(EvalError, match="not a folder"):
        load_policy_config(ckpt, "cpu", backbone_path=str(tmp_path / "missing"))
