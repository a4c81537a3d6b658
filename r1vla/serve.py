"""`r1vla serve`: a LeRobot policy folder served to vla-eval (allenai's VLA evaluation harness) over WebSocket.

    r1vla serve --policy CKPT [--port 8000] [--device cpu] [--host 127.0.0.1]

The server is vla-eval's own LeRobot bridge (`vla_eval.model_servers.lerobot.LeRobotModelServer`: the checkpoint
through `get_policy_class` + its saved `make_pre_post_processors` + `predict_action_chunk`, chunks buffered by
vla-eval's `PredictModelServer`), served by vla-eval's own WebSocket runner. This module adds only what this
package's checkpoints need (`R1VLAModelServer`):
  - the `lerobot_policy_*` plugins registered, so `get_policy_class("r1vla")` resolves (LeRobot's own policies,
    e.g. ACT, need nothing);
  - the checkpoint checked first (a folder that is not a LeRobot policy is a clear error, not a traceback);
  - the cameras mapped as the policy was trained (libero_core.sim: vla-eval's `agentview` ->
    `observation.images.image`, `wrist` -> `observation.images.image2`), only those the policy reads;
  - `quat_no_antipodal: true` at hello, so vla-eval's LIBERO sends the state's axis-angle exactly as the datasets
    and LeRobot's LIBERO pipeline compute it (robosuite's quat2axisangle, no sign canonicalisation);
  - one warm-up call at start, timed: the client's `server.timeout` (vla-eval's default is 30 s, and a timed-out
    episode counts as a failure) must exceed a CPU policy call; the recommended value is printed.
vla-eval's LIBERO renders 256x256; a policy trained on smaller frames gets them letterboxed by the bridge, which
is not the render `r1vla eval` gives it (it renders at the trained size). `r1vla crosscheck` aligns that.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import time
from typing import Any

from eval_libero.plan import EvalError
from hints import versions

VLA_EVAL_VERSIONS = ("0.8.",)  # the vla-eval releases this module was written and tested against
CAMERAS = {
    "agentview": "observation.images.image",
    "wrist": "observation.images.image2",
}  # vla-eval -> policy
TIMEOUT_FLOOR_S = 30.0  # vla-eval's default server timeout


def check_vla_eval() -> str:
    """The installed vla-eval version; EvalError if it is missing or not one this package was written for."""
    v = versions(["vla-eval"])["vla-eval"]
    if v is None:
        raise EvalError("vla-eval is not installed: pip install 'vla-eval==0.8.*' (scripts/setup.sh does)")
    if not v.startswith(VLA_EVAL_VERSIONS):
        raise EvalError(
            f"vla-eval {v} is installed; r1vla serve/crosscheck were written for vla-eval "
            f"{', '.join(x + '*' for x in VLA_EVAL_VERSIONS)} (pip install 'vla-eval==0.8.*')"
        )
    return v


def check_port(host: str, port: int) -> None:
    """EvalError if `port` cannot be bound on `host` (in use, or not a port)."""
    if not 0 <= port <= 65535:
        raise EvalError(f"--port {port} is not a TCP port (0-65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            why = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            raise EvalError(
                f"--port {port} on {host} {why}; choose another port (or 0 for a free one)"
            ) from None


def camera_map(policy_cfg) -> dict[str, str]:
    """vla-eval camera -> the policy's image feature, for the cameras the policy reads."""
    keys = set(getattr(policy_cfg, "image_features", None) or {})
    unknown = sorted(keys - set(CAMERAS.values()))
    if unknown:
        raise EvalError(
            f"the policy reads cameras {unknown}; LIBERO (vla-eval) provides {sorted(CAMERAS.values())}"
        )
    return {bench: key for bench, key in CAMERAS.items() if key in keys}


def _server_class():
    from vla_eval.model_servers.lerobot import LeRobotModelServer

    class R1VLAModelServer(LeRobotModelServer):
        """vla-eval's LeRobot bridge for a checked checkpoint folder, with this package's cameras and state."""

        def __init__(self, checkpoint: str, device: str = "cpu", **kwargs: Any) -> None:
            import json
            from pathlib import Path

            from eval_libero.checkpoint import load_policy_config, resolve_checkpoint

            path = resolve_checkpoint(checkpoint)
            cfg = load_policy_config(path, device)  # registers the lerobot_policy_* plugins
            steps = {
                s.get("registry_name")
                for s in json.loads((Path(path) / "policy_preprocessor.json").read_text())["steps"]
            }
            overrides = {"rename_observations_processor": {"rename_map": {}}}  # as lerobot-eval
            self.cameras = camera_map(cfg)
            super().__init__(
                cfg.type,
                str(path),
                image_keys=self.cameras,
                state_key="observation.state" if "observation.state" in cfg.input_features else None,
                device=device,
                preprocessor_overrides={k: v for k, v in overrides.items() if k in steps},
                **kwargs,
            )
            self.call_s = self._time_one_call()

        def _time_one_call(self) -> float:
            """One policy call on a blank observation (warm-up); its wall time in seconds."""
            import numpy as np
            from vla_eval.model_servers.base import SessionContext

            sizes = {b: self._declared_image_hw(k) or (256, 256) for b, k in self.cameras.items()}
            obs = {
                "images": {b: np.zeros((*hw, 3), np.uint8) for b, hw in sizes.items()},
                "task_description": "",
            }
            if self.state_key:
                obs["states"] = np.zeros(8, np.float32)
            t0 = time.perf_counter()
            self.predict(obs, SessionContext("warmup", "warmup"))
            self._policy.reset()
            return time.perf_counter() - t0

        def get_observation_params(self) -> dict[str, Any]:
            params = {**super().get_observation_params(), "quat_no_antipodal": True}
            params["send_wrist_image"] = "wrist" in self.cameras
            params["send_state"] = self.state_key is not None
            return params

    return R1VLAModelServer


def make_server(checkpoint: str, device: str = "cpu", **kwargs: Any):
    """The model server for a checkpoint folder (EvalError on bad input)."""
    check_vla_eval()
    return _server_class()(checkpoint, device, **kwargs)


def recommended_timeout(call_s: float) -> float:
    """A client timeout that fits this policy's calls on this machine: 10x the warm-up call, at least 30 s."""
    return max(TIMEOUT_FLOOR_S, round(10 * call_s))


def serve_forever(server, host: str, port: int, log=print) -> None:
    """Serve until interrupted; logs the bound address first (port 0 = a free port)."""
    import anyio
    from vla_eval.model_servers.serve import serve_async

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            bound = await tg.start(serve_async, server, host, port)
            hw = {server._declared_image_hw(k) for k in server.cameras.values()} - {None, (256, 256)}
            if hw:  # vla-eval's LIBERO renders 256x256
                log(
                    f"r1vla serve: the policy was trained on {sorted(hw)} frames; 256x256 renders are letterboxed"
                )
            log(
                f"r1vla serve: ws://{host}:{bound} ({type(server).__name__}, {server.policy_type}, cameras "
                f"{server.cameras}, one policy call {server.call_s:.2f} s; client server.timeout >= "
                f"{recommended_timeout(server.call_s):.0f} s)"
            )

    anyio.run(main)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="LeRobot pretrained_model folder (r1vla, ACT, ...)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: a free one, printed)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")


def run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_vla_eval()
        check_port(args.host, args.port)
        server = make_server(args.policy, args.device)
    except EvalError as e:
        print(f"r1vla serve: {e}", file=sys.stderr)
        return 2
    try:
        serve_forever(server, args.host, args.port, log=lambda m: print(m, flush=True))
    except OSError as e:  # the port was taken between the check and the bind
        print(f"r1vla serve: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
