"""LeRobotDataset v3 writing for LIBERO demos: the hub schema, crash-safe staging, resume, metadata.

Layout of an output folder (a plain local LeRobotDataset plus two things of ours):
    meta/, data/ [, videos/]     LeRobot v3 files (HuggingFaceVLA/libero schema)
    meta/r1vla_demos.json        our metadata (read back through libero_core/starts.py): config, every attempt (success or not), per-episode origin
                                 (suite, task_id, start, init_state_index, seed, ...), per-task expert success
    meta/start_states.npz        episode_<index> -> the flattened MuJoCo state the episode started from
    meta/executed_actions.npz    episode_<index> -> (T, 7) actions executed, where `action` holds other labels
    r1vla_staging/               finished attempts not yet in the dataset: <key>.attempt.json (+ <key>.npz)

Crash safety: workers stage each finished attempt atomically (npz, then json). `commit()` moves staged
episodes into the LeRobotDataset (reopen, add, finalize) inside a transaction: before touching the dataset
it records the file list and copies the small meta files; a commit interrupted by kill -9 is rolled back
on the next start (LeRobot never rewrites finished data/episodes parquet files: a reopened dataset always
starts new files) and the still-staged episodes are committed again. So every finished episode survives,
and none is written twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np

from libero_core.sim import IMAGE_KEY, STATE_KEY, WRIST_KEY
from libero_core.starts import EXECUTED_ACTIONS, META_FILE, START_STATES
from libero_core.suites import IMAGE_SIZE

REPO_ID = "local/libero_demos"
FPS = 10  # the label of the hub datasets (data recorded at the 20 Hz control rate, one frame per step)
ROBOT_TYPE = "panda"
STAGING = "r1vla_staging"
_NEW = ".r1vla_new_dataset"  # where a first commit creates the dataset before moving it into place
_MARKER = "commit_in_progress.marker"
_BACKUP = "commit_backup"
ARRAYS = {IMAGE_KEY: "image", WRIST_KEY: "image2", STATE_KEY: "state", "action": "action"}
SIDE = {"start_state": START_STATES, "executed": EXECUTED_ACTIONS}  # staged beside the frames -> meta file


def features(image_size: int = IMAGE_SIZE, videos: bool = False) -> dict:
    """Features of HuggingFaceVLA/libero (names as in its info.json; `action` names as openpi's `actions`)."""
    img = {
        "dtype": "video" if videos else "image",
        "shape": (image_size, image_size, 3),
        "names": ["height", "width", "channel"],
    }
    return {
        IMAGE_KEY: dict(img),
        WRIST_KEY: dict(img),
        STATE_KEY: {"dtype": "float32", "shape": (8,), "names": ["state"]},
        "action": {"dtype": "float32", "shape": (7,), "names": ["actions"]},
    }


def _schema(feats: dict) -> dict:
    """What must agree between two datasets to be mixed: keys, dtypes (image/video alike), shapes."""
    return {
        k: ("visual" if v["dtype"] in ("image", "video") else v["dtype"], list(v["shape"]))
        for k, v in feats.items()
        if k not in ("timestamp", "frame_index", "episode_index", "index", "task_index")
    }


def _write_json(path: Path, obj) -> None:
    """Atomic JSON write (tmp file + fsync + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def stage_attempt(
    staging: Path,
    record: dict,
    arrays: dict[str, np.ndarray] | None = None,
    start_state: np.ndarray | None = None,
    executed: np.ndarray | None = None,
) -> None:
    """Atomically stage one finished attempt: frames first (if any), then the record that points at them.
    `arrays` maps feature keys to (T, ...) arrays; `start_state` is the flattened sim state the episode started
    from (committed into meta/start_states.npz), `executed` the actions executed when `arrays["action"]` holds
    other labels (into meta/executed_actions.npz). Safe to call from worker processes."""
    name = record["key"].replace("/", "__")
    if arrays is not None:
        tmp = staging / f"{name}.tmp.npz"
        side = {"start_state": np.asarray(start_state, np.float64)} if start_state is not None else {}
        side |= {"executed": np.asarray(executed, np.float32)} if executed is not None else {}
        np.savez(tmp, **{ARRAYS[k]: v for k, v in arrays.items()}, **side)
        os.replace(tmp, staging / f"{name}.npz")
        record = {**record, "staged": f"{name}.npz"}
    _write_json(staging / f"{name}.attempt.json", record)


def _dataset_files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != STAGING
    )


class DemoStore:
    """One output folder: compatibility checks, recovery, staged attempts, commits into the LeRobotDataset."""

    def __init__(self, root: str | Path, feats: dict, config: dict, repo_id: str = REPO_ID):
        self.root, self.feats, self.config, self.repo_id = Path(root), feats, config, repo_id
        self.staging = self.root / STAGING
        info = self.root / "meta" / "info.json"
        if info.exists():
            theirs = json.loads(info.read_text())["features"]
            if _schema(theirs) != _schema(feats):
                raise ValueError(
                    f"{self.root} holds a dataset with other features ({sorted(_schema(theirs))} "
                    f"vs {sorted(_schema(feats))}); refusing to mix, choose another --out"
                )
            if any(theirs[k]["dtype"] != feats[k]["dtype"] for k in feats if k in theirs):
                raise ValueError(
                    f"{self.root} stores images as "
                    f"{theirs[IMAGE_KEY]['dtype']}s; re-run with the same --videos setting"
                )
        elif (
            self.root.exists()
            and not (self.root / "meta" / META_FILE).exists()
            and any(p.name != STAGING for p in self.root.iterdir())
        ):
            raise ValueError(
                f"{self.root} exists and is not an r1vla demo dataset; refusing to write into it"
            )
        self.staging.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.staging / ".lock", "w")  # noqa: SIM115 (held for the store's lifetime)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{self.root} is being written by another process") from None
        self._recover()
        self.meta = self._load_meta()
        old = self.meta.get("config")
        if old is not None and old != config:
            diff = {
                k: (old.get(k), config.get(k)) for k in set(old) | set(config) if old.get(k) != config.get(k)
            }
            raise ValueError(
                f"{self.root} was generated with other settings {diff} (stored, given); "
                "re-run with the same settings or choose another --out"
            )
        self.meta["config"] = config
        self.meta["repo_id"] = repo_id

    # --- metadata
    def _load_meta(self) -> dict:
        path = self.root / "meta" / META_FILE
        if path.exists():
            return json.loads(path.read_text())
        return {"format": "r1vla_demos/1", "config": None, "episodes": [], "attempts": [], "tasks": {}}

    def committed(self) -> dict[str, dict]:
        return {r["key"]: r for r in self.meta["attempts"]}

    def staged(self) -> dict[str, dict]:
        out = {}
        for p in sorted(self.staging.glob("*.attempt.json")):
            rec = json.loads(p.read_text())
            if "staged" in rec and not (self.staging / rec["staged"]).exists():
                continue  # unreachable by construction (frames are written first); be safe
            out[rec["key"]] = rec
        return out

    def attempts(self) -> dict[str, dict]:
        """Every finished attempt, committed or staged: key -> record."""
        return {**self.committed(), **self.staged()}

    def task_summary(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for r in sorted(self.attempts().values(), key=lambda r: (r["task_key"], r["key"])):
            t = out.setdefault(r["task_key"], {"language": r["task"], "attempts": 0, "successes": 0})
            t["attempts"] += 1
            t["successes"] += bool(r["success"])
        for t in out.values():
            t["success_rate"] = round(t["successes"] / max(t["attempts"], 1), 4)
        return out

    # --- transactions
    def _recover(self) -> None:
        marker = self.staging / _MARKER
        if marker.exists():  # a commit was interrupted: restore the dataset as it was before it
            listing = set(json.loads(marker.read_text())["files"])
            for f in _dataset_files(self.root):
                if f not in listing:
                    (self.root / f).unlink()
            backup = self.staging / _BACKUP
            for p in backup.rglob("*") if backup.exists() else []:
                if p.is_file():
                    dst = self.root / p.relative_to(backup)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, dst)
            shutil.rmtree(self.root / _NEW, ignore_errors=True)
            for d in sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                if d.relative_to(self.root).parts[0] != STAGING and not any(d.iterdir()):
                    d.rmdir()
            marker.unlink()
        committed = {r["key"] for r in self._load_meta()["attempts"]}
        for p in self.staging.glob("*.tmp*"):
            p.unlink()
        # staged copies of attempts that a commit finished just before a crash (it died while cleaning up)
        for p in self.staging.glob("*.attempt.json"):
            rec = json.loads(p.read_text())
            if rec["key"] in committed:
                if "staged" in rec:
                    (self.staging / rec["staged"]).unlink(missing_ok=True)
                p.unlink()

    def _begin(self) -> None:
        backup = self.staging / _BACKUP
        shutil.rmtree(backup, ignore_errors=True)
        meta = self.root / "meta"
        for p in meta.glob("*") if meta.exists() else []:
            if p.is_file():  # info.json, stats.json, tasks.parquet, r1vla_demos.json (rewritten by a commit)
                (backup / "meta").mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, backup / "meta" / p.name)
        _write_json(self.staging / _MARKER, {"files": _dataset_files(self.root)})

    def _open(self, use_videos: bool):
        from datasets.utils.logging import disable_progress_bar
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        disable_progress_bar()  # one "Map" bar per saved episode otherwise
        if (
            self.root / "meta" / "info.json"
        ).exists():  # append: LeRobot 0.6's writer on the existing dataset
            return LeRobotDataset.resume(self.repo_id, root=self.root, image_writer_threads=4)
        shutil.rmtree(self.root / _NEW, ignore_errors=True)
        return LeRobotDataset.create(
            self.repo_id,
            FPS,
            features=self.feats,
            root=self.root / _NEW,
            robot_type=ROBOT_TYPE,
            use_videos=use_videos,
            image_writer_threads=4,
        )

    def commit(self) -> int:
        """Write every staged attempt into the dataset (successes as episodes). Returns episodes added."""
        staged = sorted(self.staged().values(), key=lambda r: (r["task_key"], r.get("attempt", 0), r["key"]))
        if not staged:
            return 0
        self._begin()
        episodes = [r for r in staged if r.get("staged")]
        if episodes:
            ds = self._open(use_videos=self.feats[IMAGE_KEY]["dtype"] == "video")
            first = ds.meta.total_episodes
            side: dict[str, dict] = {k: {} for k in SIDE}
            for i, rec in enumerate(episodes):
                with np.load(self.staging / rec["staged"]) as z:
                    arrays = {k: z[v] for k, v in ARRAYS.items()}
                    for k in SIDE:
                        if k in z:
                            side[k][f"episode_{first + i}"] = z[k]
                for t in range(len(arrays["action"])):
                    ds.add_frame({k: v[t] for k, v in arrays.items()} | {"task": rec["task"]})
                ds.save_episode()
                rec["episode_index"] = first + i
            ds.finalize()  # waits for the image writer, closes the parquet writer, writes the metadata
            if (self.root / _NEW).exists():  # first commit: move the new dataset into place
                new = self.root / _NEW
                for f in _dataset_files(new):
                    if not f.startswith("images"):
                        (self.root / f).parent.mkdir(parents=True, exist_ok=True)
                        os.replace(new / f, self.root / f)
                shutil.rmtree(new)
            shutil.rmtree(self.root / "images", ignore_errors=True)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        for k, new in side.items() if episodes else ():  # inside the transaction: a crash restores the backup
            if not new:
                continue
            path = self.root / "meta" / SIDE[k]
            with np.load(path) if path.exists() else contextlib.nullcontext({}) as old:
                merged = {e: old[e] for e in old} | new
            tmp = path.with_name(".tmp_" + path.name)
            np.savez(tmp, **merged)
            os.replace(tmp, path)
        for rec in staged:
            rec.pop("staged", None)
            self.meta["attempts"].append(rec)
            if "episode_index" in rec:
                self.meta["episodes"].append(rec)
        self.meta["tasks"] = self.task_summary()
        _write_json(self.root / "meta" / META_FILE, self.meta)
        (self.staging / _MARKER).unlink()  # the commit point
        for rec in staged:
            name = rec["key"].replace("/", "__")
            (self.staging / f"{name}.npz").unlink(missing_ok=True)
            (self.staging / f"{name}.attempt.json").unlink(missing_ok=True)
        shutil.rmtree(self.staging / _BACKUP, ignore_errors=True)
        return len(episodes)

    def close(self) -> None:
        self._lock.close()
