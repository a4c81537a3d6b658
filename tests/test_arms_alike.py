"""The arms of a study differ only by their backbone: one prompt style and coordinate format for every arm (the
format a built backbone learned, read from its provenance), compare refuses mixed prompts, the SFT twin is asked
as it was trained (Direct SFT), and the MCQA's held-out split is the study's held-out demonstrations."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from adapters.prompts import DEFAULT_FORMAT, CoordFormat, build_prompt, parse_coord_format

REF = (-0.15, 0.02, 1.05)
CM = CoordFormat("cm", REF, 0).spec()


def _built(folder: Path, coords: str) -> str:
    folder.mkdir(parents=True)
    (folder / "r1vla_provenance.json").write_text(json.dumps({"coordinates": coords}))
    return str(folder)


def test_vla_prompt_writes_the_numbers_the_mcqa_wrote():
    from reasoning.questions import fmt_position, to_cm

    state = [-0.0943, -0.0611, 1.1247, 0.1, 0.2, 0.3, 0.04, -0.04]
    prompt = build_prompt("robot_r1", "put the bowl on the plate", state, CM)
    mcqa = fmt_position(to_cm(np.array(state[:3]), np.array(REF)))
    assert mcqa == "[6, -8, 7]" and f"## Current Robot State Position: {mcqa}" in prompt
    assert "in cm from a fixed reference point" in prompt
    world = build_prompt("robot_r1", "put the bowl on the plate", state)  # external checkpoints' named choice
    assert DEFAULT_FORMAT == "world_m3" and "Position: [-0.094, -0.061, 1.125]" in world
    assert parse_coord_format(CM) == CoordFormat("cm", REF, 0)
    with pytest.raises(ValueError, match="unknown coordinate format 'wrld_m3'.*world_m3"):
        parse_coord_format("wrld_m3")


def test_policy_config_takes_the_backbone_recorded_format(tmp_path):
    from eval_libero.run import prompt_protocol
    from policies.r1vla import R1VLAConfig

    path = _built(tmp_path / "grpo", CM)
    cfg = R1VLAConfig(backbone="robot_r1", backbone_path=path, device="cpu")
    assert cfg.prompt_coords == CM  # resolved from r1vla_provenance.json and saved so in the policy config
    assert prompt_protocol(cfg) == {"style": "robot_r1", "coordinates": CM}  # what every eval record carries
    external = R1VLAConfig(backbone="robot_r1", backbone_path=str(tmp_path), device="cpu")
    assert external.prompt_coords == "world_m3"
    with pytest.raises(ValueError, match="unknown coordinate format"):
        R1VLAConfig(backbone="tiny", prompt_coords="metres", device="cpu")


def test_study_gives_every_arm_one_prompt(tmp_path):
    from r1vla.study_config import one_prompt

    paths = {"robot_r1": _built(tmp_path / "a", CM), "sft": _built(tmp_path / "b", CM), "base": None}
    got = one_prompt({}, paths)
    assert got["style"] == "robot_r1" and got["coordinates"] == CM  # the base arm is prompted alike
    assert (
        one_prompt({"prompt_style": "plain", "prompt_coords": "world_m3"}, paths)["coordinates"] == "world_m3"
    )
    other = CoordFormat("cm", (0.0, 0.0, 1.0), 0).spec()
    paths["sft"] = _built(tmp_path / "c", other)
    with pytest.raises(ValueError, match="learned different coordinate formats"):
        one_prompt({}, paths)


def test_compare_refuses_runs_with_different_prompts(tmp_path):
    from synthetic_runs import PROTO, write_run

    from analysis.compare import CompareError, compare_runs

    a = write_run(tmp_path / "a", "sft", {"libero_object": [True] * 4}, protocol={**PROTO, "prompt": {
        "style": "robot_r1", "coordinates": CM}})  # fmt: skip
    b = write_run(tmp_path / "b", "r1", {"libero_object": [False] * 4}, protocol={**PROTO, "prompt": {
        "style": "plain", "coordinates": "world_m3"}})  # fmt: skip
    with pytest.raises(CompareError, match=r"(?s)different protocols.*prompt\.style"):
        compare_runs([a, b], baseline=None, out=tmp_path / "rep", log=lambda m: None)
    rep = compare_runs([a, b], None, tmp_path / "rep", allow_protocol_mismatch=True, log=lambda m: None)
    assert any("prompt.coordinates" in d for d in rep["protocol_differences"])


def test_direct_sft_is_asked_for_the_answer_only():
    from reasoning.questions import DIRECT_INSTRUCTION, FORMAT_INSTRUCTION, with_answer_format
    from reasoning.recipes import DEFAULT_LR, answer_format
    from reasoning.rewards import is_formatted

    prompt = [{"role": "user", "content": f"## Question\nWhere?\nA. [1, 2, 3]\n{FORMAT_INSTRUCTION}"}]
    direct = with_answer_format(prompt, "direct")
    assert direct[0]["content"].endswith(f"A. [1, 2, 3]\n{DIRECT_INSTRUCTION}") and prompt[0][
        "content"
    ].endswith(FORMAT_INSTRUCTION)
    assert with_answer_format(direct, "think") == prompt
    assert answer_format("sft", False) == "direct" and answer_format("grpo", False) == "think"
    assert is_formatted("<answer>B</answer>", "direct") and not is_formatted("<answer>B</answer>", "think")
    assert DEFAULT_LR["sft"] == DEFAULT_LR["grpo"] == 1e-6  # the stated rule: one optimizer setting
    with pytest.raises(ValueError, match="unknown answer format 'cot'"):
        with_answer_format(prompt, "cot")


def test_mcqa_holds_out_exactly_the_given_episodes(tmp_path):
    from libero_like import make_libero_like_dataset

    from reasoning.mcqa import MCQAConfig, build_mcqa, load_mcqa

    source = make_libero_like_dataset(tmp_path / "ds", episodes=4, frames=40)
    summary = build_mcqa(str(source), tmp_path / "m", config=MCQAConfig(heldout_ids=(1, 3)))
    train, meta = load_mcqa(tmp_path / "m", "train")
    held, _ = load_mcqa(tmp_path / "m", "heldout")
    kept = sorted({1, 3} - {int(e) for e in summary["skipped_episodes"]})  # episodes with questions
    assert kept and summary["heldout_episodes"] == kept and set(held["episode_index"]) == set(kept)
    assert not {1, 3} & set(train["episode_index"]) and len(train) > 0
    assert re.fullmatch(r"cm@-?\d+\.\d{4},-?\d+\.\d{4},-?\d+\.\d{4}/0", meta["coordinates"])
    with pytest.raises(ValueError, match=r"held-out episodes \[7\] are not in the dataset"):
        build_mcqa(str(source), tmp_path / "n", config=MCQAConfig(heldout_ids=(7,)))


def test_relative_weight_change_and_its_printed_line():
    import torch

    from reasoning.drift import drift_line, relative_weight_change

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    moved = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    moved.load_state_dict({k: 1.01 * v for k, v in base.state_dict().items()})  # every weight 1% larger
    got = relative_weight_change(moved, base)
    assert got["relative_weight_change"] == pytest.approx(0.01, rel=1e-5)  # fp32 weights
    assert got["tensors"] == 4
    assert relative_weight_change(base, base)["relative_weight_change"] == 0.0
    line = drift_line({"base": "tiny", "relative_weight_change": 0.01, "kl_to_base": 0.5, "tokens": 100})
    assert "‖θ−θ0‖/‖θ0‖ = 0.01" in line and "KL(built ‖ base) = 0.5 nats/token over 100" in line


def test_token_kl_resolves_a_tiny_move():
    """A GRPO build at a small lr moves the next-token distributions by ~1e-10 nats (the tiny study measured a
    float32 sum of -2.4e-10). Oracle, independent of the code: for logits that differ by a small d,
    KL(p || q) = Var_p(d) / 2 to second order."""
    import torch

    from reasoning.drift import token_kl

    g = torch.Generator().manual_seed(0)
    q = 4 * torch.randn(2, 6, 1000, generator=g)  # (B, L, V) float32 logits
    p = q + 1e-5 * torch.randn(2, 6, 1000, generator=g)  # a move far below float32's log-softmax rounding
    got = token_kl(p, q)  # (B, L)
    probs = torch.softmax(p.double(), -1)
    d = (p.double() - q.double()) - (probs * (p.double() - q.double())).sum(-1, keepdim=True)
    want = 0.5 * (probs * d.pow(2)).sum(-1)
    assert got.shape == (2, 6) and got.dtype == torch.float64
    assert torch.all(want > 0) and torch.allclose(got, want, rtol=1e-3)
    assert torch.all(token_kl(q, q) == 0)
