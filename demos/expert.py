"""Scripted LIBERO expert: BDDL goal -> ordered sub-goals -> motion primitives -> OSC_POSE delta actions.

It reads privileged simulator state (body poses, collision boxes, joint positions), so it is a data
generator, not a policy. Deterministic for a given init state and noise seed; rendering does not change the
physics, so episodes are planned without rendering and re-rendered afterwards (see demos.generate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demos.expert_primitives import CLOSE, OPEN, RISE, PickPlace, Primitive, Scene, narrowest_yaw, rotz


@dataclass(frozen=True)
class Atom:
    pred: str  # BDDL predicate, lower case: on, in, open, close, turnon
    obj: str
    target: str = ""


def parse_goal(bddl_text: str) -> list[Atom]:
    """The goal atoms of a BDDL problem, in file order."""
    goal = bddl_text[bddl_text.index("(:goal") :]
    atoms = re.findall(r"\((\w+)\s+(\w+)(?:\s+(\w+))?\)", goal)
    return [Atom(p.lower(), o, t or "") for p, o, t in atoms if p.lower() not in ("and", "or", "not")]


class UnsupportedTask(Exception):
    """The expert has no primitive for one of the task's goal atoms."""


SUPPORTED = ("on", "in", "turnon", "close")


class Articulated(Primitive):
    """Base of primitives acting on one joint of an object or region (drawer slide, door or knob hinge)."""

    def __init__(self, scene: Scene, obj: str):
        super().__init__(scene)
        o = scene.env.get_object(obj)
        joints = getattr(o, "joints", None) or []
        if not joints:
            raise UnsupportedTask(f"{obj} has no joint to act on")
        self.joint = joints[0]
        self.jid = scene.sim.model.joint_name2id(self.joint)
        self.body = int(scene.m.jnt_bodyid[self.jid])
        self.hinge = int(scene.m.jnt_type[self.jid]) == 3
        self.props = o.object_properties["articulation"]

    def q(self) -> float:
        return self.s.joint_qpos(self.joint)

    def front_geoms(self, direction: np.ndarray, depth: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
        """Box of the body's geoms lying within `depth` of its extreme along `direction` (a drawer's handle)."""
        boxes = [self.s.geom_box(g) for g in self.s.subtree_geoms(self.body)]
        reach = [max(lo @ direction, hi @ direction) for lo, hi in boxes]
        front = [b for b, r in zip(boxes, reach, strict=True) if r > max(reach) - depth]
        return np.min([b[0] for b in front], axis=0), np.max([b[1] for b in front], axis=0)


class TurnKnob(Articulated):
    """Grasp a knob's ridge from above and twist it (counter-clockwise = increasing joint angle)."""

    def __init__(self, scene: Scene, obj: str, turn: float = 1.2):
        super().__init__(scene, obj)
        if not self.hinge:
            raise UnsupportedTask(f"{obj}: knob joint {self.joint} is not a hinge")
        geoms = self.s.subtree_geoms(self.body)
        boxes = [self.s.geom_box(g) for g in geoms]
        base = min(hi[2] for _, hi in boxes)
        ridge = [g for g, (_, hi) in zip(geoms, boxes, strict=True) if hi[2] > base + 0.01]
        hi = np.max([self.s.geom_box(g)[1] for g in ridge], axis=0)
        anchor = self.s.d.xanchor[self.jid]
        pts = np.concatenate([self._corners(g) for g in ridge])[:, :2]
        yaw, _ = narrowest_yaw(pts, scene.finger_axis()[:2])
        self.rot_goal = rotz(yaw) @ self.rot_goal
        self.rot0 = self.rot_goal.copy()
        self.grasp = np.array([anchor[0], anchor[1], hi[2] - 0.015])
        self.turn, self.goal_q = turn, min(self.props.get("default_turnon_ranges", [0.5])) + 0.35

    def _corners(self, g: int) -> np.ndarray:
        lo, hi = self.s.geom_box(g)
        return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])

    def step(self) -> np.ndarray:
        above = self.grasp + np.array([0, 0, 0.08])
        if self.phase == 0:
            a = self.move(above, OPEN)
            if (self.dist(above) < 0.01 and self.rot_err() < 0.05) or self.t > 60:
                self.next_phase()
        elif self.phase == 1:
            a = self.move(self.grasp, OPEN, max_speed=0.5)
            if self.dist(self.grasp) < 0.006 or self.stalled() or self.t > 60:
                self.next_phase()
        elif self.phase == 2:
            a = self.move(self.grasp, CLOSE)
            if self.t > 10:
                self.next_phase()
        elif self.phase == 3:  # twist, the goal orientation advancing 0.08 rad per step
            self.rot_goal = rotz(min(0.08 * self.t, self.turn)) @ self.rot0
            a = self.move(self.grasp, CLOSE)
            if self.q() > self.goal_q or self.t > 50:
                self.next_phase()
        elif self.phase == 4:
            a = self.move(self.s.eef() + RISE, OPEN)  # release while rising slowly: never a no-op
            if self.t > 8:
                self.next_phase()
        else:
            a = self.move(self.s.eef() * [1, 1, 0] + [0, 0, self.grasp[2] + 0.12], OPEN)
            self.done = self.t > 10
        return a


def yaw_to(u: np.ndarray, v: np.ndarray) -> float:
    """Rotation about z (within +-90 deg, finger axes have no sign) taking horizontal direction u onto v."""
    yaw = float(np.arctan2(u[0] * v[1] - u[1] * v[0], u[0] * v[0] + u[1] * v[1]))
    return (yaw + np.pi / 2) % np.pi - np.pi / 2


def _closing_sign(props: dict) -> float:
    """+1 if closing increases the joint position (cabinet drawers), -1 if it decreases it."""
    return 1.0 if max(props["default_close_ranges"]) > max(props["default_open_ranges"]) else -1.0


class CloseDrawer(Articulated):
    """Push an open drawer shut: closed gripper in front of its handle, push along the slide axis."""

    def __init__(self, scene: Scene, obj: str):
        super().__init__(scene, obj)
        if self.hinge:
            raise UnsupportedTask(f"{obj}: closing hinged doors is not implemented")
        self.dir = _closing_sign(self.props) * self.s.d.xaxis[self.jid].copy()  # drawer motion when closing
        lo, hi = self.front_geoms(-self.dir)
        self.handle = (lo + hi) / 2
        self.handle[2] = (lo[2] + hi[2]) / 2
        across = np.array([-self.dir[1], self.dir[0], 0.0])  # fingers across the push: the hand stays narrow
        self.rot_goal = rotz(yaw_to(scene.finger_axis(), across)) @ self.rot_goal
        self.start = self.handle - self.dir * (0.5 * float(np.abs((hi - lo) @ self.dir)) + 0.035)

    def is_closed(self) -> bool:
        sign = _closing_sign(self.props)
        return sign * (self.q() - (0.001 if sign > 0 else -0.001)) > 0

    def step(self) -> np.ndarray:
        high = self.start + np.array([0, 0, 0.12])
        if self.phase == 0:
            a = self.move(high, CLOSE)
            if (self.dist(high) < 0.015 and self.rot_err() < 0.08) or self.t > 80:
                self.next_phase()
        elif self.phase == 1:
            a = self.move(self.start, CLOSE, max_speed=0.6)
            if self.dist(self.start) < 0.008 or self.stalled() or self.t > 60:
                self.next_phase()
        elif self.phase == 2:  # push well past the closed position, so that the controller pushes hard
            goal = self.start + self.dir * (abs(self.q()) + 0.10)
            a = self.move(goal, CLOSE, max_speed=0.6)
            if self.is_closed() or (self.t > 30 and self.stalled(tol=0.001)) or self.t > 80:
                self.next_phase()
        else:
            a = self.move(self.s.eef() - self.dir * 0.05 + [0, 0, 0.05], CLOSE)
            self.done = self.t > 10
        return a


def make_primitive(scene: Scene, atom: Atom, slot: tuple[int, int] = (0, 1)) -> Primitive:
    if atom.pred in ("on", "in"):
        return PickPlace(scene, atom.obj, atom.target, slot)
    if atom.pred == "turnon":
        return TurnKnob(scene, atom.obj)
    if atom.pred == "close":
        return CloseDrawer(scene, atom.obj)
    raise UnsupportedTask(f"no primitive for goal atom {atom}")


def order_atoms(atoms: list[Atom]) -> list[Atom]:
    """Execution order: pick-and-place first, closing doors/drawers last (they hold what was put inside)."""
    rank = {"open": 0, "turnon": 1, "on": 2, "in": 2, "close": 3}
    return sorted(atoms, key=lambda a: rank.get(a.pred, 2))


class Expert:
    """Runs the task's sub-goals one after the other on a LIBERO env (`LiberoSim.env`)."""

    def __init__(self, env, bddl_file: str):
        self.scene = Scene(env.env)
        self.env = env.env
        self.atoms = order_atoms(parse_goal(Path(bddl_file).read_text()))
        for a in self.atoms:  # fail fast on a task the expert cannot do
            if a.pred not in SUPPORTED:
                raise UnsupportedTask(f"no primitive for goal atom {a}")
            if a.pred in ("close", "turnon"):
                make_primitive(self.scene, a)  # raises for joints it cannot handle (e.g. hinged doors)
        self.index = -1
        self.prim: Primitive | None = None
        self._advance()

    def _satisfied(self, atom: Atom) -> bool:
        for state in self.env.parsed_problem["goal_state"]:
            if [s.lower() for s in state[:1]] == [atom.pred] and list(state[1:]) == [
                x for x in (atom.obj, atom.target) if x
            ]:
                return bool(self.env._eval_predicate(state))
        return False

    def _advance(self) -> None:
        """Next sub-goal that does not hold yet."""
        self.index += 1
        while self.index < len(self.atoms) and self._satisfied(self.atoms[self.index]):
            self.index += 1
        if self.index >= len(self.atoms):
            self.prim = None
            return
        atom = self.atoms[self.index]
        same = [a for a in self.atoms if a.pred == "on" and a.target == atom.target]
        slot = (same.index(atom), len(same)) if atom in same else (0, 1)
        self.prim = make_primitive(self.scene, atom, slot)

    @property
    def phase(self) -> str:
        return "done" if self.prim is None else f"{self.index}:{type(self.prim).__name__}:{self.prim.phase}"

    def act(self) -> np.ndarray:
        if self.prim is not None and self.prim.done:
            self._advance()
        if (
            self.prim is None
        ):  # all sub-goals executed: rise slowly, gripper open, until LIBERO reports success
            return np.array([0, 0, RISE[2] / 0.05, 0, 0, 0, OPEN])
        return np.clip(self.prim.act(), -1.0, 1.0)


@dataclass(frozen=True)
class ExpertRun:
    actions: np.ndarray  # (T, 7) float32, every action executed, noise included
    labels: (
        np.ndarray
    )  # (T, 7) float32, the expert's action before the noise (DART's label; = actions if noise 0)
    states: np.ndarray  # (T, 8) float32, the dataset state before each action
    success: bool
    reason: str  # "" on success, else why it failed
    final_eef: np.ndarray  # (3,) eef position after the last action
    start_state: np.ndarray  # flattened MuJoCo state the episode started from (LIBERO init-state layout)


def run_expert(sim, init_index: int | None, max_steps: int, noise: float = 0.0, seed: int = 0) -> ExpertRun:
    """Reset `sim` (an libero_core.sim.LiberoSim) to official init state `init_index`, or, with None, to LIBERO's
    own randomized placement of the task's objects; run the expert until LIBERO's success predicate holds or
    `max_steps` actions have been taken. Gaussian noise of std `noise` is added to the 6 motion dimensions, then
    clipped to [-1, 1]. `seed` seeds the noise and, through `env.seed` (= np.random.seed), what LIBERO samples at
    reset: the fixture placements (cabinets and stoves move by ~1-2 cm between resets; the official init states
    only hold the movable objects' poses) and the randomized start."""
    from libero_core.sim import state_from_obs

    rng = np.random.default_rng(seed)
    obs = sim.reset(init_index, seed=seed)
    start_state = sim.start_state
    actions, labels, states = [], [], []
    try:
        expert = Expert(sim.env, sim.info.bddl_file)
    except UnsupportedTask as e:
        reason = f"unsupported: {e}"
    else:
        reason = f"no success in {max_steps} steps"
        for _ in range(max_steps):
            try:
                a = expert.act()
            except UnsupportedTask as e:
                reason = f"unsupported: {e}"
                break
            labels.append(a.astype(np.float32))
            if noise > 0:
                a[:6] = np.clip(a[:6] + rng.normal(0.0, noise, 6), -1.0, 1.0)
            a = a.astype(np.float32)
            states.append(state_from_obs(obs))
            obs, success = sim.step(a)
            actions.append(a)
            if success:
                reason = ""
                break
        else:
            reason += f" (stopped at {expert.phase})"
    return ExpertRun(
        np.asarray(actions, np.float32).reshape(-1, 7),
        np.asarray(labels, np.float32).reshape(-1, 7),
        np.asarray(states, np.float32).reshape(-1, 8),
        reason == "",
        reason,
        obs["robot0_eef_pos"].copy(),
        start_state,
    )
