"""Poses and motion: joint-angle vectors for named activities, cycles for walking and running.

Every function returns a (NUM_DOF,) float64 vector of joint angles in radians, indexed by
``body.DOF``. Cyclic activities take a phase in radians (one full gait cycle, two steps, is
2*pi), so a video advances the phase with the distance walked and motion stays smooth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .body import DOF, DOF_LIMITS, NUM_DOF

ACTIVITIES = (
    "stand",
    "walk",
    "run",
    "sit",
    "crouch",
    "arms_up",
    "wave",
    "bend",
    "lie",
    "random",
)
"""Named activities; ``random`` draws any pose within the joint limits."""

# How often each activity is drawn for a still image: upright poses dominate, as in real photos.
IMAGE_ACTIVITY_P = np.array([0.2, 0.22, 0.1, 0.08, 0.06, 0.06, 0.06, 0.06, 0.04, 0.12])


@dataclass(frozen=True)
class Style:
    """A person's own way of holding a pose: small constant offsets and hand shapes.

    ``offsets`` (NUM_DOF,) radians are added to every pose, so two people walking do not move
    as one; ``look`` (yaw, pitch) turns the head; ``fingers`` (2,) curl of left/right hands.
    """

    offsets: np.ndarray
    look: tuple[float, float]
    fingers: tuple[float, float]
    mirror: bool  # wave with the left hand, lie on the other side, etc.

    @staticmethod
    def sample(rng: np.random.Generator) -> Style:
        offsets = rng.normal(0.0, 0.07, NUM_DOF)
        offsets[[DOF["root_pitch"], DOF["root_roll"]]] = 0.0
        hands = rng.choice(np.array([0.05, 0.35, 0.6, 1.45]), size=2, p=[0.2, 0.4, 0.25, 0.15])
        return Style(
            offsets=offsets,
            look=(float(rng.normal(0, 0.35)), float(rng.normal(0.05, 0.15))),
            fingers=(float(hands[0]), float(hands[1])),
            mirror=bool(rng.random() < 0.5),
        )


def _both(v: np.ndarray, name: str, left: float, right: float | None = None) -> None:
    v[DOF[f"{name}_l"]] = left
    v[DOF[f"{name}_r"]] = left if right is None else right


def _flat_feet(v: np.ndarray) -> None:
    """Set the ankles so the soles stay parallel to the pelvis (feet flat on the ground)."""
    for s in ("l", "r"):
        v[DOF[f"ankle_{s}"]] = v[DOF[f"knee_{s}"]] - v[DOF[f"hip_flex_{s}"]]


def _mirror(v: np.ndarray) -> np.ndarray:
    """Swap left and right joint angles and negate the sideways ones."""
    out = v.copy()
    for name, i in DOF.items():
        if name.endswith("_l"):
            j = DOF[name[:-2] + "_r"]
            out[i], out[j] = v[j], v[i]
    for name in ("root_roll", "spine_side", "spine_twist", "neck_yaw", "neck_roll"):
        out[DOF[name]] = -v[DOF[name]]
    return out


def base_pose() -> np.ndarray:
    """Relaxed standing: arms hanging slightly out, knees soft."""
    v = np.zeros(NUM_DOF)
    _both(v, "sho_abd", 0.12)
    _both(v, "elbow", 0.2)
    _both(v, "knee", 0.05)
    _both(v, "hip_abd", 0.05)
    _both(v, "thumb", 0.3)
    _flat_feet(v)
    return v


def gait(phase: float, run: float) -> np.ndarray:
    """A walking (run=0) to running (run=1) cycle at ``phase`` radians."""
    v = base_pose()
    s = np.sin(phase)
    hip_amp = 0.38 + 0.32 * run
    v[DOF["hip_flex_l"]] = 0.05 + hip_amp * s + 0.15 * run
    v[DOF["hip_flex_r"]] = 0.05 - hip_amp * s + 0.15 * run
    # The knee bends while the leg swings forward (hip flexing), straightens on contact.
    v[DOF["knee_l"]] = 0.1 + (0.6 + 0.9 * run) * max(0.0, np.cos(phase - 0.3))
    v[DOF["knee_r"]] = 0.1 + (0.6 + 0.9 * run) * max(0.0, -np.cos(phase - 0.3))
    v[DOF["sho_flex_l"]] = -(0.3 + 0.4 * run) * s
    v[DOF["sho_flex_r"]] = (0.3 + 0.4 * run) * s
    _both(v, "elbow", 0.25 + 1.2 * run)
    v[DOF["spine_bend"]] = 0.05 + 0.2 * run
    v[DOF["spine_twist"]] = -0.08 * s
    _flat_feet(v)
    return v


def pose_for(activity: str, phase: float, style: Style, rng: np.random.Generator | None = None):
    """Joint angles (NUM_DOF,) for an activity at a phase, in a person's style.

    ``rng`` is only used by ``random``; every other activity is a deterministic function of
    its arguments, which keeps video motion smooth.
    """
    v = base_pose()
    s = np.sin(phase)
    if activity == "stand":
        v[DOF["spine_twist"]] = 0.05 * s
    elif activity == "walk":
        v = gait(phase, 0.0)
    elif activity == "run":
        v = gait(phase, 1.0)
    elif activity == "sit":
        _both(v, "hip_flex", 1.5, 1.45)
        _both(v, "knee", 1.5, 1.35)
        _both(v, "hip_abd", 0.12)
        _both(v, "sho_flex", 0.45)
        _both(v, "elbow", 1.0)
        _flat_feet(v)
    elif activity == "crouch":
        _both(v, "hip_flex", 2.0, 1.9)
        _both(v, "knee", 2.3, 2.2)
        _both(v, "hip_abd", 0.3)
        v[DOF["spine_bend"]] = 0.55
        _both(v, "sho_flex", 0.9, 0.6)
        _both(v, "elbow", 0.8)
        _flat_feet(v)
    elif activity == "arms_up":
        _both(v, "sho_abd", 2.5 + 0.2 * s, 2.5 - 0.2 * s)
        _both(v, "sho_flex", 0.4)
        _both(v, "elbow", 0.25)
    elif activity == "wave":
        v[DOF["sho_abd_r"]] = 1.25
        v[DOF["sho_twist_r"]] = -1.0
        v[DOF["elbow_r"]] = 1.3 + 0.45 * s
        v[DOF["fingers_r"]] = 0.0
    elif activity == "bend":
        v[DOF["spine_bend"]] = 1.1 + 0.1 * s
        v[DOF["root_pitch"]] = 0.25
        _both(v, "sho_flex", 1.2, 1.4)
        _both(v, "hip_flex", -0.25)
        _both(v, "knee", 0.15)
        _flat_feet(v)
    elif activity == "lie":
        v[DOF["root_pitch"]] = -np.pi / 2
        _both(v, "sho_abd", 0.3 + 0.3 * abs(s), 0.6)
        _both(v, "elbow", 0.5)
        v[DOF["knee_l"]] = 0.8 * max(0.0, s)
        v[DOF["hip_flex_l"]] = 0.5 * max(0.0, s)
        v[DOF["neck_pitch"]] = -0.3
    elif activity == "random":
        if rng is None:
            raise ValueError("pose_for('random', ...) needs an rng to draw the pose from")
        lo, hi = DOF_LIMITS[:, 0], DOF_LIMITS[:, 1]
        t = rng.uniform(0.3, 1.0)
        v = v + t * (rng.uniform(lo, hi) - v)
        v[[DOF["root_pitch"], DOF["root_roll"]]] = rng.normal(0, 0.12, 2)
    else:
        raise ValueError(f"unknown activity {activity!r}; known: {', '.join(ACTIVITIES)}")

    v = v + style.offsets
    v[DOF["neck_yaw"]] += style.look[0]
    v[DOF["neck_pitch"]] += style.look[1]
    if activity != "wave":
        v[DOF["fingers_l"]], v[DOF["fingers_r"]] = style.fingers
    if activity == "run":
        v[[DOF["fingers_l"], DOF["fingers_r"]]] = 1.2
    if style.mirror:
        v = _mirror(v)
    return np.clip(v, DOF_LIMITS[:, 0], DOF_LIMITS[:, 1])


def gait_phase_rate(activity: str, stature: float) -> float:
    """Phase advance per metre travelled, radians/m: one cycle is two steps."""
    stride = (1.45 if activity == "walk" else 2.4) * stature / 1.75
    return 2 * np.pi / stride
