"""The transfer study in one command: config validation, the tiny study end to end, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
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
            lambda d: d["backbones"][0].update(standin_seed=None),
            r"'robot_r1' \(robot_r1\) needs a checkpoint",
        ),
        (lambda d: d["backbones"][0].update(standin_seed=None, path="/no/such/ckpt"), r"neither a folder"),
        (lambda d: d["policy"].update(hed="flow"), r"unknown policy field 'hed' \(did you mean 'head'\?\)"),
        (lambda d: d["train"].update(stepz=3), r"unknown field train.stepz \(did you mean 'steps'\?\)"),
        (
            lambda d: d["eval"].update(protocol="openvla"),
            r"unknown eval.protocol 'openvla'.*standard, lerobot044",
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


def smallest(out_name: str = "study") -> study_config.StudyConfig:
    """The tiny study at its smallest: 1 task, 1 training + 1 held-out episode, a short fine-tune, 1 episode."""
    tiny = study_config.PRESETS["tiny"]
    return dataclasses.replace(
        tiny,
        name=out_name,
        backbones=(
            BackboneSpec("robot_r1", "robot_r1", standin_seed=0),
            BackboneSpec("sft", "sft", standin_seed=1),
        ),
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
            steps=60, batch_size=8, seed=42, num_workers=0, save_freq=60, log_freq=20, device="cpu"
        ),
        eval=EvalSpec(
            suites=("libero_object",), tasks="0", init_states="0", seeds=(7,), max_steps=16, workers=1
        ),
    )


@pytest.mark.libero
def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "study"
    cfg = smallest()
    calls = []
    real_evaluate = Study.evaluate

    def flaky_evaluate(self, b):  # the first evaluation dies, as a killed job would
        calls.append(b.label)
        if len(calls) == 1:
            raise RuntimeError("simulated crash")
        return real_evaluate(self, b)

    monkeypatch.setattr(Study, "evaluate", flaky_evaluate)
    with pytest.raises(StageFailed, match=r"(?s)stage .eval/robot_r1. failed.*re-run the same command"):
        Study(cfg, out, log=lambda s: None).run()
    ckpt = out / "train" / "robot_r1" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"
    before = ckpt.stat().st_mtime_ns
    logs: list[str] = []
    report = Study(cfg, out, log=logs.append).run()  # resumes: nothing complete is redone
    assert ckpt.stat().st_mtime_ns == before
    assert any("train/robot_r1: complete, skipped" in line for line in logs)
    assert any("data: complete, skipped" in line for line in logs)

    text = report.read_text()
    assert "Stand-in backbones" in text and "robot_r1" in text and "sft" in text
    for label in ("robot_r1", "sft"):
        offline = json.loads((out / "stages" / f"offline__{label}.json").read_text())
        assert offline["heldout_l1"] < offline["untrained_l1"], offline  # the fine-tune learned something
        episodes = (out / "eval" / label / "episodes.jsonl").read_text().splitlines()
        assert len(episodes) == 1 and json.loads(episodes[0])["label"] == label
    saved = yaml.safe_load((out / "study_config.yaml").read_text())
    assert saved["environment"]["versions"]["lerobot"] == "0.4.4"
    assert (out / "compare" / "report.json").exists() and (out / "compare" / "per_suite.png").exists()

    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=61))
    with pytest.raises(ValueError, match=r"another config \(fields differ: \['train'\]\)"):
        Study(changed, out).run()
    assert os.path.exists(ckpt)  # refused before touching anything
