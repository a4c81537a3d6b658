"""`r1vla mcqa`: Robot-R1-style multiple-choice questions from any LeRobot LIBERO dataset.

    r1vla mcqa --dataset DS --out MCQA [--repo-id ID] [--kinds waypoint,state,movement] [--options 4]
               [--heldout-episodes N] [--seed S] [--show K]

Per episode: keypoints (reasoning/keypoints.py), then per keypoint segment `per_segment` current frames
(at least `min_lead` frames before the keypoint, at least `min_move_cm` away from it), each giving one question
of every requested kind (reasoning/questions.py) with the agentview frame as the image. The correct letter is
balanced over the options within every (split, kind). Held-out episodes are drawn with the seed. Output:
`datasets.DatasetDict(train=..., heldout=...)` saved with `save_to_disk` (images included) plus
`OUT/r1vla_mcqa.json` (source dataset and the hash of its data, rule parameters, seed, counts, skipped
episodes). The folder is built in a temporary sibling and renamed, so a killed build leaves nothing that
looks complete. Deterministic under a seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hints import unknown
from reasoning.keypoints import KeypointRule, extract_keypoints
from reasoning.questions import (
    KINDS,
    LETTERS,
    OptionRule,
    balanced_letters,
    cm_format,
    fmt_position,
    movement_distractors,
    movement_labels,
    movement_phrase,
    place_answer,
    position_distractors,
    question_text,
    to_cm,
)
from reasoning.source import ACTION_KEY, IMAGE_KEY, STATE_KEY, Frames, check_features, data_hash, open_dataset

log = logging.getLogger("reasoning.mcqa")
META_FILE = "r1vla_mcqa.json"
MCQA_VERSION = 2  # bump when rows built from the same inputs would change (2: axis words as the image shows)


@dataclass(frozen=True)
class MCQAConfig:
    kinds: tuple[str, ...] = KINDS  # question kinds: waypoint | state | movement
    per_segment: int = 2  # current frames drawn per keypoint segment (each gives one question per kind)
    min_lead: int = 3  # a current frame lies at least this many frames before its next keypoint
    min_move_cm: float = 2.0  # ... and at least this far (cm) from it
    heldout_episodes: int | None = None  # episodes in the held-out split; None = 10% (0 with one episode)
    heldout_ids: tuple[int, ...] | None = (
        None  # exactly these episodes are held out (a study's held-out demos)
    )
    seed: int = 0  # every random choice (frames, distractors, letters, held-out episodes)
    image_key: str = IMAGE_KEY  # the camera shown (agentview, upright)
    reference_m: tuple[float, float, float] | None = None  # origin of the cm coordinates; None = mean start
    keypoints: KeypointRule = field(default_factory=KeypointRule)  # keypoint rule
    option_rule: OptionRule = field(default_factory=OptionRule)  # options and distractors

    def __post_init__(self) -> None:
        for k in self.kinds:
            if k not in KINDS:
                raise unknown("question kind", k, KINDS)
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds must be a non-empty list without repeats; got {self.kinds}")
        if self.per_segment < 1 or self.min_lead < 1:
            raise ValueError(
                f"per_segment and min_lead must be >= 1; got {self.per_segment}, {self.min_lead}"
            )


def _episode_questions(
    pos: np.ndarray, grip: np.ndarray, cfg: MCQAConfig, ref: np.ndarray, rng: np.random.Generator
) -> tuple[list[dict], str]:
    """Questions (without letters) of one episode, or ([], reason it was skipped)."""
    kps = extract_keypoints(pos, grip, cfg.keypoints)
    need = 2 if {"waypoint", "movement"} & set(cfg.kinds) else 1
    if len(kps) < need:
        return [], f"{len(kps)} keypoint(s) ({', '.join(k.reason for k in kps)}); waypoint/movement need >= 2"
    cm = np.array([to_cm(p, ref) for p in pos], dtype=np.float64)
    rule, out, start = cfg.option_rule, [], 0
    for kp in kps:
        cands = [
            t
            for t in range(start, kp.frame - cfg.min_lead + 1)
            if np.linalg.norm(cm[kp.frame] - cm[t]) >= cfg.min_move_cm
            and movement_labels(cm[kp.frame] - cm[t], rule) is not None
        ]
        start = kp.frame
        pick = sorted(rng.choice(cands, size=min(cfg.per_segment, len(cands)), replace=False).tolist())
        for t in pick:
            cur, nxt = [int(v) for v in cm[t]], [int(v) for v in cm[kp.frame]]
            for kind in cfg.kinds:
                if kind == "movement":
                    lab = movement_labels(cm[kp.frame] - cm[t], rule)
                    ans, dis = (
                        movement_phrase(lab),
                        [movement_phrase(d) for d in movement_distractors(lab, rule, rng)],
                    )
                else:
                    target = nxt if kind == "waypoint" else cur
                    ans = fmt_position(target)
                    dis = [fmt_position(d) for d in position_distractors(target, cm, rule, rng)]
                out.append(
                    dict(
                        kind=kind,
                        frame_index=int(t),
                        keypoint_frame=int(kp.frame),
                        keypoint_reason=kp.reason,
                        current_cm=cur,
                        show_state=kind != "state",
                        answer_text=ans,
                        distractors=dis,
                    )
                )
    if not out:
        return [], f"no frame >= {cfg.min_lead} frames and >= {cfg.min_move_cm} cm before a keypoint"
    return out, ""


def build_mcqa(
    dataset: str,
    out: str | os.PathLike,
    repo_id: str | None = None,
    config: MCQAConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Build the MCQA set of `dataset` into `out`; returns the summary also written to OUT/r1vla_mcqa.json."""
    from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value

    cfg = config or MCQAConfig()
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose a new --out (or pass overwrite=True)")
    ds = open_dataset(dataset, repo_id)
    check_features(ds.meta.features, cfg.image_key)
    names = [STATE_KEY, ACTION_KEY, "episode_index", "frame_index", "task_index"]
    table = ds.hf_dataset.select_columns(names).with_format("numpy")
    cols = {k: np.asarray(table[k]) for k in names}
    task_of = {int(i): str(t) for t, i in zip(ds.meta.tasks.index, ds.meta.tasks["task_index"], strict=True)}
    episodes = sorted(set(cols["episode_index"].tolist()))
    rows_of = {e: np.flatnonzero(cols["episode_index"] == e) for e in episodes}
    if cfg.reference_m is not None:
        ref = np.asarray(cfg.reference_m, dtype=np.float64)
    else:  # mean start position, rounded to 0.1 mm so it prints and reloads exactly
        starts = [e for e in episodes if e not in set(cfg.heldout_ids or ())] or episodes  # training starts
        ref = np.round(np.mean([cols[STATE_KEY][rows_of[e][0], :3] for e in starts], axis=0), 4)
    per_ep, skipped = {}, {}
    for e in episodes:
        idx = rows_of[e][np.argsort(cols["frame_index"][rows_of[e]])]
        rng = np.random.default_rng([cfg.seed, int(e)])
        qs, why = _episode_questions(cols[STATE_KEY][idx, :3], cols[ACTION_KEY][idx, 6], cfg, ref, rng)
        if why:
            skipped[int(e)] = why
            log.warning("mcqa: episode %d skipped: %s", e, why)
            continue
        for q in qs:
            q.update(episode_index=int(e), row=int(idx[q["frame_index"]]))
            q["task"] = task_of[int(cols["task_index"][q["row"]])]
        per_ep[int(e)] = qs
    if not per_ep:
        raise ValueError(
            f"no questions: all {len(episodes)} episodes were skipped ({'; '.join(f'{e}: {w}' for e, w in skipped.items())})"
        )
    used = sorted(per_ep)
    if cfg.heldout_ids is not None:  # the caller's held-out episodes: never in the training questions
        missing = sorted(set(cfg.heldout_ids) - set(episodes))
        if missing:
            raise ValueError(f"held-out episodes {missing} are not in the dataset (episodes: {episodes})")
        heldout = sorted(int(e) for e in cfg.heldout_ids if e in per_ep)
    n_held = cfg.heldout_episodes if cfg.heldout_episodes is not None else (round(0.1 * len(used)) or 1)
    n_held = min(n_held, len(used) - 1) if len(used) > 1 else 0
    split_rng = np.random.default_rng([cfg.seed, 7919])
    if cfg.heldout_ids is None:
        heldout = sorted(int(e) for e in split_rng.choice(used, size=n_held, replace=False)) if n_held else []
    features = Features(
        {
            "id": Value("string"),
            "kind": Value("string"),
            "episode_index": Value("int64"),
            "frame_index": Value("int64"),
            "keypoint_frame": Value("int64"),
            "keypoint_reason": Value("string"),
            "task": Value("string"),
            "image": Image(),
            "prompt": [{"role": Value("string"), "content": Value("string")}],
            "options": Sequence(Value("string")),
            "answer": Value("string"),
            "answer_text": Value("string"),
            "reasoning": Value("string"),
            "current_cm": Sequence(Value("int64")),
        }
    )
    held_set = set(heldout) | set(cfg.heldout_ids or ())
    split_eps = {"train": [e for e in used if e not in held_set], "heldout": heldout}
    split_qs, counts = {}, {}
    for split, eps in split_eps.items():
        qs = [q for e in eps for q in per_ep[e]]
        letter_rng = np.random.default_rng([cfg.seed, 104729, int(split == "heldout")])
        for kind in cfg.kinds:
            group = [q for q in qs if q["kind"] == kind]
            for q, li in zip(
                group, balanced_letters(len(group), cfg.option_rule.options, letter_rng), strict=True
            ):
                q["letter"] = li
        split_qs[split] = qs
        counts[split] = {
            "questions": len(qs),
            "episodes": len(eps),
            "per_kind": {k: sum(q["kind"] == k for q in qs) for k in cfg.kinds},
            "correct_letter": {
                LETTERS[i]: sum(q["letter"] == i for q in qs) for i in range(cfg.option_rule.options)
            },
        }
    digest = hashlib.sha256()

    frames = Frames(ds, cfg.image_key)

    def records(split: str):
        last = (None, b"")  # the kinds of one frame are consecutive: decode each frame once
        for q in split_qs[split]:
            opts = place_answer(q["answer_text"], q["distractors"], q["letter"])
            text = question_text(
                q["kind"], q["task"], q["current_cm"] if q["show_state"] else None, opts, cfg.option_rule
            )
            if last[0] != q["row"]:
                last = (q["row"], frames(q["row"]))
            rec = dict(
                id=f"ep{q['episode_index']}_f{q['frame_index']}_{q['kind']}",
                kind=q["kind"],
                episode_index=q["episode_index"],
                frame_index=q["frame_index"],
                keypoint_frame=q["keypoint_frame"],
                keypoint_reason=q["keypoint_reason"],
                task=q["task"],
                prompt=[{"role": "user", "content": text}],
                options=opts,
                answer=LETTERS[q["letter"]],
                answer_text=q["answer_text"],
                reasoning="",
                current_cm=q["current_cm"],
            )
            digest.update(json.dumps(rec, sort_keys=True).encode())
            digest.update(last[1])
            yield {**rec, "image": {"bytes": last[1], "path": None}}

    source_hash = data_hash({k: v for k, v in cols.items()}, [task_of[i] for i in sorted(task_of)])
    summary = {
        "mcqa_version": MCQA_VERSION,
        "source": {
            "dataset": str(dataset),
            "repo_id": ds.repo_id,
            "root": str(ds.root),
            "data_hash": source_hash,
            "data_hash_covers": f"{', '.join(names)} arrays and the task strings (not the pixels)",
            "episodes": len(episodes),
            "frames": int(len(cols["episode_index"])),
        },
        "mcqa_hash": None,  # filled in while the rows are written
        "seed": cfg.seed,
        "reference_m": [float(v) for v in ref],
        "coordinates": cm_format(ref).spec(),  # the format the backbones learn (adapters.prompts.CoordFormat)
        "config": {
            **asdict(cfg),
            "kinds": list(cfg.kinds),
            "heldout_ids": None if cfg.heldout_ids is None else list(cfg.heldout_ids),
        },
        "counts": counts,
        "heldout_episodes": heldout,
        "skipped_episodes": {str(e): w for e, w in skipped.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    cache = tempfile.mkdtemp(prefix=f".{out.name}.cache-", dir=out.parent)
    try:
        splits = {}
        for split, qs in split_qs.items():  # rows stream to an Arrow cache: no split is held in memory whole
            splits[split] = (
                Dataset.from_generator(
                    records,
                    gen_kwargs={"split": split},
                    features=features,
                    cache_dir=cache,
                    fingerprint=hashlib.sha256(f"{source_hash}{split}{cfg}".encode()).hexdigest()[:32],
                )
                if qs
                else Dataset.from_dict({k: [] for k in features}, features=features)
            )
        summary["mcqa_hash"] = digest.hexdigest()
        empty = {k: 1 for k, v in splits.items() if len(v) == 0}  # datasets 4.8 cannot size an empty split
        DatasetDict(splits).save_to_disk(str(tmp), num_shards={k: empty.get(k) for k in splits})
        del splits
        (tmp / META_FILE).write_text(json.dumps(summary, indent=2))
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return summary


def load_mcqa(path: str | os.PathLike, split: str | None = None) -> tuple[Any, dict]:
    """(DatasetDict or one split, metadata dict) of an MCQA folder written by build_mcqa."""
    from datasets import load_from_disk

    path = Path(path).expanduser()
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path} is not an MCQA folder (no {META_FILE}); build one with `r1vla mcqa`")
    meta = json.loads((path / META_FILE).read_text())
    dd = load_from_disk(str(path))
    if split is None:
        return dd, meta
    if split not in dd:
        raise unknown("MCQA split", split, list(dd))
    return dd[split], meta


def chat_text(row: dict, processor: Any) -> str:
    """The prompt of `row` exactly as the model sees it: the chat template with the image placeholder."""
    from trl.data_utils import prepare_multimodal_messages

    messages = prepare_multimodal_messages(row["prompt"], images=[row["image"]])
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# --- CLI --------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="local LeRobot dataset folder, or a hub repo id")
    p.add_argument("--out", required=True, help="MCQA folder to create (datasets save_to_disk)")
    p.add_argument("--repo-id", default=None, help="repo id of the dataset (hub; for a folder: its label)")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma list of: " + ", ".join(KINDS))
    p.add_argument("--options", type=int, default=4, help="options per question (Robot-R1: 4)")
    p.add_argument("--heldout-episodes", type=int, default=None, help="held-out episodes (default 10%%)")
    p.add_argument("--per-segment", type=int, default=2, help="current frames per keypoint segment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=0, metavar="K", help="print K examples as the model sees them")
    p.add_argument("--template", default="tiny", help="backbone key or path whose chat template --show uses")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = MCQAConfig(
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
        per_segment=args.per_segment,
        heldout_episodes=args.heldout_episodes,
        seed=args.seed,
        option_rule=OptionRule(options=args.options),
    )
    summary = build_mcqa(args.dataset, args.out, repo_id=args.repo_id, config=cfg, overwrite=args.overwrite)
    print(
        json.dumps(
            {"out": str(args.out), "counts": summary["counts"], "skipped": summary["skipped_episodes"]},
            indent=2,
        )
    )
    if args.show:
        from transformers import AutoProcessor

        from reasoning.base import resolve_base

        processor = AutoProcessor.from_pretrained(resolve_base(args.template), use_fast=True)
        train, _ = load_mcqa(args.out, "train")
        for i in range(min(args.show, len(train))):
            row = train[i]
            print(f"\n===== example {i}: {row['id']} (answer {row['answer']}: {row['answer_text']}) =====")
            print(chat_text(row, processor))
    return 0
