"""LIBERO evaluation harness: real LIBERO episodes at short caps, resume, workers, shards, bad input, LeRobot compat.

The policy under test is a tiny LeRobot policy defined here (type `eval_probe`), never the project's `r1vla`.
Subprocesses import this module to register it (`sys.path` = tests/, `import test_eval`).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import lerobot.processor as P
import numpy as np
import pytest
import torch
from fake_worker import fake_raw, faulty_worker
from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
from lerobot.utils.constants import ACTION, OBS_STATE
from torch import nn

from eval_libero.run import EvalConfig, EvalError, evaluate

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
IDENTITY = NormalizationMode.IDENTITY
CFG = dict(suites="object", tasks="0", max_steps=3)  # libero_object task 0, 3 env steps after the wait


def features(image_size: int = 256) -> dict:
    img = PolicyFeature(type=FeatureType.VISUAL, shape=(3, image_size, image_size))
    inputs = {"observation.images.image": img, "observation.images.image2": img}
    inputs[OBS_STATE] = PolicyFeature(type=FeatureType.STATE, shape=(8,))
    return dict(
        input_features=inputs, output_features={ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(7,))}
    )


@PreTrainedConfig.register_subclass("eval_probe")
@dataclass
class EvalProbeConfig(ACTConfig):  # ACT's config supplies the abstract API; the policy below is our own
    chunk_size: int = 4
    n_action_steps: int = 4
    noise: float = 0.0  # > 0: stochastic sampling (torch.randn)
    plan: list = field(default_factory=list)  # non-empty: replay these actions as one chunk
    bad_output: str = ""  # "nan" | "shape" | "short" | "raise": a broken policy
    normalization_mapping: dict = field(
        default_factory=lambda: dict.fromkeys(["VISUAL", "STATE", "ACTION"], IDENTITY)
    )


class EvalProbePolicy(PreTrainedPolicy):
    """Action = small tanh(linear(state, mean image intensities)), gripper open; optional noise / plan / faults."""

    config_class = EvalProbeConfig
    name = "eval_probe"

    def __init__(self, config: EvalProbeConfig, **kwargs):
        super().__init__(config)
        self.config = config
        self.proj = nn.Linear(10, 6)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) * 0.3)
            self.proj.bias.zero_()
        self.reset()

    def get_optim_params(self):
        return self.parameters()

    def reset(self):
        self._queue: deque = deque()

    def predict_action_chunk(self, batch, **kwargs):
        c, s = self.config, batch[OBS_STATE]
        for k, f in c.image_features.items():  # rendered at another resolution than it was trained on: refuse
            if tuple(batch[k].shape[-3:]) != tuple(f.shape):
                raise RuntimeError(f"{k}: got {tuple(batch[k].shape[-3:])}, trained on {tuple(f.shape)}")
        means = [batch[f"observation.images.{k}"].mean(dim=(1, 2, 3))[:, None] for k in ("image", "image2")]
        a = torch.tanh(self.proj(torch.cat([s, *means], 1))) * 0.3
        a = torch.cat([a, -torch.ones_like(a[:, :1])], 1)
        chunk = a[:, None].repeat(1, c.chunk_size, 1)
        if c.noise:
            chunk = chunk + c.noise * torch.randn(chunk.shape)
        if c.plan:
            chunk = torch.tensor(c.plan, dtype=torch.float32)[None].repeat(s.shape[0], 1, 1)
        if c.bad_output == "nan":
            chunk = chunk * float("nan")
        if c.bad_output == "shape":
            chunk = chunk[..., :5]
        if c.bad_output == "short":
            chunk = chunk[:, :2]
        if c.bad_output == "raise":
            raise RuntimeError("the policy broke")
        return chunk

    @torch.no_grad()
    def select_action(self, batch, **kwargs):
        if not self._queue:
            chunk = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]
            self._queue.extend(chunk.transpose(0, 1))
        return self._queue.popleft()

    def forward(self, batch, reduction: str = "mean"):
        loss = ((self.predict_action_chunk(batch) - batch[ACTION]) ** 2).mean()
        return loss, {}


def save_probe(path: Path, image_size: int = 256, **overrides) -> Path:
    """A complete LeRobot pretrained_model folder (config, weights, processors) of the probe policy, trained (its
    input features say) on `image_size`² frames."""
    cfg = EvalProbeConfig(device="cpu", **overrides, **features(image_size))
    EvalProbePolicy(cfg).save_pretrained(path)
    norm, out = cfg.normalization_mapping, cfg.output_features
    pre = [
        P.RenameObservationsProcessorStep(rename_map={}),
        P.AddBatchDimensionProcessorStep(),
        P.DeviceProcessorStep(device="cpu"),
        P.NormalizerProcessorStep(features={**cfg.input_features, **out}, norm_map=norm),
    ]
    P.PolicyProcessorPipeline(steps=pre, name="policy_preprocessor").save_pretrained(path)
    post = [P.UnnormalizerProcessorStep(features=out, norm_map=norm), P.DeviceProcessorStep(device="cpu")]
    P.PolicyProcessorPipeline(
        steps=post,
        name="policy_postprocessor",
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    ).save_pretrained(path)
    return path


def save_act(path: Path, **overrides) -> Path:
    """A tiny random ACT (a stock LeRobot policy) with its processors."""
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    dims = dict(dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1)
    cfg = ACTConfig(
        device="cpu",
        use_vae=False,
        **{"chunk_size": 4, "n_action_steps": 4, **overrides},
        pretrained_backbone_weights=None,
        **dims,
        **features(),
    )
    torch.manual_seed(0)
    ACTPolicy(cfg).save_pretrained(path)
    for pipeline in make_act_pre_post_processors(cfg, dataset_stats=None):
        pipeline.save_pretrained(path)
    return path


# libero_goal task 6 ("put the cream cheese in the bowl"), init state 0: a scripted expert's actions, recorded
# without rendering, stored as int8 (action * 127). Replayed from the 10 wait steps on, LIBERO's goal predicate
# first holds after the last (102nd) action.
PLAN_B64 = (
    "f3+BAPEAgX9/gf/y/4F/f4H+9f6Bf3+B/vj+gX9/gf77/oF/f4H+/v+Bf3+B/gH/gX9/gv4D/4F/f6n9BACBf3/L/QYAgX9g5f0H"
    "AIF/Q/f+BwCBeysC/wgBgWAYCAAHAoFHCwoABgKBMgEJAQQCgSD7BQICAoER96cD/wKBBPWnA/0Bgfr2pwP7AYHy9qcD+QGB7fen"
    "A/gAger4pwP3AIHp+acD9wCB6fqnAvgAgev6pwL4AIHt+6cC+QCB8P2nAfoAgfT+pwH8AIH4/7cB/QCB+wDNAP4Agf8B3wD/AIEC"
    "AewAAACBBAH1AAEAfwUC+wACAH8GAf8AAgB/BwEBAAIAfwcBAgACAH8GAQMAAgB/BgADAAIAfwUAAwACAH8EAAIAAQB/BAACAAEA"
    "fwP/AQABAH8C/wEAAQB/Av8BAAAAfwAAfwAAAH8AAH8AAAB/AAB/Af8AfwAAfwH/AH8AAH8B/wB/AAB/Af8AfwAAfwH/AH8AAH8B"
    "AAB/AAB/AAAAfwAAfwAAAH8AAH8AAQB/AAB/AAEAfwAAfwABAH8AAGMAAgB/AABGAAIAfwAAMAACAH+BgSAAAgB/gYETAf8Bf5SB"
    "BAP6AX+pgfgE+AJ/u4HxBPcCf8yB7wT4An/agfED+QF/54H0AvsBf/KE+QL+AX/8pf4BAAF/BMIDAAIAfwvZCAAEAH8Q6gv/Bv9/"
    "E/YO/wf/fxT9D/8H/38UAbT/B/9/EwO0/wb/fxAEtP8F/38NBLT/BP9/CQO0/wP/fwYCtP8C/38EArQAAQB/AgG0AAAAfwABtAAA"
    "AH//ALQA/wB//gC0AP8Af/4AtAD/AH/+ALQA/wB//gC0AP8Af/4AxwD/AH//ANkAAAB/AADnAAAAfwEA8AAAAH8AAAAAAACBAAAA"
    "AAEAgQAAAAABAIEAAAAAAQCBAAAAAAEAgQAAAAABAIEAAAAAAACB"
)


def read(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]


def strip(recs: list[dict]) -> list[dict]:
    """Records minus what legitimately differs between equivalent runs (wall time, video path)."""
    return sorted(
        ({k: v for k, v in r.items() if k not in ("wall_s", "video")} for r in recs),
        key=lambda r: (r["suite"], r["task_id"], r["init_state"], r["seed"]),
    )


def ecfg(ckpt: Path, out: Path, **kwargs) -> EvalConfig:
    return EvalConfig(policy=str(ckpt), out=str(out), **{**CFG, **kwargs})


def make_runner(ckpt: Path, mode: str = "auto"):
    from eval_libero.run import load_policy_config, load_runner

    return load_runner(ckpt, load_policy_config(ckpt, "cpu"), ["libero_object"], mode)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return save_probe(tmp_path_factory.mktemp("ckpt") / "pretrained_model", noise=0.05)


@pytest.fixture(scope="module")
def reference(probe, tmp_path_factory) -> tuple[Path, list[dict]]:
    """One worker, init states 0 and 1 of libero_object task 0, 3 steps each."""
    out = evaluate(ecfg(probe, tmp_path_factory.mktemp("ref") / "run", init_states="0,1", video_every=2))
    return out, read(out)


# ---- no LIBERO needed -----------------------------------------------------------------------------------------


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


def test_policy_runner_batching_rng_and_faults(tmp_path):
    from eval_libero.runner import Row

    rows = [Row(("s", 0, i, 7), fake_raw(i), "do it", 0) for i in range(3)]
    det = make_runner(save_probe(tmp_path / "det"))
    for r in rows:
        det.begin(r.key, 0)
    batched = det.act(rows)
    assert det.mode == "batched" and all(a.shape == (4, 7) for a in batched)
    assert np.allclose(det.act(rows[1:2])[0], batched[1], atol=1e-6)

    stoch = save_probe(tmp_path / "stoch", noise=0.1)
    for mode, n in (("auto", 4), ("select", 1)):
        together, alone = make_runner(stoch, mode), make_runner(stoch, mode)
        for i, r in enumerate(rows):
            together.begin(r.key, 100 + i)
        alone.begin(rows[2].key, 102)
        seq_t = [together.act(rows)[2] for _ in range(3)]  # episode 2 interleaved with two others
        seq_a = [alone.act(rows[2:])[0] for _ in range(3)]
        assert together.mode == ("per-episode" if mode == "auto" else "select") and seq_t[0].shape == (n, 7)
        assert all(np.array_equal(a, b) for a, b in zip(seq_t, seq_a, strict=True))
        assert not np.array_equal(seq_t[0], together.act(rows)[1])  # different episodes, different noise

    for fault, message in (
        ("nan", "policy_error: non-finite action"),
        ("shape", "policy_error: action of shape (5,); expected (7,)"),
        ("short", "policy_error: a chunk of 2 actions; n_action_steps asks for 4"),
        ("raise", "policy_error: RuntimeError: the policy broke"),
    ):
        runner = make_runner(save_probe(tmp_path / fault, bad_output=fault, noise=0.1))
        runner.begin(rows[0].key, 0)
        assert message in runner.act(rows[:1])[0]


def test_faults_end_only_their_episode(tmp_path):
    """A hung worker is killed after the timeout, a dead one replaced, a simulator error recorded; every episode
    gets a record with its reason and the others run to their end."""
    from eval_libero.scheduler import EpisodeSpec, run_episodes

    runner = make_runner(save_probe(tmp_path / "det"))
    specs = [EpisodeSpec(i, "libero_object", 0, i, 7, 100 + i, 8) for i in range(6)]
    got, logs = {}, []
    t0 = time.time()
    run_episodes(
        specs,
        runner,
        2,
        lambda s, r: got.__setitem__(s.init_state, r),
        10,
        256,
        3.0,
        worker=faulty_worker,
        log=logs.append,
    )
    assert time.time() - t0 < 60 and sorted(got) == list(range(6))
    assert got[1]["failure"] == "worker_timeout" and got[2]["failure"] == "worker_died: exit code 3"
    assert got[3]["failure"] == "sim_error: ValueError: physics exploded" and got[3]["steps"] == 4
    for i in (0, 4, 5):
        assert got[i]["failure"] == "timeout: no success in 8 steps" and got[i]["steps"] == 8
    assert any("worker_timeout in libero_object task 0 init 1" in m for m in logs)


# ---- real LIBERO ----------------------------------------------------------------------------------------------


@pytest.mark.libero
def test_lerobot_env_and_harness_give_the_policy_identical_inputs(probe):
    """LeRobot's own LiberoEnv (patched init states) and our LiberoSim, same task and init state: identical raw
    frames, identical policy inputs; and those equal the training-frame convention (frame_from_obs)."""
    import gymnasium as gym
    from lerobot.envs.libero import create_libero_envs
    from lerobot.envs.utils import preprocess_observation

    from eval_libero.lerobot_compat import env_inputs, is_patched, patch_lerobot_libero
    from eval_libero.sim import IMAGE_KEY, STATE_KEY, WRIST_KEY, LiberoSim, frame_from_obs
    from eval_libero.worker import raw_obs_for_lerobot

    patch_lerobot_libero()
    patch_lerobot_libero()  # idempotent
    assert is_patched()
    kwargs = {"task_ids": [0], "obs_type": "pixels_agent_pos"}  # what lerobot-eval's LiberoEnv config passes
    venv = create_libero_envs("libero_object", 1, kwargs, env_cls=gym.vector.SyncVectorEnv)["libero_object"][
        0
    ]
    runner = make_runner(probe)
    try:
        obs_le, _ = venv.reset(seed=0)  # init state 0, then 10 wait steps
        le = runner.env_pre({**preprocess_observation(obs_le), "task": list(venv.call("task_description"))})
        sim = LiberoSim("libero_object", 0)
        raw = sim.reset(0)
        ours = env_inputs([raw_obs_for_lerobot(sim, raw)], [sim.info.language], runner.env_pre)
        assert np.array_equal(obs_le["pixels"]["image"][0], raw["agentview_image"])
        assert sorted(le) == sorted(ours) and le["task"] == ours["task"] == [sim.info.language]
        for k in (IMAGE_KEY, WRIST_KEY, STATE_KEY):
            assert torch.equal(le[k], ours[k]), k
        frame = frame_from_obs(raw)  # what the datasets / demo generator store
        chw = lambda img: torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255  # noqa: E731
        for k in (IMAGE_KEY, WRIST_KEY):
            assert torch.equal(ours[k], chw(frame[k])), k  # as LeRobotDataset decodes a stored frame
        assert torch.allclose(ours[STATE_KEY], torch.from_numpy(frame[STATE_KEY])[None], atol=1e-6)
        assert not torch.equal(ours[IMAGE_KEY], chw(raw["agentview_image"]))  # the flip is applied
        a, b = runner.pre(le), runner.pre(ours)
        assert all(torch.equal(a[k], b[k]) for k in (IMAGE_KEY, WRIST_KEY, STATE_KEY))
        obs2, _, term, trunc, _ = venv.step(np.zeros((1, 7), dtype=np.float32))  # LeRobot's env steps
        assert obs2["pixels"]["image"].shape == (1, 256, 256, 3) and not term[0]
        sim.close()
    finally:
        venv.close()


@pytest.mark.libero
def test_two_workers_and_two_ranks_equal_one_worker(probe, reference, tmp_path, monkeypatch):
    ref_dir, ref = reference
    assert [(r["init_state"], r["steps"], r["success"]) for r in ref] == [(0, 3, False), (1, 3, False)]
    r = ref[0]
    assert r["failure"] == "timeout: no success in 3 steps" and r["policy_calls"] == "per-episode"
    assert r["protocol"]["max_steps"]["libero_object"] == 3 and r["protocol"]["max_steps_override"] == 3
    assert r["label"] == "eval_probe" and len(r["checkpoint"]) == 12
    assert r["instruction"] == "pick up the alphabet soup and place it in the basket"
    assert ref[0]["actions_sha256"] != ref[1]["actions_sha256"]  # the actions depend on the observations
    assert Path(ref[0]["video"]).stat().st_size > 0 and ref[1]["video"] is None  # --video-every 2
    summary = json.loads((ref_dir / "summary.json").read_text())
    assert summary["suites"]["libero_object"]["n"] == 2 and summary["missing"] == 0
    assert list((ref_dir / "tb").glob("events.out.tfevents.*"))

    assert strip(read(evaluate(ecfg(probe, tmp_path / "w2", init_states="0,1", workers=2)))) == strip(ref)

    ranks = tmp_path / "ranks"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        evaluate(ecfg(probe, ranks, init_states="0,1"))
        if rank == 0:
            shard = [json.loads(x) for x in (ranks / "episodes.rank0.jsonl").read_text().splitlines()]
            assert [r["init_state"] for r in shard] == [0] and not (ranks / "episodes.jsonl").exists()
    assert strip(read(ranks)) == strip(ref) and not list(ranks.glob("episodes.rank*"))
    assert json.loads((ranks / "summary.json").read_text())["suites"] == summary["suites"]

    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    logs: list[str] = []
    evaluate(ecfg(probe, ref_dir, init_states="0,1", video_every=2), logs.append)
    assert any("2 recorded, 0 to run" in m for m in logs) and read(ref_dir) == ref  # resume: nothing re-run
    with pytest.raises(
        EvalError, match="different evaluation .*protocol.max_steps.libero_object: recorded=3, now=280"
    ):
        evaluate(ecfg(probe, ref_dir, init_states="0,1", max_steps=None))


@pytest.mark.libero
def test_fixture_placement_is_seeded_per_episode(probe, tmp_path):
    """libero_goal re-places its fixtures (cabinet, stove) from the global numpy RNG at every reset. The same
    episode run alone, after another episode, and on two workers starts identically and takes the same actions;
    another evaluation seed places the fixtures elsewhere."""
    goal = dict(suites="goal", tasks="1", max_steps=3)
    alone = read(evaluate(EvalConfig(str(probe), str(tmp_path / "alone"), init_states="1", **goal)))
    after = read(evaluate(EvalConfig(str(probe), str(tmp_path / "after"), init_states="0,1", **goal)))
    two = read(
        evaluate(
            EvalConfig(str(probe), str(tmp_path / "two"), init_states="0,1", seeds="7,8", workers=2, **goal)
        )
    )
    pick = lambda recs, i, s: next(r for r in recs if (r["init_state"], r["seed"]) == (i, s))  # noqa: E731
    ref = pick(alone, 1, 7)
    for other in (pick(after, 1, 7), pick(two, 1, 7)):
        assert (other["first_obs_sha256"], other["actions_sha256"]) == (
            ref["first_obs_sha256"],
            ref["actions_sha256"],
        )
    assert pick(two, 1, 8)["first_obs_sha256"] != ref["first_obs_sha256"]

    from eval_libero.sim import LiberoSim

    sim = LiberoSim("libero_goal", 1, render=False)
    m = sim.env.sim.model
    fixtures = [i for i in range(m.nbody) if any(w in m.body_id2name(i) for w in ("cabinet", "stove"))]
    place = lambda: sim.env.sim.data.body_xpos[fixtures].copy()  # noqa: E731
    sim.reset(1, seed=123)
    a = place()
    sim.reset(0, seed=5)
    sim.reset(1, seed=123)
    b = place()
    sim.reset(1, seed=124)
    c = place()
    sim.close()
    assert fixtures and np.array_equal(a, b) and np.abs(a - c).max() > 1e-3


def test_resume_refuses_another_checkpoint(probe, reference, tmp_path):
    other = save_probe(tmp_path / "other")  # same config, other weights -> another checkpoint hash
    with pytest.raises(EvalError, match=r"different evaluation .*checkpoint: recorded=\w{12}, now=\w{12}"):
        evaluate(ecfg(other, reference[0], init_states="0,1", video_every=2))


@pytest.mark.libero
def test_render_size_is_the_policys_camera_resolution():
    from types import SimpleNamespace

    from eval_libero.runner import render_size

    assert render_size(SimpleNamespace(**features(128))) == 128
    assert render_size(SimpleNamespace(**features())) == 256
    assert render_size(SimpleNamespace(input_features={})) == 256  # declares no camera: LIBERO's default
    odd = features(128)["input_features"]
    odd["observation.images.image2"] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 128, 96))
    with pytest.raises(ValueError, match=r"\(3, 128, 96\).*one \(C, S, S\) shape"):
        render_size(SimpleNamespace(input_features=odd))


@pytest.mark.libero
def test_a_policy_trained_on_128_pixel_frames_is_evaluated_on_them(tmp_path):
    """The cameras are rendered at the resolution of the policy's image features, recorded in the protocol (the
    probe refuses frames of another size, which would be a policy_error here)."""
    ckpt = save_probe(tmp_path / "p128" / "pretrained_model", image_size=128)
    (rec,) = read(evaluate(ecfg(ckpt, tmp_path / "run", init_states="0")))
    assert rec["failure"].startswith("timeout") and rec["protocol"]["image_size"] == 128


def test_render_on_demand_is_byte_identical_to_rendering_every_step(probe, reference, tmp_path, monkeypatch):
    """Cameras render only on the steps whose observation the policy reads: those frames equal every-step
    rendering byte for byte (same sim state), the other frames are black, and the records are identical."""
    from eval_libero.sim import CAMERAS, LiberoSim

    every, lazy = LiberoSim("libero_object", 0), LiberoSim("libero_object", 0)
    acts = np.clip(np.random.default_rng(0).normal(0, 0.5, (24, 7)), -1, 1)
    acts[:, 6] = -1
    a, b = every.reset(0, seed=3), lazy.reset(0, seed=3)
    assert all(np.array_equal(a[c], b[c]) for c in CAMERAS)  # the reset renders the last wait step
    for t, x in enumerate(acts):
        a, _ = every.step(x)
        b, _ = lazy.step(x, render=t % 8 == 7)
        assert np.array_equal(a["robot0_eef_pos"], b["robot0_eef_pos"])
        for c in CAMERAS:
            assert np.array_equal(a[c], b[c]) if t % 8 == 7 else b[c].max() == 0
    every.close()
    lazy.close()

    monkeypatch.setenv("R1VLA_RENDER_EVERY_STEP", "1")  # the workers inherit it
    out = evaluate(ecfg(probe, tmp_path / "every", init_states="0,1", video_every=2))
    assert strip(read(out)) == strip(reference[1])


@pytest.mark.libero
def test_act_with_temporal_ensembling_is_the_same_at_one_and_two_workers(tmp_path):
    """select mode: each concurrent episode has its own copy of the policy's per-episode state (ACT's temporal
    ensembler), so interleaving episodes on two workers changes nothing."""
    ckpt = save_act(tmp_path / "act", temporal_ensemble_coeff=0.01, n_action_steps=1)
    one = read(evaluate(ecfg(ckpt, tmp_path / "w1", init_states="0,1", max_steps=4)))
    two = read(evaluate(ecfg(ckpt, tmp_path / "w2", init_states="0,1", max_steps=4, workers=2)))
    assert one[0]["policy_calls"] == "select" and strip(one) == strip(two)
    assert one[0]["actions_sha256"] != one[1]["actions_sha256"]


@pytest.mark.libero
def test_kill_and_resume_loses_nothing(probe, reference, tmp_path):
    out = tmp_path / "run"
    code = "import sys; sys.path[:0] = ['tests', '.']; import test_eval; from r1vla.cli import main; sys.exit(main(sys.argv[1:]))"
    args = f"eval --policy {probe} --out {out} --suites object --tasks 0 --init-states 0-2 --max-steps 3"
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [PY, "-c", code, *args.split()], cwd=ROOT, stdout=log, stderr=log, start_new_session=True
        )
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if (out / "episodes.jsonl").exists() and (out / "episodes.jsonl").read_text().count("\n") >= 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the eval and its LIBERO workers, mid-episode
        proc.wait()
    before = read(out)
    assert 1 <= len(before) < 3
    with open(out / "episodes.jsonl", "a") as f:
        f.write('{"suite": "libero_object", "task_id": 0, "init_st')  # as if killed mid-write
    logs: list[str] = []
    evaluate(ecfg(probe, out, init_states="0-2"), logs.append)
    assert any(f"line {len(before) + 1}: truncated line" in m for m in logs)
    after = read(out)
    assert after[: len(before)] == before and len(after) == 3
    assert sorted(r["init_state"] for r in after) == [0, 1, 2]
    assert strip(after[:2]) == strip(reference[1])  # and a new process reproduces the same episodes


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


@pytest.mark.libero
def test_broken_policy_episodes_are_recorded_as_failures(tmp_path):
    """A NaN-producing checkpoint is evaluated to the end: every episode recorded as failed with its reason, the
    run exits normally, a re-run adds nothing, and --retry-faults runs them again."""
    ckpt = save_probe(tmp_path / "nan", bad_output="nan")
    out = evaluate(ecfg(ckpt, tmp_path / "run", init_states="0,1"))
    recs = read(out)
    assert [(r["success"], r["steps"]) for r in recs] == [(False, 0), (False, 0)]
    assert all(r["failure"].startswith("policy_error: non-finite action") for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faults"] == {"policy_error": 2} and summary["missing"] == 0
    logs: list[str] = []
    evaluate(ecfg(ckpt, tmp_path / "run", init_states="0,1"), logs.append)
    assert any("2 recorded, 0 to run" in m for m in logs) and read(out) == recs
    logs.clear()
    evaluate(ecfg(ckpt, tmp_path / "run", init_states="0,1", retry_faults=True), logs.append)
    assert any("0 recorded, 2 to run" in m for m in logs) and len(read(out)) == 2


@pytest.mark.libero
def test_replayed_expert_succeeds_and_ends_at_first_success(tmp_path):
    q = np.frombuffer(base64.b64decode(PLAN_B64), dtype=np.int8).reshape(-1, 7)
    plan = (q.astype(np.float32) / 127).tolist()
    ckpt = save_probe(tmp_path / "plan", plan=plan, chunk_size=len(plan), n_action_steps=len(plan))
    out = evaluate(ecfg(ckpt, tmp_path / "run", suites="goal", tasks="6", init_states="0", max_steps=None))
    (r,) = read(out)
    assert r["success"] is True and r["steps"] == len(plan) == 102 and r["failure"] is None
    assert json.loads((out / "summary.json").read_text())["suites"]["libero_goal"]["success_rate"] == 1.0


def test_lerobot06_protocol_caps_are_lerobots_own():
    from lerobot.envs.libero import TASK_SUITE_MAX_STEPS

    from eval_libero.suites import SUITES, max_steps

    assert {name: max_steps(s, "lerobot06") for name, s in SUITES.items()} == {
        name: TASK_SUITE_MAX_STEPS[name] for name in SUITES
    }
