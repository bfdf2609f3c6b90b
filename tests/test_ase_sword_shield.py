"""The ASE sword-and-shield reader and the boxing segments: safe unpickling, axes, fps, metadata, dataset build."""

from __future__ import annotations

import csv
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from safemotion.data import ase_sword_shield as ase
from safemotion.data import caption_grammar as grammar
from safemotion.data import assimp_boxing as boxing
from safemotion.data.bvh import BvhError, read_bvh
from safemotion.data.dataset_builder import STILL_LABEL, build_dataset
from safemotion.data.mocap_import import load_motion
from safemotion.motion import rotations as rot


@pytest.fixture(scope="module")
def ase_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "ase_sword_shield"
    if not (path / "labels.tsv").is_file():
        pytest.skip("ASE sword-and-shield clips not staged")
    return path


@pytest.fixture(scope="module")
def boxing_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "assimp_boxing"
    if not (path / boxing.TAKE_FILE).is_file():
        pytest.skip("assimp boxing take not staged")
    return path


IDLES = ("Alert", "Battle", "Ready")


def clip_path(ase_dir: Path, clip: str) -> Path:
    return ase_dir / "motions" / f"RL_Avatar_{clip}_Motion.npy"


def save_object_npy(path: Path, payload: bytes) -> Path:
    """A .npy file with a 0-d object-array header followed by `payload` (a pickle)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(payload)
    return path


README_OFFSETS = (
    (0, 0, 0), (0, 0, 0.236), (0, 0, 0.224), (-0.024, -0.183, 0.244), (0, 0, -0.275), (0, 0, -0.259), (0.74, 0, 0),
    (-0.024, 0.183, 0.244), (0, 0, -0.275), (0, 0.07, -0.12), (0, 0, -0.259), (0, -0.085, 0), (0, 0, -0.422),
    (0, 0, -0.410), (0, 0.085, 0), (0, 0, -0.422), (0, 0, -0.410),
)


def skeleton_motion(frames: int = 4, fps: float = 30.0) -> dict:
    """A well-formed SkeletonMotion dict (identity rotations, the README's bone offsets)."""
    offsets = np.array(README_OFFSETS, dtype=np.float32)
    arr = lambda a: OrderedDict(arr=a, context={"dtype": str(a.dtype)})  # noqa: E731
    rotation = np.zeros((frames, 17, 4))
    rotation[..., 3] = 1.0
    root = np.zeros((frames, 3))
    root[:, 0] = np.linspace(0, 1, frames)
    tree = OrderedDict(node_names=list(ase.NODE_NAMES), parent_indices=arr(np.array(ase.PARENTS)),
                       local_translation=arr(offsets))
    return OrderedDict(rotation=arr(rotation), root_translation=arr(root), skeleton_tree=tree, is_local=True,
                       fps=np.float64(fps), __name__="SkeletonMotion")


def save_motion(path: Path, data: dict) -> Path:
    np.save(path, np.array(data, dtype=object), allow_pickle=True)
    return path


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_calling_os_system_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = save_object_npy(tmp_path / "evil.npy", pickle.dumps(_RunsShell(marker), protocol=3))
    with pytest.raises(ValueError, match=r"evil\.npy: refused to load (posix|os|nt)\.system"):
        ase.read_skeleton_motion(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(np.array(eval, dtype=object), protocol=3),  # builtins.eval inside an allowed array
    b"cbuiltins\nexec\n(Vprint(1)\ntR.",  # a hand-written GLOBAL + REDUCE
])
def test_every_global_outside_the_whitelist_is_refused(tmp_path, payload):
    path = save_object_npy(tmp_path / "clip.npy", payload)
    with pytest.raises(ValueError, match=r"clip\.npy: refused to load builtins\.(eval|exec)"):
        ase.read_skeleton_motion(path)


def test_plain_arrays_and_garbage_get_clear_errors(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((3, 22, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"plain\.npy: holds a plain float32 array of shape \(3, 22, 3\)"):
        ase.read_skeleton_motion(tmp_path / "plain.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match=r"junk\.npy: not a valid \.npy file"):
        ase.read_skeleton_motion(tmp_path / "junk.npy")
    truncated = save_object_npy(tmp_path / "cut.npy", pickle.dumps(np.array({"a": 1}, dtype=object))[:20])
    with pytest.raises(ValueError, match=r"cut\.npy: corrupt pickle payload"):
        ase.read_skeleton_motion(truncated)


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d["rotation"]["arr"].__setitem__((1, 2, 0), np.nan), "'rotation' contains NaN"),
    (lambda d: d["rotation"].__setitem__("arr", np.zeros((4, 15, 4))), r"'rotation' has shape \[4, 15, 4\]"),
    (lambda d: d["root_translation"].__setitem__("arr", np.zeros((3, 3))), r"'root_translation' has shape \[3, 3\]"),
    (lambda d: d["skeleton_tree"].__setitem__("node_names", ["a"] * 17), "skeleton nodes"),
    (lambda d: d.__setitem__("fps", np.float64(0.0)), "fps must be a number"),
    (lambda d: d.pop("rotation"), "missing 'rotation'"),
    (lambda d: d["rotation"]["arr"].__setitem__((0, 0), [0, 0, 0, 3.0]), "not a unit quaternion"),
])
def test_malformed_motion_dicts_name_the_file_and_the_field(tmp_path, break_it, message):
    data = skeleton_motion()
    break_it(data)
    path = save_motion(tmp_path / "bad.npy", data)
    with pytest.raises(ValueError, match=r"bad\.npy: .*" + message):
        ase.read_skeleton_motion(path)


def test_synthetic_clip_goes_through_the_whitelist(tmp_path):
    path = save_motion(tmp_path / "ok.npy", skeleton_motion(frames=31, fps=30.0))
    joints, fps = ase.load_ase_motion(path)
    assert fps == 30.0 and joints.shape == (21, 22, 3)
    # ASE +x (the facing direction) becomes +Z; z up becomes y up.
    np.testing.assert_allclose(joints[-1, 0] - joints[0, 0], [0, 0, 1], atol=1e-9)
    assert joints[0, 15, 1] > joints[0, 0, 1] > joints[0, 7, 1]  # head above pelvis above ankle
    assert joints[0, 16, 0] > joints[0, 17, 0]  # left shoulder at +x


def _ase_fk(motion: ase.SkeletonMotion) -> np.ndarray:
    """README forward kinematics in the clip's own z-up frame, [T, 17, 3]."""
    frames = len(motion.rotations)
    world_q = np.empty_like(motion.rotations)
    pos = np.empty((frames, 17, 3))
    for j, parent in enumerate(ase.PARENTS):
        if parent < 0:
            world_q[:, j], pos[:, j] = motion.rotations[:, j], motion.root_translation
        else:
            world_q[:, j] = rot.qmul(world_q[:, parent], motion.rotations[:, j])
            pos[:, j] = pos[:, parent] + rot.qrot(world_q[:, parent], np.broadcast_to(motion.offsets[j], (frames, 3)))
    return pos


def test_real_clip_matches_the_readme_kinematics_in_humanml3d_axes(ase_dir):
    path = clip_path(ase_dir, "Atk_2xCombo01")
    motion = ase.read_skeleton_motion(path)
    joints, fps = ase.load_ase_motion(path, fps=motion.fps)  # at its own rate: no resampling, frames line up
    reference = _ase_fk(motion)[..., [1, 2, 0]]  # ASE (forward x, left y, up z) -> HumanML3D (left x, up y, fwd z)
    names = ase.NODE_NAMES
    for smpl, node in ((0, "pelvis"), (1, "left_thigh"), (5, "right_shin"), (7, "left_foot"), (12, "head"),
                       (16, "left_upper_arm"), (19, "right_lower_arm"), (21, "right_hand")):
        np.testing.assert_allclose(joints[:, smpl], reference[:, names.index(node)], atol=1e-6, err_msg=node)


def test_per_file_fps_and_resampling_to_20fps(ase_dir):
    walk_joints, walk_fps = ase.load_ase_motion(clip_path(ase_dir, "WalkForward01"))
    combo_joints, combo_fps = ase.load_ase_motion(clip_path(ase_dir, "Atk_2xCombo01"))
    assert walk_fps == pytest.approx(29.9989, abs=1e-3) and combo_fps == pytest.approx(29.925, abs=1e-3)
    assert len(walk_joints) == int((264 - 1) / walk_fps * 20 + 1e-6) + 1
    assert len(combo_joints) == int((96 - 1) / combo_fps * 20 + 1e-6) + 1
    # WalkForward01 goes 5.43 m ahead (+Z); WalkLeft01 4.38 m to the character's left (+x).
    np.testing.assert_allclose(walk_joints[-1, 0] - walk_joints[0, 0], [0, 0, 5.43], atol=0.01)
    left, _ = ase.load_ase_motion(clip_path(ase_dir, "WalkLeft01"))
    np.testing.assert_allclose(left[-1, 0] - left[0, 0], [4.38, 0, 0], atol=0.01)
    assert load_motion(clip_path(ase_dir, "WalkLeft01")).joints.shape == left.shape


def test_metadata_drops_duplicates_and_measures_travel_not_names(ase_dir):
    clips = ase.read_clips(ase_dir)
    unique = [c for c in clips if c.duplicate_of is None]
    assert len(clips) == 87 and len(unique) == 84
    assert {c.file for c in clips if c.duplicate_of} == {f"RL_Avatar_Idle_{n}(0)_Motion.npy" for n in IDLES}
    assert sum(c.attack for c in unique) == 36 and all(len(c.captions) == 3 for c in unique)
    by_name = {c.clip: c for c in unique}
    assert by_name["Fall_Left"].travel == "right"  # lands to the back-right despite its name
    assert by_name["Shield_BlockRight"].travel == "left"
    assert by_name["WalkBackward01"].travel == "backward" and by_name["Idle_Ready"].travel == "in place"
    assert by_name["Atk_Stab"].labels == ("ase:attack", "attack:yes")
    assert by_name["Shield_BlockUp"].labels == ("ase:defense", "attack:no")


def test_boxing_segments_skip_the_tpose_and_the_surplus_frame_line(boxing_dir):
    segments = boxing.read_segments(boxing_dir)
    assert [(s.start_s, s.end_s) for s in segments] == [(1.5, 8.5), (8.5, 15.5), (15.5, 22.5), (22.5, 30.68)]
    assert all(len(s.captions) == 3 for s in segments)
    with pytest.raises(BvhError, match="more frame lines than the 3069 declared"):
        read_bvh(boxing_dir / boxing.TAKE_FILE)
    clip = load_motion(boxing_dir / boxing.TAKE_FILE, seconds=(1.5, 8.5), extra_frames="ignore")
    assert clip.joints.shape == (141, 22, 3) and clip.source_fps == 100.0
    pelvis = clip.joints[:, 0, 1] - clip.joints[..., 1].min()
    assert 0.8 < pelvis.min() and pelvis.max() < 1.0  # boxing stance, hips 0.85-0.94 m (README evidence)
    down = load_motion(boxing_dir / boxing.TAKE_FILE, seconds=(22.5, 30.68), extra_frames="ignore").joints
    assert (down[:, 0, 1] - down[..., 1].min()).min() < 0.3  # the knock-down: sitting on the floor


def test_boxing_segment_inside_the_calibration_is_refused(tmp_path):
    (tmp_path / "captions.tsv").write_text("segment\tstart_s\tend_s\tcaption\n0\t0.5\t8.5\ta person boxes.\n")
    with pytest.raises(ValueError, match=r"captions\.tsv:2: segment 0 spans 0\.5-8\.5 s"):
        boxing.read_segments(tmp_path)


def test_combat_build_has_every_unique_clip_mirrored(shared_dir, tmp_path):
    stats = build_dataset(tmp_path / "combat", shared_data=shared_dir / "data", include={"combat"}, workers=1)
    with open(tmp_path / "combat" / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    index = {row["take"]: row["id"] for row in rows if row["labels"] != STILL_LABEL}
    still = [row["take"] for row in rows if row["labels"] == STILL_LABEL]  # standing-still stretches, as windows
    assert still == ["Idle_Ready"]  # the ready stance rests its arms; the other idles hold sword and shield up
    # two long clips give two windows
    assert stats.per_source == {"ase-sword-shield": 86 + len(still), "assimp-boxing": 4}
    assert stats.clips == 88 and stats.ids == 2 * stats.windows
    assert sorted(stats.skipped) == [f"ase-sword-shield/RL_Avatar_Idle_{n}(0)_Motion.npy" for n in IDLES]
    assert stats.per_label["attack:yes"] == 37 and stats.per_label["assimp:boxing"] == 4
    assert all(stats.per_split[split] > 0 for split in ("train", "val", "test"))
    concept = [stats.per_split_concept[split].get("violence", 0) for split in ("train", "val", "test")]
    assert sum(concept) == stats.per_label["violence"] and concept[2] > 0  # violent test clips from the new sources
    card = (tmp_path / "combat" / "README.md").read_text()
    assert f"| violence (word_boundary) | {concept[0]} | {concept[1]} | {concept[2]} | {sum(concept)} |" in card
    texts_dir = tmp_path / "combat" / "texts"
    lines = [line.split("#")[0] for p in texts_dir.glob("*.txt") for line in p.read_text().splitlines()]
    assert not [line for line in lines if grammar.normalize(line) in grammar.held_out_prompts()]
    idle = (tmp_path / "combat" / "texts" / f"{index['Idle_Ready']}.txt").read_text().splitlines()
    assert len(idle) == 5 and any(p in line for line in idle[3:] for p in grammar.STILL)  # measured still
    texts = sorted((tmp_path / "combat" / "texts").glob("MX*.txt"))
    assert len(texts) == 4 and "right jab" in (tmp_path / "combat" / "texts" / "MX000000.txt").read_text()


def _ase_folder(root: Path, ase_dir: Path, files: dict[str, bytes]) -> Path:
    """A shared-data folder whose ase_sword_shield/ holds `files` (name -> bytes) with minimal labels and captions."""
    folder = root / "ase_sword_shield"
    (folder / "motions").mkdir(parents=True, exist_ok=True)
    labels = ["file\tclip\tcategory\tviolent_content\tnet_forward_m\tnet_left_m\tduplicate_of"]
    captions = ["file\tclip\tcaption_idx\tcaption"]
    for name, data in files.items():
        (folder / "motions" / name).write_bytes(data)
        labels.append(f"{name}\t{name[:-4]}\tlocomotion\tno - walk\t5.0\t0.0\t")
        captions += [f"{name}\t{name[:-4]}\t{i}\ta fighter in a guard stance advances, take {i}." for i in range(3)]
    (folder / "labels.tsv").write_text("\n".join(labels) + "\n")
    (folder / "captions.tsv").write_text("\n".join(captions) + "\n")
    return root


def test_a_malicious_clip_fails_the_build_and_keeps_the_previous_dataset(ase_dir, tmp_path):
    good = {"RL_Avatar_WalkForward01_Motion.npy": clip_path(ase_dir, "WalkForward01").read_bytes()}
    out = tmp_path / "out" / "dataset"
    build_dataset(out, shared_data=_ase_folder(tmp_path / "v1", ase_dir, good), include={"ase"}, workers=1)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    marker = tmp_path / "pwned"
    evil = save_object_npy(tmp_path / "evil.npy", pickle.dumps(_RunsShell(marker), protocol=3)).read_bytes()
    shared = _ase_folder(tmp_path / "v2", ase_dir, {**good, "RL_Avatar_Evil_Motion.npy": evil})
    with pytest.raises(ValueError, match=r"RL_Avatar_Evil_Motion\.npy: refused to load (posix|os|nt)\.system"):
        build_dataset(out, shared_data=shared, include={"ase"}, workers=1)
    assert not marker.exists()
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.parent.iterdir()] == ["dataset"]  # no half-written build folder
