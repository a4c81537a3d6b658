"""Keypoints of a demonstration: the frames where the robot reaches a sub-goal.

The rule (Robot-R1's "next keypoint state" needs sub-goal frames; the paper does not publish its own rule):

1. **Gripper events**: every frame t >= 1 where the sign of the gripper command `action[t, 6]` differs from the
   sign at t-1 (-1 open / +1 close): the robot stands at a grasp or release pose.
2. **Stops**: the end-effector speed v_t = |p_{t+1} - p_t| is smoothed by a centred moving average of
   `smooth` frames; every maximal run of frames with smoothed speed below `stop_frac` x the episode's 90th
   percentile speed contributes its slowest frame. Runs starting in the first `merge_frames` frames are the
   robot at rest before it moves and are ignored.
3. **The final frame** T-1.
4. **Merge**: sorted by frame, a keypoint closer than `merge_frames` frames or `merge_cm` cm (eef position) to
   the previous kept one is merged with it; the merged keypoint is the one of highest priority (gripper
   event > final frame > stop; the earlier frame on a tie).

Everything here is numpy only, so the rule can be run on a scripted-expert episode without a dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

GRIPPER, FINAL, STOP = "gripper", "final", "stop"
_PRIORITY = {GRIPPER: 0, FINAL: 1, STOP: 2}


@dataclass(frozen=True)
class KeypointRule:
    merge_frames: int = 5  # keypoints closer than this many frames are merged (also: ignore stops before it)
    merge_cm: float = 1.0  # ... or closer than this many cm in eef position (a gripper closing in place)
    stop_frac: float = 0.4  # "stopped": smoothed speed below this fraction of the episode's p90 speed
    smooth: int = 5  # moving-average window (frames) of the speed before looking for stops

    def __post_init__(self) -> None:
        if self.merge_frames < 1 or self.smooth < 1 or self.merge_cm < 0 or not 0 < self.stop_frac < 1:
            raise ValueError(
                f"KeypointRule needs merge_frames >= 1, smooth >= 1, merge_cm >= 0, 0 < stop_frac < 1; got {self}"
            )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Keypoint:
    frame: int  # frame index within the episode
    reason: str  # gripper | final | stop


def gripper_events(gripper: np.ndarray) -> list[int]:
    """Frames t >= 1 where sign(gripper[t]) != sign(gripper[t-1]) (0 counts as open)."""
    closed = np.asarray(gripper, dtype=np.float64) > 0
    return [int(t) for t in np.flatnonzero(closed[1:] != closed[:-1]) + 1]


def stop_frames(positions: np.ndarray, rule: KeypointRule) -> list[int]:
    """The slowest frame of each run of (smoothed) slow frames; see the module docstring."""
    p = np.asarray(positions, dtype=np.float64)
    if len(p) < 3:
        return []
    speed = np.linalg.norm(np.diff(p, axis=0), axis=1)  # (T-1,) speed at frame t = |p[t+1] - p[t]|
    w = min(rule.smooth, len(speed))
    smoothed = np.convolve(np.pad(speed, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, mode="valid")
    ref = np.percentile(speed, 90)
    if ref <= 0:
        return []
    slow = smoothed < rule.stop_frac * ref
    out, t = [], 0
    while t < len(slow):
        if not slow[t]:
            t += 1
            continue
        end = t
        while end + 1 < len(slow) and slow[end + 1]:
            end += 1
        if t >= rule.merge_frames:
            out.append(int(t + np.argmin(smoothed[t : end + 1])))
        t = end + 1
    return out


def extract_keypoints(
    positions: np.ndarray, gripper: np.ndarray, rule: KeypointRule | None = None
) -> list[Keypoint]:
    """Keypoints of one episode. `positions`: (T, 3) eef xyz in metres; `gripper`: (T,) the action's gripper
    command (-1 open / +1 close). Sorted by frame; always ends with a keypoint at or near the last frame."""
    rule = rule or KeypointRule()
    p = np.asarray(positions, dtype=np.float64)
    g = np.asarray(gripper, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or g.shape != (len(p),) or len(p) == 0:
        raise ValueError(f"need positions (T, 3) and gripper (T,); got {p.shape} and {g.shape}")
    cands = [Keypoint(t, GRIPPER) for t in gripper_events(g)]
    cands += [Keypoint(t, STOP) for t in stop_frames(p, rule)]
    cands.append(Keypoint(len(p) - 1, FINAL))
    cands.sort(key=lambda k: (k.frame, _PRIORITY[k.reason]))
    kept: list[Keypoint] = []
    for k in cands:
        if kept:
            last = kept[-1]
            near = k.frame - last.frame < rule.merge_frames
            near = near or 100.0 * np.linalg.norm(p[k.frame] - p[last.frame]) < rule.merge_cm
            if near:
                if _PRIORITY[k.reason] < _PRIORITY[last.reason]:
                    kept[-1] = k
                continue
        kept.append(k)
    return kept
