"""`r1vla convert-hdf5`: original LIBERO HDF5 demos -> the same LeRobotDataset format as `r1vla demos`.

    r1vla convert-hdf5 FILES... --out DIR [--keep-size] [--keep-noops] [--rerender]

What the raw files hold, and what we do about it (see docs in /work/shared/probes/libero_data_conventions.md):
  images  128x128, OpenGL convention (upside down)  -> rotated 180 deg (`[::-1, ::-1]`) like every hub dataset,
          then resized to 256x256 (bilinear) unless --keep-size (features then say 128x128)
  state   obs/ee_states (eef pos + robosuite axis-angle) + obs/gripper_states = the hub's 8-D state
  timing  every obs/* entry is recorded AFTER its action (obs[t] follows actions[t]). We pair obs[t] with
          actions[t+1] -- the observation really seen before that action -- so actions[0] (no obs before it) and
          the last obs (no action after it) are dropped: one step is lost, nothing is shifted.
          For replay, the episode starts from `states[1]` (the sim state before actions[1]) with no wait steps;
          it is stored as the episode's start state in meta/start_states.npz (states[0] with --rerender).
  no-ops  dropped with OpenVLA's rule unless --keep-noops (the hub data has none)
  --rerender  the OFT way (what the hub datasets did): reset the task env, set `states[0]`, 10 wait steps,
          replay the actions (no-ops skipped) rendering 256x256 frames before each action; demos that do not
          succeed are dropped. Needs `states` and a LIBERO task matching the instruction; slow (rendered).
Language: data.attrs['problem_info'] JSON 'language_instruction', else the task of data.attrs['bddl_file_name'],
else LIBERO's rule on the file name (drop `_demo.hdf5` and anything up to `SCENEk_`, `_` -> space).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

REQUIRED = (
    "actions",
    "obs/agentview_rgb",
    "obs/eye_in_hand_rgb",
    "obs/ee_states",
    "obs/gripper_states",
    "obs/joint_states",
)


def language_of(data_attrs, path: Path) -> str:
    if "problem_info" in data_attrs:
        info = json.loads(data_attrs["problem_info"])
        if info.get("language_instruction"):
            lang = info["language_instruction"]
            return " ".join(lang) if isinstance(lang, list) else str(lang)
    if "bddl_file_name" in data_attrs:
        text = Path(str(data_attrs["bddl_file_name"])).name
    else:
        text = path.name
    stem = re.sub(r"(_demo)?\.(hdf5|bddl)$", "", text)
    stem = re.sub(r"^.*SCENE\d+_", "", stem)
    return stem.replace("_", " ").strip().lower()


def find_task(language: str) -> tuple[str, int] | None:
    """(suite, task_id) of the LIBERO task with this instruction, searching the four suites."""
    from libero_core.sim import task_info
    from libero_core.suites import SUITES

    for s in SUITES.values():
        for t in range(s.n_tasks):
            if task_info(s.name, t).language.strip().lower() == language.strip().lower():
                return s.name, t
    return None


def check_file(f, path: Path) -> list[str]:
    """Demo names of an open HDF5 file; ValueError naming every missing key."""
    if "data" not in f:
        raise ValueError(f"{path}: not a LIBERO demo file, missing group 'data'")
    demos = sorted(f["data"].keys(), key=lambda k: int(re.sub(r"\D", "", k) or 0))
    if not demos:
        raise ValueError(f"{path}: 'data' holds no demos")
    for d in demos:
        missing = [k for k in REQUIRED if k not in f["data"][d]]
        if missing:
            raise ValueError(
                f"{path}: data/{d} is missing {', '.join(missing)} (LIBERO layout needs {', '.join(REQUIRED)})"
            )
    return demos


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1] == size:
        return np.ascontiguousarray(frames)
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])


def convert_direct(g, size: int | None, keep_noops: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Arrays of one demo read straight from the file; returns (arrays, kept pair indices into obs)."""
    from demos.attempt import NOOP_EPS
    from libero_core.sim import IMAGE_KEY, STATE_KEY, WRIST_KEY, upright

    actions = np.asarray(g["actions"], np.float32)
    obs_idx = np.arange(len(actions) - 1)  # obs[i] is what the robot saw before actions[i + 1]
    if not keep_noops:
        keep, last_g = [], None
        for i in obs_idx:
            a = actions[i + 1]
            if np.linalg.norm(a[:6]) < NOOP_EPS and (last_g is None or a[6] == last_g):
                continue
            keep.append(i)
            last_g = a[6]
        obs_idx = np.asarray(keep, dtype=int)
    state = np.concatenate([g["obs/ee_states"][:], g["obs/gripper_states"][:]], axis=1).astype(np.float32)
    side = size or g["obs/agentview_rgb"].shape[1]
    arrays = {
        IMAGE_KEY: _resize(upright(g["obs/agentview_rgb"][:][obs_idx]), side),
        WRIST_KEY: _resize(upright(g["obs/eye_in_hand_rgb"][:][obs_idx]), side),
        STATE_KEY: state[obs_idx],
        "action": actions[obs_idx + 1],
    }
    return arrays, obs_idx


def convert_rerender(sim, g) -> dict[str, np.ndarray] | None:
    """OFT-style regeneration of one demo in a rendered env; None if the replay does not succeed."""
    from demos.attempt import drop_noops
    from demos.replay import reset_to
    from libero_core.sim import frame_from_obs

    actions = drop_noops(np.asarray(g["actions"], np.float32))
    obs = reset_to(sim, {"wait_steps": 10}, start_state=g["states"][0])
    frames, success = [], False
    for a in actions:
        frames.append(frame_from_obs(obs))
        obs, success = sim.step(a)
    if not success:
        return None
    arrays = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    arrays["action"] = actions
    return arrays


def convert(
    files: list[str],
    out: str,
    keep_size: bool = False,
    keep_noops: bool = False,
    rerender: bool = False,
    log=print,
) -> dict:
    import h5py

    from demos.dataset import DemoStore, features, stage_attempt

    paths = [Path(p) for p in files]
    sizes = set()
    for p in paths:  # validate everything before writing anything
        if not p.exists():
            raise ValueError(f"{p}: no such file")
        with h5py.File(p, "r") as f:
            demos = check_file(f, p)
            sizes.add(f["data"][demos[0]]["obs/agentview_rgb"].shape[1])
            if rerender and any("states" not in f["data"][d] for d in demos):
                raise ValueError(f"{p}: --rerender needs data/<demo>/states")
    if keep_size and len(sizes) > 1 and not rerender:
        raise ValueError(f"files have different image sizes {sorted(sizes)}; drop --keep-size")
    size = 256 if rerender or not keep_size else sizes.pop()
    store = DemoStore(
        out,
        features(image_size=size),
        config={
            "source": "hdf5",
            "rerender": rerender,
            "keep_noops": keep_noops,
            "image_size": size,
            "fps": 10,
        },
    )
    done = store.attempts()
    sim = None
    try:
        for p in paths:
            with h5py.File(p, "r") as f:
                language = language_of(f["data"].attrs, p)
                task = find_task(language)
                if rerender and task is None:
                    raise ValueError(
                        f"{p}: no LIBERO task has the instruction {language!r}; cannot --rerender"
                    )
                if rerender and (sim is None or (sim.info.suite, sim.info.task_id) != task):
                    from libero_core.sim import LiberoSim

                    if sim is not None:
                        sim.close()
                    sim = LiberoSim(*task, render=True)
                for d in check_file(f, p):
                    key = f"hdf5/{p.stem}/{d}"
                    if key in done:
                        continue
                    g = f["data"][d]
                    rec = {
                        "key": key,
                        "task_key": f"{task[0]}/{task[1]}" if task else f"hdf5/{p.stem}",
                        "suite": task[0] if task else None,
                        "task_id": task[1] if task else None,
                        "task": language,
                        "source_file": str(p.resolve()),
                        "demo": d,
                        "success": True,
                    }
                    start = (
                        None  # what the file tells of the start: the sim state before the first kept action
                    )
                    if rerender:
                        arrays = convert_rerender(sim, g)
                        start = np.asarray(g["states"][0])
                        rec.update(start="hdf5 states[0]", wait_steps=10)
                    else:
                        arrays, idx = convert_direct(g, None if keep_size else size, keep_noops)
                        if "states" in g and len(g["states"]) > 1:
                            start = np.asarray(g["states"][1])
                            rec.update(start="hdf5 states[1]", wait_steps=0)
                        else:
                            rec["start"] = "unknown (no states in the file)"
                        rec["pairing"] = "obs[t] (recorded after actions[t]) with actions[t+1]"
                    if arrays is None or len(arrays["action"]) == 0:
                        rec.update(
                            success=False, reason="replay did not succeed" if rerender else "no frames"
                        )
                    ok = rec["success"]
                    stage_attempt(store.staging, rec, arrays if ok else None, start if ok else None)
                    log(
                        f"{key}: {'ok' if rec['success'] else rec['reason']} "
                        f"({0 if arrays is None else len(arrays['action'])} frames)"
                    )
    finally:
        if sim is not None:
            sim.close()
        store.commit()
        summary = store.task_summary()
        store.close()
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", help="LIBERO *_demo.hdf5 files")
    p.add_argument("--out", required=True, help="output folder (a local LeRobotDataset)")
    p.add_argument("--keep-size", action="store_true", help="keep the files' frame size (128) instead of 256")
    p.add_argument(
        "--keep-noops", action="store_true", help="keep no-op actions (the hub datasets drop them)"
    )
    p.add_argument("--rerender", action="store_true", help="regenerate frames in LIBERO (OFT's way; slow)")


def run(args: argparse.Namespace) -> int:
    try:
        summary = convert(args.files, args.out, args.keep_size, args.keep_noops, args.rerender)
    except ValueError as e:
        print(f"r1vla convert-hdf5: error: {e}", file=sys.stderr)
        return 2
    for k, t in summary.items():
        print(f"{k:<40} {t['successes']}/{t['attempts']} demos  {t['language']}")
    return 0
