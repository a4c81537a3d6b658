"""What `r1vla eval` checks before it runs: the checkpoint, input ranges, resume into another checkpoint's run,
LeRobot's plugin patch and protocol caps."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from eval_probe import PY, ROOT, ecfg, save_probe

from eval_libero.run import EvalError, evaluate


def test_bad_checkpoint_is_explained(tmp_path, probe, capsys):
    from r1vla.cli import main

    def eval_rc(ckpt: Path) -> tuple[int, str]:
        rc = main(["eval", "--policy", str(ckpt), "--out", str(tmp_path / "run"), "--suites", "object"])
        return rc, capsys.readouterr().err

    rc, err = eval_rc(tmp_path / "nope")
    assert rc == 2 and "checkpoint folder not found" in err
    (tmp_path / "empty").mkdir()
    rc, err = eval_rc(tmp_path / "empty")
    assert rc == 2 and "not a LeRobot pretrained_model folder (missing config.json, policy_pre" in err
    alien = tmp_path / "alien" / "pretrained_model"
    save_probe(alien)
    cfg = json.loads((alien / "config.json").read_text())
    (alien / "config.json").write_text(json.dumps({**cfg, "type": "no_such_policy"}))
    rc, err = eval_rc(alien.parent)  # a checkpoint folder holding pretrained_model/ is accepted
    assert rc == 2 and "policy type 'no_such_policy', which no installed LeRobot policy registers" in err
    assert "act" in err and not (tmp_path / "run" / "episodes.jsonl").exists()


BAD_INPUT = [
    ({"suites": "spatail"}, r"unknown LIBERO suite 'spatail' \(did you mean 'spatial'\?\); valid: libero_sp"),
    ({"tasks": "3,12"}, r"task id of libero_object 12 out of range; valid: 0-9"),
    ({"init_states": "49-50"}, r"init state 50 out of range; valid: 0-49"),
    ({"seeds": "7,x"}, r"bad --seeds"),
    ({"max_steps": 0}, r"--max-steps must be >= 1"),
    ({"protocol": "openvla"}, r"unknown protocol 'openvla'; valid: standard, lerobot06"),
    ({"workers": 0}, r"--workers must be >= 1"),
]


@pytest.mark.parametrize("kwargs, message", BAD_INPUT)
def test_out_of_range_input_lists_valid_values(tmp_path, probe, kwargs, message):
    with pytest.raises(EvalError, match=message):
        evaluate(ecfg(probe, tmp_path / "run", **kwargs))
    assert not (tmp_path / "run").exists()


def test_resume_refuses_another_checkpoint(probe, reference, tmp_path):
    other = save_probe(tmp_path / "other")  # same config, other weights -> another checkpoint hash
    with pytest.raises(EvalError, match=r"different evaluation .*checkpoint: recorded=\w{12}, now=\w{12}"):
        evaluate(ecfg(other, reference[0], init_states="0,1", video_every=2))


@pytest.mark.libero
def test_lerobot_plugin_import_applies_the_libero_patch():
    """lerobot-eval's main() imports every lerobot_policy_* plugin; ours must patch LeRobot's LIBERO init states."""
    code = (
        "from lerobot.utils.import_utils import register_third_party_plugins as r; r(); "
        "from eval_libero.lerobot_compat import is_patched; import sys; sys.exit(0 if is_patched() else 3)"
    )
    res = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (
        "lerobot_policy_r1vla/__init__.py must run `from eval_libero.lerobot_compat import "
        "patch_lerobot_libero; patch_lerobot_libero()`\n" + res.stderr[-2000:]
    )


def test_lerobot06_protocol_caps_are_lerobots_own():
    from lerobot.envs.libero import TASK_SUITE_MAX_STEPS

    from libero_core.suites import SUITES, max_steps

    assert {name: max_steps(s, "lerobot06") for name, s in SUITES.items()} == {
        name: TASK_SUITE_MAX_STEPS[name] for name in SUITES
    }
