"""The policy under evaluation: checkpoint folder checks, its identity hash, and loading it as lerobot-eval does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from eval_libero.plan import EvalError
from eval_libero.runner import PolicyRunner

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def resolve_checkpoint(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise EvalError(f"checkpoint folder not found: {p}")
    if not p.is_dir():
        raise EvalError(f"--policy must be a LeRobot pretrained_model folder, not a file: {p}")
    if not (p / "config.json").exists() and (p / "pretrained_model" / "config.json").exists():
        p = p / "pretrained_model"
    need = ["config.json", "policy_preprocessor.json", "policy_postprocessor.json"]
    missing = [f for f in need if not (p / f).exists()] + ([] if weight_files(p) else ["model.safetensors"])
    if missing:
        raise EvalError(
            f"{p} is not a LeRobot pretrained_model folder (missing {', '.join(missing)}). Expected what "
            "policy.save_pretrained() and the processors' save_pretrained() write, e.g. lerobot-train's "
            "outputs/.../checkpoints/<step>/pretrained_model"
        )
    return p


def weight_files(p: Path) -> list[Path]:
    return sorted(
        f
        for f in p.rglob("*")
        if f.suffix in WEIGHT_SUFFIXES and f.is_file() and not f.name.startswith("policy_")
    )  # processor state (normalizer stats) is not weights


def checkpoint_hash(p: Path) -> str:
    """Short sha256 over what defines the policy: config.json, the processor files (pipelines and their state,
    e.g. normalisation stats) and the weights. A changed `n_action_steps` or flow-step count is another run."""
    h = hashlib.sha256()
    defining = [
        f for f in p.iterdir() if f.is_file() and (f.name == "config.json" or f.name.startswith("policy_"))
    ]
    for f in sorted({*defining, *weight_files(p)}):
        h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:12]


def load_policy_config(
    p: Path, device: str, backbone_path: str | None = None, allow_backbone_mismatch: bool = False
):
    """The checkpoint's policy config for `device`; `backbone_path` / `allow_backbone_mismatch` apply to r1vla."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    try:
        cfg = PreTrainedConfig.from_pretrained(p)
    except Exception as e:
        try:
            kind = json.loads((p / "config.json").read_text()).get("type")
        except (ValueError, AttributeError):
            raise EvalError(f"{p}/config.json is not valid JSON: not a LeRobot policy config") from None
        known = sorted(PreTrainedConfig.get_known_choices())
        if kind is None:
            raise EvalError(
                f"{p}/config.json has no LeRobot policy 'type' (a transformers model folder?)"
            ) from None
        if kind not in known:
            raise EvalError(
                f"{p}/config.json has policy type {kind!r}, which no installed LeRobot policy registers "
                f"(known: {', '.join(known)}); plugin policies must be installed as lerobot_policy_* "
                "packages"
            ) from None
        raise EvalError(f"could not load {p}/config.json as a {kind!r} policy config: {e}") from e
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise EvalError("--device cuda, but torch sees no CUDA device")
    if (backbone_path or allow_backbone_mismatch) and not hasattr(cfg, "backbone_path"):
        raise EvalError(
            f"--backbone-path / --allow-backbone-mismatch apply to r1vla checkpoints; {p} is {cfg.type!r}"
        )
    if backbone_path:
        if not Path(backbone_path).is_dir():
            raise EvalError(f"--backbone-path {backbone_path!r} is not a folder on this machine")
        cfg.backbone_path = str(Path(backbone_path).resolve())
    if allow_backbone_mismatch:
        cfg.allow_backbone_mismatch = True
    cfg.pretrained_path = p
    cfg.device = device
    return cfg


def train_seed(p: Path) -> int | None:
    """The training seed of a lerobot-train checkpoint (its train_config.json), None if unknown."""
    try:
        return json.loads((p / "train_config.json").read_text()).get("seed")
    except (OSError, ValueError):
        return None


def load_runner(p: Path, policy_cfg, suites: list[str], mode: str) -> PolicyRunner:
    """Policy, its saved processors and LeRobot's LIBERO env processors, built as lerobot-eval builds them."""
    from lerobot.envs.configs import LiberoEnv as LiberoEnvConfig
    from lerobot.envs.factory import make_env_pre_post_processors
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from policies.r1vla.configuration_r1vla import BackboneMismatchError

    env_cfg = LiberoEnvConfig(task=",".join(suites))
    try:
        policy = make_policy(cfg=policy_cfg, env_cfg=env_cfg)
    except BackboneMismatchError as e:  # a refusal of the input, not a crash: the message, no traceback
        raise EvalError(str(e)) from None
    policy.eval()
    steps = {
        s.get("registry_name") for s in json.loads((p / "policy_preprocessor.json").read_text())["steps"]
    }
    overrides = {
        "device_processor": {"device": str(policy.config.device)},
        "rename_observations_processor": {"rename_map": {}},
    }
    pre, post = make_pre_post_processors(
        policy_cfg,
        pretrained_path=str(p),
        preprocessor_overrides={k: v for k, v in overrides.items() if k in steps},
    )
    env_pre, env_post = make_env_pre_post_processors(env_cfg=env_cfg, policy_cfg=policy_cfg)
    try:
        return PolicyRunner(policy, pre, post, env_pre, env_post, mode)
    except ValueError as e:
        raise EvalError(str(e)) from None
