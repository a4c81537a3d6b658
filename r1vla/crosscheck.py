"""`r1vla crosscheck`: one checkpoint, the same LIBERO episodes, two harnesses: vla-eval's LIBERO (allenai's, in
this process, the policy served by `r1vla serve`) and `r1vla eval`. Per-episode agreement of the outcomes.

    r1vla crosscheck --policy CKPT --out DIR [--suites object] [--tasks 0] [--init-states 0-4] [--seed 7]
                     [--max-steps N] [--device cpu] [--timeout S] [--native-seeding]

Writes DIR/r1vla (an `r1vla eval` run, `--gripper sign`), DIR/vla-eval (vla-eval's config.json, recording
database and exported results), DIR/serve.log, DIR/crosscheck.csv (one row per episode) and DIR/crosscheck.json;
prints the table, what could not be aligned, then

    crosscheck: agreement A/N, r1vla S1/N, vla-eval S2/N
    success 95% Wilson CI: r1vla [lo, hi], vla-eval [lo, hi]

Aligned: init states, step caps, wait steps, rendered image size, state convention, gripper rounding and seeding
(r1vla.vlaeval explains how; `--native-seeding` keeps vla-eval's own). Steps are env steps after the wait. Each
vla-eval episode is then replayed in `r1vla eval`'s simulator and policy path (r1vla.vlaeval.replay): the first
step where the states or the actions part, and from that the reason for each disagreement.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from eval_libero.plan import EvalConfig, EvalError
from libero_core.suites import NUM_WAIT_STEPS, max_steps, parse_index_list, parse_suites

FIELDS = ["suite", "task_id", "init_state", "r1vla_success", "r1vla_steps"]
FIELDS += ["vla_eval_success", "vla_eval_steps", "vla_eval_failure", "agree"]
FIELDS += ["replay_first_dev_step", "replay_max_dev", "replay_success_step"]
FIELDS += ["replay_first_action_dev_step", "replay_max_action_dev", "reason"]


def not_aligned(native_seeding: bool, seed: int, timeout_s: float, call_s: float | None) -> list[str]:
    call = f"{call_s:.2f} s measured at start" if call_s is not None else "not measured"
    notes = [
        "state arithmetic: vla-eval computes the axis-angle in float64, LeRobot's LIBERO processor "
        "(r1vla eval) in float32: the state can differ in its last float32 bit",
        f"server timeout: {timeout_s:.0f} s per policy call (one call {call}); vla-eval counts a timed-out "
        "episode as a failure (vla_eval_failure = timeout)",
    ]
    if native_seeding:
        notes.insert(
            0,
            f"seeding (--native-seeding): vla-eval seeds each task's env once (env.seed({seed})) and reuses it "
            "across episodes; r1vla eval reseeds every episode. LIBERO places fixtures (cabinets, plates, "
            "stoves: not part of an init state) from that seed at reset, so the scenes can differ",
        )
    return notes


def reason(row: dict, native_seeding: bool) -> str:
    """Why the two harnesses' outcomes differ, from what the episode's records show ('' when they agree)."""
    if row["agree"]:
        return ""
    if row["r1vla_success"] is None or row["vla_eval_success"] is None:
        return "missing on one side"
    if row["vla_eval_failure"]:
        return f"vla-eval ended the episode by {row['vla_eval_failure']} (counted as a failure)"
    if row["replay_first_dev_step"] is not None:
        return f"the simulators differ for the same actions from step {row['replay_first_dev_step']}"
    if row["replay_first_action_dev_step"] is not None:
        k, d = row["replay_first_action_dev_step"], row["replay_max_action_dev"]
        why = (
            "the scene differs (vla-eval's per-task seeding placed LIBERO's fixtures elsewhere)"
            if native_seeding and k == 1
            else "the policy's inputs differ there (state axis-angle float64 vs float32)"
        )
        return f"same simulation for the same actions, but other actions from step {k} (max {d:.2g}): {why}"
    return "same simulation and same actions on vla-eval's whole episode: success detection differs"


def replay_cell(r: dict) -> str:
    if r["replay_max_dev"] is None:
        return "-"
    if r["replay_first_dev_step"] is None:
        ok, act = r["replay_success_step"], r["replay_first_action_dev_step"]
        acts = "actions identical" if act is None else f"actions differ from step {act}"
        return "states identical, " + acts + (f", success at {ok}" if ok else "")
    return f"differs from step {r['replay_first_dev_step']} (max {r['replay_max_dev']:.2g})"


def table(rows: list[dict]) -> str:
    head = f"{'suite':<15}{'task':>5}{'init':>5}  {'r1vla':>12}  {'vla-eval':>12}  agree  replay of vla-eval"
    lines = [head]
    for r in rows:

        def cell(ok, steps, fail=None):
            return (
                "missing"
                if ok is None
                else f"{'ok' if ok else 'fail'} {steps}" + (f" ({fail})" if fail else "")
            )

        lines.append(
            f"{r['suite']:<15}{r['task_id']:>5}{r['init_state']:>5}  "
            f"{cell(r['r1vla_success'], r['r1vla_steps']):>12}  "
            f"{cell(r['vla_eval_success'], r['vla_eval_steps'], r['vla_eval_failure']):>12}  "
            f"{'yes' if r['agree'] else 'NO ':<5}  {replay_cell(r)}"
            + (f"\n    reason: {r['reason']}" if r["reason"] else "")
        )
    return "\n".join(lines)


def summary_lines(rows: list[dict]) -> list[str]:
    from libero_core.records import wilson

    n = len(rows)
    same = sum(r["replay_max_dev"] is not None and r["replay_first_dev_step"] is None for r in rows)
    acts = sum(
        r["replay_max_action_dev"] is not None and r["replay_first_action_dev_step"] is None for r in rows
    )
    agree = sum(r["agree"] for r in rows)
    s1 = sum(bool(r["r1vla_success"]) for r in rows)
    s2 = sum(bool(r["vla_eval_success"]) for r in rows)
    ci1, ci2 = wilson(s1, n), wilson(s2, n)
    return [
        f"crosscheck: agreement {agree}/{n}, r1vla {s1}/{n}, vla-eval {s2}/{n}",
        f"success 95% Wilson CI: r1vla [{ci1[0]:.2f}, {ci1[1]:.2f}], vla-eval [{ci2[0]:.2f}, {ci2[1]:.2f}]",
        f"replay: vla-eval's actions in r1vla eval's simulator give vla-eval's recorded states in {same}/{n} "
        f"episodes, and r1vla eval's policy path gives vla-eval's actions in {acts}/{n}",
    ]


def crosscheck(args: argparse.Namespace, log=print) -> list[dict]:
    """Run both harnesses (see the module docstring); returns the per-episode rows."""
    from eval_libero.checkpoint import load_policy_config, load_runner, resolve_checkpoint
    from eval_libero.run import evaluate
    from eval_libero.runner import render_size
    from libero_core.perturbations import instruction
    from libero_core.records import load_records
    from r1vla import vlaeval
    from r1vla.serve import check_vla_eval

    version = check_vla_eval()
    ckpt = resolve_checkpoint(args.policy)
    try:
        policy_cfg = load_policy_config(ckpt, args.device)
        size = render_size(policy_cfg)
        suites = parse_suites(args.suites)
        episodes = {
            s.name: {
                t: parse_index_list(args.init_states, 50, "init state")
                for t in parse_index_list(args.tasks, s.n_tasks, f"task id of {s.name}")
            }
            for s in suites
        }
    except ValueError as e:
        raise EvalError(str(e)) from None
    if args.max_steps is not None and args.max_steps < 1:
        raise EvalError(f"--max-steps must be >= 1, got {args.max_steps}")
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    caps = {s.name: args.max_steps or max_steps(s, "standard") for s in suites}

    log(f"crosscheck: {ckpt} rendered at {size}x{size}; vla-eval {version}; r1vla eval first")
    r1 = evaluate(
        EvalConfig(
            policy=str(ckpt),
            out=str(out / "r1vla"),
            suites=",".join(s.name for s in suites),
            tasks=args.tasks,
            init_states=args.init_states,
            seeds=str(args.seed),
            max_steps=args.max_steps,
            device=args.device,
            gripper="sign",
        ),
        log=log,
    )
    mine = {(r["suite"], r["task_id"], r["init_state"]): r for r in load_records(r1 / "episodes.jsonl", log)}

    languages = {(s, t): instruction(s, t) for s, tasks in episodes.items() for t in tasks}
    entries = vlaeval.plan_entries(episodes, args.seed, not args.native_seeding)
    port = args.port or vlaeval.free_port()
    log(f"crosscheck: vla-eval's LIBERO against r1vla serve on 127.0.0.1:{port}")
    with vlaeval.ServeProcess(str(ckpt), args.device, port, out / "serve.log") as server:
        cfg = vlaeval.make_config(
            f"ws://127.0.0.1:{port}",
            args.timeout,
            out / "vla-eval",
            entries,
            languages,
            caps,
            args.seed,
            NUM_WAIT_STEPS,
        )
        results, db = vlaeval.run_vla_eval(cfg, size)
        theirs = vlaeval.outcomes(results, entries)
        call_s = server.call_s()
    steps = vlaeval.recorded_steps(db, entries)
    log("crosscheck: replaying vla-eval's episodes in r1vla eval's simulator and policy path")
    runner = load_runner(ckpt, policy_cfg, [s.name for s in suites], "auto")

    rows = []
    for suite, tasks in episodes.items():
        for t, inits in tasks.items():
            for i in inits:
                a, b = mine.get((suite, t, i)), theirs.get((suite, t, i))
                recorded = steps.get((suite, t, i), [])
                replayed = vlaeval.replay(suite, t, i, args.seed, recorded, runner, size) if recorded else {}
                rows.append(
                    {
                        "suite": suite,
                        "task_id": t,
                        "init_state": i,
                        "r1vla_success": None if a is None else bool(a["success"]),
                        "r1vla_steps": None if a is None else a["steps"],
                        "vla_eval_success": None if b is None else b["success"],
                        "vla_eval_steps": None if b is None else b["steps"],
                        "vla_eval_failure": None if b is None else b["failure"],
                        "agree": a is not None and b is not None and bool(a["success"]) == b["success"],
                        **{k: replayed.get(k) for k in FIELDS if k.startswith("replay_")},
                    }
                )
                rows[-1]["reason"] = reason(rows[-1], args.native_seeding)
    with open(out / "crosscheck.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    notes = not_aligned(args.native_seeding, args.seed, args.timeout, call_s)
    lines = summary_lines(rows)
    (out / "crosscheck.json").write_text(
        json.dumps({"rows": rows, "not_aligned": notes, "summary": lines, "vla_eval": version}, indent=1)
    )
    log(table(rows))
    log("not aligned:\n" + "\n".join(f"  - {n}" for n in notes))
    for line in lines:
        log(line)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="LeRobot pretrained_model folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--suites", default="object", help="comma list of LIBERO suites")
    p.add_argument("--tasks", default="0", help="task ids, e.g. 0,3")
    p.add_argument("--init-states", default="0-4", help="official init state ids, e.g. 0-4")
    p.add_argument("--seed", type=int, default=7, help="r1vla eval's --seeds and vla-eval's env seed")
    p.add_argument("--max-steps", type=int, default=None, help="override both harnesses' step caps")
    p.add_argument(
        "--native-seeding",
        action="store_true",
        help="vla-eval seeds each task's env once and reuses it (its default) instead of each episode's env "
        "with r1vla eval's episode seed",
    )
    p.add_argument("--device", default="cpu", help="the policy's device (both harnesses)")
    p.add_argument("--port", type=int, default=0, help="r1vla serve's port (0: a free one)")
    p.add_argument(
        "--timeout", type=float, default=600.0, help="vla-eval's server timeout per policy call, seconds"
    )


def run(args: argparse.Namespace) -> int:
    try:
        crosscheck(args)
    except EvalError as e:
        print(f"r1vla crosscheck: {e}", file=sys.stderr)
        return 2
    return 0
