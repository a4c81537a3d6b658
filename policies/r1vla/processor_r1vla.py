"""Pre/post-processing pipelines of the `r1vla` policy.

preprocessor:  rename -> add batch dim -> prompt (needs the raw state) -> device -> normalize state/actions
postprocessor: unnormalize actions -> cpu

Step registry names are the ones LeRobot's scripts override: `lerobot-eval` replaces `device_processor` and
`rename_observations_processor`; `lerobot-train --policy.path` replaces `normalizer_processor` and
`unnormalizer_processor`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from lerobot.configs.types import FeatureType, PipelineFeatureType, PolicyFeature
from lerobot.processor import (
    AddBatchDimensionProcessorStep,
    DeviceProcessorStep,
    EnvTransition,
    NormalizerProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    ProcessorStep,
    ProcessorStepRegistry,
    RenameObservationsProcessorStep,
    TransitionKey,
    UnnormalizerProcessorStep,
)
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
from lerobot.utils.constants import (
    OBS_STATE,
    POLICY_POSTPROCESSOR_DEFAULT_NAME,
    POLICY_PREPROCESSOR_DEFAULT_NAME,
)

from adapters.prompts import build_prompt

from .configuration_r1vla import R1VLAConfig

PROMPT_KEY = "prompt"  # complementary-data key holding the finished backbone text, one per sample


@ProcessorStepRegistry.register(name="r1vla_prompt_processor")
@dataclass
class R1VLAPromptProcessorStep(ProcessorStep):
    """Builds the backbone's user text from the task string (and, for the Robot-R1 style, the raw eef
    position). Runs before normalisation so the prompt sees the state in metres."""

    style: str = "plain"
    coords: str = "world_m3"  # how robot_r1 writes the eef position (adapters.prompts.CoordFormat spec)

    def __call__(self, transition: EnvTransition) -> EnvTransition:
        new = transition.copy()
        comp = dict(new.get(TransitionKey.COMPLEMENTARY_DATA) or {})
        tasks = comp.get("task")
        if tasks is None:
            raise ValueError("r1vla needs the task instruction ('task' in the batch); none was given")
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        state = (new.get(TransitionKey.OBSERVATION) or {}).get(OBS_STATE)
        states = None if state is None else torch.as_tensor(state).reshape(len(tasks), -1).cpu().tolist()
        comp[PROMPT_KEY] = [
            build_prompt(self.style, task, None if states is None else states[i], self.coords)
            for i, task in enumerate(tasks)
        ]
        new[TransitionKey.COMPLEMENTARY_DATA] = comp
        return new

    def get_config(self) -> dict[str, Any]:
        return {"style": self.style, "coords": self.coords}

    def transform_features(
        self, features: dict[PipelineFeatureType, dict[str, PolicyFeature]]
    ) -> dict[PipelineFeatureType, dict[str, PolicyFeature]]:
        return features


def camera_rename_map(config: R1VLAConfig) -> dict[str, str]:
    """Dataset camera names -> the policy's `image_keys`, for datasets that name cameras otherwise (e.g.
    `observation.images.wrist_image`). LeRobot's lerobot-train applies `--rename_map` to the processors
    only when fine-tuning from `--policy.path`; this map makes a from-scratch run read the same cameras.
    Cameras already named as an image key keep it; the others are assigned in dataset order."""
    cameras = [k for k, ft in config.input_features.items() if ft.type is FeatureType.VISUAL]
    others = [k for k in cameras if k not in config.image_keys]
    free = [k for k in config.image_keys if k not in cameras]
    rename = dict(zip(others, free, strict=True)) if len(others) == len(free) else {}
    if rename:
        logging.getLogger(__name__).info("r1vla cameras: %s", rename)
    return rename


def make_r1vla_pre_post_processors(
    config: R1VLAConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    features = {**config.input_features, **config.output_features}
    input_steps = [
        RenameObservationsProcessorStep(rename_map=camera_rename_map(config)),
        AddBatchDimensionProcessorStep(),
        R1VLAPromptProcessorStep(
            style=config.backbone_config().prompt_style_name, coords=config.prompt_coords
        ),
        DeviceProcessorStep(device=config.device),
        NormalizerProcessorStep(
            features=features,
            norm_map=config.normalization_mapping,
            stats=dataset_stats,
            device=config.device,
        ),
    ]
    output_steps = [
        UnnormalizerProcessorStep(
            features=config.output_features, norm_map=config.normalization_mapping, stats=dataset_stats
        ),
        DeviceProcessorStep(device="cpu"),
    ]
    return (
        PolicyProcessorPipeline[dict[str, Any], dict[str, Any]](
            steps=input_steps, name=POLICY_PREPROCESSOR_DEFAULT_NAME
        ),
        PolicyProcessorPipeline[PolicyAction, PolicyAction](
            steps=output_steps,
            name=POLICY_POSTPROCESSOR_DEFAULT_NAME,
            to_transition=policy_action_to_transition,
            to_output=transition_to_policy_action,
        ),
    )
