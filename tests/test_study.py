"""The transfer study in one command: config validation, the tiny study end to end, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from r1vla import study_config
from r1vla.study import StageFailed, Study
from r1vla.study_config import BackboneSpec, DataSpec, EvalSpec, TrainSpec

REPO = Path(__file__).resolve().parents[1]


def base_dict() -> dict:
    return study_config.PRESETS["tiny"].to_dict()


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d["backbones"][0].update(key="robot_r2"), r"unknown backbone key 'robot_r2'.*robot_r1"),
        (lambda d: d["backbones"][1].update(label="robot_r1"), r"label\(s\) \['robot_r1'\] appear twice"),
        (
            lambda d: d.update(baseline="base"),
            r"baseline 'base' is not a backbone label; valid: robot_r1, sft",
        ),
        (
            lambda d: d["eval"].update(suites=["libero_goals"]),
            r"unknown LIBERO suite 'libero_goals'.*libero_goal",
        ),
        (lambda d: d["data"].update(tasks="0,12"), r"task id 12 out of range; valid: 0-9"),
        (
            lambda d: d["backbones"][0].update(build=None),
            r"'robot_r1' \(robot_r1\) needs a checkpoint",
        ),
        (lambda d: d["backbones"][0].update(build=None, path="/no/such/ckpt"), r"neither a folder"),
        (lambda d: d["policy"].update(hed="flow"), r"unknown policy field 'hed' \(did you mean 'head'\?\)"),
        (lambda d: d["train"].update(stepz=3), r"unknown field train.stepz \(did you mean 'steps'\?\)"),
        (
            lambda d: d["eval"].update(protocol="openvla"),
            r"unknown eval.protocol 'openvla'.*standard, lerobot06",
        ),
        (lambda d: d["train"].update(seeds=[42, 42]), r"train.seeds must be distinct integers"),
        (lambda d: d["train"].update(seed=42), r"unknown field train.seed \(did you mean 'seeds'\?\)"),
        (
            lambda d: d["eval"].update(perturbations=["lang"]),
            r"unknown perturbation 'lang' \(did you mean 'lan'",
        ),
        (lambda d: d["eval"].update(perturbations=["env"]), r"perturbation 'env' is registered but"),
        (
            lambda d: d["data"].update(official_init_states=True),
            r"demos may start from official init states \[0, 1, .*eval.init_states includes \[0, 1\]",
        ),
    ],
)
def test_config_errors_before_any_work(tmp_path, mutate, message):
    raw = base_dict()
    mutate(raw)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        study_config.load(tmp_path / "study.yaml")
    proc = subprocess.run(
        [
            str(REPO / ".venv/bin/r1vla"),
            "study",
            "--config",
            str(tmp_path / "study.yaml"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and not (tmp_path / "out").exists()  # rejected before anything was written


def test_presets_and_paths():
    with pytest.raises(ValueError, match=r"unknown study preset 'papr' \(did you mean 'paper'\?\)"):
        study_config.preset("papr")
    paper = study_config.preset("paper")
    with pytest.raises(ValueError, match="Robot-R1"):
        study_config.validate(paper)
    ok = study_config.with_paths(paper, ["robot_r1=org/robot-r1", "sft=org/sft"])
    assert [b.path for b in ok.backbones] == ["org/robot-r1", "org/sft"]
    with pytest.raises(ValueError, match="LABEL one of robot_r1, sft"):
        study_config.with_paths(paper, ["base=org/x"])
    dumped = study_config.from_dict(yaml.safe_load(yaml.safe_dump(ok.to_dict())))
    assert dumped == ok  # the saved YAML reloads to the same study


LR = 5e-3  # one learning rate for both builds (reasoning/recipes.py LR_RULE)
SFT_ARGS = {"steps": 4, "lr": LR, "batch": 4, "micro_batch": 4, "limit": 4}
GRPO_ARGS = {"steps": 1, "lr": LR, "batch": 1, "micro_batch": 1, "limit": 2, "max_completion_length": 8}


def smallest(out_name: str = "study") -> study_config.StudyConfig:
    """The tiny study at its smallest: 1 task, 1 training + 1 held-out episode, a short fine-tune (checkpoint at
    half-time), 1 episode per arm and its `lan` variant, 1 episode from the training start."""
    tiny = study_config.PRESETS["tiny"]
    return dataclasses.replace(
        tiny,
        name=out_name,
        backbones=(  # built from the tiny base by GRPO and SFT on the demos' MCQA (a few CPU steps)
            BackboneSpec("robot_r1", "robot_r1", build="grpo", base="tiny", build_args=GRPO_ARGS),
            BackboneSpec("sft", "sft", build="sft", base="tiny", build_args=SFT_ARGS),
        ),
        mcqa=study_config.MCQASpec(heldout_episodes=1, probe_limit=4, probe_max_new_tokens=8),
        data=DataSpec(
            source="generate",
            suites=("libero_object",),
            tasks="0",
            episodes_per_task=1,
            heldout_per_task=1,
            workers=1,
        ),
        policy={"head": "l1", "image_size": 56, "head_hidden": 64, "head_layers": 1, "n_action_steps": 8},
        train=TrainSpec(
            steps=60, batch_size=8, seeds=(42,), num_workers=0, save_freq=30, log_freq=20, device="cpu"
        ),
        eval=EvalSpec(
            suites=("libero_object",),
            tasks="0",
            init_states="0",
            seeds=(7,),
            max_steps=16,
            workers=1,
            perturbations=("lan",),
            train_starts=1,
        ),
    )


def _last_checkpoint(out: Path, label: str = "robot_r1", seed: int = 42) -> Path:
    return out / "train" / label / f"seed{seed}" / "checkpoints" / "last" / "pretrained_model"


def _kill_after_first_checkpoint(cfg, out: Path, tmp: Path) -> None:
    """Run the study as a user would and kill -9 it (all its processes) once the first arm saved a checkpoint."""
    (tmp / "study.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    first = _last_checkpoint(out) / "train_config.json"
    cmd = [str(REPO / ".venv/bin/r1vla"), "study", "--config", str(tmp / "study.yaml"), "--out", str(out)]
    with open(tmp / "study.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None and not first.exists():
            time.sleep(0.2)
        assert proc.poll() is None and first.exists(), (tmp / "study.log").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.libero
def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "study"
    cfg = smallest()
    _kill_after_first_checkpoint(cfg, out, tmp_path)  # killed mid-training, after its first checkpoint
    calls = []
    real_evaluate = Study.evaluate

    def flaky_evaluate(self, b, seed):  # the first evaluation dies, as a crashed job would
        calls.append(b.label)
        if len(calls) == 1:
            raise RuntimeError("simulated crash")
        return real_evaluate(self, b, seed)

    monkeypatch.setattr(Study, "evaluate", flaky_evaluate)
    logs: list[str] = []
    with pytest.raises(
        StageFailed, match=r"(?s)stage .eval/robot_r1/seed42. failed.*re-run the same command"
    ):
        Study(cfg, out, log=logs.append).run()
    assert any("train/robot_r1/seed42: resuming from" in line for line in logs)
    trained = json.loads((out / "stages" / "train__robot_r1__seed42.json").read_text())
    assert trained["resumed"] and trained["steps"] == 60 and not list(out.rglob("*.incomplete-*"))
    ckpt = _last_checkpoint(out) / "model.safetensors"
    before = ckpt.stat().st_mtime_ns
    logs.clear()
    report = Study(cfg, out, log=logs.append).run()  # resumes: nothing complete is redone
    assert ckpt.stat().st_mtime_ns == before
    assert any("train/robot_r1/seed42: complete, skipped" in line for line in logs)
    assert any("data: complete, skipped" in line for line in logs)

    # every arm got the same training arguments but its backbone (and its own output folder)
    args = {
        b: json.loads((out / "stages" / f"train__{b}__seed42.json").read_text())["args"]
        for b in ("robot_r1", "sft")
    }
    differ = [(a, b) for a, b in zip(args["robot_r1"], args["sft"], strict=True) if a != b]
    assert [a.split("=")[0] for a, _ in differ] == [
        "--policy.backbone",
        "--policy.backbone_path",
        "--output_dir",
    ]
    ident = json.loads((out / "stages" / "identity__seed42.json").read_text())
    assert len(ident["head_init_sha256"]) == 16 and len(ident["first_batch_indices_sha256"]) == 16

    text = report.read_text()
    assert "Stand-in backbones" in text and "robot_r1" in text and "sft" in text
    assert "Reasoning probe" in text and "| base:tiny |" in text  # probe accuracy next to LIBERO success
    built = {b: json.loads((out / "stages" / f"backbone__{b}.json").read_text()) for b in ("robot_r1", "sft")}
    assert {b: v["built"] for b, v in built.items()} == {"robot_r1": "grpo", "sft": "sft"}
    prov = json.loads((Path(built["sft"]["path"]) / "r1vla_provenance.json").read_text())
    assert prov["method"] == "sft" and prov["steps"] == 4
    # both arms prompted alike (style and the coordinate format their MCQA used), and both moved from the base
    prompt = json.loads((out / "stages" / "prompt.json").read_text())
    assert prompt["style"] == "robot_r1" and prompt["coordinates"] == prov["coordinates"]
    assert (
        prompt["coordinates"].startswith("cm@")
        and f"style `robot_r1`, positions written as `{prompt['coordinates']}`" in text
    )
    assert "How far each built backbone moved from its base" in text
    for b, v in built.items():
        assert v["drift"]["relative_weight_change"] > 0 and v["drift"]["kl_to_base"] > 0, (b, v["drift"])
    mcqa = json.loads((out / "mcqa" / "r1vla_mcqa.json").read_text())
    assert (
        mcqa["heldout_episodes"] == json.loads((out / "stages" / "data.json").read_text())["heldout_episodes"]
    )
    assert "LIBERO's randomized placement" in text and "mean-action baseline" in text
    assert "Success from the training starts" in text and "checkpoint" in text
    for label in ("robot_r1", "sft"):
        offline = json.loads((out / "stages" / f"offline__{label}__seed42.json").read_text())
        assert offline["heldout_l1"] < offline["untrained_l1"], offline  # the fine-tune learned something
        episodes = [
            json.loads(x)
            for x in (out / "eval" / label / "seed42" / "episodes.jsonl").read_text().splitlines()
        ]
        assert sorted(e["perturbation"] for e in episodes) == ["lan", "none"] and {
            e["label"] for e in episodes
        } == {label}
        (start,) = [
            json.loads(x)
            for x in (out / "eval_train" / label / "seed42" / "episodes.jsonl").read_text().splitlines()
        ]
        assert start["protocol"]["init_states"].startswith("dataset ") and start["train_seed"] == 42
    saved = yaml.safe_load((out / "study_config.yaml").read_text())
    assert saved["environment"]["versions"]["lerobot"] == metadata.version("lerobot") and metadata.version(
        "lerobot"
    ).startswith("0.6.")
    rep = json.loads((out / "compare" / "report.json").read_text())
    assert "ood" in rep and (out / "compare" / "per_suite.png").exists()

    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=61))
    with pytest.raises(ValueError, match=r"another config \(fields differ: \['train'\]\)"):
        Study(changed, out).run()
    assert os.path.exists(ckpt)  # refused before touching anything


@pytest.mark.libero
def test_study_refuses_to_evaluate_on_training_starts(tmp_path):
    """Demos from official init states 0-1, evaluation on init state 1: refused after the data, before training."""
    cfg = smallest()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, official_init_states=True),
        eval=dataclasses.replace(cfg.eval, init_states="5"),
    )
    study = Study(cfg, tmp_path / "s", log=lambda s: None)
    study.prepare_data = (
        lambda: {  # the episodes such demos would have: starts = official init states 0 and 1
            "repo_id": "local/x",
            "root": str(_fake_demos(tmp_path / "d", [0, 5])),
            "train_episodes": [0, 1],
            "heldout_episodes": [],
            "expert": None,
        }
    )
    with pytest.raises(StageFailed, match=r"libero_object task 0 init state 5 = training episode 1"):
        study.run()
    assert not (tmp_path / "s" / "train").exists()


def _fake_demos(root: Path, inits: list[int]) -> Path:
    """meta/r1vla_demos.json + meta/start_states.npz of episodes that started from these official init states."""
    import numpy as np

    from libero_core.sim import init_states

    (root / "meta").mkdir(parents=True)
    official = init_states("libero_object", 0)
    eps = [
        {"episode_index": i, "suite": "libero_object", "task_id": 0, "key": f"k{i}"}
        for i in range(len(inits))
    ]
    (root / "meta" / "r1vla_demos.json").write_text(
        json.dumps(
            {"config": {"source": "scripted_expert", "starts": "official_init_states"}, "episodes": eps}
        )
    )
    np.savez(root / "meta" / "start_states.npz", **{f"episode_{i}": official[k] for i, k in enumerate(inits)})
    return root
