"""Episode records: RUN/episodes.jsonl (one JSON object per episode), resume, shard merge, summary.json.

Every record is appended as one line and flushed + fsynced when its episode ends, so a run killed at any moment
loses at most the episode in flight. On the next run a truncated or corrupt line is reported with its line
number, the file is rewritten atomically without it, and that episode is run again. An episode is identified by
(suite, perturbation, task_id, init_state, seed); a key already recorded is never run or counted twice.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KEY_FIELDS = ("suite", "perturbation", "task_id", "init_state", "seed")  # one episode; perturbation "none" =
# the standard suite (records written before perturbations existed have no such field: read as "none")
EPISODES = "episodes.jsonl"
SUMMARY = "summary.json"
Z95 = 1.959963984540054  # two-sided 95% normal quantile

Key = tuple[str, str, int, int, int]


def episode_key(rec: dict) -> Key:
    """(suite, perturbation, task_id, init_state, seed) of a record."""
    p = str(rec.get("perturbation") or "none")
    return (str(rec["suite"]), p, int(rec["task_id"]), int(rec["init_state"]), int(rec["seed"]))


@dataclass(frozen=True)
class Loaded:
    records: list[dict]  # valid records, first occurrence of each key, in file order
    bad_lines: list[tuple[int, str]]  # (1-based line number, why)
    duplicates: list[int]  # line numbers of repeated keys (dropped)


def read_jsonl(path: Path) -> Loaded:
    """Parse an episodes file without changing it. A missing file is an empty run."""
    records: list[dict] = []
    bad: list[tuple[int, str]] = []
    dups: list[int] = []
    seen: set[Key] = set()
    if not path.exists():
        return Loaded(records, bad, dups)
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                key = episode_key(rec)
                if not isinstance(rec.get("success"), bool):
                    raise ValueError("no boolean 'success'")
            except (ValueError, KeyError, TypeError) as e:
                what = "truncated line (no newline)" if not line.endswith("\n") else f"corrupt record ({e})"
                bad.append((lineno, what))
                continue
            if key in seen:
                dups.append(lineno)
                continue
            seen.add(key)
            records.append(rec)
    return Loaded(records, bad, dups)


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    """Write all records to a temporary file, fsync it, then rename it over `path` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_records(path: Path, log: Callable[[str], None] = print) -> list[dict]:
    """Valid records of `path`; reports and removes corrupt/truncated/duplicate lines (atomic rewrite)."""
    got = read_jsonl(path)
    for lineno, why in got.bad_lines:
        log(f"{path.name} line {lineno}: {why}; dropped, that episode will be run again")
    for lineno in got.duplicates:
        log(f"{path.name} line {lineno}: episode already recorded earlier in the file; duplicate dropped")
    if got.bad_lines or got.duplicates:
        write_jsonl_atomic(path, got.records)
    return got.records


class RecordWriter:
    """Appends one record per line; each line is flushed and fsynced before `append` returns."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "a", encoding="utf-8")

    def append(self, rec: dict) -> None:
        self.f.write(json.dumps(rec, sort_keys=True) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# ---- shards (torchrun ranks) ----------------------------------------------------------------------------------


def shard_path(run: Path, rank: int) -> Path:
    return run / f"episodes.rank{rank}.jsonl"


def done_marker(run: Path, rank: int, world: int) -> Path:
    return run / f".rank{rank}of{world}.done"


def invocation_id() -> str:
    """What the ranks of one torchrun invocation share (TORCHELASTIC_RUN_ID); '' outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "")


def all_ranks_done(run: Path, world: int) -> bool:
    """Every rank of *this* invocation has written its marker (a marker of an earlier invocation does not count)."""
    me = invocation_id()
    paths = [done_marker(run, r, world) for r in range(world)]
    return all(p.exists() and p.read_text() == me for p in paths)


@contextmanager
def _locked(run: Path):
    with open(run / ".merge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge_shards(run: Path, log: Callable[[str], None] = print) -> list[dict]:
    """Fold every RUN/episodes.rank*.jsonl into RUN/episodes.jsonl (deduplicated, sorted by episode key), then
    remove the shard files and done markers. A shard's record replaces a merged record of the same episode only
    when the merged one ended by a fault (`--retry-faults` ran it again after an earlier merge); else the first
    stays.
    Idempotent and safe if two ranks try at once."""
    with _locked(run):
        main = run / EPISODES
        records = load_records(main, log)
        shards = sorted(run.glob("episodes.rank*.jsonl"))
        seen = {episode_key(r): i for i, r in enumerate(records)}
        for shard in shards:
            for rec in load_records(shard, log):
                i = seen.get(episode_key(rec))
                if i is None:
                    seen[episode_key(rec)] = len(records)
                    records.append(rec)
                elif is_fault(records[i]):
                    records[i] = rec
        records.sort(key=episode_key)
        if shards or not main.exists():
            write_jsonl_atomic(main, records)
        for p in [*shards, *run.glob(".rank*of*.done")]:
            p.unlink(missing_ok=True)
    return records


# ---- statistics + summary -------------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (NaNs when n == 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if k == 0 else max(0.0, center - half), 1.0 if k == n else min(1.0, center + half))


def rate_block(successes: list[bool]) -> dict:
    k, n = int(sum(successes)), len(successes)
    lo, hi = wilson(k, n)
    return {
        "n": n,
        "successes": k,
        "success_rate": k / n if n else None,
        "ci95": [lo, hi] if n else [None, None],
    }


def summarize(records: list[dict]) -> dict:
    """Per suite and per task: n, successes, success rate, Wilson 95% CI; average = mean of suite rates."""
    by_suite: dict[str, list[bool]] = defaultdict(list)
    by_task: dict[str, dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        p = r.get("perturbation") or "none"
        name = (
            r["suite"] if p == "none" else f"{r['suite']}/{p}"
        )  # a LIBERO-PRO variant is a block of its own
        by_suite[name].append(bool(r["success"]))
        by_task[name][int(r["task_id"])].append(bool(r["success"]))
    suites = {}
    for s in sorted(by_suite):
        block = rate_block(by_suite[s])
        block["tasks"] = {str(t): rate_block(v) for t, v in sorted(by_task[s].items())}
        suites[s] = block
    rates = [b["success_rate"] for n, b in suites.items() if "/" not in n]  # the standard suites
    return {
        "n_episodes": len(records),
        "suites": suites,
        "average": {"success_rate": sum(rates) / len(rates) if rates else None, "n_suites": len(rates)},
        "pooled": rate_block([bool(r["success"]) for r in records]),
    }


def is_fault(rec: dict) -> bool:
    """An episode ended by something other than success or the step cap (policy/simulator/worker fault)."""
    return bool(rec.get("failure")) and not str(rec["failure"]).startswith("timeout")


def write_summary(run: Path, records: list[dict], meta: dict) -> dict:
    faults: dict[str, int] = defaultdict(int)
    for r in records:
        if is_fault(r):
            faults[str(r["failure"]).split(":")[0]] += 1
    summary = {**meta, **summarize(records), "faults": dict(faults)}
    tmp = run / f".{SUMMARY}.tmp{os.getpid()}"  # one temp file per process: two ranks never share one
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    os.replace(tmp, run / SUMMARY)
    return summary


def read_summary(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def format_summary(s: dict) -> str:
    """The lines `r1vla eval` prints: success per suite (and perturbation) with its CI, faults, what is missing."""
    lines = []
    for name, b in s["suites"].items():
        lo, hi = b["ci95"]
        lines.append(
            f"{name:<22} {b['successes']:>4}/{b['n']:<4} {100 * b['success_rate']:5.1f}%  "
            f"95% CI [{100 * lo:.1f}, {100 * hi:.1f}]"
        )
    if s.get("faults"):
        what = ", ".join(f"{n} {k}" for k, n in sorted(s["faults"].items()))
        lines.append(
            f"WARNING: {sum(s['faults'].values())} episode(s) ended by a fault ({what}), recorded as failed"
        )
    if s.get("missing"):
        lines.append(f"{s['missing']} planned episode(s) not recorded yet: re-run to complete")
    return "\n".join(lines)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def dict_differences(named: dict[str, dict]) -> list[str]:
    """'field: A=x, B=y' for every (nested, dotted) field that is not the same in all the named dicts."""
    flat = {name: _flat(d or {}) for name, d in named.items()}
    fields = sorted({f for d in flat.values() for f in d})
    return [
        f"{f}: " + ", ".join(f"{n}={d.get(f, '<absent>')}" for n, d in flat.items())
        for f in fields
        if len({json.dumps(d.get(f)) for d in flat.values()}) > 1
    ]


def run_meta_mismatch(records: list[dict], meta: dict) -> list[str]:
    """Fields of `meta` (checkpoint, label, protocol...) that differ from what `records` were made with."""
    if not records:
        return []
    recorded = {k: records[0].get(k) for k in meta}
    return dict_differences({"recorded": recorded, "now": meta})
