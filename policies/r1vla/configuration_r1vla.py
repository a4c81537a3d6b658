"""Configuration of the `r1vla` LeRobot policy: a Qwen2.5-VL backbone (Robot-R1, SFT, base or tiny) under a
flow-matching (GR00T-N1.5 style) or L1 chunk (OpenVLA-OFT style) action head.

Only the backbone key/path differs between the runs of a transfer study; every other field stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode
from lerobot.optim.optimizers import AdamWConfig
from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from adapters import BackboneConfig
from hints import check as _check_choice
from hints import unknown

HEADS = ("flow", "l1")
AMP_MODES = ("auto", "bf16", "none")  # fp16 is not offered: Qwen2.5-VL overflows it
DEFAULT_CHUNK = {"flow": 16, "l1": 8}  # GR00T-N1.5 horizon 16; OpenVLA-OFT LIBERO chunk 8
THIRD_PERSON_KEY = "observation.images.image"
WRIST_KEY = "observation.images.image2"
RENAME_HINT = (
    "map your dataset's camera names onto these with LeRobot's rename map, e.g. "
    '--rename_map=\'{"observation.images.wrist_image": "observation.images.image2"}\''
)


class BackboneMismatchError(ValueError):
    """The checkpoint was trained on another backbone than the one it is loaded with (a refusal of the input,
    explained in the message; `r1vla eval` prints it without a traceback)."""


@PreTrainedConfig.register_subclass("r1vla")
@dataclass
class R1VLAConfig(PreTrainedConfig):
    # --- backbone (adapters/) -----------------------------------------------------------------------
    backbone: str = "tiny"  # preset key: qwen2_5_vl | robot_r1 | sft | tiny
    backbone_path: str | None = None  # hub id or local folder; required for robot_r1 / sft
    backbone_mode: str = "frozen"  # frozen (GR00T, Robot-R1 recipe) | lora | full
    backbone_layer: int = -1  # keep the first L decoder layers (-1 = all); features = their normed output
    backbone_dtype: str = (
        "auto"  # auto: bf16 on CUDA (fp32 in full mode: trainable weights stay fp32), fp32 on CPU
    )
    attn_implementation: str = (
        "auto"  # auto: flash_attention_2 on CUDA when installed, else sdpa | sdpa | eager
    )
    gradient_checkpointing: bool = False  # recompute backbone activations in backward (whenever grads flow)
    amp: str = "auto"  # autocast of backbone + head: auto = bf16 on CUDA, none on CPU | bf16 | none
    trust_remote_code: bool = False  # never run checkpoint code unless asked
    allow_backbone_mismatch: bool = False  # load even if backbone_path is not the backbone it was trained on
    lora_r: int = 32  # LoRA rank (OpenVLA-OFT: 32)
    lora_alpha: int = 16  # LoRA alpha (OpenVLA-OFT: min(r, 16))
    lora_dropout: float = 0.0  # LoRA dropout
    prompt_style: str | None = None  # plain | robot_r1; None = the preset's own
    prompt_coords: str = "auto"  # robot_r1 positions: auto = the backbone's recorded format (its
    # r1vla_provenance.json "coordinates"), else world_m3; or a named format / UNIT@X,Y,Z/DEC (adapters.prompts)
    image_size: int = 224  # views resized to this square: 64 visual tokens each
    image_keys: tuple[str, ...] = (THIRD_PERSON_KEY, WRIST_KEY)  # batch keys read, third person first
    state_dim: int = 8  # eef pos (3) + axis-angle (3) + gripper qpos (2)
    action_dim: int = 7  # eef delta (6) + gripper (-1 open / +1 close)
    binarize_gripper: bool = True  # last action dim to its min or max, as OpenVLA-OFT evaluates LIBERO

    # --- action head (vla/) --------------------------------------------------------------------------
    head: str = "flow"  # flow (GR00T-N1.5 DiT, flow matching) | l1 (OpenVLA-OFT chunk regression)
    chunk_size: int | None = None  # actions per prediction; None = 16 for flow, 8 for l1
    n_action_steps: int = 8  # actions executed per prediction (backbone calls per step = 1/this)
    # head sizes: None = the head's own default (vla/flow_head.py, vla/l1_head.py)
    num_inference_steps: int | None = None  # flow: Euler steps at inference (default 4)
    head_hidden: int | None = None  # flow: DiT width (default 768, DiT-B); l1: MLP-ResNet width (2 x D)
    head_layers: int | None = None  # flow: DiT blocks (16; even = cross-attention); l1: residual blocks (2)
    head_heads: int | None = None  # flow: DiT attention heads (12)
    vl_self_attn_layers: int | None = None  # flow: self-attention blocks over backbone tokens (2; GR00T 4)
    num_future_tokens: int | None = None  # flow: learned future tokens in the DiT sequence (32)
    head_dropout: float | None = None  # flow: dropout in the DiT (0.2)

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,  # the Qwen processor normalises pixels itself
            "STATE": NormalizationMode.MIN_MAX,  # GR00T's LIBERO recipe: min-max state and actions
            "ACTION": NormalizationMode.MIN_MAX,
        }
    )

    # --- optimisation (GR00T-N1.5 fine-tuning defaults) -----------------------------------------------
    optimizer_lr: float = 1e-4  # head learning rate
    optimizer_backbone_lr_scale: float = 0.1  # full mode: backbone lr = scale * lr (GR00T's tune_llm recipe)
    lora_lr: float = 1e-4  # lora mode: the adapters' lr (GR00T LoRA 1e-4; OpenVLA-OFT 5e-4 at r=32)
    optimizer_betas: tuple[float, float] = (0.95, 0.999)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 1e-5
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 3000  # 5% of 60k
    scheduler_decay_steps: int = 60000  # the Robot-R1 recipe: 60k steps (auto-scaled for shorter runs)
    scheduler_decay_lr: float = 1e-6

    # --- training-time image augmentation (GR00T-N1.5's LIBERO fine-tune) -----------------------------------
    augment: bool = False  # random crop + colour jitter while training (on in the paper preset)
    augment_crop: float = (
        0.95  # crop side fraction, random in training, centred at inference (GR00T VideoCrop)
    )
    augment_brightness: float = 0.3  # ColorJitter factors (GR00T LIBERO: 0.3 / 0.4 / 0.5 / 0.08)
    augment_contrast: float = 0.4
    augment_saturation: float = 0.5
    augment_hue: float = 0.08

    push_to_hub: bool = False  # nothing leaves the machine unless asked

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("head", self.head, HEADS)
        if self.chunk_size is None:
            self.chunk_size = DEFAULT_CHUNK[self.head]
        if self.n_action_steps > self.chunk_size:
            raise ValueError(
                f"n_action_steps ({self.n_action_steps}) must be <= chunk_size ({self.chunk_size}): "
                "a prediction cannot serve more actions than it holds"
            )
        if self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")
        self.image_keys = tuple(self.image_keys)
        flow_only = (
            "num_inference_steps",
            "head_heads",
            "vl_self_attn_layers",
            "num_future_tokens",
            "head_dropout",
        )
        misplaced = [f for f in flow_only if self.head != "flow" and getattr(self, f) is not None]
        if misplaced:
            raise ValueError(f"{misplaced} apply to the flow head only; this config uses head {self.head!r}")
        if self.binarize_gripper and self.normalization_mapping.get("ACTION") != NormalizationMode.MIN_MAX:
            raise ValueError(
                "binarize_gripper needs min-max action normalisation (its -1 / +1 are the open / closed values); "
                "set binarize_gripper=false for other normalisations"
            )
        if self.amp not in AMP_MODES:
            raise unknown("amp", self.amp, AMP_MODES)
        if not 0.5 <= self.augment_crop <= 1.0:
            raise ValueError(f"augment_crop must be in [0.5, 1] (side fraction), got {self.augment_crop}")
        self.backbone_config()  # unknown backbone key / mode / prompt style: rejected before any work
        self.prompt_coords = resolve_coords(self.prompt_coords, self.backbone_path)  # recorded as resolved

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(
            key=self.backbone,
            path=self.backbone_path,
            mode=self.backbone_mode,
            select_layer=self.backbone_layer,
            dtype=self.backbone_dtype,
            attn_implementation=self.attn_implementation,
            device=rank_device(self.device),
            gradient_checkpointing=self.gradient_checkpointing,
            trust_remote_code=self.trust_remote_code,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            image_size=self.image_size,
            prompt_style=self.prompt_style,
        )

    # --- LeRobot's abstract API ----------------------------------------------------------------------
    def validate_features(self) -> None:
        images = [k for k, ft in self.input_features.items() if ft.type is FeatureType.VISUAL]
        if len(images) != len(self.image_keys):
            raise ValueError(
                f"r1vla needs {len(self.image_keys)} cameras (third person + wrist): expected "
                f"{list(self.image_keys)}, the dataset has {images or 'none'}; {RENAME_HINT}"
            )
        state = self.robot_state_feature
        if state is None or tuple(state.shape) != (self.state_dim,):
            found = None if state is None else tuple(state.shape)
            raise ValueError(
                f"r1vla expects {OBS_STATE} of shape ({self.state_dim},) (eef pos, axis-angle, 2 gripper "
                f"joints); found {found}. Input features: {sorted(self.input_features)}"
            )
        action = self.output_features.get(ACTION)
        if action is None or tuple(action.shape) != (self.action_dim,):
            found = None if action is None else tuple(action.shape)
            raise ValueError(
                f"r1vla expects {ACTION} of shape ({self.action_dim},) (eef delta + gripper); found {found}"
            )

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=self.optimizer_betas,
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr,
            decay_lr=self.scheduler_decay_lr,
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
        )

    @property
    def observation_delta_indices(self) -> None:
        return None  # the current observation only

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))  # action[t : t + chunk_size] with action_is_pad

    @property
    def reward_delta_indices(self) -> None:
        return None


def resolve_coords(coords: str, backbone_path: str | None) -> str:
    """`auto` -> the coordinate format recorded with the backbone (r1vla_provenance.json), else the documented
    default for external checkpoints (adapters.prompts.DEFAULT_FORMAT); anything else is checked and kept."""

    from adapters.prompts import DEFAULT_FORMAT, parse_coord_format

    if coords != "auto":
        parse_coord_format(coords)  # unknown -> ValueError naming the valid ones
        return coords
    return recorded_coords(backbone_path) or DEFAULT_FORMAT


def recorded_coords(backbone_path: str | None) -> str | None:
    """The coordinate format a built backbone recorded in its r1vla_provenance.json, else None."""
    import json
    from pathlib import Path

    prov = Path(backbone_path).expanduser() / "r1vla_provenance.json" if backbone_path else None
    if prov is not None and prov.is_file():
        return json.loads(prov.read_text()).get("coordinates")
    return None


def rank_device(device: str | None) -> str | None:
    """`cuda` -> `cuda:LOCAL_RANK` under torchrun/accelerate (each rank loads onto its own GPU); else as given."""
    import os

    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device
