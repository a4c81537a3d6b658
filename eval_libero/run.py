"""`r1vla eval`: evaluate a LeRobot `pretrained_model` folder on LIBERO suites (resumable, batched, sharded).

    r1vla eval --policy CKPT --suites spatial,object,goal,long --out RUN [--tasks 0,3] [--init-states 0-49]
               [--seeds 7] [--max-steps N] [--protocol standard|lerobot044] [--workers W] [--video-every N]
               [--device cpu|cuda] [--label NAME] [--policy-calls auto|batched|per-episode|select]

Writes RUN/episodes.jsonl (one record per episode, fsynced as it ends), RUN/summary.json, RUN/tb (TensorBoard),
RUN/videos/*.mp4. Re-running the same command resumes. Under torchrun (RANK/WORLD_SIZE set) each rank runs every
WORLD_SIZE-th episode into RUN/episodes.rank{r}.jsonl; the last rank to finish merges them into episodes.jsonl
(a later single-process `r1vla eval` on RUN merges leftovers too). In Python: `evaluate(EvalConfig(...))`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, fields, replace
from pathlib import Path

from eval_libero import records as rec_io
from eval_libero.rollout import EpisodeSpec, PolicyRunner, _key, derive_seed, run_episodes
from eval_libero.suites import (
    N_INIT_STATES,
    NUM_WAIT_STEPS,
    PROTOCOLS,
    SUITES,
    max_steps,
    parse_index_list,
    parse_suites,
)

IMAGE_SIZE = 256  # LIBERO renders, as the datasets (= eval_libero.sim.IMAGE_SIZE; sim imports LIBERO)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class EvalError(ValueError):
    """A problem with the inputs, explained in the message (no traceback needed)."""


@dataclass(frozen=True)
class EvalConfig:
    policy: str  # LeRobot pretrained_model folder (or a checkpoint folder containing one)
    out: str  # run folder
    suites: str = "spatial,object,goal,long"
    tasks: str | None = None  # '0,3,5-7'; None = all
    init_states: str | None = None  # None = all 50 official init states
    seeds: str = "7"
    max_steps: int | None = None  # overrides the protocol's per-suite caps (smoke runs); recorded
    protocol: str = "standard"
    workers: int = 1
    video_every: int = 0  # 0 = no videos; N = every N-th episode of the run
    device: str = "cpu"
    label: str | None = None  # None: the policy config's `backbone`, else its type
    policy_calls: str = "auto"  # see rollout.PolicyRunner
    rank: int | None = None  # None: $RANK (torchrun), else 0
    world_size: int | None = None  # None: $WORLD_SIZE, else 1


def protocol_dict(protocol: str, override: int | None) -> dict:
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return {
        "name": protocol,
        "max_steps": {s.name: override or max_steps(s, protocol) for s in SUITES.values()},
        "max_steps_override": override,
        "num_wait_steps": NUM_WAIT_STEPS,
        "image_size": IMAGE_SIZE,
        "init_states": "official",
        "success": "LIBERO goal predicate each step; episode ends at first success",
    }


def plan_episodes(cfg: EvalConfig, run: Path) -> list[EpisodeSpec]:
    """All episodes of the run in canonical order (suite as given, task, init state, seed). Validates input."""
    try:
        suites = parse_suites(cfg.suites)
        inits = parse_index_list(cfg.init_states, N_INIT_STATES, "init state")
    except ValueError as e:
        raise EvalError(str(e)) from None
    try:
        seeds = [int(s) for s in str(cfg.seeds).split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"bad --seeds {cfg.seeds!r}: use integers like 7,8") from None
    if not seeds:
        raise EvalError("no seed given (--seeds 7)")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise EvalError(f"--max-steps must be >= 1, got {cfg.max_steps}")
    proto = protocol_dict(cfg.protocol, cfg.max_steps)
    specs: list[EpisodeSpec] = []
    for suite in suites:
        try:
            tasks = parse_index_list(cfg.tasks, suite.n_tasks, f"task id of {suite.name}")
        except ValueError as e:
            raise EvalError(str(e)) from None
        for t in tasks:
            for i in inits:
                for s in seeds:
                    n, name = len(specs), suite.name
                    video = None
                    if cfg.video_every and n % cfg.video_every == 0:
                        video = str(run / "videos" / f"{name}_t{t}_i{i}_s{s}.mp4")
                    cap = proto["max_steps"][name]
                    specs.append(EpisodeSpec(n, name, t, i, s, derive_seed(s, name, t, i), cap, video))
    return specs


# ---- the policy -----------------------------------------------------------------------------------------------


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


def load_policy_config(p: Path, device: str):
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
    cfg.pretrained_path = p
    cfg.device = device
    return cfg


def load_runner(p: Path, policy_cfg, suites: list[str], mode: str) -> PolicyRunner:
    """Policy, its saved processors and LeRobot's LIBERO env processors, built as lerobot-eval builds them."""
    from lerobot.envs.configs import LiberoEnv as LiberoEnvConfig
    from lerobot.envs.factory import make_env_pre_post_processors
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    env_cfg = LiberoEnvConfig(task=",".join(suites))
    policy = make_policy(cfg=policy_cfg, env_cfg=env_cfg)
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
    return PolicyRunner(policy, pre, post, env_pre, env_post, mode)


# ---- the run --------------------------------------------------------------------------------------------------


def evaluate(cfg: EvalConfig, log=print) -> Path:
    """Run (or resume) the evaluation described by `cfg`; returns the run folder. Raises EvalError on bad input."""
    run = Path(cfg.out).expanduser()
    rank = cfg.rank if cfg.rank is not None else int(os.environ.get("RANK", 0))
    world = cfg.world_size if cfg.world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise EvalError(f"rank {rank} out of range for world size {world}")
    if cfg.workers < 1 or cfg.video_every < 0:
        raise EvalError("--workers must be >= 1 and --video-every >= 0")
    plan = plan_episodes(cfg, run)
    ckpt = resolve_checkpoint(cfg.policy)
    device = cfg.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per rank on each node
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    policy_cfg = load_policy_config(ckpt, device)
    backbone = getattr(policy_cfg, "backbone", None)
    label = cfg.label or (backbone if isinstance(backbone, str) else None) or policy_cfg.type
    meta = {
        "checkpoint": checkpoint_hash(ckpt),
        "label": label,
        "protocol": protocol_dict(cfg.protocol, cfg.max_steps),
    }
    run.mkdir(parents=True, exist_ok=True)
    with open(run / f".lock.rank{rank}", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvalError(f"another eval is already writing {run} as rank {rank}") from None
        return _evaluate_locked(cfg, run, rank, world, plan, ckpt, policy_cfg, meta, log)


def _evaluate_locked(cfg, run, rank, world, plan, ckpt, policy_cfg, meta, log) -> Path:
    if world == 1 and any(run.glob("episodes.rank*.jsonl")):
        log(f"merging shard files left in {run}")
        rec_io.merge_shards(run, log)
    own = run / rec_io.EPISODES if world == 1 else rec_io.shard_path(run, rank)
    records = rec_io.load_records(own, log)
    others = [
        rec_io.read_jsonl(f).records
        for f in [run / rec_io.EPISODES, *run.glob("episodes.rank*.jsonl")]
        if f != own
    ]
    known = records + [r for rs in others for r in rs]
    bad = rec_io.run_meta_mismatch(known, meta)
    if bad:
        raise EvalError(f"{run} holds episodes of a different evaluation ({'; '.join(bad)}); use a new --out")
    done = {rec_io.episode_key(r) for r in known}
    todo = [s for s in plan if s.index % world == rank and _key(s) not in done]
    log(
        f"{run}: {len(plan)} episodes planned, {len(done)} recorded, {len(todo)} to run"
        + (f" (rank {rank}/{world})" if world > 1 else "")
    )
    lost = _run(cfg, run, ckpt, policy_cfg, meta, todo, known, own, rank, world, log) if todo else 0

    if world > 1:
        rec_io.done_marker(run, rank, world).write_text(str(len(todo) - lost))
    if world == 1 or rec_io.all_ranks_done(run, world):
        all_records = rec_io.merge_shards(run, log)
        planned = {_key(s) for s in plan}
        missing = len(planned - {rec_io.episode_key(r) for r in all_records})
        summary = rec_io.write_summary(
            run, all_records, {**meta, "run": str(run), "planned": len(plan), "missing": missing}
        )
        _tb_final(run, summary)
    else:
        log(f"rank {rank} done; the last rank to finish merges the shards")
    if lost:
        raise EvalError(
            f"{lost} episode(s) hit simulator errors and were not recorded; re-run the command to retry them"
        )
    return run


def _run(cfg, run, ckpt, policy_cfg, meta, todo, known, own, rank, world, log) -> int:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    if cfg.video_every and not _videos_ok(log):
        todo = [replace(s, video=None) for s in todo]
    runner = load_runner(ckpt, policy_cfg, sorted({s.suite for s in todo}), cfg.policy_calls)
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in known:
        tally[r["suite"]][0] += bool(r["success"])
        tally[r["suite"]][1] += 1
    short = {s.name: s.short for s in SUITES.values()}
    writer = rec_io.RecordWriter(own)
    tb = SummaryWriter(str(run / "tb" if world == 1 else run / "tb" / f"rank{rank}"))
    bar = tqdm(total=len(todo), desc=f"eval {meta['label']}", unit="ep", dynamic_ncols=True)

    def on_done(spec: EpisodeSpec, res: dict) -> None:
        key = dict(suite=spec.suite, perturbation=spec.perturbation, task_id=spec.task_id)
        key.update(init_state=spec.init_state, seed=spec.seed)
        writer.append({**key, "episode_seed": spec.episode_seed, **res, **meta, "policy_calls": runner.mode})
        k_n = tally[spec.suite]
        k_n[0] += res["success"]
        k_n[1] += 1
        tb.add_scalar(f"success/{short[spec.suite]}", k_n[0] / k_n[1], k_n[1])
        bar.set_postfix_str(" ".join(f"{short[s]} {k}/{n}" for s, (k, n) in tally.items()))
        bar.update()

    try:
        return run_episodes(todo, runner, cfg.workers, on_done, NUM_WAIT_STEPS, IMAGE_SIZE, log=bar.write)
    finally:
        bar.close()
        writer.close()
        tb.close()


def _videos_ok(log) -> bool:
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        return True
    except Exception as e:
        log(f"videos disabled: imageio-ffmpeg is unavailable ({type(e).__name__}: {e})")
        return False


def _tb_final(run: Path, summary: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tb")) as tb:
        for suite, block in summary["suites"].items():
            tb.add_scalar(f"final_success/{suite}", block["success_rate"], block["n"])
        if summary["average"]["success_rate"] is not None:
            tb.add_scalar("final_success/average", summary["average"]["success_rate"], summary["n_episodes"])


# ---- CLI ------------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="LeRobot pretrained_model folder")
    p.add_argument("--out", required=True, help="run folder (re-run the same command to resume)")
    p.add_argument("--suites", default="spatial,object,goal,long", help="comma list of LIBERO suites")
    p.add_argument("--tasks", default=None, help="task ids, e.g. 0,3,5-7 (default: all)")
    p.add_argument("--init-states", default=None, help="official init state ids, e.g. 0-49 (default: all 50)")
    p.add_argument("--seeds", default="7", help="comma list of seeds; each is a separate episode")
    p.add_argument(
        "--max-steps", type=int, default=None, help="override the protocol's step caps (smoke runs)"
    )
    p.add_argument("--protocol", default="standard", choices=PROTOCOLS)
    p.add_argument("--workers", type=int, default=1, help="LIBERO worker processes")
    p.add_argument("--video-every", type=int, default=0, help="write an mp4 of every N-th episode (0: none)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")
    p.add_argument("--label", default=None, help="label for reports (default: the policy config's backbone)")
    p.add_argument(
        "--policy-calls",
        default="auto",
        choices=PolicyRunner.MODES,
        help="auto: one batched call if the policy is deterministic, else one per episode (own RNG)",
    )


def run(args: argparse.Namespace) -> int:
    cfg = EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig) if hasattr(args, f.name)})
    try:
        out = evaluate(cfg)
    except EvalError as e:
        print(f"r1vla eval: {e}", file=sys.stderr)
        return 2
    summary = out / rec_io.SUMMARY
    if summary.exists():
        s = json.loads(summary.read_text())
        for suite, b in s["suites"].items():
            lo, hi = b["ci95"]
            print(
                f"{suite:<15} {b['successes']:>4}/{b['n']:<4} {100 * b['success_rate']:5.1f}%  "
                f"95% CI [{100 * lo:.1f}, {100 * hi:.1f}]"
            )
        if s["missing"]:
            print(f"{s['missing']} planned episode(s) not recorded yet: re-run to complete")
    return 0
