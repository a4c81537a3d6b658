"""The policy side of the evaluation: actions for a batch of episodes, each with its own randomness and state.

Observations reach the policy exactly as in lerobot-eval (eval_libero.lerobot_compat.env_inputs), then: policy
preprocessor -> policy -> postprocessor -> env postprocessor -> numpy (n, 7) actions per episode.

Modes (`--policy-calls`):
  batched       one predict_action_chunk call for all ready episodes. A policy whose predict_action_chunk takes
                `generators` (one torch.Generator per row, as r1vla's flow head) draws each row's noise from that
                episode's own generator, so one batched call draws exactly what per-episode calls would.
  per-episode   one call per episode, each with its own saved global-RNG stream (any stochastic policy).
  select        select_action per episode with its own deep copy of the policy's per-episode state (observation
                queues, ACT's temporal ensembler) and RNG stream: lerobot-eval's semantics, one action a call.
  auto          select if the policy keeps history or ensembles; else batched when the policy takes generators
                or is deterministic (probed on the first batch); else per-episode.
A policy that raises, or returns a wrong shape or non-finite actions, fails only the episodes concerned:
their entry is a string `policy_error: ...` instead of actions.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from dataclasses import dataclass

import numpy as np

from libero_core.suites import IMAGE_SIZE

# LeRobot's LIBERO camera names -> the raw cameras they come from (lerobot.envs.libero's camera_name_mapping)
CAMERA_OF_KEY = {
    "observation.images.image": "agentview_image",
    "observation.images.image2": "robot0_eye_in_hand_image",
}


@dataclass(frozen=True)
class Row:
    key: tuple  # episode key (libero_core.records.episode_key)
    raw: dict  # raw obs from the worker
    task: str  # instruction
    step: int  # env steps taken so far in the episode


def cameras_read(policy_cfg) -> tuple[str, ...]:
    """The raw LIBERO cameras a policy reads (all of them if it reads an image we cannot map)."""
    keys = [k for k in getattr(policy_cfg, "input_features", {}) if k.startswith("observation.images.")]
    if any(k not in CAMERA_OF_KEY for k in keys):
        return tuple(CAMERA_OF_KEY.values())
    return tuple(CAMERA_OF_KEY[k] for k in CAMERA_OF_KEY if k in keys)


def render_size(policy_cfg) -> int:
    """The camera resolution to render: the one the policy's image inputs were trained on (square, equal for all
    its cameras); LIBERO's default 256 for a policy that declares none."""
    shapes = {
        tuple(f.shape)
        for k, f in getattr(policy_cfg, "input_features", {}).items()
        if k.startswith("observation.images.")
    }
    if not shapes:
        return IMAGE_SIZE
    sizes = {s[-1] for s in shapes if len(s) == 3 and s[-1] == s[-2]}
    if len(sizes) != 1 or len(shapes) != 1:
        raise ValueError(
            f"the policy's cameras have shapes {sorted(shapes)}: LIBERO renders every camera at one square "
            "resolution, so they must share one (C, S, S) shape"
        )
    return sizes.pop()


class PolicyRunner:
    """See the module docstring."""

    MODES = ("auto", "batched", "per-episode", "select")

    def __init__(
        self, policy, preprocessor, postprocessor, env_preprocessor, env_postprocessor, mode: str = "auto"
    ):
        import lerobot.envs.libero  # noqa: F401  (imported here, not inside the first episode's timing)
        import torch

        from hints import check

        check("policy-call mode", mode, self.MODES)
        self.policy, self.pre, self.post = policy, preprocessor, postprocessor
        self.env_pre, self.env_post, self.torch = env_preprocessor, env_postprocessor, torch
        cfg = policy.config
        self.n_action_steps = int(getattr(cfg, "n_action_steps", 1) or 1)
        history = (getattr(cfg, "n_obs_steps", 1) or 1) > 1 or getattr(cfg, "temporal_ensemble_coeff", None)
        if mode in ("batched", "per-episode") and history:
            raise ValueError(f"--policy-calls {mode}: the policy has obs history/ensembling; use select")
        self.generators = "generators" in inspect.signature(policy.predict_action_chunk).parameters
        if mode == "auto":
            mode = "select" if history else ("batched" if self.generators else "probe")
        self.mode = mode
        skip = set(vars(torch.nn.Module())) | {"config"}
        self.state_names = [k for k in vars(policy) if k not in skip]
        policy.reset()
        self.pristine = copy.deepcopy({n: getattr(policy, n) for n in self.state_names})
        self.episodes: dict[tuple, dict] = {}  # key -> {"rng": ..., "gen": Generator, "state": {...}}
        device = next(iter(policy.parameters()), torch.zeros(0)).device
        self.cuda = device if device.type == "cuda" else None
        self.device = device

    # -- per-episode randomness and state
    def _get_rng(self) -> tuple:
        cuda = self.torch.cuda.get_rng_state(self.cuda) if self.cuda else None
        return (self.torch.get_rng_state(), cuda, np.random.get_state())

    def _set_rng(self, state: tuple) -> None:
        self.torch.set_rng_state(state[0])
        if state[1] is not None:
            self.torch.cuda.set_rng_state(state[1], self.cuda)
        np.random.set_state(state[2])

    def begin(self, key: tuple, seed: int) -> None:
        self.torch.manual_seed(seed)
        np.random.seed(seed)
        gen = self.torch.Generator(device=self.device).manual_seed(seed)
        self.episodes[key] = {"rng": self._get_rng(), "gen": gen, "state": copy.deepcopy(self.pristine)}

    def end(self, key: tuple) -> None:
        self.episodes.pop(key, None)

    # -- actions
    def _batch(self, rows: list[Row]) -> dict:
        from eval_libero.lerobot_compat import env_inputs

        return self.pre(env_inputs([r.raw for r in rows], [r.task for r in rows], self.env_pre))

    def _chunk(self, rows: list[Row]):
        kwargs = {"generators": [self.episodes[r.key]["gen"] for r in rows]} if self.generators else {}
        with self.torch.inference_mode():
            return self.policy.predict_action_chunk(self._batch(rows), **kwargs)

    def _probe(self, rows: list[Row]) -> str:
        outs = []
        for s in (1, 2):
            self.torch.manual_seed(s)
            outs.append(self._chunk(rows))
        same = self.torch.equal(self.torch.nan_to_num(outs[0]), self.torch.nan_to_num(outs[1]))
        return "batched" if same else "per-episode"

    def act(self, rows: list[Row]) -> list[np.ndarray | str]:
        """Per row: an (n, 7) float array of actions to execute next, or `policy_error: why`."""
        if self.mode == "probe":
            try:
                self.mode = self._probe(rows)
            except Exception:
                self.mode = "per-episode"  # the per-row path below reports the error per episode
        if self.mode == "batched":
            mix = hashlib.sha256(repr(sorted((r.key, r.step) for r in rows)).encode()).digest()
            self.torch.manual_seed(int.from_bytes(mix[:4], "little"))
            saved = {r.key: self.episodes[r.key]["gen"].get_state() for r in rows}  # (begin() first)
            try:
                return self._post(self._chunk(rows), len(rows))
            except Exception:  # find out which episodes the failure belongs to, one call each
                for r in rows:
                    self.episodes[r.key]["gen"].set_state(saved[r.key])
                return [self._one(r) for r in rows]
        return [self._one(r) for r in rows]

    def _one(self, r: Row) -> np.ndarray | str:
        ep = self.episodes[r.key]
        self._set_rng(ep["rng"])
        try:
            if self.mode == "select":
                for n, v in ep["state"].items():
                    setattr(self.policy, n, v)
                with self.torch.inference_mode():
                    a = self.policy.select_action(self._batch([r]))
                ep["state"] = {n: getattr(self.policy, n) for n in self.state_names}
                chunk = a.unsqueeze(1) if a.ndim == 2 else a
            else:
                chunk = self._chunk([r])
            out = self._post(chunk, 1)[0]
        except Exception as e:
            out = f"policy_error: {type(e).__name__}: {e}"
        ep["rng"] = self._get_rng()
        return out

    def _post(self, chunk, n_rows: int) -> list[np.ndarray | str]:
        from lerobot.utils.constants import ACTION

        want = 1 if self.mode == "select" else self.n_action_steps  # actions to execute per call
        if chunk.ndim != 3 or chunk.shape[0] != n_rows:
            return [
                f"policy_error: output of shape {tuple(chunk.shape)}; expected ({n_rows}, steps, 7)"
            ] * n_rows
        if chunk.shape[1] < want:
            why = f"policy_error: a chunk of {chunk.shape[1]} actions; n_action_steps asks for {want}"
            return [why] * n_rows
        steps = []
        for t in range(want):
            a = self.env_post({ACTION: self.post(chunk[:, t])})[ACTION]
            steps.append(a.detach().to("cpu", self.torch.float32).numpy())
        acts = np.stack(steps, 1)
        out: list[np.ndarray | str] = []
        for a in acts:
            if a.ndim != 2 or a.shape[1] != 7:
                out.append(f"policy_error: action of shape {tuple(a.shape[1:])}; expected (7,)")
            elif not np.isfinite(a).all():
                out.append(f"policy_error: non-finite action (NaN/inf) in {a.tolist()}")
            else:
                out.append(a)
        return out
