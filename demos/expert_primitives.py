"""Scene queries and motion primitives of the scripted LIBERO expert (privileged sim state, OSC_POSE deltas).

Every primitive is a small waypoint state machine: `act()` returns the next 7-D action
`[dx, dy, dz, drx, dry, drz, g]` (each in [-1, 1]; 1 = 5 cm / 0.5 rad per step; g = -1 open, +1 close) and
`done` turns True when the primitive has finished (the episode then moves to the next sub-goal).
"""

from __future__ import annotations

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

POS_SCALE = 0.05  # OSC_POSE output_max: metres per unit action
ROT_SCALE = 0.5  # radians per unit action
OPEN, CLOSE = -1.0, 1.0
RISE = np.array([0.0, 0.0, 0.002])  # 2 mm/step upwards while the gripper opens
_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)


def rotz(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def topdown(rot: np.ndarray) -> np.ndarray:
    """Gripper frame pointing straight down (z = -world z), keeping the current heading of its x axis."""
    x = rot[:, 0].copy()
    x[2] = 0.0
    x /= np.linalg.norm(x)
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


class Scene:
    """Read-only view of the robosuite env behind a LIBERO env (positions, boxes, joints)."""

    def __init__(self, env):
        self.env = env  # the robosuite/LIBERO problem env (OffScreenRenderEnv.env)
        self.sim = env.sim
        self.m, self.d = env.sim.model._model, env.sim.data._data
        self.eef_site = self.sim.model.site_name2id(env.robots[0].controller.eef_name)
        self._finger_geoms = [
            self.sim.model.geom_name2id(f"gripper0_finger{i}_pad_collision") for i in (1, 2)
        ]

    # robot
    def eef(self) -> np.ndarray:
        return self.d.site_xpos[self.eef_site].copy()

    def eef_rot(self) -> np.ndarray:
        return self.d.site_xmat[self.eef_site].reshape(3, 3).copy()

    def finger_axis(self) -> np.ndarray:
        """Horizontal unit vector along which the fingers close."""
        p1, p2 = (self.d.geom_xpos[g] for g in self._finger_geoms)
        u = p2 - p1
        u[2] = 0.0
        return u / np.linalg.norm(u)

    def gripper_opening(self) -> float:
        p1, p2 = (self.d.geom_xpos[g] for g in self._finger_geoms)
        return float(np.linalg.norm(p2 - p1))

    # objects
    def body_id(self, name: str) -> int:
        return self.env.obj_body_id[name]

    def body_pos(self, name: str) -> np.ndarray:
        return self.d.xpos[self.body_id(name)].copy()

    def is_site(self, name: str) -> bool:
        return name in self.env.object_sites_dict

    def site_pos(self, name: str) -> np.ndarray:
        return self.sim.data.get_site_xpos(name).copy()

    def _in_subtree(self, geom: int, root: int) -> bool:
        b = self.m.geom_bodyid[geom]
        while b != 0 and b != root:
            b = self.m.body_parentid[b]
        return b == root

    def _collides(self, geom: int) -> bool:
        return bool(self.m.geom_contype[geom] or self.m.geom_conaffinity[geom])

    def geom_box(self, geom: int) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned box (lo, hi) of one geom."""
        rot = self.d.geom_xmat[geom].reshape(3, 3)
        c = self.d.geom_xpos[geom] + rot @ self.m.geom_aabb[geom][:3]
        h = np.abs(rot) @ self.m.geom_aabb[geom][3:]
        return c - h, c + h

    def subtree_geoms(self, body: int) -> list[int]:
        return [g for g in range(self.m.ngeom) if self._collides(g) and self._in_subtree(g, body)]

    def body_box(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        boxes = [self.geom_box(g) for g in self.subtree_geoms(body)]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)

    def body_corners(self, body: int) -> np.ndarray:
        """World coordinates of the 8 box corners of each collision geom of a body subtree, (8n, 3)."""
        pts = []
        for g in self.subtree_geoms(body):
            rot = self.d.geom_xmat[g].reshape(3, 3)
            c, h = self.m.geom_aabb[g][:3], self.m.geom_aabb[g][3:]
            pts.append(self.d.geom_xpos[g] + (c + _CORNERS * h) @ rot.T)
        return np.concatenate(pts, 0)

    def obstacle_boxes(self, exclude: tuple[int, ...] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
        """Boxes of collision geoms that are neither robot, table/floor/walls, nor in an excluded subtree."""
        out = []
        for g in range(self.m.ngeom):
            if not self._collides(g):
                continue
            name = mujoco.mj_id2name(self.m, mujoco.mjtObj.mjOBJ_GEOM, g) or ""
            if name.startswith(("robot", "gripper", "mount")) or any(self._in_subtree(g, b) for b in exclude):
                continue
            lo, hi = self.geom_box(g)
            if (hi - lo)[0] > 1.0 or (hi - lo)[1] > 1.0:
                continue
            out.append((lo, hi))
        return out

    def joint_qpos(self, joint: str) -> float:
        return float(self.d.qpos[self.m.jnt_qposadr[self.sim.model.joint_name2id(joint)]])


def xy_gap(lo: np.ndarray, hi: np.ndarray, p: np.ndarray) -> float:
    """Horizontal distance from point p to a box."""
    dx = max(lo[0] - p[0], 0.0, p[0] - hi[0])
    dy = max(lo[1] - p[1], 0.0, p[1] - hi[1])
    return float(np.hypot(dx, dy))


def narrowest_yaw(pts: np.ndarray, axis: np.ndarray) -> tuple[float, float]:
    """(yaw, width): the gripper yaw (within +-90 deg, 0 unless it narrows by > 5 mm) that makes the fingers,
    closing along horizontal `axis`, span the smallest extent of the 2-D points `pts`."""
    width0 = float(np.ptp(pts @ axis))
    best = min(
        (float(np.ptp(pts @ (rotz(np.deg2rad(d))[:2, :2] @ axis))) + 1e-4 * abs(d), np.deg2rad(d))
        for d in range(-90, 91, 5)
    )
    return (best[1], best[0]) if best[0] < width0 - 0.005 else (0.0, width0)


class Primitive:
    """Base: pose servoing towards world-frame targets with a fixed goal orientation."""

    def __init__(self, scene: Scene):
        self.s = scene
        self.rot_goal = topdown(scene.eef_rot())
        self.phase, self.t = 0, 0
        self.done = False
        self._hist: list[np.ndarray] = []

    def move(self, target: np.ndarray, grip: float, max_speed: float = 1.0, gain: float = 1.0) -> np.ndarray:
        dp = np.clip(gain * (target - self.s.eef()) / POS_SCALE, -max_speed, max_speed)
        rv = Rotation.from_matrix(self.rot_goal @ self.s.eef_rot().T).as_rotvec()
        return np.concatenate([dp, np.clip(rv / ROT_SCALE, -1.0, 1.0), [grip]])

    def rot_err(self) -> float:
        return float(np.linalg.norm(Rotation.from_matrix(self.rot_goal @ self.s.eef_rot().T).as_rotvec()))

    def dist(self, target: np.ndarray) -> float:
        return float(np.linalg.norm(target - self.s.eef()))

    def stalled(self, n: int = 8, tol: float = 0.002) -> bool:
        """The end effector stopped moving (blocked by contact, or converged with a residual error)."""
        h = self._hist
        return self.t > n + 2 and len(h) > n and float(np.linalg.norm(h[-1] - h[-1 - n])) < tol

    def next_phase(self) -> None:
        self.phase += 1
        self.t = 0

    def act(self) -> np.ndarray:
        self.t += 1
        self._hist = (self._hist + [self.s.eef()])[-20:]
        return self.step()

    def step(self) -> np.ndarray:  # implemented by each primitive
        raise NotImplementedError


class PickPlace(Primitive):
    """Top-down grasp of `obj`, carry above obstacles, release on/in `target` (an object or a region site).

    Phases: 0 above grasp point, 1 descend, 2 close, 3 lift, 4 above target, 5 lower, 6 open, 7 retreat.
    The fingers close across the object's narrowest horizontal extent; wide objects (bowls) are grasped by
    the rim with one finger inside; the carry height clears every obstacle near the straight path."""

    def __init__(self, scene: Scene, obj: str, target: str, slot: tuple[int, int] = (0, 1)):
        super().__init__(scene)
        self.obj, self.target = obj, target
        self.bid = scene.body_id(obj)
        o = scene.body_pos(obj)
        lo, hi = scene.body_box(self.bid)
        self.offset = np.zeros(3)
        if slot[1] > 1 and scene.is_site(target):  # several objects on one region: side by side
            axis = int(np.argmin((hi - lo)[:2]))
            half = np.asarray(scene.env.object_sites_dict[target].size, float)[axis]
            step = min(2 * (half - 0.02) / (slot[1] - 1), (hi - lo)[axis] + 0.01)
            self.offset[axis] = (slot[0] - (slot[1] - 1) / 2) * step
        self.obj_h, self.top_off, self.bot_off = hi[2] - lo[2], hi[2] - o[2], lo[2] - o[2]
        self.yaw, self.width = narrowest_yaw(scene.body_corners(self.bid)[:, :2], scene.finger_axis()[:2])
        self.boxes = scene.obstacle_boxes(exclude=(self.bid,))
        self.rot0, self.axis0 = self.rot_goal.copy(), scene.finger_axis()
        self.rot_goal = rotz(self.yaw) @ self.rot_goal
        a, b = o[:2], self.target_pos()[0][:2]
        near = [
            hi[2]
            for lo, hi in self.boxes
            if min(xy_gap(lo, hi, a + t * (b - a)) for t in np.linspace(0, 1, 21)) < 0.12
        ]
        self.safe_z = max(near + [o[2] + self.top_off]) + 0.05
        self.gp = self.grasp_point(o)

    def centre_grasp(self) -> bool:
        """The object fits between the fingers (bowls wider than 7.5 cm are grasped by the rim)."""
        return self.width <= 0.075 or (self.width <= 0.085 and "bowl" not in self.obj)

    def target_pos(self) -> tuple[np.ndarray, float | None]:
        """(position, top height) of the target; top is None for a region site."""
        if self.s.is_site(self.target):
            return self.s.site_pos(self.target) + self.offset, None
        bid = self.s.body_id(self.target)
        return self.s.d.xpos[bid].copy(), float(self.s.body_box(bid)[1][2])

    def clearance(self, p: np.ndarray, zlo: float, zhi: float) -> float:
        gaps = [xy_gap(lo, hi, p) for lo, hi in self.boxes if hi[2] >= zlo and lo[2] <= zhi]
        return min(gaps + [1.0])

    def grasp_point(self, o: np.ndarray) -> np.ndarray:
        """Centre grasp for small objects; rim grasp (one finger inside) for wide ones such as bowls."""
        if self.centre_grasp():
            z = o[2] + max(self.bot_off + 0.02, min(0.0, self.top_off - 0.04))
            return np.array([o[0], o[1], max(z, o[2] + self.bot_off + 0.012)])
        r, z = self.width / 2 - 0.012, o[2] + self.top_off - 0.025
        best, best_gap, best_yaw = o[:2], -1.0, 0.0
        for yaw in (0.0, np.pi / 2):
            u = (rotz(yaw) @ self.axis0)[:2]
            for sgn in (1, -1):
                c = o[:2] + sgn * r * u
                gap = min(
                    self.clearance(np.r_[c + sgn * k * u, 0.0], z - 0.01, z + 0.15)
                    for k in (0.02, 0.04, 0.06)
                )
                if gap > best_gap + 1e-3:
                    best, best_gap, best_yaw = c, gap, yaw
        if self.phase == 0 and self.t <= 1:
            self.rot_goal = rotz(best_yaw) @ self.rot0
        return np.array([best[0], best[1], z])

    def step(self) -> np.ndarray:
        o = self.s.body_pos(self.obj)
        tp, ttop = self.target_pos()
        if self.phase <= 1:
            self.gp = self.grasp_point(o)
        gp, eef = self.gp, self.s.eef()
        if self.phase == 0:  # above the grasp point, gripper open
            a = self.move(np.array([gp[0], gp[1], max(o[2] + self.top_off + 0.10, self.safe_z)]), OPEN)
            if (
                self.dist(np.array([gp[0], gp[1], max(o[2] + self.top_off + 0.10, self.safe_z)])) < 0.015
                and self.rot_err() < 0.08
            ) or self.t > 80:
                self.next_phase()
        elif self.phase == 1:  # descend
            a = self.move(gp, OPEN, max_speed=0.7)
            if self.dist(gp) < 0.008 or self.t > 100 or self.stalled():
                self.next_phase()
        elif self.phase == 2:  # close
            a = self.move(gp, CLOSE, max_speed=0.3)
            if self.t > 12:
                self.next_phase()
        elif self.phase == 3:  # lift
            if self.t == 1:
                lift = (
                    max(tp[2] + 0.25, eef[2] + 0.15) if ttop is None else max(ttop, tp[2]) + 0.15 + self.obj_h
                )
                self.lift_z = max(lift, self.safe_z + (eef[2] - (o[2] + self.bot_off)))
            goal = np.array([eef[0], eef[1], self.lift_z])
            a = self.move(goal, CLOSE)
            if self.dist(goal) < 0.02 or self.t > 60:
                self.hold = eef - o  # gripper offset from the object centre, once held
                self.next_phase()
        elif self.phase == 4:  # above the target, compensating the grasp offset
            goal = np.array([tp[0] + self.hold[0], tp[1] + self.hold[1], self.lift_z])
            a = self.move(goal, CLOSE)
            if np.linalg.norm((goal - eef)[:2]) < 0.008 or self.t > 100 or self.stalled(tol=0.001):
                self.next_phase()
        elif self.phase == 5:  # lower
            if ttop is None:  # region site: a bit above the region
                z = tp[2] + self.hold[2] + self.obj_h * 0.5 + 0.02
            else:  # on an object: object bottom just above the target's top
                z = ttop + self.hold[2] - self.bot_off + 0.015
            goal = np.array([tp[0] + self.hold[0], tp[1] + self.hold[1], z])
            a = self.move(goal, CLOSE, max_speed=0.6)
            if self.dist(goal) < 0.008 or self.t > 60 or self.stalled():
                self.next_phase()
        elif self.phase == 6:  # open, rising slowly (a motionless step would be dropped as a no-op)
            a = self.move(eef + RISE, OPEN)
            if self.t > 15:
                self.next_phase()
        else:  # retreat upwards
            a = self.move(np.array([eef[0], eef[1], self.lift_z]), OPEN)
            self.done = self.t > 8
        return a
