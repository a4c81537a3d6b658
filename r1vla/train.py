"""`r1vla train ARGS…` = `lerobot-train ARGS…` that also logs to TensorBoard (`OUTPUT_DIR/tensorboard`).

lerobot-train 0.6 logs only to wandb. Without forking its loop, we hand it a logger with WandBLogger's
interface (log_dict / log_video / log_policy) that writes TensorBoard events, and turn its logging path on.
Every argument passes through unchanged; multi-GPU works as for lerobot-train:
    accelerate launch --num_processes 2 -m r1vla.train --policy.type=r1vla ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

PASS_THROUGH = True  # r1vla.cli: unknown arguments go to lerobot-train


class TensorBoardLogger:
    """Drop-in for lerobot.common.wandb_utils.WandBLogger: scalars to TensorBoard, on the main process only."""

    def __init__(self, cfg) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(cfg.output_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.global_batch = cfg.batch_size * int(os.environ.get("WORLD_SIZE", "1"))
        logging.info("TensorBoard logs: %s", self.log_dir)

    def log_dict(
        self, d: dict, step: int | None = None, mode: str = "train", custom_step_key: str | None = None
    ):
        for key, value in _flatten(d):
            self.writer.add_scalar(f"{mode}/{key}", value, step)
        if mode == "train" and d.get("update_s"):  # samples/s of the whole job (all ranks)
            seconds = d["update_s"] + d.get("dataloading_s", 0.0)
            self.writer.add_scalar("train/samples_per_s", self.global_batch / seconds, step)
        self.writer.flush()

    def log_video(self, video_path: str, step: int, mode: str = "train") -> None:
        self.writer.add_text(f"{mode}/video", str(video_path), step)

    def log_policy(self, checkpoint_dir: Path) -> None:
        self.writer.add_text("checkpoints", str(checkpoint_dir))


def _flatten(d: dict, prefix: str = ""):
    """Numeric leaves of a nested dict as ('a/b', float); eval_info nests per suite."""
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, float(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "All other arguments are lerobot-train's (see `lerobot-train --help`)."


def run(args: argparse.Namespace) -> int:
    return main(args.passthrough)


def main(argv: list[str] | None = None) -> int:
    from lerobot.scripts import lerobot_train

    from r1vla import fastdata

    fastdata.install()  # action chunks without decoding the future frames' images (see r1vla/fastdata.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    lerobot_train.WandBLogger = (
        TensorBoardLogger  # the only hook: the name lerobot_train resolves at run time
    )
    # lerobot-train builds its logger only when wandb is enabled with a project; ours replaces it
    argv += ["--wandb.enable=true", "--wandb.project=r1vla", "--wandb.disable_artifact=true"]
    sys.argv = ["lerobot-train", *argv]
    lerobot_train.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
