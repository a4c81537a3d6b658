"""Launchers of the GPU stages (below `reasoning` and `r1vla`, which both use it; imports only yaml): the ready accelerate configs shipped here, the number of processes a launcher
starts, the global batch split over processes and gradient accumulation.

    fsdp.yaml   FSDP2 full shard, fp32 master weights, bf16 compute: backbone SFT / GRPO full fine-tunes of the 7B
    zero3.yaml  DeepSpeed ZeRO-3, the same (needs deepspeed)
    ddp.yaml    plain data parallel: the VLA's frozen-backbone training, small models
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CONFIGS = {"fsdp": HERE / "fsdp.yaml", "zero3": HERE / "zero3.yaml", "ddp": HERE / "ddp.yaml"}
PROCESS_FLAGS = ("--num_processes", "--num-processes", "--nproc_per_node", "--nproc-per-node")


def config_path(name_or_path: str) -> Path:
    if name_or_path in CONFIGS:
        return CONFIGS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        from hints import unknown

        raise unknown("accelerate config", name_or_path, [*CONFIGS, "a YAML file"])
    return path


def accelerate(config: str, processes: int) -> list[str]:
    """`accelerate launch --config_file CONFIG --num_processes N` (a launcher prefix: `-m module ...` follows)."""
    return [
        "accelerate",
        "launch",
        "--config_file",
        str(config_path(config)),
        "--num_processes",
        str(processes),
    ]


def _flag(launcher: list[str] | tuple[str, ...], names: tuple[str, ...]) -> str | None:
    items = list(launcher)
    for i, item in enumerate(items):
        for name in names:
            if item == name and i + 1 < len(items):
                return items[i + 1]
            if item.startswith(name + "="):
                return item.split("=", 1)[1]
    return None


def processes(launcher: list[str] | tuple[str, ...]) -> int:
    """Processes a launcher starts: its --num_processes / --nproc_per_node, else its accelerate config's, else 1."""
    value = _flag(launcher, PROCESS_FLAGS)
    if value is None and (cfg := _flag(launcher, ("--config_file", "--config-file"))):
        value = (yaml.safe_load(config_path(cfg).read_text()) or {}).get("num_processes")
    try:
        return max(1, int(value)) if value is not None else 1
    except ValueError:
        msg = f"launcher {' '.join(launcher)!r}: number of processes {value!r} is not an integer"
        raise ValueError(msg) from None


def sharding(launcher: list[str] | tuple[str, ...]) -> str:
    """none | FSDP full shard | ZeRO-3 ...: what the launcher's accelerate config shards."""
    cfg_name = _flag(launcher, ("--config_file", "--config-file"))
    if cfg_name is None:
        return "FSDP full shard" if "--use_fsdp" in launcher else "none"
    cfg = yaml.safe_load(config_path(cfg_name).read_text()) or {}
    kind = cfg.get("distributed_type", "")
    if kind == "FSDP":
        return "FSDP full shard"
    if kind == "DEEPSPEED":
        return f"ZeRO-{cfg.get('deepspeed_config', {}).get('zero_stage', 0)}"
    return "none"


def split_batch(global_batch: int, processes: int, per_device: int | None = None) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) with per_device x processes x accumulation == global_batch.
    per_device None: the whole share of each process in one forward (accumulation 1). Refuses what does not divide."""
    share, rest = divmod(global_batch, processes)
    if global_batch < 1 or rest:
        raise ValueError(
            f"global batch {global_batch} does not split over {processes} processes "
            f"({global_batch} / {processes} = {global_batch / processes:g}); use a multiple of {processes}"
        )
    if per_device is None:
        return share, 1
    per_device = min(per_device, share)
    accum, rest = divmod(share, per_device)
    if rest:
        raise ValueError(
            f"global batch {global_batch} over {processes} processes is {share} per process, not a multiple of "
            f"the per-device batch {per_device}; use a per-device batch that divides {share}"
        )
    return per_device, accum
