"""The run folders `r1vla compare` reads: one `Run` per folder (its episodes.jsonl plus any unmerged shards),
runs grouped into arms of training-seed replicates, and the protocol check across them. Everything the analysis
modules share about a run (its cells and episodes) is typed here."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from libero_core.records import EPISODES, dict_differences, episode_key, is_fault, read_jsonl

ALPHA = 0.05  # significance level of every test and the CIs' complement
N_BOOT = 2000  # bootstrap resamples
STANDARD = "none"  # the perturbation of the standard suites
Cell = tuple[str, str]  # (suite, perturbation)
Episode = tuple[int, int, int]  # (task_id, init_state, seed) in a cell; clusters are (task_id, init_state)


class CompareError(ValueError):
    """Runs that cannot be compared, explained in the message."""


@dataclass
class Run:
    dir: Path
    label: str
    protocol: dict
    checkpoint: str | None
    train_seed: int | None
    records: list[dict]
    unmerged_shards: list[str] = field(default_factory=list)

    @cached_property
    def cells(self) -> dict[Cell, dict[Episode, bool]]:
        out: dict[Cell, dict[Episode, bool]] = defaultdict(dict)
        for r in self.records:
            s, p, t, i, seed = episode_key(r)
            out[(s, p)][(t, i, seed)] = bool(r["success"])
        return dict(out)

    @cached_property
    def faults(self) -> dict:
        """Episodes that failed for a reason other than the step cap, counted by reason (text before ':')."""
        bad = [str(f) for r in self.records if (f := r.get("failure")) and not str(f).startswith("timeout")]
        reasons = Counter(f.split(":")[0].strip() or f for f in bad)
        return {"n": len(bad), "reasons": dict(sorted(reasons.items())), "examples": sorted(set(bad))[:3]}


def load_run(run: Path, log=print) -> Run:
    """A run folder; shard files not yet merged are read (read-only) and flagged."""
    if not run.is_dir():
        raise CompareError(f"run folder not found: {run}")
    shards = sorted(run.glob("episodes.rank*.jsonl"))
    if shards:
        log(
            f"warning: {run} has unmerged shard files ({', '.join(f.name for f in shards)}); read as they are"
        )
    records, seen = [], {}
    for f in [run / EPISODES, *shards]:
        got = read_jsonl(f)
        for lineno, why in got.bad_lines:
            log(f"{f}: line {lineno}: {why}; ignored")
        for r in got.records:
            i = seen.get(episode_key(r))
            if i is None:
                seen[episode_key(r)] = len(records)
                records.append(r)
            elif is_fault(records[i]):  # re-run by --retry-faults, not merged yet (as merge_shards does)
                records[i] = r
    if not records:
        raise CompareError(f"{run} has no recorded episodes ({EPISODES})")
    one = "; one run folder = one evaluation of one checkpoint"
    for fld in ("label", "checkpoint", "train_seed"):
        values = {json.dumps(r.get(fld)) for r in records}
        if len(values) > 1:
            raise CompareError(f"{run} mixes records of several {fld}s ({', '.join(sorted(values))}){one}")
    protocols = {json.dumps(r.get("protocol"), sort_keys=True) for r in records}
    if len(protocols) > 1:
        named = {f"protocol{i + 1}": json.loads(p) for i, p in enumerate(sorted(protocols))}
        raise CompareError(f"{run} mixes several protocols ({'; '.join(dict_differences(named))}){one}")
    r0 = records[0]
    seed = r0.get("train_seed")
    return Run(
        run,
        str(r0.get("label")),
        json.loads(protocols.pop()),
        r0.get("checkpoint"),
        None if seed is None else int(seed),
        records,
        [f.name for f in shards],
    )


def build_arms(runs: list[Run], log=print) -> dict[str, list[Run]]:
    """Arm name -> replicates. A run whose label and checkpoint repeat an earlier run's is its own arm."""
    arms: dict[str, list[Run]] = {}
    for run in runs:
        name = run.label
        if name in arms and any(r.checkpoint == run.checkpoint for r in arms[name]):
            name, i = f"{run.label} ({run.dir.name})", 2
            while name in arms:
                name, i = f"{run.label} ({run.dir.name} #{i})", i + 1
            log(
                f"{run.dir}: checkpoint {run.checkpoint} of {run.label!r} evaluated twice; its own arm {name!r}"
            )
        arms.setdefault(name, []).append(run)
    for name, reps in arms.items():
        seeds = [r.train_seed for r in reps if r.train_seed is not None]
        if dup := sorted({s for s in seeds if seeds.count(s) > 1}):
            raise CompareError(
                f"arm {name!r} has several checkpoints with train_seed {dup} ("
                + ", ".join(str(r.dir) for r in reps if r.train_seed in dup)
                + "); replicates must be different training seeds (give them different labels)"
            )
    return arms


def _short(reps: list[Run]) -> list[str]:
    """Folder names of the replicates, or their full paths where two names are the same."""
    names = [r.dir.name for r in reps]
    return names if len(set(names)) == len(names) else [str(r.dir) for r in reps]


def check_protocols(arms: dict[str, list[Run]], allow: bool) -> list[str]:
    """Differing protocol fields over all runs; refused (CompareError) unless `allow`."""
    for name, reps in arms.items():
        diffs = dict_differences({n: r.protocol for n, r in zip(_short(reps), reps, strict=True)})
        if diffs and not allow:
            raise CompareError(
                f"replicates of {name!r} were made under different protocols; differing fields:\n  "
                + "\n  ".join(diffs)
                + "\n(--allow-protocol-mismatch to compare anyway)"
            )
    named = {
        n if len(reps) == 1 else f"{n}/{short}": r.protocol
        for n, reps in arms.items()
        for short, r in zip(_short(reps), reps, strict=True)
    }
    diffs = dict_differences(named)
    if diffs and not allow:
        raise CompareError(
            "runs were made under different protocols; differing fields:\n  "
            + "\n  ".join(diffs)
            + "\n(--allow-protocol-mismatch to compare anyway)"
        )
    return diffs
