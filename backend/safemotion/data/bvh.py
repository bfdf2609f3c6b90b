"""BVH motion files: reader, writer, forward kinematics, resampling, and a builder from joint positions.

Conventions used throughout:
- Joints are kept in file order (depth first): joint 0 is the root (parent -1) and every parent precedes its children.
- Position channels hold the joint's local translation and *replace* its OFFSET (how Bandai files store every joint and
  how Blender's importer reads the root). Files whose root channels are relative to the OFFSET (iClone) are corrected by
  the caller (`mocap_import`).
- Rotation channels compose intrinsically in file order, in degrees: "Zrotation Xrotation Yrotation" is
  R = Rz @ Rx @ Ry, and a joint's world transform is parent_world @ [R | t].
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from safemotion.motion import rotations as rot
from safemotion.motion import skeleton

POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")
_CHANNEL_NAMES = {name.upper(): name for name in POSITION_CHANNELS + ROTATION_CHANNELS}
_FRAMES_RE = re.compile(r"^\s*Frames\s*:\s*(\S+)\s*$", re.IGNORECASE)
_FRAME_TIME_RE = re.compile(r"^\s*Frame\s+Time\s*:\s*(\S+)\s*$", re.IGNORECASE)


class BvhError(ValueError):
    """A malformed BVH file; the message starts with `path:line:`."""


@dataclass(eq=False)
class Bvh:
    """A BVH skeleton with its motion; `motion` holds the channel values [T, C] in file order (degrees, file units)."""

    names: list[str]
    parents: list[int]
    offsets: np.ndarray
    channels: list[tuple[str, ...]]
    frame_time: float
    motion: np.ndarray
    end_sites: dict[int, np.ndarray] = field(default_factory=dict)
    _starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.float64)
        self.motion = np.asarray(self.motion, dtype=np.float64)
        num = len(self.names)
        if not (len(self.parents) == len(self.channels) == num and self.offsets.shape == (num, 3)):
            raise ValueError(
                f"Bvh: {num} names, {len(self.parents)} parents, {len(self.channels)} channel lists and offsets of "
                f"shape {self.offsets.shape} disagree; all must describe the same joints"
            )
        if num == 0 or self.parents[0] != -1 or any(not 0 <= p < j for j, p in enumerate(self.parents) if j > 0):
            raise ValueError("Bvh: parents need one root (joint 0, parent -1) and every parent before its child")
        for j, chans in enumerate(self.channels):
            _rotation_order(chans, f"Bvh joint {self.names[j]!r}")
        widths = np.array([len(c) for c in self.channels])
        self._starts = np.concatenate([[0], np.cumsum(widths)])
        if self.motion.ndim != 2 or self.motion.shape[1] != self._starts[-1]:
            raise ValueError(f"Bvh: motion must be [T, {self._starts[-1]}] (sum of channels), got {self.motion.shape}")
        if not self.frame_time > 0:
            raise ValueError(f"Bvh: frame_time must be positive, got {self.frame_time}")
        self.end_sites = {int(j): np.asarray(o, dtype=np.float64) for j, o in self.end_sites.items()}

    @property
    def num_joints(self) -> int:
        """Number of joints (end sites excluded)."""
        return len(self.names)

    @property
    def num_frames(self) -> int:
        """Number of motion frames."""
        return self.motion.shape[0]

    @property
    def fps(self) -> float:
        """Frame rate, snapped to the nearest integer when Frame Time was rounded (0.016667 s -> 60 fps)."""
        fps = 1.0 / self.frame_time
        return float(round(fps)) if abs(fps - round(fps)) < 0.01 else fps

    def columns(self, joint: int) -> slice:
        """Columns of `motion` that hold one joint's channels."""
        return slice(int(self._starts[joint]), int(self._starts[joint + 1]))

    def rotation_order(self, joint: int) -> str:
        """Euler order of a joint's rotation channels, e.g. "ZXY" ("" when it has none)."""
        return _rotation_order(self.channels[joint], self.names[joint])

    def _channel_values(self, joint: int, kind: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
        """Values [T, k] of one joint's channels of one kind (positions or rotations) and their names, in file order."""
        cols = [i for i, c in enumerate(self.channels[joint]) if c in kind]
        return self.motion[:, self.columns(joint)][:, cols], [self.channels[joint][i] for i in cols]

    def local_rotation_matrices(self) -> np.ndarray:
        """Per-joint local rotations [T, J, 3, 3] (identity for joints without rotation channels)."""
        out = np.broadcast_to(np.eye(3), (self.num_frames, self.num_joints, 3, 3)).copy()
        for j in range(self.num_joints):
            order = self.rotation_order(j)
            if order:
                out[:, j] = rot.euler_to_matrix(self._channel_values(j, ROTATION_CHANNELS)[0], order)
        return out

    def local_rotations(self) -> np.ndarray:
        """Per-joint local rotations as unit quaternions (w, x, y, z) [T, J, 4], sign-continuous over time."""
        return rot.qcontinuous(rot.matrix_to_quat(self.local_rotation_matrices()))

    def local_translations(self) -> np.ndarray:
        """Per-joint local translations [T, J, 3]: the OFFSET, replaced by position channels where present."""
        out = np.broadcast_to(self.offsets, (self.num_frames, self.num_joints, 3)).copy()
        for j in range(self.num_joints):
            values, names = self._channel_values(j, POSITION_CHANNELS)
            for k, name in enumerate(names):
                out[:, j, POSITION_CHANNELS.index(name)] = values[:, k]
        return out

    def world_transforms(self) -> tuple[np.ndarray, np.ndarray]:
        """Forward kinematics: world rotations [T, J, 3, 3] and world positions [T, J, 3] in file units."""
        local_r, local_t = self.local_rotation_matrices(), self.local_translations()
        world_r, world_p = np.empty_like(local_r), np.empty_like(local_t)
        for j, p in enumerate(self.parents):
            if p < 0:
                world_r[:, j], world_p[:, j] = local_r[:, j], local_t[:, j]
            else:
                world_r[:, j] = world_r[:, p] @ local_r[:, j]
                world_p[:, j] = world_p[:, p] + np.einsum("tij,tj->ti", world_r[:, p], local_t[:, j])
        return world_r, world_p

    def world_positions(self, scale: float = 1.0, end_sites: bool = False) -> np.ndarray:
        """Joint positions [T, J, 3] (then end sites in joint order when `end_sites`), multiplied by `scale`."""
        world_r, world_p = self.world_transforms()
        if end_sites and self.end_sites:
            ends = [world_p[:, j] + world_r[:, j] @ offset for j, offset in sorted(self.end_sites.items())]
            world_p = np.concatenate([world_p, np.stack(ends, axis=1)], axis=1)
        return world_p * scale

    def scaled(self, factor: float) -> Bvh:
        """The same motion in other length units: offsets, end sites and position channels times `factor`."""
        motion = self.motion.copy()
        for j in range(self.num_joints):
            cols = [self.columns(j).start + i for i, c in enumerate(self.channels[j]) if c in POSITION_CHANNELS]
            motion[:, cols] *= factor
        return Bvh(
            names=list(self.names),
            parents=list(self.parents),
            offsets=self.offsets * factor,
            channels=list(self.channels),
            frame_time=self.frame_time,
            motion=motion,
            end_sites={j: o * factor for j, o in self.end_sites.items()},
        )

    def resample(self, fps: float) -> Bvh:
        """The motion at `fps` sampled by time: slerp of rotations, lerp of positions; grid frames kept exactly."""
        if not fps > 0 or self.num_frames == 0:
            raise ValueError(f"Bvh.resample: needs a positive fps (got {fps}) and at least one frame")
        last = self.num_frames - 1
        count = int(np.floor(last / self.fps * fps + 1e-6)) + 1
        source = np.arange(count) * (self.fps / fps)
        source = np.where(np.abs(source - np.round(source)) < 1e-9, np.round(source), source)
        i0 = np.minimum(np.floor(source).astype(int), last)
        i1 = np.minimum(i0 + 1, last)
        alpha = np.clip(source - i0, 0.0, 1.0)
        on_grid = alpha < 1e-9
        # Linear blend of every channel: exact for positions, and the reference the Euler angles are unwrapped toward.
        motion = self.motion[i0] + alpha[:, None] * (self.motion[i1] - self.motion[i0])
        quats = self.local_rotations()
        slerped = rot.qslerp(quats[i0], quats[i1], alpha[:, None])
        for j in range(self.num_joints):
            order = self.rotation_order(j)
            if not order:
                continue
            cols = [self.columns(j).start + i for i, c in enumerate(self.channels[j]) if c in ROTATION_CHANNELS]
            angles = rot.matrix_to_euler(rot.quat_to_matrix(slerped[:, j]), order)
            reference = motion[:, cols]
            angles = reference + (angles - reference + 180.0) % 360.0 - 180.0
            motion[:, cols] = np.where(on_grid[:, None], self.motion[i0][:, cols], angles)
        return Bvh(
            names=list(self.names),
            parents=list(self.parents),
            offsets=self.offsets.copy(),
            channels=list(self.channels),
            frame_time=1.0 / fps,
            motion=motion,
            end_sites={j: o.copy() for j, o in self.end_sites.items()},
        )


def _rotation_order(channels: tuple[str, ...], where: str) -> str:
    """Axis letters of the rotation channels ("" or three distinct axes); raises on partial position/rotation sets."""
    rotations = [c[0] for c in channels if c in ROTATION_CHANNELS]
    positions = [c[0] for c in channels if c in POSITION_CHANNELS]
    unknown = [c for c in channels if c not in ROTATION_CHANNELS + POSITION_CHANNELS]
    if unknown:
        raise ValueError(f"{where}: unknown channel(s) {unknown}; expected X/Y/Z position/rotation")
    for kind, axes in (("rotation", rotations), ("position", positions)):
        if axes and sorted(axes) != ["X", "Y", "Z"]:
            raise ValueError(f"{where}: {kind} channels {axes} must be none or all three axes once each")
    return "".join(rotations)


# --- reading --------------------------------------------------------------------------------------------------------


def _fail(path: Path, line: int, message: str) -> BvhError:
    return BvhError(f"{path}:{line}: {message}")


def _parse_hierarchy(path: Path, tokens: list[tuple[str, int]]) -> dict:
    """Skeleton fields (names, parents, offsets, channels, end_sites) from the tokens before MOTION."""
    if not tokens or tokens[0][0].upper() != "HIERARCHY":
        line = tokens[0][1] if tokens else 1
        raise _fail(path, line, "expected 'HIERARCHY' at the start of a BVH file")
    names: list[str] = []
    parents: list[int] = []
    offsets: list[np.ndarray | None] = []
    channels: list[tuple[str, ...]] = []
    end_sites: dict[int, np.ndarray] = {}
    stack: list[tuple[str, int, int]] = []  # ("joint"|"end", joint index, line of its '{')
    end_offset: np.ndarray | None = None
    i = 1

    def take(count: int, what: str) -> list[tuple[str, int]]:
        if i + count > len(tokens):
            raise _fail(path, tokens[-1][1], f"hierarchy ends inside {what}; the MOTION line came too early")
        return tokens[i : i + count]

    def numbers(items: list[tuple[str, int]], what: str) -> np.ndarray:
        try:
            values = np.array([float(t) for t, _ in items])
        except ValueError:
            raise _fail(path, items[0][1], f"{what} needs numbers, got {' '.join(t for t, _ in items)!r}") from None
        if not np.isfinite(values).all():
            raise _fail(path, items[0][1], f"{what} has a non-finite value: {' '.join(t for t, _ in items)}")
        return values

    while i < len(tokens):
        token, line = tokens[i]
        key = token.upper()
        if key in ("ROOT", "JOINT"):
            if key == "ROOT" and (stack or names):
                raise _fail(path, line, "a second ROOT; only one skeleton per file is supported")
            if key == "JOINT" and (not stack or stack[-1][0] != "joint"):
                raise _fail(path, line, "JOINT outside a joint block (or inside an End Site)")
            (name, _), (brace, brace_line) = take(3, f"{key} declaration")[1:]
            if brace != "{":
                raise _fail(path, brace_line, f"expected '{{' after {key} {name}, got {brace!r}")
            names.append(name)
            parents.append(stack[-1][1] if stack else -1)
            offsets.append(None)
            channels.append(())
            stack.append(("joint", len(names) - 1, line))
            i += 3
        elif key == "END":
            if not stack or stack[-1][0] != "joint":
                raise _fail(path, line, "End Site outside a joint block")
            (site, site_line), (brace, brace_line) = take(3, "End Site")[1:]
            if site.upper() != "SITE" or brace != "{":
                raise _fail(path, site_line, f"expected 'End Site {{', got 'End {site} {brace}'")
            if stack[-1][1] in end_sites:
                raise _fail(path, line, f"joint {names[stack[-1][1]]} has a second End Site")
            stack.append(("end", stack[-1][1], line))
            end_offset = None
            i += 3
        elif key == "OFFSET":
            if not stack:
                raise _fail(path, line, "OFFSET outside a joint block")
            values = numbers(take(4, "OFFSET")[1:], "OFFSET")
            kind, joint, _ = stack[-1]
            if kind == "end":
                end_offset = values
            else:
                offsets[joint] = values
            i += 4
        elif key == "CHANNELS":
            if not stack or stack[-1][0] != "joint":
                raise _fail(path, line, "CHANNELS outside a joint block")
            count_token = take(2, "CHANNELS")[1][0]
            if not count_token.isdigit():
                raise _fail(path, line, f"CHANNELS needs a count, got {count_token!r}")
            items = take(2 + int(count_token), f"CHANNELS {count_token}")[2:]
            chans = tuple(_CHANNEL_NAMES.get(t.upper(), t) for t, _ in items)
            joint = stack[-1][1]
            try:
                _rotation_order(chans, f"joint {names[joint]}")
            except ValueError as err:
                raise _fail(path, line, str(err)) from None
            channels[joint] = chans
            i += 2 + int(count_token)
        elif key == "}":
            if not stack:
                raise _fail(path, line, "unbalanced '}'")
            kind, joint, open_line = stack.pop()
            if kind == "end":
                if end_offset is None:
                    raise _fail(path, open_line, f"End Site of {names[joint]} has no OFFSET")
                end_sites[joint] = end_offset
            elif offsets[joint] is None:
                raise _fail(path, open_line, f"joint {names[joint]} has no OFFSET")
            i += 1
        else:
            raise _fail(path, line, f"unexpected {token!r} in the hierarchy")
    if stack:
        raise _fail(path, stack[-1][2], f"block of {names[stack[-1][1]]} is not closed before MOTION")
    if not names:
        raise _fail(path, tokens[-1][1], "the hierarchy declares no ROOT joint")
    return {"names": names, "parents": parents, "offsets": np.stack(offsets), "channels": channels,
            "end_sites": end_sites}


def _parse_header_value(path: Path, lines: list[str], index: int, pattern: re.Pattern, what: str) -> tuple[str, int]:
    """The value of the 'Frames:' / 'Frame Time:' line at or after `index` (skipping blank lines) and its index."""
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines):
        raise _fail(path, len(lines), f"file ends before the '{what}' line of the MOTION section")
    match = pattern.match(lines[index])
    if not match:
        raise _fail(path, index + 1, f"expected '{what} <value>', got {lines[index].strip()!r}")
    return match.group(1), index


def read_bvh(path: str | os.PathLike, extra_frames: str = "error") -> Bvh:
    """Read a BVH file (any channel order, position channels on any joint, end sites kept).

    extra_frames: what to do with frame lines beyond the count `Frames:` declares: "error", or "ignore" them (assimp's
    Boxing_Toes.bvh has one more line than it declares).
    """
    if extra_frames not in ("error", "ignore"):
        raise ValueError(f"read_bvh: extra_frames must be 'error' or 'ignore', got {extra_frames!r}")
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    tokens: list[tuple[str, int]] = []
    motion_index = None
    for index, line in enumerate(lines):
        words = line.split()
        if words and words[0].upper() == "MOTION":
            motion_index = index
            break
        tokens.extend((w, index + 1) for w in words)
    if motion_index is None:
        raise _fail(path, max(len(lines), 1), "no MOTION section after the hierarchy (truncated file or not a BVH)")
    hierarchy = _parse_hierarchy(path, tokens)

    frames_text, index = _parse_header_value(path, lines, motion_index + 1, _FRAMES_RE, "Frames:")
    if not frames_text.isdigit():
        raise _fail(path, index + 1, f"Frames: needs a whole number, got {frames_text!r}")
    frame_time_text, index = _parse_header_value(path, lines, index + 1, _FRAME_TIME_RE, "Frame Time:")
    try:
        frame_time = float(frame_time_text)
    except ValueError:
        frame_time = float("nan")
    if not frame_time > 0 or not np.isfinite(frame_time):
        raise _fail(path, index + 1, f"Frame Time must be a positive number of seconds, got {frame_time_text!r}")

    expected = int(frames_text)
    width = sum(len(c) for c in hierarchy["channels"])
    rows = [(n + 1, line.split()) for n, line in enumerate(lines[index + 1 :], start=index + 1) if line.strip()]
    if len(rows) < expected:
        raise _fail(path, len(lines), f"Frames: declares {expected} frames but only {len(rows)} follow (truncated)")
    if len(rows) > expected:
        if extra_frames == "error":
            raise _fail(path, rows[expected][0], f"more frame lines than the {expected} declared by 'Frames:'")
        rows = rows[:expected]
    for line_no, words in rows:
        if len(words) != width:
            raise _fail(
                path, line_no, f"frame has {len(words)} values but the CHANNELS declarations sum to {width} "
                "(truncated frame or channel count mismatch)"
            )
    try:
        motion = np.array([words for _, words in rows], dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        for line_no, words in rows:
            for column, word in enumerate(words):
                try:
                    float(word)
                except ValueError:
                    raise _fail(path, line_no, f"value {column + 1} is not a number: {word!r}") from None
        raise
    bad = ~np.isfinite(motion)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        joint = int(np.searchsorted(np.cumsum([len(c) for c in hierarchy["channels"]]), column, side="right"))
        raise _fail(
            path, rows[row][0], f"non-finite value {rows[row][1][column]!r} in column {column + 1} "
            f"(joint {hierarchy['names'][joint]})"
        )
    return Bvh(frame_time=frame_time, motion=motion, **hierarchy)


# --- writing --------------------------------------------------------------------------------------------------------


def _children(parents: list[int]) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in parents]
    for j, p in enumerate(parents):
        if p >= 0:
            kids[p].append(j)
    return kids


def write_bvh(bvh: Bvh, path: str | os.PathLike, precision: int = 6) -> None:
    """Write `bvh` to `path` atomically; joints are written depth first, so reading back may reorder them."""
    path = Path(path)
    for name in bvh.names:
        if not name or any(ch.isspace() or ch in "{}" for ch in name):
            raise ValueError(f"write_bvh: joint name {name!r} cannot be written (empty, whitespace or braces)")
    kids = _children(bvh.parents)
    lines = ["HIERARCHY"]
    order: list[int] = []

    def number(values: np.ndarray) -> str:
        return " ".join(f"{v:.{precision}f}" for v in values)

    def emit(joint: int, depth: int) -> None:
        pad = "\t" * depth
        order.append(joint)
        lines.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {bvh.names[joint]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}\tOFFSET {number(bvh.offsets[joint])}")
        chans = bvh.channels[joint]
        if chans:
            lines.append(f"{pad}\tCHANNELS {len(chans)} {' '.join(chans)}")
        for child in kids[joint]:
            emit(child, depth + 1)
        if joint in bvh.end_sites:
            end_offset = number(bvh.end_sites[joint])
            lines.extend([f"{pad}\tEnd Site", f"{pad}\t{{", f"{pad}\t\tOFFSET {end_offset}", f"{pad}\t}}"])
        lines.append(f"{pad}}}")

    emit(0, 0)
    lines += ["MOTION", f"Frames: {bvh.num_frames}", f"Frame Time: {bvh.frame_time:.8g}"]
    columns = np.concatenate([np.arange(bvh.columns(j).start, bvh.columns(j).stop) for j in order]).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write("\n".join(lines) + "\n")
            if columns.size:
                np.savetxt(handle, bvh.motion[:, columns], fmt=f"%.{precision}f", delimiter=" ")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- building from joint positions ----------------------------------------------------------------------------------


def _best_rotations(rest: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotations [T, 3, 3] that best map rest directions [K, 3] onto current directions [T, K, 3] (Kabsch)."""
    cov = np.einsum("ki,tkj->tij", rest, current)
    u, _, vt = np.linalg.svd(cov)
    v = np.swapaxes(vt, -1, -2)
    fix = np.ones(u.shape[:-1])
    fix[:, -1] = np.sign(np.linalg.det(v @ np.swapaxes(u, -1, -2)))
    return (v * fix[:, None, :]) @ np.swapaxes(u, -1, -2)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def bvh_from_joints(
    joints: np.ndarray,
    parents: tuple[int, ...] | list[int],
    names: tuple[str, ...] | list[str],
    fps: float,
    rest_pose: np.ndarray | None = None,
    rotation_order: str = "ZYX",
    joint_translations: bool = False,
) -> Bvh:
    """A BVH whose forward kinematics reproduces `joints` [T, J, 3] through per-bone rotations.

    Bones get their mean length and the directions of `rest_pose` [J, 3] (default: frame 0), so the zero-rotation pose
    is the rest pose. Rotations swing each bone onto its target; joints with several children use the best-fit
    (Kabsch) rotation of all child bones. The result is exact when bone lengths are constant and sibling bones move
    rigidly (true for any FK motion); `joint_translations=True` adds position channels to every joint, making it
    exact for any input (e.g. model output with stretching bones). The root OFFSET is zero and its position channels
    are absolute, which every BVH reader interprets the same way.
    """
    joints = np.asarray(joints, dtype=np.float64)
    parents = [int(p) for p in parents]
    if joints.ndim != 3 or joints.shape[2] != 3 or joints.shape[1] != len(parents) or len(names) != len(parents):
        raise ValueError(
            f"bvh_from_joints: joints {joints.shape}, {len(parents)} parents and {len(names)} names disagree; "
            "expected joints [T, J, 3] with J parents and J names"
        )
    if not np.isfinite(joints).all():
        raise ValueError("bvh_from_joints: joints contain NaN or infinite values")
    if parents[0] != -1 or any(not 0 <= p < j for j, p in enumerate(parents) if j > 0):
        raise ValueError("bvh_from_joints: parents must have the root at index 0 and every parent before its child")
    rest = joints[0] if rest_pose is None else np.asarray(rest_pose, dtype=np.float64)
    if rest.shape != joints.shape[1:]:
        raise ValueError(f"bvh_from_joints: rest_pose must be [{joints.shape[1]}, 3], got {rest.shape}")
    num_frames, num_joints = joints.shape[:2]
    kids = _children(parents)

    bones = np.zeros_like(joints)
    rest_dirs = np.zeros((num_joints, 3))
    lengths = np.zeros(num_joints)
    for j, p in enumerate(parents[1:], start=1):
        bones[:, j] = joints[:, j] - joints[:, p]
        lengths[j] = np.linalg.norm(bones[:, j], axis=-1).mean()
        rest_len = np.linalg.norm(rest[j] - rest[p])
        if lengths[j] > 1e-9 and rest_len < 1e-9:
            raise ValueError(f"bvh_from_joints: bone {names[p]} -> {names[j]} has zero length in rest_pose")
        rest_dirs[j] = (rest[j] - rest[p]) / max(rest_len, 1e-12)
    offsets = rest_dirs * lengths[:, None]

    world = np.empty((num_frames, num_joints, 3, 3))
    for j, p in enumerate(parents):
        parent_world = np.broadcast_to(np.eye(3), (num_frames, 3, 3)) if p < 0 else world[:, p]
        usable = [c for c in kids[j] if lengths[c] > 1e-9]
        if len(usable) >= 2:
            world[:, j] = _best_rotations(rest_dirs[usable], _unit(bones[:, usable]))
        elif len(usable) == 1:
            c = usable[0]
            swing = rot.quat_to_matrix(rot.qbetween(parent_world @ rest_dirs[c], bones[:, c]))
            world[:, j] = swing @ parent_world
        else:
            world[:, j] = parent_world

    parent_world = np.concatenate([np.broadcast_to(np.eye(3), (num_frames, 1, 3, 3)), world[:, parents[1:]]], axis=1)
    local = np.swapaxes(parent_world, -1, -2) @ world
    angles = np.unwrap(rot.matrix_to_euler(local, rotation_order), period=360.0, axis=0)
    rot_channels = tuple(f"{axis}rotation" for axis in rotation_order)

    channels, columns = [], []
    for j, p in enumerate(parents):
        if p < 0 or joint_translations:
            channels.append(POSITION_CHANNELS + rot_channels)
            translation = joints[:, 0] if p < 0 else np.einsum("tji,tj->ti", world[:, p], bones[:, j])
            columns += [translation, angles[:, j]]
        else:
            channels.append(rot_channels)
            columns.append(angles[:, j])
    offsets[0] = 0.0
    # Leaves get an End Site continuing their bone by half its length, so viewers draw the last bone.
    end_sites = {j: 0.5 * offsets[j] for j in range(num_joints) if not kids[j]}
    return Bvh(
        names=list(names),
        parents=parents,
        offsets=offsets,
        channels=channels,
        frame_time=1.0 / fps,
        motion=np.concatenate(columns, axis=1),
        end_sites=end_sites,
    )


def bvh_from_smpl_joints(joints: np.ndarray, fps: float = 20.0, joint_translations: bool = False) -> Bvh:
    """A BVH on the SMPL-22 skeleton (HumanML3D names, parents and axis-aligned rest pose) from joints [T, 22, 3]."""
    return bvh_from_joints(
        joints,
        skeleton.SMPL22_PARENTS,
        skeleton.SMPL22_NAMES,
        fps,
        rest_pose=skeleton.rest_joints(),
        joint_translations=joint_translations,
    )
