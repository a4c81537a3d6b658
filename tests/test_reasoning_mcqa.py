"""reasoning/ without training: keypoints, MCQA built from demonstrations, its refusals, answer scoring."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from reasoning.keypoints import KeypointRule, extract_keypoints, gripper_events  # noqa: E402
from reasoning.mcqa import MCQAConfig, build_mcqa, load_mcqa  # noqa: E402
from reasoning.questions import LETTERS, OptionRule, movement_labels, movement_phrase  # noqa: E402
from reasoning.rewards import answer_reward, format_reward, score  # noqa: E402


def write_dataset(
    root: Path, episodes: list[tuple[np.ndarray, np.ndarray]], with_action: bool = True
) -> Path:
    """A LeRobotDataset of given (states (T, 8), actions (T, 7)) episodes, 32x32 random images."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    image = {"dtype": "image", "shape": (32, 32, 3), "names": ["height", "width", "channels"]}
    features = {
        "observation.images.image": image,
        "observation.state": {"dtype": "float32", "shape": (8,), "names": None},
    }
    if with_action:
        features["action"] = {"dtype": "float32", "shape": (7,), "names": None}
    ds = LeRobotDataset.create(
        "local/t", fps=10, features=features, root=root, use_videos=False, image_writer_threads=0
    )
    rng = np.random.default_rng(0)
    for states, actions in episodes:
        for s, a in zip(states, actions, strict=True):
            frame = {"observation.images.image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}
            frame |= {"observation.state": s.astype(np.float32), "task": "put the bowl on the plate"}
            if with_action:
                frame["action"] = a.astype(np.float32)
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return root


def straight_episode(frames: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Constant velocity, gripper never changes: its only keypoint is the final frame."""
    states = np.zeros((frames, 8))
    states[:, 0] = np.linspace(0.0, 0.3, frames)
    actions = np.zeros((frames, 7))
    actions[:, 6] = -1.0
    return states, actions


def test_keypoint_rule_on_synthetic_trajectory():
    # move 20 frames, stop 10 frames, move 20, close the gripper at 50 while standing still 10 frames, move 20
    v = np.concatenate([np.full(20, 0.01), np.zeros(10), np.full(20, 0.01), np.zeros(10), np.full(20, 0.01)])
    pos = np.stack([np.concatenate([[0.0], np.cumsum(v)[:-1]]), np.zeros(80), np.zeros(80)], axis=1)
    grip = np.where(np.arange(80) >= 50, 1.0, -1.0)
    kps = extract_keypoints(pos, grip, KeypointRule())
    assert gripper_events(grip) == [50]
    assert [k.reason for k in kps] == ["stop", "gripper", "final"]
    assert 20 <= kps[0].frame < 30 and kps[1].frame == 50 and kps[2].frame == 79


def test_movement_phrase_uses_dominant_axes():
    rule = OptionRule()
    assert movement_phrase(movement_labels(np.array([5.0, 0.4, -4.0]), rule)) == "move front and down"
    # +Y is the image's left in the shown frame (rendered: tests/test_axis_words.py)
    assert movement_phrase(movement_labels(np.array([-1.0, 6.0, 0.0]), rule)) == "move left"
    assert movement_labels(np.array([0.3, 0.2, 0.1]), rule) is None


def test_mcqa_rows_well_formed(mcqa):
    dd, meta = load_mcqa(mcqa)
    assert set(dd) == {"train", "heldout"} and len(dd["heldout"]) > 0
    assert set(dd["train"]["episode_index"]).isdisjoint(dd["heldout"]["episode_index"])
    rule = OptionRule()
    for split in dd:
        rows = dd[split].remove_columns("image").to_list()
        for r in rows:
            assert len(r["options"]) == 4 and len(set(r["options"])) == 4
            assert sum(o == r["answer_text"] for o in r["options"]) == 1  # exactly one correct option
            assert r["options"][LETTERS.index(r["answer"])] == r["answer_text"]
            text = r["prompt"][0]["content"]
            for i, o in enumerate(r["options"]):
                assert f"{LETTERS[i]}. {o}" in text
            assert ("Current Robot State Position" in text) == (r["kind"] != "state")
            if r["kind"] != "movement":  # positions: >= min_dist_cm from the answer and from each other
                pts = [np.array(json.loads(o)) for o in r["options"]]
                d = [np.linalg.norm(a - b) for i, a in enumerate(pts) for b in pts[i + 1 :]]
                assert min(d) >= rule.min_dist_cm
            else:
                assert all(o.startswith("move ") for o in r["options"])
        for kind in ("waypoint", "state", "movement"):  # correct letter balanced within every (split, kind)
            letters = [r["answer"] for r in rows if r["kind"] == kind]
            counts = [letters.count(L) for L in "ABCD"]
            assert max(counts) - min(counts) <= 1, (split, kind, counts)
    assert (
        meta["source"]["data_hash"] and meta["mcqa_hash"] and meta["config"]["keypoints"]["merge_frames"] == 5
    )
    assert meta["counts"]["train"]["questions"] == len(dd["train"])
    assert dd["train"][0]["image"].size == (64, 64)


def test_mcqa_deterministic_under_seed(source, mcqa, tmp_path):
    same = build_mcqa(str(source), tmp_path / "same", config=MCQAConfig(seed=0, heldout_episodes=1))
    other = build_mcqa(str(source), tmp_path / "other", config=MCQAConfig(seed=1, heldout_episodes=1))
    a, _ = load_mcqa(mcqa)
    b, _ = load_mcqa(tmp_path / "same")
    c, _ = load_mcqa(tmp_path / "other")
    assert a["train"].to_list() == b["train"].to_list() and a["heldout"].to_list() == b["heldout"].to_list()
    assert same["mcqa_hash"] == json.loads((mcqa / "r1vla_mcqa.json").read_text())["mcqa_hash"]
    cols = ["id", "options", "answer"]
    assert a["train"].select_columns(cols).to_list() != c["train"].select_columns(cols).to_list()
    assert other["mcqa_hash"] != same["mcqa_hash"]


def test_mcqa_cli_show_prints_chat_text(source, tmp_path, tiny_backbone_dir, capsys):
    from r1vla.cli import main

    args = ["mcqa", "--dataset", str(source), "--out", str(tmp_path / "m"), "--show", "1"]
    assert main(args + ["--template", str(tiny_backbone_dir), "--kinds", "movement"]) == 0
    out = capsys.readouterr().out
    assert (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|># You are Franka Robot Assistant" in out
    )
    assert out.rstrip().endswith("<|im_start|>assistant") and "How will the gripper move" in out


@pytest.mark.libero
def test_keypoints_at_expert_grasp_and_release():
    from demos.expert import run_expert
    from libero_core.sim import LiberoSim

    sim = LiberoSim("libero_object", 1, render=False)
    try:
        run = run_expert(sim, 0, max_steps=280)
    finally:
        sim.close()
    assert run.success, run.reason
    events = gripper_events(run.actions[:, 6])
    kps = extract_keypoints(run.states[:, :3], run.actions[:, 6])
    assert events and run.actions[events[0], 6] > 0  # the grasp: the gripper closes
    for e in events:  # every grasp / release has a keypoint within 2 steps
        assert min(abs(k.frame - e) for k in kps) <= 2, (e, kps)
    assert kps[-1].frame == len(run.actions) - 1  # placed in the basket: the final frame
    assert len(kps) <= 2 * len(events) + 3, kps  # sub-goals, not every other frame


def test_dataset_without_needed_features(tmp_path):
    root = write_dataset(tmp_path / "noact", [straight_episode()], with_action=False)
    with pytest.raises(
        ValueError,
        match=r"action \(gripper command in action\[6\]\).*Found features: .*observation\.state \(8,\)",
    ):
        build_mcqa(str(root), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_episodes_with_too_few_keypoints_are_skipped(tmp_path, caplog):
    rng = np.random.default_rng(0)
    moving = np.zeros((40, 8))
    moving[:, :3] = np.cumsum(rng.normal(0, 0.01, (40, 3)), axis=0)
    acts = np.zeros((40, 7))
    acts[:, 6] = np.where(np.arange(40) >= 20, 1.0, -1.0)  # a grasp at frame 20
    root = write_dataset(tmp_path / "mixed", [straight_episode(), (moving, acts)])
    with caplog.at_level(logging.WARNING, logger="reasoning.mcqa"):
        summary = build_mcqa(str(root), tmp_path / "out", config=MCQAConfig(heldout_episodes=0))
    assert (
        list(summary["skipped_episodes"]) == ["0"]
        and "waypoint/movement need >= 2" in summary["skipped_episodes"]["0"]
    )
    assert "episode 0 skipped" in caplog.text and summary["counts"]["train"]["questions"] > 0
    only_state = build_mcqa(
        str(root), tmp_path / "state", config=MCQAConfig(kinds=("state",), heldout_episodes=0)
    )
    assert "0" not in only_state["skipped_episodes"]  # the state question needs no next keypoint
    root2 = write_dataset(tmp_path / "flat", [straight_episode(), straight_episode(20)])
    with pytest.raises(ValueError, match=r"no questions: all 2 episodes were skipped \(0: 1 keypoint"):
        build_mcqa(str(root2), tmp_path / "none")


def test_base_that_is_not_qwen2_5_vl(tmp_path, mcqa):
    from transformers import LlamaConfig

    from reasoning.probe import probe
    from reasoning.train import train_backbone

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(tmp_path / "llama")
    with pytest.raises(
        ValueError, match="found architecture LlamaForCausalLM.*expected Qwen2_5_VLForConditionalGeneration"
    ):
        train_backbone("sft", str(tmp_path / "llama"), mcqa, tmp_path / "out", steps=1)
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        probe(tmp_path / "llama", mcqa)
    with pytest.raises(ValueError, match=r"unknown training method 'dpo'.*valid: sft, grpo"):
        train_backbone("dpo", str(tmp_path / "llama"), mcqa, tmp_path / "out")


def test_scoring_on_a_known_answer_key(mcqa):
    rows, _ = load_mcqa(mcqa, "train")
    answers, kinds = rows["answer"], rows["kind"]
    always_a = ["<think>the gripper is above the bowl</think><answer>A</answer>"] * len(rows)
    r = score(always_a, answers, kinds)
    n_a = answers.count("A")
    assert r["overall"]["n"] == len(rows) and r["overall"]["accuracy"] == pytest.approx(n_a / len(rows))
    assert r["overall"]["format"] == 1.0 and r["chance"] == 0.25
    lo, hi = r["overall"]["accuracy_ci95"]
    assert lo < n_a / len(rows) < hi
    for kind in ("waypoint", "state", "movement"):
        k_a = sum(a == "A" and k == kind for a, k in zip(answers, kinds, strict=True))
        assert r["per_kind"][kind]["accuracy"] == pytest.approx(k_a / kinds.count(kind))
    bare = score(
        ["<answer> B </answer>", "B", "<think>x</think><answer>C</answer> trailing"],
        ["B", "B", "C"],
        ["s"] * 3,
    )
    assert bare["overall"]["accuracy"] == pytest.approx(2 / 3) and bare["overall"]["format"] == 0.0
    assert format_reward(["<think>a</think>\n<answer>D</answer>", "<answer>D</answer>"]) == [1.0, 0.0]
    assert answer_reward(
        [[{"role": "assistant", "content": "<answer>D</answer>"}], "D"], answer=["D", "D"]
    ) == [1.0, 0.0]
