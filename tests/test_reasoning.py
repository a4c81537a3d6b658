"""reasoning/: MCQA from demonstrations, SFT and GRPO backbones on the tiny base, the reasoning probe."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from libero_like import make_libero_like_dataset  # noqa: E402

from reasoning.keypoints import KeypointRule, extract_keypoints, gripper_events  # noqa: E402
from reasoning.mcqa import MCQAConfig, build_mcqa, load_mcqa  # noqa: E402
from reasoning.questions import LETTERS, OptionRule, movement_labels, movement_phrase  # noqa: E402
from reasoning.rewards import answer_reward, format_reward, score  # noqa: E402

N_SFT = 8  # training questions the SFT test memorises
SFT_STEPS, SFT_LR = 100, 5e-3  # measured: loss 6.20 -> 0.003, accuracy 0/8 -> 8/8 (60 steps: 4/8, 80: 8/8)


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


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_libero_like_dataset(tmp_path_factory.mktemp("src") / "ds", episodes=6, frames=40)


@pytest.fixture(scope="module")
def mcqa(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mcqa") / "mcqa"
    build_mcqa(str(source), out, config=MCQAConfig(seed=0, heldout_episodes=1))
    return out


# --- keypoints and questions ------------------------------------------------------------------------------
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
    from eval_libero.sim import LiberoSim

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


# --- bad input --------------------------------------------------------------------------------------------
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


# --- scoring ----------------------------------------------------------------------------------------------
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


# --- training ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_dir(mcqa, tiny_backbone_dir, tmp_path_factory) -> Path:
    from reasoning.train import train_backbone

    out = tmp_path_factory.mktemp("sft") / "sft"
    kw = dict(lr=SFT_LR, batch=N_SFT, micro_batch=N_SFT, limit=N_SFT, save_steps=1000)
    return train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=SFT_STEPS, **kw)


def test_sft_lowers_loss_and_beats_chance(sft_dir, mcqa, tiny_backbone_dir):
    from reasoning.probe import probe

    before = probe(tiny_backbone_dir, mcqa, "train", limit=N_SFT, max_new_tokens=16)
    after = probe(sft_dir, mcqa, "train", limit=N_SFT, max_new_tokens=16)
    prov = json.loads((sft_dir / "r1vla_provenance.json").read_text())
    log = [json.loads(line) for line in (sft_dir / "r1vla_train_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in log if "loss" in h]
    assert (
        prov["method"] == "sft"
        and prov["steps"] == SFT_STEPS
        and prov["hyperparameters"]["sft_targets"] == "direct"
    )
    assert prov["mcqa_hash"] == json.loads((mcqa / "r1vla_mcqa.json").read_text())["mcqa_hash"]
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    assert before["overall"]["accuracy"] <= 0.25
    assert after["overall"]["accuracy"] >= 0.75, after["examples"]  # chance 0.25; 6/8 has p < 0.005
    # Direct SFT is asked as it was trained (answer only) and its format is scored as such
    assert after["answer_format"] == "direct" and prov["answer_format"] == "direct"
    assert after["overall"]["answered"] == 1.0 and after["overall"]["format"] == 1.0
    assert prov["drift"]["relative_weight_change"] > 0 and prov["drift"]["kl_to_base"] > 0


@pytest.fixture(scope="module")
def direct_mcqa(mcqa, tmp_path_factory) -> Path:
    """The MCQA asked in the Direct SFT format (the prompt `sft_dir` learned to answer)."""
    import shutil

    from reasoning.mcqa import META_FILE
    from reasoning.questions import with_answer_format

    dd, _ = load_mcqa(mcqa)
    out = tmp_path_factory.mktemp("direct") / "mcqa"
    dd.map(lambda r: {"prompt": with_answer_format(r["prompt"], "direct")}).save_to_disk(str(out))
    shutil.copy(mcqa / META_FILE, out / META_FILE)
    return out


def test_grpo_logs_rewards(sft_dir, direct_mcqa, tmp_path):
    """GRPO from the SFT checkpoint, on the prompts it was trained with: it answers, so the answer reward varies
    within a group. The SFT model is so sharp that at temperature 1.0 all 5 samples agree (no signal); 1.5 makes
    the groups differ (measured)."""
    from reasoning.train import train_backbone

    out = train_backbone(
        "grpo",
        str(sft_dir),
        direct_mcqa,
        tmp_path / "grpo",
        steps=2,
        batch=2,
        micro_batch=1,
        limit=N_SFT,
        max_completion_length=16,
        lr=1e-5,
        temperature=1.5,
    )
    prov = json.loads((out / "r1vla_provenance.json").read_text())
    log = [json.loads(line) for line in (out / "r1vla_train_log.jsonl").read_text().splitlines()]
    steps = [h for h in log if "reward" in h]
    assert prov["steps"] == 2 and len(steps) == 2 and len(prov["rewards_history"]) == 2
    assert prov["hyperparameters"]["num_generations"] == 5 and prov["hyperparameters"]["temperature"] == 1.5
    from reasoning.recipes import TrainConfig

    d = TrainConfig()  # the Robot-R1 / EasyR1 defaults
    assert (d.num_generations, d.temperature, d.learning_rate, d.beta, d.batch, d.epochs) == (
        5,
        1.0,
        1e-6,
        0.01,
        128,
        5.0,
    )
    assert prov["hyperparameters"]["learning_rate"] == 1e-5 and prov["hyperparameters"]["beta"] == 0.01
    assert "rewards/format_reward/mean" in steps[0] and "rewards/answer_reward/mean" in steps[0]
    assert any(h["rewards/answer_reward/mean"] > 0 for h in steps)
    assert any(h["frac_reward_zero_std"] < 1 for h in steps) and any(h["loss"] != 0 for h in steps)
    assert steps[1]["kl"] > 0  # step 1 moved the policy away from the reference model
    assert prov["final"]["reward"] == steps[-1]["reward"]


def test_grpo_without_learning_signal_warns(mcqa, tiny_backbone_dir, tmp_path, caplog):
    from reasoning.train import NO_SIGNAL, train_backbone

    with caplog.at_level(logging.WARNING, logger="reasoning.train"):
        out = train_backbone(
            "grpo",
            str(tiny_backbone_dir),
            mcqa,
            tmp_path / "g",
            steps=3,
            batch=1,
            micro_batch=1,
            limit=4,
            max_completion_length=8,
            warn_every=2,
        )
    prov = json.loads((out / "r1vla_provenance.json").read_text())
    assert [w["step"] for w in prov["warnings"]] == [1, 3]  # once per warn_every steps, not every step
    assert all(NO_SIGNAL in w["message"] for w in prov["warnings"])
    assert caplog.text.count(NO_SIGNAL) == 2


def test_backbones_load_through_adapters_and_policy(sft_dir):
    from adapters import BackboneConfig, build_backbone
    from policies.r1vla import R1VLAConfig, R1VLAPolicy

    for key in ("sft", "robot_r1"):
        bb = build_backbone(BackboneConfig(key=key, path=str(sft_dir), image_size=56))
        out = bb(torch.rand(2, 2, 3, 64, 64), ["put the bowl on the plate", "pick up the soup"])
        assert out["tokens"].shape[0] == 2 and torch.isfinite(out["tokens"]).all()
    policy = R1VLAPolicy(make_policy_config(R1VLAConfig, backbone="sft", backbone_path=str(sft_dir)))
    assert policy.model.backbone.config.path == str(sft_dir)


def make_policy_config(cls, **kw):
    from lerobot.configs.types import FeatureType, PolicyFeature

    img = PolicyFeature(FeatureType.VISUAL, (3, 64, 64))
    return cls(
        device="cpu",
        head="l1",
        image_size=56,
        head_hidden=32,
        head_layers=1,
        input_features={
            "observation.images.image": img,
            "observation.images.image2": img,
            "observation.state": PolicyFeature(FeatureType.STATE, (8,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))},
        **kw,
    )


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_probe_reads_a_policy_checkpoint(mode, sft_dir, mcqa, tmp_path):
    from policies.r1vla import R1VLAConfig, R1VLAPolicy
    from reasoning.probe import load_for_generation, probe

    cfg = make_policy_config(
        R1VLAConfig, backbone="sft", backbone_path=str(sft_dir), backbone_mode=mode, lora_r=4
    )
    policy = R1VLAPolicy(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # VLA fine-tuning moved the backbone: perturb what the checkpoint holds
        for name, p in policy.model.backbone.named_parameters():
            if p.requires_grad and ("lora_B" in name or mode == "full"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    policy.save_pretrained(tmp_path / "pretrained_model")
    model, processor, info = load_for_generation(str(tmp_path / "pretrained_model"))
    assert info["kind"] == "r1vla_policy" and info["mode"] == mode and info["tensors"] > 0
    ids = processor.tokenizer("put the bowl on the plate", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model.model(input_ids=ids).last_hidden_state
        theirs = policy.model.backbone.model(input_ids=ids).last_hidden_state
        base = load_for_generation(str(sft_dir))[0].model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours, base, atol=1e-3)  # the policy's weights were applied, not the base's
    r = probe(tmp_path / "pretrained_model", mcqa, "heldout", limit=3, max_new_tokens=12)
    assert r["overall"]["n"] == 3 and r["loaded"]["kind"] == "r1vla_policy"


def test_interrupted_training_resumes(mcqa, tiny_backbone_dir, tmp_path):
    from transformers import TrainerCallback

    from reasoning.train import train_backbone

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed at step 3")

    out = tmp_path / "bb"
    kw = dict(batch=2, micro_batch=2, limit=4, save_steps=2, lr=1e-3)
    with pytest.raises(KeyboardInterrupt):
        train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=4, callbacks=[Crash()], **kw)
    partial = tmp_path / ".bb.partial"
    assert not out.exists() and (partial / "trainer" / "checkpoint-2").is_dir()
    with pytest.raises(ValueError, match=r"different request.*config\.lr: 0\.001 -> 0\.002"):
        train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=4, **{**kw, "lr": 2e-3})
    train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=4, **kw)
    prov = json.loads((out / "r1vla_provenance.json").read_text())
    assert prov["resumed_from"] == "checkpoint-2" and prov["steps"] == 4 and not partial.exists()
    steps = [json.loads(line)["step"] for line in (out / "r1vla_train_log.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == [1, 2, 3, 4, 4]  # 1-2 before the crash, 3-4 after, the summary
    weights = sorted(p.name for p in out.iterdir() if re.match(r"model.*\.safetensors", p.name))
    assert weights == ["model.safetensors"]
    assert train_backbone("sft", str(tiny_backbone_dir), mcqa, out, steps=4, **kw) == out  # complete: no-op


def test_lora_training_is_merged_on_save(mcqa, tiny_backbone_dir, tmp_path):
    from safetensors.torch import load_file

    from reasoning.train import train_backbone

    kw = dict(lora=True, lora_r=4, lora_alpha=8, batch=2, micro_batch=2, limit=4, lr=1e-2)
    out = train_backbone("sft", str(tiny_backbone_dir), mcqa, tmp_path / "lora", steps=2, **kw)
    merged, base = load_file(out / "model.safetensors"), load_file(tiny_backbone_dir / "model.safetensors")
    assert sorted(merged) == sorted(base)  # a plain Qwen2.5-VL checkpoint: no adapter tensors left
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(re.search(r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$", k) for k in changed)
    assert not any(k.startswith("visual.") for k in changed)  # LoRA on the language model only
