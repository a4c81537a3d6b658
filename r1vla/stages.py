"""Stage bookkeeping of `r1vla study`: each stage records itself in OUT/stages/<stage>.json when complete; a re-run
skips complete stages, so an interrupted study resumes where it stopped and a failed stage leaves the earlier
stages' outputs intact. Also the environment (versions, git commit, host) recorded beside the config."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


class StageFailed(RuntimeError):
    pass


class StageRunner:
    """Stages recorded in OUT/stages/<stage>.json when complete (atomic); a re-run skips complete ones. `config`
    (a plain dict) is written to OUT/study_config.yaml with the environment; another config is refused there."""

    def __init__(self, out: Path, config: dict, log: Callable[[str], None] = print):
        self.out, self.config, self.log = Path(out), config, log

    def _marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage.replace('/', '__')}.json"

    def done(self, stage: str) -> dict | None:
        path = self._marker(stage)
        return json.loads(path.read_text()) if path.exists() else None

    def _finish(self, stage: str, result: dict) -> dict:
        path = self._marker(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)  # atomic: a stage is either recorded complete or not at all
        return result

    def stage(self, name: str, fn: Callable[[], dict]) -> dict:
        if (result := self.done(name)) is not None:
            self.log(f"[study] {name}: complete, skipped")
            return result
        self.log(f"[study] {name}: running")
        t0 = time.time()
        try:
            result = fn()
        except Exception as e:
            raise StageFailed(
                f"stage {name!r} failed: {e}\nEarlier stages' outputs are intact under {self.out}; "
                f"fix the cause and re-run the same command: it resumes at {name!r}."
            ) from e
        result["wall_s"] = round(time.time() - t0, 1)
        return self._finish(name, result)

    def write_config(self) -> None:
        """The config as run, with versions, next to the results (a changed config is refused on resume)."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "study_config.yaml"
        new = self.config
        if path.exists():
            old = yaml.safe_load(path.read_text()).get("study")
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(
                    f"{self.out} holds a study with another config (fields differ: {diff}); "
                    "use another --out, or the same config to resume"
                )
            return
        path.write_text(yaml.safe_dump({"study": new, "environment": environment()}, sort_keys=False))


def environment() -> dict:
    from eval_libero.plan import versions

    try:
        git = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        git = ""
    return {
        "versions": versions(),
        "git": git or None,
        "python": platform.python_version(),
        "host": platform.node(),
    }
