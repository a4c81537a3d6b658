"""`r1vla demos`: LIBERO demonstrations from the scripted expert, as a local LeRobotDataset v3 (hub schema).

    r1vla demos --suites object,spatial,goal,long [--tasks 0,3] --episodes-per-task 50 --out data/libero_demos \
        [--workers 2] [--seed 0] [--noise 0.0 [--labels expert]] [--videos] [--official-init-states]

Per task, attempt k has the seed f(seed, suite, task, k), which seeds LIBERO's reset (the randomized placement
of the task's objects in their BDDL regions, and the fixtures) and the expert's noise. Episodes therefore start
from placements the evaluation never uses; every episode's start sim state is stored in the dataset's
meta/start_states.npz (key `episode_<index>`, LIBERO's init-state layout) so that nothing can be evaluated on a
training start by accident. `--official-init-states` starts attempt k from official init state k mod 50 instead
(only for memorization checks: the evaluation uses these very states). Attempts run in waves until `--episodes-per-task` succeed or `--max-attempts` were made (the set of attempts is
deterministic). Fast path: the expert runs without rendering (~20x faster per step); only a successful plan is
replayed, no-ops dropped (OpenVLA's rule), in a rendered env from the same init state to record the frames.
The replay must reproduce the plan (same states, success), else the attempt counts as failed. With `--noise`,
`--labels expert` records the expert's action before the noise instead of the executed one (DART; demos/attempt.py).
Interrupt at will: re-running the same command keeps what was saved and continues. `--plan-only` measures the
expert's per-task success (unrendered, nothing written; docs/EXPERT_SUCCESS.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from demos.attempt import LABELS, NOOP_EPS, Job, episode_seed, plan_only, run_attempt
from libero_core.suites import IMAGE_SIZE, N_INIT_STATES, max_steps, parse_index_list, parse_suites

EXPERT_VERSION = 1  # bump when the expert's behaviour changes (it is part of the dataset's config)


@dataclass(frozen=True)
class DemoConfig:
    suites: tuple[str, ...]
    tasks: str | None  # '0,3' (applied to every suite) or None = all
    episodes_per_task: int
    out: str
    workers: int = 1
    seed: int = 0
    noise: float = 0.0
    videos: bool = False
    max_attempts: int | None = None  # per task; None = 2 * episodes_per_task
    protocol: str = "standard"  # step caps of libero_core.suites
    commit_every: int = 10  # successful episodes between two dataset commits
    repo_id: str = "local/libero_demos"
    official_init_states: bool = False  # start attempt k from official init state k mod 50 (memorization)
    init_states: str | None = (
        None  # with official_init_states: the ones attempts cycle through (None = all 50)
    )
    labels: str = "executed"  # the `action` column: executed actions, or the expert's before noise (DART)
    image_size: int = IMAGE_SIZE  # camera resolution of the frames (the evaluation renders the policy's)


def next_attempts(done: dict[int, bool], n: int, max_attempts: int) -> list[int]:
    """Attempts still needed for one task, given finished ones (attempt -> success). Waves: attempts
    [0, n) first, then as many new ones as successes are missing, until n succeed or the cap is hit."""
    start, size = 0, n
    while True:
        wave = range(start, min(start + size, max_attempts))
        missing = [k for k in wave if k not in done]
        if missing:
            return missing
        ok = sum(done[k] for k in range(wave.stop))
        if ok >= n or wave.stop >= max_attempts:
            return []
        start, size = wave.stop, n - ok


# --- main process ------------------------------------------------------------------------------------------
class _Inline:
    """Executor-like object that runs jobs in this process (workers=1): simplest to debug and to test."""

    def submit(self, fn, *args) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_result(fn(*args))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _job(cfg: DemoConfig, suite, task_id: int, attempt: int) -> Job:
    seed = episode_seed(cfg.seed, suite.name, task_id, attempt)
    steps = max_steps(suite, cfg.protocol)
    inits = official_inits(cfg)
    init = inits[attempt % len(inits)] if cfg.official_init_states else None
    return Job(suite.name, task_id, attempt, seed, cfg.noise, steps, init, cfg.labels, cfg.image_size)


def official_inits(cfg: DemoConfig) -> list[int]:
    """The official init states attempts cycle through (attempt k starts from the k-th, modulo their number)."""
    return parse_index_list(cfg.init_states, N_INIT_STATES, "init state")


def generate(cfg: DemoConfig, on_result: Callable[[dict], None] | None = None) -> dict:
    """Generate (or continue generating) the dataset; returns the per-task summary."""
    from tqdm import tqdm

    from demos.dataset import DemoStore, features

    suites = parse_suites(list(cfg.suites))
    tasks = [(s, t) for s in suites for t in parse_index_list(cfg.tasks, s.n_tasks, f"{s.name} task id")]
    if cfg.episodes_per_task < 1:
        raise ValueError("--episodes-per-task must be >= 1")
    cap = cfg.max_attempts or 2 * cfg.episodes_per_task
    if not 16 <= cfg.image_size <= 1024:
        raise ValueError(
            f"--image-size {cfg.image_size}: choose a camera resolution in 16-1024 (default 256)"
        )
    if cfg.labels not in LABELS:
        raise ValueError(f"--labels {cfg.labels!r}: choose one of {', '.join(LABELS)}")
    if cfg.labels == "expert" and cfg.noise == 0:
        raise ValueError("--labels expert differs from the executed actions only with --noise > 0")
    if cfg.init_states is not None and not cfg.official_init_states:
        raise ValueError("--init-states selects official init states: it needs --official-init-states")
    n_inits = len(official_inits(cfg))
    if cfg.official_init_states and cfg.noise == 0:  # without noise, attempt k + n would repeat attempt k
        if cfg.episodes_per_task > n_inits:
            raise ValueError(
                f"more than {n_inits} episodes per task from {n_inits} init states repeat episodes exactly: "
                "add --noise > 0"
            )
        cap = min(cap, n_inits)
    store = DemoStore(
        cfg.out,
        features(image_size=cfg.image_size, videos=cfg.videos),
        repo_id=cfg.repo_id,
        config={
            "source": "scripted_expert",
            "expert_version": EXPERT_VERSION,
            "seed": cfg.seed,
            "noise": cfg.noise,
            "protocol": cfg.protocol,
            "fps": 10,
            "noop_threshold": NOOP_EPS,
            "starts": "official_init_states" if cfg.official_init_states else "randomized",
            **({"init_states": cfg.init_states} if cfg.init_states else {}),
            **({"labels": cfg.labels} if cfg.labels != "executed" else {}),  # older datasets: executed
            **({"image_size": cfg.image_size} if cfg.image_size != IMAGE_SIZE else {}),
        },
    )
    done: dict[tuple[str, int], dict[int, bool]] = {(s.name, t): {} for s, t in tasks}
    for r in store.attempts().values():
        if (r["suite"], r["task_id"]) in done:
            done[(r["suite"], r["task_id"])][r["attempt"]] = bool(r["success"])

    unsupported = {
        (r["suite"], r["task_id"])
        for r in store.attempts().values()
        if r.get("reason", "").startswith("unsupported")
    }

    def ready(inflight: set[str]) -> list[Job]:
        out = []
        for s, t in tasks:
            if (s.name, t) in unsupported:  # the expert cannot do this task: one attempt says so, stop there
                continue
            for k in next_attempts(done[(s.name, t)], cfg.episodes_per_task, cap):
                job = _job(cfg, s, t, k)
                if job.key not in inflight:
                    out.append(job)
        return out

    saved = sum(sum(d.values()) for d in done.values())
    bar = tqdm(
        total=len(tasks) * cfg.episodes_per_task, initial=saved, desc="demos", unit="ep", dynamic_ncols=True
    )
    pool = (
        _Inline()
        if cfg.workers <= 1
        else cf.ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"))
    )
    inflight: dict[cf.Future, Job] = {}
    since_commit = 0
    try:
        while True:
            for job in ready({j.key for j in inflight.values()}):
                if len(inflight) >= 2 * max(cfg.workers, 1) or (cfg.workers <= 1 and inflight):
                    break
                inflight[pool.submit(run_attempt, job, str(store.staging))] = job
            if not inflight:
                break
            finished, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                job = inflight.pop(fut)
                rec = fut.result()
                done[(job.suite, job.task_id)][job.attempt] = bool(rec["success"])
                if rec.get("reason", "").startswith("unsupported"):
                    unsupported.add((job.suite, job.task_id))
                since_commit += bool(rec["success"])
                bar.update(int(rec["success"]))
                ok = sum(done[(job.suite, job.task_id)].values())
                bar.set_postfix_str(
                    f"{job.suite} t{job.task_id}: {ok}/{len(done[(job.suite, job.task_id)])} ok"
                    + ("" if rec["success"] else f" | fail: {rec.get('reason', '')[:60]}")
                )
                if on_result is not None:
                    on_result(rec)
            if since_commit >= cfg.commit_every:
                store.commit()
                since_commit = 0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        store.commit()  # everything finished so far goes into the dataset, also on Ctrl-C
        summary = store.task_summary()
        store.close()
    return summary


def measure(cfg: DemoConfig, json_path: str | None = None) -> dict[str, dict]:
    """`--plan-only`: run attempts 0..episodes_per_task-1 of every task unrendered; nothing is written but
    the per-attempt results (to `json_path`). Returns a per-task summary."""
    import json

    from tqdm import tqdm

    suites = parse_suites(list(cfg.suites))
    jobs = [
        _job(cfg, s, t, k)
        for s in suites
        for t in parse_index_list(cfg.tasks, s.n_tasks, f"{s.name} task id")
        for k in range(cfg.episodes_per_task)
    ]
    if cfg.workers <= 1:
        results = [plan_only(j) for j in tqdm(jobs, desc="plan-only", unit="ep")]
    else:
        with cf.ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(tqdm(pool.map(plan_only, jobs), total=len(jobs), desc="plan-only", unit="ep"))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))
    out: dict[str, dict] = {}
    for r in results:
        t = out.setdefault(
            f"{r['suite']}/{r['task_id']}", {"language": r["task"], "attempts": 0, "successes": 0}
        )
        t["attempts"] += 1
        t["successes"] += r["success"]
        if not r["success"]:
            t.setdefault("first_failure", r["reason"][:70])
    return out


def format_summary(summary: dict[str, dict]) -> str:
    lines = [f"{'task':<20} {'ok/attempts':>12}  language"]
    for k, t in summary.items():
        why = f"  [first failure: {t['first_failure']}]" if t.get("first_failure") else ""
        lines.append(f"{k:<20} {t['successes']:>5}/{t['attempts']:<6}  {t['language']}{why}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--suites",
        default="libero_spatial,libero_object,libero_goal,libero_10",
        help="comma-separated LIBERO suites; short names accepted (spatial, object, goal, long)",
    )
    p.add_argument("--tasks", default=None, help="task ids in each suite, e.g. '0,3' or '0-4' (default: all)")
    p.add_argument("--episodes-per-task", type=int, default=50, help="successful episodes to save per task")
    p.add_argument("--out", default="", help="output folder (a local LeRobotDataset; re-run to resume)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with its own envs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on the 6 motion dims")
    p.add_argument(
        "--labels",
        default="executed",
        help="the recorded action: 'executed' (noise included) or 'expert' (the expert's action before the noise, "
        "DART-style; the executed ones go to meta/executed_actions.npz)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=IMAGE_SIZE,
        help="camera resolution of the frames (default 256, as the hub datasets); a policy trained on them is "
        "evaluated at the same resolution",
    )
    p.add_argument(
        "--videos",
        action="store_true",
        help="store AV1 MP4 videos instead of PNG frames (encoded with PyAV; read them back with "
        "video_backend='pyav' where torchcodec finds no FFmpeg)",
    )
    p.add_argument("--max-attempts", type=int, default=None, help="attempts per task (default 2 x episodes)")
    p.add_argument("--protocol", default="standard", help="step caps: standard (OpenVLA) or lerobot06")
    p.add_argument("--commit-every", type=int, default=10, help="episodes between dataset commits")
    p.add_argument("--repo-id", default="local/libero_demos")
    p.add_argument(
        "--plan-only",
        action="store_true",
        help="only measure expert success (unrendered, nothing saved): attempts 0..N-1 of each task",
    )
    p.add_argument("--json", default=None, help="with --plan-only: also write the per-attempt results here")
    p.add_argument(
        "--init-states",
        default=None,
        help="with --official-init-states: the official init states attempts cycle through, e.g. 0-4 (default all)",
    )
    p.add_argument(
        "--official-init-states",
        action="store_true",
        help="start attempt k from official init state k mod 50 (memorization checks only: the evaluation uses "
        "these states) instead of LIBERO's randomized placement",
    )


def run(args: argparse.Namespace) -> int:
    fields = ("tasks", "episodes_per_task", "out", "workers", "seed", "noise", "videos", "max_attempts")
    more = (
        "protocol",
        "commit_every",
        "repo_id",
        "official_init_states",
        "init_states",
        "labels",
        "image_size",
    )
    cfg = DemoConfig(suites=tuple(args.suites.split(",")), **{k: getattr(args, k) for k in fields + more})
    try:
        if not (cfg.out or args.plan_only):
            raise ValueError("--out is required (except with --plan-only)")
        summary = measure(cfg, args.json) if args.plan_only else generate(cfg)
    except ValueError as e:
        print(f"r1vla demos: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished episodes are saved in {cfg.out}; re-run the same command to continue",
            file=sys.stderr,
        )
        return 130
    print(format_summary(summary))
    if not args.plan_only:
        print(f"dataset: {Path(cfg.out).resolve()}  (config: {asdict(cfg)})")
    return 0
