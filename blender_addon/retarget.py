"""Retargeting SMPL motion onto other rigs, in numpy (no bpy): bone-name presets, auto-detection, the transfer math.

Mapping: role -> target bone name, where a role is an SMPL-24 joint name or "root" (a separate ground bone such as
UE's `root` or Rigify's `root`). Presets list candidate bone names per role; a rig's own prefix (`mixamorig:`,
`mixamorig7:`, `Neo_`, `m_avg_` ...) is detected from the names and kept.

Transfer (rest-relative, in world space; Blender axes, Z-up): the source gives every SMPL joint's world rotation
relative to its rest frame, D_j(t). Each mapped target bone b first gets a rest offset O_j that turns the target's rest
pose into the source's (A-pose arms swing up into the T-pose, the pelvis frame turns to face the source's way), then
the source delta on top:  world_pose_b(t) = D_j(t) · O_j · world_rest_b.  So every mapped bone points where the source
bone points, whatever the target's rest pose and bone rolls. O_j is built down the SMPL chain: the parent's offset,
then the shortest swing of the bone direction (bone head to the head of the bone mapped to the SMPL child joint) onto
the source's rest direction, so twist is inherited consistently along limbs.

Root motion: the pelvis travel is scaled by the ratio of hip heights (pelvis joint above the lowest rest foot joint,
both measured on joints: bone heads, never tails) and added to the target hips' rest position. With a mapped root
bone, the root takes the ground travel and the pelvis heading (yaw) and the hips keep the rest. In place removes the
travel (a local straight-line fit over about a second) and keeps the sway around it. A rig that does not stand along
+Z in world space (built lying down) is refused before anything is computed.

World pose rotations become pose-bone local values parents-first: basis = (P_pose · P_rest⁻¹ · C_rest)⁻¹ · C_pose in
armature space (inherit rotation on, no constraints); unmapped bones keep their rest pose. Quaternions are made sign-
continuous over time. Those values are only the start of the solve on the evaluated rig (armature.solve_evaluated):
the armature-space frame each mapped bone must reach is kept in `RetargetResult.targets`, and `correct_bases` moves
the bases until Blender's evaluated pose (constraints, drivers, IK/FK switches) reaches them, so root motion that a
control inherits through constraints is applied once. Control rigs whose controls are not shaped like the body
(generated Rigify) take the rest geometry from their deform bones (`reference_mapping`).

Mapping helpers for the editor: `fill_mapping` (a preset, AUTO or the name matcher), `fuzzy_mapping` (body-part words
in several languages, side markers, rig prefixes), `mapping_problems` / `missing_roles` (what to tell the user),
`set_mapping_bone`, `save_mapping` / `load_mapping`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import smpl_math
from .smpl_math import JOINT_NAMES, PARENTS

ROOT = "root"
ROLES: tuple[str, ...] = JOINT_NAMES + (ROOT,)

# Joint whose rest offset defines each SMPL joint's bone direction (joints missing here are leaves).
DIRECTION_CHILD: dict[int, int] = {
    0: 3, 1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 9, 7: 10, 8: 11, 9: 12, 12: 15,
    13: 16, 14: 17, 16: 18, 17: 19, 18: 20, 19: 21, 20: 22, 21: 23,
}

_LEFT = {"side": "left", "Side": "Left", "S": "L", "s": "l"}
_RIGHT = {"side": "right", "Side": "Right", "S": "R", "s": "r"}

# Per preset: role (with {side} for left/right pairs) -> candidate bone names without prefix, first match wins.
_PRESET_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "smpl": {
        "pelvis": ("pelvis",), "spine1": ("spine1",), "spine2": ("spine2",), "spine3": ("spine3",),
        "neck": ("neck",), "head": ("head",),
        "{side}_hip": ("{side}_hip", "{S}_Hip"), "{side}_knee": ("{side}_knee", "{S}_Knee"),
        "{side}_ankle": ("{side}_ankle", "{S}_Ankle"), "{side}_foot": ("{side}_foot", "{S}_Foot"),
        "{side}_collar": ("{side}_collar", "{S}_Collar"), "{side}_shoulder": ("{side}_shoulder", "{S}_Shoulder"),
        "{side}_elbow": ("{side}_elbow", "{S}_Elbow"), "{side}_wrist": ("{side}_wrist", "{S}_Wrist"),
        "{side}_hand": ("{side}_hand", "{S}_Hand"),
    },
    "mixamo": {
        "pelvis": ("Hips",), "spine1": ("Spine",), "spine2": ("Spine1",), "spine3": ("Spine2",),
        "neck": ("Neck",), "head": ("Head",),
        "{side}_hip": ("{Side}UpLeg",), "{side}_knee": ("{Side}Leg",),
        "{side}_ankle": ("{Side}Foot",), "{side}_foot": ("{Side}ToeBase",),
        "{side}_collar": ("{Side}Shoulder",), "{side}_shoulder": ("{Side}Arm",),
        "{side}_elbow": ("{Side}ForeArm",), "{side}_wrist": ("{Side}Hand",),
    },
    # Rigify FK controls (the rig's FK/IK switches must be on FK); older rigs spell them upper_arm.fk.L.
    "rigify": {
        ROOT: ("root",), "pelvis": ("torso",),
        "spine1": ("spine_fk.001",), "spine2": ("spine_fk.002",), "spine3": ("spine_fk.003", "chest"),
        "neck": ("neck",), "head": ("head",),
        "{side}_hip": ("thigh_fk.{S}", "thigh.fk.{S}"), "{side}_knee": ("shin_fk.{S}", "shin.fk.{S}"),
        "{side}_ankle": ("foot_fk.{S}", "foot.fk.{S}"), "{side}_foot": ("toe_fk.{S}", "toe.{S}"),
        "{side}_collar": ("shoulder.{S}",), "{side}_shoulder": ("upper_arm_fk.{S}", "upper_arm.fk.{S}"),
        "{side}_elbow": ("forearm_fk.{S}", "forearm.fk.{S}"), "{side}_wrist": ("hand_fk.{S}", "hand.fk.{S}"),
    },
    # Rigify deform bones: the spine.NNN chain of current rigs, or DEF-hips/spine/chest/neck/head of older ones.
    "rigify_def": {
        ROOT: ("root",), "pelvis": ("DEF-hips", "DEF-spine"),
        "spine1": ("DEF-spine.001", "DEF-spine"), "spine2": ("DEF-spine.002",),
        "spine3": ("DEF-spine.003", "DEF-chest"),
        "neck": ("DEF-spine.004", "DEF-neck"), "head": ("DEF-spine.006", "DEF-head"),
        "{side}_hip": ("DEF-thigh.{S}", "DEF-thigh.01.{S}"), "{side}_knee": ("DEF-shin.{S}", "DEF-shin.01.{S}"),
        "{side}_ankle": ("DEF-foot.{S}",), "{side}_foot": ("DEF-toe.{S}",),
        "{side}_collar": ("DEF-shoulder.{S}",), "{side}_shoulder": ("DEF-upper_arm.{S}", "DEF-upper_arm.01.{S}"),
        "{side}_elbow": ("DEF-forearm.{S}", "DEF-forearm.01.{S}"), "{side}_wrist": ("DEF-hand.{S}",),
    },
    # UE5 Manny/Quinn: five spine bones, of which 02/04/05 carry SMPL's three.
    "ue5": {
        ROOT: ("root",), "pelvis": ("pelvis",),
        "spine1": ("spine_02",), "spine2": ("spine_04",), "spine3": ("spine_05",),
        "neck": ("neck_01",), "head": ("head",),
        "{side}_hip": ("thigh_{s}",), "{side}_knee": ("calf_{s}",), "{side}_ankle": ("foot_{s}",),
        "{side}_foot": ("ball_{s}",), "{side}_collar": ("clavicle_{s}",), "{side}_shoulder": ("upperarm_{s}",),
        "{side}_elbow": ("lowerarm_{s}",), "{side}_wrist": ("hand_{s}",),
    },
}


def _expand(templates: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Role -> candidates with {side} placeholders written out for the left and right side, in SMPL joint order."""
    table: dict[str, tuple[str, ...]] = {}
    for role, candidates in templates.items():
        sides = (_LEFT, _RIGHT) if "{" in role else ({},)
        for tokens in sides:
            table[role.format(**tokens)] = tuple(c.format(**tokens) for c in candidates)
    return {role: table[role] for role in ROLES if role in table}


PRESETS: dict[str, dict[str, tuple[str, ...]]] = {name: _expand(t) for name, t in _PRESET_TEMPLATES.items()}
# A preset is detected when at least this fraction of its roles (and the pelvis) match.
MIN_PRESET_MATCH = 0.5


# --- presets, detection, mapping editing ----------------------------------------------------------------------------


def detect_prefix(preset: str, bone_names: Iterable[str]) -> str:
    """The bone-name prefix (e.g. "mixamorig7:", "Neo_", "") under which the most roles of `preset` match."""
    table = _preset_table(preset)
    names = list(bone_names)
    roles_by_prefix: dict[str, set[str]] = {}
    for role, candidates in table.items():
        for candidate in candidates:
            c = candidate.lower()
            for name in names:
                if name.lower().endswith(c):
                    roles_by_prefix.setdefault(name[: len(name) - len(c)], set()).add(role)
    if not roles_by_prefix:
        return ""
    return max(roles_by_prefix, key=lambda p: (len(roles_by_prefix[p]), -len(p)))


def preset_mapping(preset: str, bone_names: Iterable[str]) -> dict[str, str]:
    """Role -> bone mapping of `preset` on these bones (prefix detected, names matched without regard to case)."""
    table = _preset_table(preset)
    bone_names = list(bone_names)
    prefix = detect_prefix(preset, bone_names).lower()
    by_lower = {name.lower(): name for name in bone_names}
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for role, candidates in table.items():
        for candidate in candidates:
            bone = by_lower.get(prefix + candidate.lower()) or by_lower.get(candidate.lower())
            if bone is not None and bone not in used:
                mapping[role] = bone
                used.add(bone)
                break
    return mapping


def chosen_preset_mapping(preset: str, bone_names: Iterable[str]) -> dict[str, str]:
    """Role -> bone mapping of a preset the user picked; ValueError when it does not fit these bones (no pelvis, or
    fewer of its bones found than auto-detection requires), naming the preset that fits if one does."""
    names = list(bone_names)
    mapping = preset_mapping(preset, names)
    validate_mapping(mapping, names)
    needed = MIN_PRESET_MATCH * len(_preset_table(preset))
    if len(mapping) < needed:
        best = detect_preset(names)
        hint = f"choose {best!r} (or Auto-detect)" if best else "map the bones by hand"
        raise ValueError(
            f"the {preset!r} bone-name preset finds only {len(mapping)} of its {len(PRESETS[preset])} bones in this "
            f"armature ({', '.join(mapping.values())}): it does not fit this rig; {hint}"
        )
    return mapping


def detect_preset(bone_names: Iterable[str]) -> str | None:
    """The preset whose names match these bones best, or None when none matches well enough."""
    bone_names = list(bone_names)
    best, best_score = None, 0.0
    for preset, table in PRESETS.items():
        mapping = preset_mapping(preset, bone_names)
        score = len(mapping) / len(table) if "pelvis" in mapping else 0.0
        if score > best_score:
            best, best_score = preset, score
    return best if best_score >= MIN_PRESET_MATCH else None


def auto_mapping(bone_names: Iterable[str]) -> tuple[str, dict[str, str]]:
    """Detected preset name (or "fuzzy") and its role -> bone mapping; raises ValueError when neither fits."""
    bone_names = list(bone_names)
    preset = detect_preset(bone_names)
    if preset is not None:
        return preset, preset_mapping(preset, bone_names)
    mapping = fuzzy_mapping(bone_names)
    body = [role for role in mapping if role != ROOT]
    if "pelvis" in mapping and len(body) >= MIN_PRESET_MATCH * len(BODY_ROLES):
        return FUZZY, mapping
    sample = ", ".join(bone_names[:8])
    raise ValueError(
        f"no retarget preset ({', '.join(PRESETS)}) matches this armature's bones ({sample}, ...) and the name "
        f"matcher recognises only {len(body)} of {len(BODY_ROLES)} body joints: map the bones by hand"
    )


def fill_mapping(source: str, bone_names: Iterable[str]) -> dict[str, str]:
    """Role -> bone mapping for the editor's auto-fill: a preset name, "AUTO" (best preset, else the name matcher)
    or "FUZZY" (the name matcher alone). Roles without a matching bone are left out."""
    bone_names = list(bone_names)
    if source == "AUTO":
        preset = detect_preset(bone_names)
        return preset_mapping(preset, bone_names) if preset else fuzzy_mapping(bone_names)
    if source.upper() == "FUZZY":
        return fuzzy_mapping(bone_names)
    return preset_mapping(source, bone_names)


# --- the name matcher -------------------------------------------------------------------------------------------------

FUZZY = "fuzzy"
BODY_ROLES: tuple[str, ...] = JOINT_NAMES[:22]  # the joints a HumanML3D motion drives (no hand ends)
# Prefixes that exporters and rigging tools put before every bone name (matched case-insensitively, then removed).
_NAME_PREFIXES = re.compile(
    r"^(?:.*[:|])?(?:mixamorig\d*_?|def[-_]|org[-_]|cc_base_|bip0*1[ _]?|b_|bn_|j_bip_[clr]_|bone_|jnt_|sk_|rig_)?",
    re.IGNORECASE,
)
# Side markers: whole words after splitting, in English, German, French, Spanish and Italian, and single letters.
_SIDE_WORDS = {
    "left": "left", "l": "left", "links": "left", "linke": "left", "linker": "left", "linkes": "left",
    "gauche": "left", "izquierda": "left", "izquierdo": "left", "izq": "left", "sinistra": "left", "sinistro": "left",
    "right": "right", "r": "right", "rechts": "right", "rechte": "right", "rechter": "right", "rechtes": "right",
    "droite": "right", "droit": "right", "derecha": "right", "derecho": "right", "destra": "right",
    "destro": "right",
}
# Body-part words per side-less role, as the name's words joined without digits (accents dropped, ß -> ss).
_ROLE_WORDS: dict[str, tuple[str, ...]] = {
    "pelvis": ("hips", "hip", "pelvis", "becken", "hufte", "bassin", "hanche", "cadera", "caderas", "bacino"),
    "spine": ("spine", "chest", "upperchest", "torso", "abdomen", "wirbelsaule", "rucken", "brust", "colonne",
              "poitrine", "torse", "columna", "pecho", "spina", "petto", "tronco"),
    "neck": ("neck", "hals", "nacken", "cou", "cuello", "collo"),
    "head": ("head", "kopf", "tete", "cabeza", "testa"),
    "thigh": ("thigh", "upleg", "upperleg", "legupper", "femur", "oberschenkel", "cuisse", "muslo", "coscia"),
    "knee": ("calf", "shin", "leg", "lowerleg", "leglower", "knee", "unterschenkel", "schienbein", "knie", "bein",
             "jambe", "genou", "pierna", "rodilla", "gamba", "ginocchio"),
    "ankle": ("foot", "ankle", "fuss", "knochel", "pied", "cheville", "pie", "tobillo", "piede", "caviglia"),
    "foot": ("toe", "toes", "toebase", "ball", "zeh", "zehe", "zehen", "ballen", "orteil", "orteils", "dedos",
             "punta", "dita"),
    "collar": ("clavicle", "collar", "collarbone", "shoulder", "schlusselbein", "schulter", "clavicule", "epaule",
               "clavicula", "hombro", "clavicola", "spalla"),
    "shoulder": ("upperarm", "arm", "armupper", "humerus", "oberarm", "bras", "brazo", "braccio"),
    "elbow": ("forearm", "lowerarm", "armlower", "elbow", "unterarm", "ellbogen", "ellenbogen", "avantbras",
              "coude", "antebrazo", "codo", "avambraccio", "gomito"),
    "wrist": ("hand", "wrist", "handgelenk", "main", "poignet", "mano", "muneca", "polso"),
}
_SIDED_ROLES = {"thigh": "hip", "knee": "knee", "ankle": "ankle", "foot": "foot", "collar": "collar",
                "shoulder": "shoulder", "elbow": "elbow", "wrist": "wrist"}
_SPINE_ROLES = ("spine1", "spine2", "spine3")


def _words(name: str) -> tuple[list[str], str | None]:
    """Lower-case ASCII words of a bone name without its rig prefix, and the side they name (None: centre)."""
    text = unicodedata.normalize("NFKD", name.replace("ß", "ss"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _NAME_PREFIXES.sub("", text)
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", text)  # CamelCase -> words
    words = [w for w in re.split(r"[^A-Za-z0-9]+", text.lower()) if w]
    side = None
    kept = []
    for k, word in enumerate(words):
        named = _SIDE_WORDS.get(word)
        # Single letters count as a side only at either end of the name (".L", "L_", "_l").
        if named and (len(word) > 1 or k in (0, len(words) - 1)):
            side = side or named
        else:
            kept.append(word)
    return kept, side


def _role_of(words: list[str]) -> str | None:
    """The side-less body part (a key of _ROLE_WORDS) these words name, digits ignored."""
    joined = "".join(re.sub(r"\d+", "", word) for word in words)
    return next((part for part, aliases in _ROLE_WORDS.items() if joined in aliases), None)


def fuzzy_mapping(bone_names: Iterable[str]) -> dict[str, str]:
    """Role -> bone by body-part words in the names (English, German, French, Spanish, Italian; side markers such as
    .L, _l, Left, links; rig prefixes dropped); the first bone per role wins. Spine bones keep the armature's
    order (parents before children, as Blender lists them)."""
    mapping: dict[str, str] = {}
    hips: dict[str, str] = {}  # side -> a sided "hip"/"pelvis" bone: the hip joint only if no thigh bone is named
    spine: list[str] = []
    for name in bone_names:
        words, side = _words(name)
        part = _role_of(words)
        if part is None:
            continue
        if side is not None and part == "pelvis":
            hips.setdefault(side, name)
        elif side is not None and part in _SIDED_ROLES:
            mapping.setdefault(f"{side}_{_SIDED_ROLES[part]}", name)
        elif side is None and part == "spine":
            spine.append(name)
        elif side is None and part in ("pelvis", "neck", "head"):
            mapping.setdefault(part, name)
    for side, name in hips.items():
        mapping.setdefault(f"{side}_hip", name)
    names = spine
    if len(names) > 3:  # first, middle, last: SMPL's three spine joints over however many the rig has
        names = [names[0], names[len(names) // 2], names[-1]]
    for role, name in zip(_SPINE_ROLES if len(names) != 2 else ("spine1", "spine3"), names):
        mapping[role] = name
    return {role: mapping[role] for role in ROLES if role in mapping}


def mapping_problems(mapping: Mapping[str, str], bone_names: Iterable[str]) -> list[str]:
    """Every reason a mapping cannot drive these bones, one sentence each (empty when it can): unknown roles, bones
    not in the armature, a bone chosen for several joints, no pelvis."""
    names = set(bone_names)
    problems = [f"unknown joint {role!r} (expected an SMPL joint name or {ROOT!r})" for role in mapping
                if role not in ROLES]
    absent = [f"{bone!r} ({role})" for role, bone in mapping.items() if bone not in names]
    if absent:
        more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
        problems.append(f"the armature has no bone{'s' if len(absent) > 1 else ''} {', '.join(absent[:3])}{more}")
    roles_of: dict[str, list[str]] = {}
    for role, bone in mapping.items():
        roles_of.setdefault(bone, []).append(role)
    problems += [f"bone {bone!r} is chosen for {len(roles)} joints ({', '.join(roles)}): pick one"
                 for bone, roles in roles_of.items() if len(roles) > 1]
    if "pelvis" not in mapping:
        problems.append("no bone is mapped to 'pelvis' (the hips): choose one")
    return problems


def missing_roles(mapping: Mapping[str, str]) -> list[str]:
    """The body joints (SMPL-22) that no bone follows; they are allowed, but those limbs keep their rest pose."""
    return [role for role in BODY_ROLES if role not in mapping]


def validate_mapping(mapping: Mapping[str, str], bone_names: Iterable[str]) -> None:
    """Raise ValueError listing every problem of `mapping_problems`."""
    problems = mapping_problems(mapping, bone_names)
    if problems:
        raise ValueError("retarget mapping: " + "; ".join(problems))


def set_mapping_bone(mapping: Mapping[str, str], role: str, bone: str | None) -> dict[str, str]:
    """A copy of `mapping` with `role` driving `bone` (None clears it); the bone leaves any other role."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    updated = {r: b for r, b in mapping.items() if r != role and b != bone}
    if bone:
        updated[role] = bone
    return updated


def save_mapping(path: str | os.PathLike, mapping: Mapping[str, str]) -> None:
    """Write a mapping as a JSON object role -> bone (atomically)."""
    path = Path(path)
    unknown = sorted(set(mapping) - set(ROLES))
    if unknown:
        raise ValueError(f"{path}: refusing to save unknown roles {unknown}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({role: mapping[role] for role in ROLES if role in mapping}, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_mapping(path: str | os.PathLike) -> dict[str, str]:
    """Read a mapping saved by `save_mapping`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{path}: expected a JSON object mapping role names to bone names")
    unknown = sorted(set(data) - set(ROLES))
    if unknown:
        raise ValueError(f"{path}: unknown roles {unknown}; expected SMPL joint names or {ROOT!r}")
    return data


# Controls of a generated Rigify rig that turn with a role's bone without being mapped to it: `spine_fk`, the FK bone
# below the torso's pivot, carries the pelvis deform bone (DEF-spine) and must turn with the pelvis.
RIGIFY_FOLLOWERS = {"spine_fk": "pelvis"}


def follower_bones(mapping: Mapping[str, str], bone_names: Iterable[str]) -> dict[str, str]:
    """Bone -> role of the controls that must turn with a mapped role's bone (see RIGIFY_FOLLOWERS), else {}."""
    names = list(bone_names)
    if not reference_mapping(mapping, names):
        return {}
    return {bone: role for bone, role in RIGIFY_FOLLOWERS.items()
            if bone in names and role in mapping and bone not in mapping.values()}


def reference_mapping(mapping: Mapping[str, str], bone_names: Iterable[str]) -> dict[str, str]:
    """Role -> deform bone standing for the skeleton where `mapping` drives a generated Rigify rig's controls (their
    rest geometry is not the body's: the torso control lies flat), else {}."""
    names = list(bone_names)
    controls = preset_mapping("rigify", names)
    deform = preset_mapping("rigify_def", names)
    if len(controls) < MIN_PRESET_MATCH * len(PRESETS["rigify"]) or "pelvis" not in deform:
        return {}
    return {role: deform[role] for role, bone in mapping.items()
            if role != ROOT and role in deform and controls.get(role) == bone}


def _preset_table(preset: str) -> dict[str, tuple[str, ...]]:
    """Role -> candidates of a preset, raising on an unknown preset name."""
    if preset not in PRESETS:
        raise ValueError(f"unknown retarget preset {preset!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[preset]


# --- source and target descriptions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceMotion:
    """SMPL motion in Blender world axes (Z-up): rest joints, per-joint world rotations from rest, pelvis path."""

    rest_joints: np.ndarray  # [24, 3] rest joint positions
    rotations: np.ndarray  # [T, 24, 3, 3] world rotation of each joint relative to its rest frame
    pelvis: np.ndarray  # [T, 3] pelvis position
    fps: float = 20.0

    def __post_init__(self) -> None:
        frames = self.rotations.shape[0]
        if self.rest_joints.shape != (24, 3):
            raise ValueError(f"SourceMotion.rest_joints: expected [24, 3], got {self.rest_joints.shape}")
        if self.rotations.shape != (frames, 24, 3, 3) or frames == 0:
            raise ValueError(f"SourceMotion.rotations: expected [T>0, 24, 3, 3], got {self.rotations.shape}")
        if self.pelvis.shape != (frames, 3):
            raise ValueError(f"SourceMotion.pelvis: expected [{frames}, 3], got {self.pelvis.shape}")
        if not self.fps > 0:
            raise ValueError(f"SourceMotion.fps: expected a positive frame rate, got {self.fps}")


def source_from_smpl(
    pose: np.ndarray, transl: np.ndarray, rest_joints_yup: np.ndarray, fps: float = 20.0
) -> SourceMotion:
    """SourceMotion (Blender axes) from an SMPL motion in the backend's Y-up axes."""
    joints, world = smpl_math.forward_kinematics(pose, transl, rest_joints_yup)
    return SourceMotion(
        rest_joints=smpl_math.points_to_z_up(rest_joints_yup),
        rotations=smpl_math.rotations_to_z_up(world),
        pelvis=smpl_math.points_to_z_up(joints[:, 0]),
        fps=float(fps),
    )


@dataclass(frozen=True)
class TargetRig:
    """A target armature at rest: bone names, parents, rest matrices and tails in armature space, object matrix."""

    names: tuple[str, ...]
    parents: tuple[int, ...]  # parent index per bone, -1 for none
    rest: np.ndarray  # [B, 4, 4] Bone.matrix_local (rigid)
    tails: np.ndarray  # [B, 3] Bone.tail_local
    world: np.ndarray = field(default_factory=lambda: np.eye(4))  # Object.matrix_world (rotation, uniform scale)

    def __post_init__(self) -> None:
        count = len(self.names)
        if len(self.parents) != count or self.rest.shape != (count, 4, 4) or self.tails.shape != (count, 3):
            raise ValueError(
                f"TargetRig: {count} names need {count} parents, rest [{count}, 4, 4] and tails [{count}, 3]; got "
                f"{len(self.parents)}, {self.rest.shape}, {self.tails.shape}"
            )
        if self.world.shape != (4, 4):
            raise ValueError(f"TargetRig.world: expected a 4x4 matrix, got {self.world.shape}")
        for b, p in enumerate(self.parents):
            if not -1 <= p < count or p == b:
                raise ValueError(f"TargetRig: bone {self.names[b]!r} has an invalid parent index {p}")

    def order(self) -> list[int]:
        """Bone indices with every parent before its children."""
        depth = [0] * len(self.names)
        for b in range(len(self.names)):
            p, steps = self.parents[b], 0
            while p >= 0:
                steps += 1
                if steps > len(self.names):
                    raise ValueError(f"TargetRig: bone {self.names[b]!r} is part of a parent cycle")
                p = self.parents[p]
            depth[b] = steps
        return sorted(range(len(self.names)), key=lambda b: depth[b])


@dataclass(frozen=True)
class RetargetOptions:
    """How root motion is transferred."""

    scale_root_motion: bool = True  # scale the pelvis travel by target / source hip height
    in_place: bool = False  # remove horizontal travel, keep the sway around it
    in_place_window: float = 1.0  # seconds of the local line fit that defines the travel
    use_root_bone: bool = True  # put ground travel and heading on the mapped root bone


@dataclass(frozen=True)
class RetargetResult:
    """Pose-bone channels per frame: rotation_quaternion (w, x, y, z) of mapped bones, location of hips/root; and the
    armature-space frame [T, 4, 4] each mapped bone is meant to reach once evaluated (the solver's goal)."""

    rotations: dict[str, np.ndarray]  # bone -> [T, 4]
    locations: dict[str, np.ndarray]  # bone -> [T, 3]
    scale: float  # root-motion scale that was applied
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # bone -> [T, 4, 4] Bone pose matrix to reach
    # bone -> the nearest driven bone above it in the rig's hierarchy (None: none); parents listed first
    ancestors: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class RigFit:
    """A mapping checked once on a rig at rest (`fit_rig`), with what the transfer reads from that check."""

    rig: TargetRig
    mapping: dict[str, str]  # role -> bone
    reference: dict[str, str]  # role -> deform bone whose rest geometry stands for it (generated Rigify), else {}
    followers: dict[str, str]  # bone -> role it turns with (see RIGIFY_FOLLOWERS)
    heads: np.ndarray  # [B, 3] rest bone heads in world space
    tails: np.ndarray  # [B, 3] rest bone tails in world space
    shape_of: dict[str, int]  # role -> index of the bone whose rest geometry stands for it
    hip_height: float  # pelvis above the lowest mapped rest foot joint, world units


def fit_rig(rig: TargetRig, mapping: Mapping[str, str]) -> RigFit:
    """Check `mapping` on `rig` (its problems, a rig that does not stand along +Z, hips not above the feet: ValueError
    naming them) and keep what the transfer needs, so that one retarget checks the rig once."""
    validate_mapping(mapping, rig.names)
    reference = reference_mapping(mapping, rig.names)
    index = {name: b for b, name in enumerate(rig.names)}
    shape_of = {role: index[reference.get(role, bone)] for role, bone in mapping.items()}
    heads = _transform(rig.world, rig.rest[:, :3, 3])
    check_upright(heads, shape_of)
    return RigFit(rig=rig, mapping=dict(mapping), reference=reference, followers=follower_bones(mapping, rig.names),
                  heads=heads, tails=_transform(rig.world, rig.tails), shape_of=shape_of,
                  hip_height=hip_height(heads, shape_of))


# --- transfer -------------------------------------------------------------------------------------------------------


def retarget(source: SourceMotion, fit: RigFit, options: RetargetOptions = RetargetOptions()) -> RetargetResult:
    """Pose-bone rotations and hips/root locations that make the fitted rig follow `source` (see the module docstring).

    Where the mapped bones are controls placed elsewhere (a generated Rigify rig: FK controls mapped), the rest
    geometry comes from `fit.reference` (its deform bones); `fit.followers` are further controls that turn with a
    role's bone (Rigify's `spine_fk`, which carries the pelvis deform bone below the torso pivot): rotation keys only.
    """
    rig, mapping, followers = fit.rig, fit.mapping, fit.followers
    index = {name: b for b, name in enumerate(rig.names)}
    bone_of = {role: index[bone] for role, bone in mapping.items()}
    shape_of, heads, tails = fit.shape_of, fit.heads, fit.tails
    world_rot = _rotation_part(rig.world)
    to_armature = np.linalg.inv(rig.world)
    rest_world = world_rot @ rig.rest[:, :3, :3]

    offsets = _rest_offsets(source.rest_joints, heads, tails, shape_of)
    desired_rot = {
        bone_of[JOINT_NAMES[j]]: world_rot.T @ source.rotations[:, j] @ offset @ rest_world[bone_of[JOINT_NAMES[j]]]
        for j, offset in offsets.items()
    }
    for bone, role in followers.items():
        if bone in index and role in mapping and JOINT_NAMES.index(role) in offsets:
            j = JOINT_NAMES.index(role)
            desired_rot[index[bone]] = world_rot.T @ source.rotations[:, j] @ offsets[j] @ rest_world[index[bone]]

    hips, hips_shape = bone_of["pelvis"], shape_of["pelvis"]
    scale = _hip_height_ratio(source, fit) if options.scale_root_motion else 1.0
    travel = (source.pelvis - source.rest_joints[0]) * scale
    ground = travel[:, :2].copy()
    if options.in_place:
        window = max(1, round(options.in_place_window * source.fps))
        travel[:, :2] -= _travel(travel[:, :2], window)
        ground[:] = 0.0
    # The skeleton's pelvis joint travels; a control elsewhere (Rigify's torso) turns rigidly about it.
    lever = (source.rotations[:, 0] @ offsets[0]) @ (heads[hips] - heads[hips_shape])
    desired_pos = {hips: _transform(to_armature, heads[hips_shape] + travel + lever)}

    root = bone_of.get(ROOT) if options.use_root_bone else None
    if root is not None:
        yaw = _heading(source)
        turn = np.zeros((len(yaw), 3, 3))
        turn[:, 0, 0] = turn[:, 1, 1] = np.cos(yaw)
        turn[:, 1, 0] = np.sin(yaw)
        turn[:, 0, 1] = -turn[:, 1, 0]
        turn[:, 2, 2] = 1.0
        desired_rot[root] = world_rot.T @ turn @ rest_world[root]
        ground3 = np.concatenate([ground, np.zeros((len(ground), 1))], axis=1)
        desired_pos[root] = _transform(to_armature, heads[root] + ground3)

    rotations, locations, targets = _pose_basis(rig, desired_rot, desired_pos)
    return RetargetResult(rotations=rotations, locations=locations, scale=float(scale), targets=targets,
                          ancestors=_driven_ancestors(rig, targets))


def _driven_ancestors(rig: TargetRig, driven: Iterable[str]) -> dict[str, str | None]:
    """Driven bone -> its nearest driven ancestor in the rig's hierarchy (None: none), parents listed first."""
    index = {name: b for b, name in enumerate(rig.names)}
    wanted = {index[name] for name in driven}
    ancestors: dict[str, str | None] = {}
    for b in rig.order():
        if b not in wanted:
            continue
        p = rig.parents[b]
        while p >= 0 and p not in wanted:
            p = rig.parents[p]
        ancestors[rig.names[b]] = rig.names[p] if p >= 0 else None
    return ancestors


# Roles that mark the top and the bottom of a standing body, most telling first.
_TOP_ROLES = ("head", "neck", "spine3", "spine2", "spine1")
_FEET_ROLES = ("left_ankle", "right_ankle", "left_foot", "right_foot")
MAX_TILT_DEGREES = 45.0


def check_upright(heads: np.ndarray, bone_of: Mapping[str, int]) -> None:
    """Raise ValueError when the mapped skeleton (world bone heads [B, 3]) does not stand along world +Z, e.g. a rig
    built lying down with Y-up bones: its feet-to-head axis must be within MAX_TILT_DEGREES of +Z."""
    top = next((bone_of[role] for role in _TOP_ROLES if role in bone_of), None)
    feet = [bone_of[role] for role in _FEET_ROLES if role in bone_of]
    if top is None or not feet:
        return
    up = heads[top] - heads[feet].mean(axis=0)
    length = float(np.linalg.norm(up))
    tilt = 180.0 if length < 1e-9 else float(np.degrees(np.arccos(np.clip(up[2] / length, -1.0, 1.0))))
    if tilt > MAX_TILT_DEGREES:
        direction = ", ".join(f"{v:.2f}" for v in up / max(length, 1e-12))
        raise ValueError(
            f"retarget: the target armature does not stand upright: from its feet to its head points along "
            f"({direction}) in world space, {tilt:.0f} degrees away from Blender's up axis +Z (a rig built lying down, "
            "e.g. with Y-up bones from an exporter without axis conversion). Rotate the armature object so the "
            "character stands along +Z (for Y-up: Rotate X 90 degrees, then Apply > Rotation) and retarget again"
        )


def _rest_offsets(
    source_rest: np.ndarray, heads: np.ndarray, tails: np.ndarray, bone_of: Mapping[str, int]
) -> dict[int, np.ndarray]:
    """World rotation per mapped SMPL joint that turns the target bone's rest pose into the source's rest pose."""
    offsets: dict[int, np.ndarray] = {}
    for j, name in enumerate(JOINT_NAMES):
        if name not in bone_of:
            continue
        ancestor = PARENTS[j]
        while ancestor >= 0 and ancestor not in offsets:
            ancestor = PARENTS[ancestor]
        inherited = offsets[ancestor] if ancestor >= 0 else np.eye(3)
        child = DIRECTION_CHILD.get(j)
        if child is None:
            offsets[j] = inherited
            continue
        b = bone_of[name]
        source_dir = source_rest[child] - source_rest[j]
        target_dir = tails[b] - heads[b]
        child_bone = bone_of.get(JOINT_NAMES[child])
        if child_bone is not None and np.linalg.norm(heads[child_bone] - heads[b]) > 1e-6:
            target_dir = heads[child_bone] - heads[b]
        if j == 0 and "left_hip" in bone_of and "right_hip" in bone_of:
            # The pelvis also fixes the facing: align (up, left-right) frames, not only the up direction.
            source_across = source_rest[1] - source_rest[2]
            target_across = heads[bone_of["left_hip"]] - heads[bone_of["right_hip"]]
            offsets[j] = _frame(source_dir, source_across) @ _frame(target_dir, target_across).T
        else:
            offsets[j] = smpl_math.rotation_between(inherited @ target_dir, source_dir) @ inherited
    return offsets


def hip_height(heads: np.ndarray, bone_of: Mapping[str, int]) -> float:
    """Height of the pelvis joint above the lowest mapped rest foot joint (world bone heads [B, 3], never tails: an
    imported rig's tails can point anywhere); ValueError when the hips are not above the feet."""
    feet = [bone_of[role] for role in _FEET_ROLES if role in bone_of]
    lowest = feet or [b for role, b in bone_of.items() if role != ROOT]
    height = float(heads[bone_of["pelvis"], 2] - heads[lowest, 2].min())
    if height <= 1e-6:
        raise ValueError(
            f"retarget: the target's hips are {height:.4g} above its feet; the rig must stand upright (Z-up) with the "
            "hips above the feet: check that the bones mapped to the pelvis and the feet are the right ones"
        )
    return height


def _hip_height_ratio(source: SourceMotion, fit: RigFit) -> float:
    """Target hip height over source hip height, each from the pelvis joint down to the same lowest foot joints."""
    feet = [JOINT_NAMES.index(role) for role in _FEET_ROLES if role in fit.shape_of] or list(range(len(JOINT_NAMES)))
    source_height = source.rest_joints[0, 2] - source.rest_joints[feet, 2].min()
    if source_height <= 1e-6:
        raise ValueError(f"retarget: the source's hips are {source_height:.4g} above its feet; the motion's rest "
                         "skeleton must stand upright")
    return fit.hip_height / float(source_height)


def _heading(source: SourceMotion) -> np.ndarray:
    """Pelvis yaw about world Z per frame [T] (radians, unwrapped), relative to the source's rest facing."""
    across = source.rest_joints[1] - source.rest_joints[2]
    forward0 = np.cross(np.array([across[0], across[1], 0.0]), np.array([0.0, 0.0, 1.0]))
    forward = source.rotations[:, 0] @ forward0
    angle = np.arctan2(forward[:, 1], forward[:, 0])
    # Lying or bending over: the forward axis is nearly vertical and its heading meaningless; hold the last good one.
    valid = np.hypot(forward[:, 0], forward[:, 1]) > 1e-3 * max(np.linalg.norm(forward0), 1e-12)
    if not valid.any():
        return np.zeros(len(angle))
    last = np.maximum.accumulate(np.where(valid, np.arange(len(angle)), -1))
    angle = angle[np.where(last >= 0, last, np.argmax(valid))]
    return np.unwrap(angle) - np.arctan2(forward0[1], forward0[0])


def _pose_basis(
    rig: TargetRig, desired_rot: Mapping[int, np.ndarray], desired_pos: Mapping[int, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Pose-bone rotations (quaternions) and locations reaching the desired armature-space frames, parents first,
    and those frames [T, 4, 4] per driven bone."""
    frames = next(iter(desired_rot.values())).shape[0]
    pose = np.empty((frames, len(rig.names), 4, 4))
    rotations: dict[str, np.ndarray] = {}
    locations: dict[str, np.ndarray] = {}
    targets: dict[str, np.ndarray] = {}
    for b in rig.order():
        p = rig.parents[b]
        chain = rig.rest[b] if p < 0 else pose[:, p] @ np.linalg.inv(rig.rest[p]) @ rig.rest[b]
        chain = np.broadcast_to(chain, (frames, 4, 4))
        if b not in desired_rot:
            pose[:, b] = chain
            continue
        target = np.zeros((frames, 4, 4))
        target[:, :3, :3] = desired_rot[b]
        target[:, :3, 3] = desired_pos[b] if b in desired_pos else chain[:, :3, 3]
        target[:, 3, 3] = 1.0
        basis = np.linalg.inv(chain) @ target
        if b not in desired_pos:
            basis[:, :3, 3] = 0.0
        pose[:, b] = chain @ basis
        targets[rig.names[b]] = pose[:, b].copy()
        rotations[rig.names[b]] = smpl_math.quat_continuous(smpl_math.matrix_to_quat(basis[:, :3, :3]))
        if b in desired_pos:
            locations[rig.names[b]] = basis[:, :3, 3].copy()
    return rotations, locations, targets


# --- solving on the evaluated pose (the bpy glue evaluates, these functions correct) ---------------------------------


def correct_bases(bases: np.ndarray, evaluated: np.ndarray, desired: np.ndarray, located: np.ndarray,
                  ancestors: np.ndarray | None = None) -> np.ndarray:
    """Basis matrices [N, 4, 4] that bring each bone's evaluated armature-space frame onto the desired one.

    Assumes evaluated = P · basis with P independent of the bone's own basis (parenting, and constraints that act like
    parenting: Armature, Child Of, Copy Rotation of another bone ...): then basis' = basis · evaluated⁻¹ · desired.
    Located bones [N] (bool) get the full correction, the others only their rotation (their location stays).
    `ancestors` [N] (index of the bone whose motion a bone inherits, -1 for none, listed before it) lets a bone expect
    its ancestor's correction (as if carried rigidly), so a chain settles in a step or two instead of one step per
    link; where the guess is wrong (a limb that follows the root's rotation instead), the next step fixes it.
    """
    count = len(bases)
    expected = evaluated.copy()
    if ancestors is not None:
        change = desired @ np.linalg.inv(evaluated)  # where each bone is about to go, from where it is
        for k in range(count):
            a = ancestors[k]
            if a >= 0:
                if a >= k:
                    raise ValueError(f"correct_bases: ancestor {a} of bone {k} must come before it")
                expected[k] = change[a] @ evaluated[k]
    out = bases.copy()
    out[:, :3, :3] = _orthonormal(bases[:, :3, :3] @ np.swapaxes(_orthonormal(expected[:, :3, :3]), -1, -2)
                                  @ desired[:, :3, :3])
    if located.any():
        full = bases[located] @ np.linalg.inv(expected[located]) @ desired[located]
        out[located, :3, 3] = full[:, :3, 3]
    return out


def pose_errors(evaluated: np.ndarray, desired: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bone: angle (degrees) between evaluated and desired rotations [..., 4, 4], and head distance."""
    relative = np.swapaxes(_orthonormal(evaluated[..., :3, :3]), -1, -2) @ desired[..., :3, :3]
    q = smpl_math.matrix_to_quat(relative)  # the half-angle form stays exact for tiny angles (arccos does not)
    angles = np.degrees(2.0 * np.arctan2(np.linalg.norm(q[..., 1:], axis=-1), np.abs(q[..., 0])))
    return angles, np.linalg.norm(evaluated[..., :3, 3] - desired[..., :3, 3], axis=-1)


def _orthonormal(m: np.ndarray) -> np.ndarray:
    """Nearest rotations [..., 3, 3] (drops scale and shear of evaluated matrices)."""
    u, _, vt = np.linalg.svd(m)
    sign = np.where(np.linalg.det(u @ vt) < 0, -1.0, 1.0)
    u = u.copy()
    u[..., :, 2] *= sign[..., None]
    return u @ vt


def _travel(x: np.ndarray, window: int) -> np.ndarray:
    """Local straight-line fit of x [T, K] over `window` frames (made odd), evaluated at every frame.

    Centred windows (a moving average) inside the clip, windows held inside the clip near its ends; a straight path
    is reproduced exactly everywhere, and oscillations shorter than the window are left out.
    """
    frames = len(x)
    width = min(2 * (window // 2) + 1, frames)
    if width < 2:
        return x.copy()
    start = np.clip(np.arange(frames) - width // 2, 0, frames - width)
    steps = np.arange(frames, dtype=np.float64)[:, None]
    sum_x = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    sum_ix = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(steps * x, axis=0)])
    total = sum_x[start + width] - sum_x[start]
    moment = sum_ix[start + width] - sum_ix[start]
    centre = (start + (width - 1) / 2.0)[:, None]
    slope = (moment - centre * total) / (width * (width**2 - 1) / 12.0)
    return total / width + slope * (steps - centre)


def _frame(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Orthonormal frame [3, 3] with columns (primary, secondary made perpendicular, their cross product)."""
    a = primary / np.linalg.norm(primary)
    b = secondary - (secondary @ a) * a
    b = b / np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=-1)


def _rotation_part(matrix: np.ndarray) -> np.ndarray:
    """Nearest rotation [3, 3] to the upper-left 3x3 block of a 4x4 matrix (drops scale)."""
    return _orthonormal(matrix[:3, :3])


def _transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [..., 3] mapped by a 4x4 affine matrix."""
    return points @ matrix[:3, :3].T + matrix[:3, 3]
