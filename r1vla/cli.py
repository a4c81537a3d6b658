"""`r1vla` console script: one subcommand per stage of the study.

Each subcommand lives in its own module with two functions, imported only when that subcommand runs:
    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int          # the process exit code
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order = order of the study.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "doctor": (
        "r1vla.doctor",
        "check the installation: torch/CUDA, lerobot, LIBERO assets and rendering, FFmpeg",
    ),
    "demos": (
        "demos.generate",
        "generate LIBERO demonstrations with the scripted expert (LeRobotDataset v3)",
    ),
    "convert-hdf5": (
        "demos.convert_hdf5",
        "convert original LIBERO HDF5 demos to the same LeRobotDataset format",
    ),
    "replay": ("demos.replay", "re-execute a dataset's recorded actions in LIBERO and report success"),
    "train": (
        "r1vla.train",
        "lerobot-train with TensorBoard logging (all lerobot-train arguments pass through)",
    ),
    "eval": ("eval_libero.run", "evaluate a LeRobot policy on LIBERO suites (resumable, batched, sharded)"),
    "mcqa": ("reasoning.mcqa", "Robot-R1-style multiple-choice questions from a LeRobot LIBERO dataset"),
    "backbone": ("r1vla.backbone", "train a backbone on MCQA questions: `backbone sft` or `backbone grpo`"),
    "probe": (
        "reasoning.probe",
        "reasoning probe: MCQA accuracy and format rate of a backbone or VLA policy",
    ),
    "serve": (
        "r1vla.serve",
        "serve a LeRobot policy folder to vla-eval (allenai's harness) over WebSocket, via vla-eval's bridge",
    ),
    "crosscheck": (
        "r1vla.crosscheck",
        "the same episodes through vla-eval's LIBERO (via r1vla serve) and r1vla eval: per-episode agreement",
    ),
    "compare": ("analysis.compare", "transfer report: success with CIs, paired tests against a baseline"),
    "study": ("r1vla.study", "the whole study: demos -> fine-tune each backbone -> evaluate -> report"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = argparse.ArgumentParser(prog="r1vla", description=__doc__.splitlines()[0])
    top.add_argument("command", help=" | ".join(SUBCOMMANDS))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        print("\ncommands:")
        for name, (_, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<14}{help_text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        from hints import unknown

        print(f"r1vla: {unknown('command', name, list(SUBCOMMANDS))}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"r1vla {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(parser)
    if getattr(module, "PASS_THROUGH", False):  # e.g. `r1vla train`: everything unknown goes to lerobot-train
        args, extra = parser.parse_known_args(rest)
        args.passthrough = extra
    else:
        args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
