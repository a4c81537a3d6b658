"""Which checkpoint a `--base` names, and the checks every trainer and the probe share.

`--base` is a backbone key of adapters (tiny, qwen2_5_vl, robot_r1, sft; resolved with adapters'
get_preset / resolve_path / ensure_tiny_checkpoint) or a checkpoint folder / hub id. Only Qwen2.5-VL passes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hints import versions as installed

EXPECTED_MODEL_TYPE = "qwen2_5_vl"
EXPECTED_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
VERSIONED = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "lerobot", "vllm")


def resolve_base(base: str) -> str:
    """A local folder or hub id for `base` (a backbone key, a folder, or a hub id)."""
    import adapters

    if base in adapters.PRESETS:
        preset = adapters.get_preset(base)
        if preset.key == "tiny":
            return str(adapters.ensure_tiny_checkpoint())
        return str(adapters.resolve_path(preset, None))
    folder = Path(base).expanduser()
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{base!r} is a folder without config.json: not a model checkpoint")
        return str(folder.resolve())
    return base  # a hub id (needs the network or a populated Hugging Face cache)


def check_qwen2_5_vl(path: str) -> None:
    """ValueError naming the architecture when `path` is not a Qwen2.5-VL checkpoint."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise OSError(f"could not read a model config from {path!r}: {e}") from e
    if cfg.model_type != EXPECTED_MODEL_TYPE:
        found = ", ".join(getattr(cfg, "architectures", None) or [type(cfg).__name__])
        raise ValueError(
            f"{path!r} is not a Qwen2.5-VL checkpoint: found architecture {found} (model_type "
            f"{cfg.model_type!r}); expected {EXPECTED_ARCHITECTURE} (model_type {EXPECTED_MODEL_TYPE!r})"
        )


def versions() -> dict[str, str]:
    """Installed versions of the build's stack (packages not installed are left out)."""
    return {k: v for k, v in installed(VERSIONED).items() if v is not None}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: ranks may race
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
