"""`r1vla eval`: evaluate a LeRobot `pretrained_model` folder on LIBERO suites (resumable, batched, sharded).

    r1vla eval --policy CKPT --suites spatial,object,goal,long --out RUN [--tasks 0,3] [--init-states 0-49]
               [--seeds 7] [--max-steps N] [--protocol standard|lerobot06] [--workers W] [--video-every N]
               [--device cpu|cuda] [--label NAME] [--policy-calls auto|batched|per-episode|select]
               [--perturbations lan,object,swap,task] [--no-standard] [--start-states DATASET]
               [--backbone-path PATH] [--allow-backbone-mismatch] [--worker-timeout S] [--retry-faults]
               [--gripper raw|sign]

Writes RUN/episodes.jsonl (one record per episode, fsynced as it ends), RUN/summary.json, RUN/tb (TensorBoard),
RUN/videos/*.mp4. Re-running the same command resumes: recorded episodes, failures included, are not run again
(`--retry-faults` re-runs those a fault ended). Under torchrun (RANK/WORLD_SIZE set) each rank runs every
WORLD_SIZE-th episode into RUN/episodes.rank{r}.jsonl; the last rank to finish merges them into episodes.jsonl
(a later single-process `r1vla eval` on RUN merges leftovers too). In Python: `evaluate(EvalConfig(...))`.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections import defaultdict
from dataclasses import fields, replace
from pathlib import Path

from eval_libero.checkpoint import (
    checkpoint_hash,
    load_policy_config,
    load_runner,
    resolve_checkpoint,
    train_seed,
)
from eval_libero.plan import EvalConfig, EvalError, plan_episodes, protocol_dict, versions
from eval_libero.runner import PolicyRunner, render_size
from eval_libero.scheduler import EpisodeSpec, run_episodes, spec_key
from libero_core import records as rec_io
from libero_core.suites import NUM_WAIT_STEPS, PROTOCOLS, SUITES

__all__ = ["EvalConfig", "EvalError", "evaluate", "load_policy_config", "load_runner", "protocol_dict"]


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def evaluate(cfg: EvalConfig, log=print) -> Path:
    """Run (or resume) the evaluation described by `cfg`; returns the run folder. Raises EvalError on bad input."""
    run = Path(cfg.out).expanduser()
    rank = cfg.rank if cfg.rank is not None else int(os.environ.get("RANK", 0))
    world = cfg.world_size if cfg.world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise EvalError(f"rank {rank} out of range for world size {world}")
    if cfg.workers < 1 or cfg.video_every < 0 or cfg.worker_timeout <= 0:
        raise EvalError("--workers must be >= 1, --video-every >= 0 and --worker-timeout > 0")
    plan, protocol = plan_episodes(cfg, run)
    ckpt = resolve_checkpoint(cfg.policy)
    device = cfg.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per rank on each node
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    policy_cfg = load_policy_config(ckpt, device, cfg.backbone_path, cfg.allow_backbone_mismatch)
    try:  # cameras rendered at the resolution the policy was trained on (recorded in the protocol)
        protocol = {**protocol, "image_size": render_size(policy_cfg)}
    except ValueError as e:
        raise EvalError(f"{ckpt}: {e}") from None
    if (prompt := prompt_protocol(policy_cfg)) is not None:  # compared like the step caps (r1vla compare)
        protocol = {**protocol, "prompt": prompt}
    backbone = getattr(policy_cfg, "backbone", None)
    label = cfg.label or (backbone if isinstance(backbone, str) else None) or policy_cfg.type
    meta = {  # equal for every episode of a run: a resume that differs is refused
        "checkpoint": checkpoint_hash(ckpt),
        "label": label,
        "protocol": protocol,
        "train_seed": train_seed(ckpt),
        "backbone_path": getattr(policy_cfg, "backbone_path", None),
    }
    run.mkdir(parents=True, exist_ok=True)
    with open(run / f".lock.rank{rank}", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EvalError(f"another eval is already writing {run} as rank {rank}") from None
        rec_io.done_marker(run, rank, world).unlink(
            missing_ok=True
        )  # a stale marker of an earlier invocation
        return _evaluate_locked(cfg, run, rank, world, plan, ckpt, policy_cfg, meta, device, log)


def prompt_protocol(policy_cfg) -> dict | None:
    """An r1vla policy's backbone prompt: {"style", "coordinates"} (None for other policies)."""
    if not hasattr(policy_cfg, "prompt_coords"):
        return None
    return {"style": policy_cfg.backbone_config().prompt_style_name, "coordinates": policy_cfg.prompt_coords}


def _evaluate_locked(cfg, run, rank, world, plan, ckpt, policy_cfg, meta, device, log) -> Path:
    if world == 1 and any(run.glob("episodes.rank*.jsonl")):
        log(f"merging shard files left in {run}")
        rec_io.merge_shards(run, log)
    own = run / rec_io.EPISODES if world == 1 else rec_io.shard_path(run, rank)
    records = rec_io.load_records(own, log)
    if cfg.retry_faults and any(rec_io.is_fault(r) for r in records):
        kept = [r for r in records if not rec_io.is_fault(r)]
        log(f"--retry-faults: {len(records) - len(kept)} episode(s) ended by a fault will be run again")
        rec_io.write_jsonl_atomic(own, kept)
        records = kept
    others = [
        rec_io.read_jsonl(f).records
        for f in [run / rec_io.EPISODES, *run.glob("episodes.rank*.jsonl")]
        if f != own
    ]
    known = records + [r for rs in others for r in rs]
    bad = rec_io.run_meta_mismatch(known, meta)
    if bad:
        raise EvalError(f"{run} holds episodes of a different evaluation ({'; '.join(bad)}); use a new --out")
    mine = {spec_key(s) for s in plan if s.index % world == rank}
    if cfg.retry_faults and world > 1:  # faults already merged into episodes.jsonl by an earlier torchrun
        merged = [
            r for r in known if r not in records and rec_io.is_fault(r) and rec_io.episode_key(r) in mine
        ]
        if merged:
            log(
                f"--retry-faults: {len(merged)} merged episode(s) of rank {rank} ended by a fault will be run again"
            )
            ids = {id(r) for r in merged}
            known = [r for r in known if id(r) not in ids]  # the new records replace them at the merge
    done = {rec_io.episode_key(r) for r in known}
    todo = [s for s in plan if spec_key(s) in mine and spec_key(s) not in done]
    log(
        f"{run}: {len(plan)} episodes planned, {len(done)} recorded, {len(todo)} to run"
        + (f" (rank {rank}/{world})" if world > 1 else "")
    )
    if todo:
        _run(cfg, run, ckpt, policy_cfg, meta, todo, known, own, rank, world, device, log)
    if world > 1:
        rec_io.done_marker(run, rank, world).write_text(rec_io.invocation_id())
    if world == 1 or rec_io.all_ranks_done(run, world):
        all_records = rec_io.merge_shards(run, log)
        planned = {spec_key(s) for s in plan}
        missing = len(planned - {rec_io.episode_key(r) for r in all_records})
        summary = rec_io.write_summary(
            run, all_records, {**meta, "run": str(run), "planned": len(plan), "missing": missing}
        )
        _tb_final(run, summary)
    else:
        log(f"rank {rank} done; the last rank to finish merges the shards")
    return run


def _run(cfg, run, ckpt, policy_cfg, meta, todo, known, own, rank, world, device, log) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    if cfg.video_every and not _videos_ok(log):
        todo = [replace(s, video=None) for s in todo]
    suites = sorted({s.suite for s in todo})
    runner = load_runner(ckpt, policy_cfg, suites, cfg.policy_calls)
    env = {"software": versions(), "device": _device_name(device)}
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in known:
        tally[_tag(r["suite"], r.get("perturbation"))][0] += bool(r["success"])
        tally[_tag(r["suite"], r.get("perturbation"))][1] += 1
    writer = rec_io.RecordWriter(own)
    tb = SummaryWriter(str(run / "tb" if world == 1 else run / "tb" / f"rank{rank}"))
    bar = tqdm(total=len(todo), desc=f"eval {meta['label']}", unit="ep", dynamic_ncols=True)

    def on_done(spec: EpisodeSpec, res: dict) -> None:
        key = dict(zip(rec_io.KEY_FIELDS, spec_key(spec), strict=True))
        writer.append(
            {**key, "episode_seed": spec.episode_seed, **res, **meta, **env, "policy_calls": runner.mode}
        )
        tag = _tag(spec.suite, spec.perturbation)
        k_n = tally[tag]
        k_n[0] += res["success"]
        k_n[1] += 1
        tb.add_scalar(f"success/{tag}", k_n[0] / k_n[1], k_n[1])
        bar.set_postfix_str(" ".join(f"{t} {k}/{n}" for t, (k, n) in tally.items()))
        bar.update()

    egl = None
    if device.startswith("cuda"):  # render on this rank's GPU too
        import torch

        egl = int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count())
    try:
        run_episodes(
            todo,
            runner,
            cfg.workers,
            on_done,
            NUM_WAIT_STEPS,
            meta["protocol"]["image_size"],
            cfg.worker_timeout,
            egl,
            log=bar.write,
        )
    finally:
        bar.close()
        writer.close()
        tb.close()


def _tag(suite: str, perturbation: str | None) -> str:
    short = SUITES[suite].short if suite in SUITES else suite
    return short if perturbation in (None, "none") else f"{short}_{perturbation}"


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
        help="auto: one batched call when the policy is deterministic or takes per-episode generators, "
        "else one per episode (own RNG); select for policies with history (eval_libero/runner.py)",
    )
    p.add_argument(
        "--perturbations",
        default=None,
        help="LIBERO-PRO variants of each suite, e.g. lan,object,swap,task (same tasks, init states, seeds)",
    )
    p.add_argument(
        "--no-standard", action="store_true", help="with --perturbations: skip the standard suites"
    )
    p.add_argument(
        "--start-states",
        default=None,
        metavar="DATASET",
        help="start from a dataset's recorded start states (meta/start_states.npz) instead of the official "
        "init states; --init-states then selects its episode indices (memorization checks)",
    )
    p.add_argument("--backbone-path", default=None, help="r1vla: where the checkpoint's backbone is now")
    p.add_argument(
        "--allow-backbone-mismatch",
        action="store_true",
        help="r1vla: load although the backbone differs from the one the checkpoint was trained on",
    )
    p.add_argument(
        "--worker-timeout", type=float, default=300.0, help="seconds before a silent worker is killed"
    )
    p.add_argument(
        "--gripper",
        default="raw",
        choices=("raw", "sign"),
        help="sign: execute the gripper command as -1 if < 0 else +1, as vla-eval's LIBERO does (recorded)",
    )
    p.add_argument(
        "--retry-faults",
        action="store_true",
        help="re-run recorded episodes that a fault (not the step cap) ended",
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
        print(rec_io.format_summary(rec_io.read_summary(summary)))
    return 0
