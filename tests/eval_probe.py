"""The policy of the evaluation tests: a tiny LeRobot policy defined here (type `eval_probe`), never the project's
`r1vla`, its checkpoints, and helpers to configure and read evaluation runs.

Subprocesses import this module to register it (`sys.path` = tests/, `import eval_probe`).
"""

from __future__ import annotations

import json
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import lerobot.processor as P
import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
from lerobot.utils.constants import ACTION, OBS_STATE
from torch import nn

from eval_libero.run import EvalConfig

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
