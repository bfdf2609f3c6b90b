"""Dataset builder on a user BVH library made of synthetic motions (+ a DeepMimic build when shared data exists)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from safemotion import cli
from safemotion.data import caption_grammar as grammar
from safemotion.data.bvh import bvh_from_joints, write_bvh
from safemotion.data.captions import progressive
from safemotion.data.concept_splits import write_concept_splits
from safemotion.data.dataset_builder import (
    MAX_FRAMES,
    MIN_FRAMES,
    STILL_LABEL,
    Take,
    assign_splits,
    build_dataset,
    hold_pad,
    loop_motion,
    read_captions_csv,
    window_ranges,
)
from safemotion.data.joint_maps import PRESETS
from safemotion.motion.features import mirror_features, recover_from_ric
from safemotion.motion.normalization import compute_mean_std
from safemotion.motion.skeleton import SMPL22_PARENTS, rest_joints

FPS = 30
LINE_RE = re.compile(r"^[^#]+#([a-z]+/[A-Z]+)( [a-z]+/[A-Z]+)*#0\.0#0\.0$")

# file -> (seconds, motion kind, caption cell); "punch_*" are the violent takes.
LIBRARY = {
    "walk_a.bvh": (5.0, "walk", "a person walks forward|someone walks"),
    "walk_turn.bvh": (6.0, "turn", "a person walks and turns left"),
    "wave_left.bvh": (4.0, "wave", "a person waves the left hand"),
    "long_walk.bvh": (25.0, "walk", "a person walks for a long time"),
    "short_step.bvh": (1.5, "walk", "a person takes a step"),
    "tiny.bvh": (0.5, "walk", "a person twitches"),
    "sub/side_wave.bvh": (3.0, "wave", "someone raises the left arm sideways"),
    "punch_1.bvh": (3.0, "punch", "a person punches"),
    "punch_2.bvh": (3.5, "punch", "someone throws a punch"),
    "punch_3.bvh": (4.5, "punch", "a person kicks"),
}


def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def _swing(pose: np.ndarray, pivot: int, chain: list[int], rotation: np.ndarray) -> None:
    pose[chain] = (pose[chain] - pose[pivot]) @ rotation.T + pose[pivot]


def synthetic_motion(seconds: float, kind: str, fps: int = FPS) -> np.ndarray:
    """Rigid-bone joints [T, 22, 3] in metres: legs swing while walking, an arm waves or punches, optional turn."""
    rest = rest_joints()
    frames = int(round(seconds * fps)) + 1
    out = np.zeros((frames, 22, 3))
    position, heading = np.zeros(3), 0.0
    for i in range(frames):
        t = i / fps
        pose = rest.copy()
        step = 0.5 * np.sin(2 * np.pi * t) if kind in ("walk", "turn") else 0.05 * np.sin(np.pi * t)
        _swing(pose, 1, [1, 4, 7, 10], _rot("x", step))
        _swing(pose, 2, [2, 5, 8, 11], _rot("x", -step))
        if kind == "wave":
            _swing(pose, 16, [16, 18, 20], _rot("z", -1.2 - 0.4 * np.sin(4 * np.pi * t)))
        if kind == "punch":
            _swing(pose, 17, [17, 19, 21], _rot("x", -1.5 * (0.5 + 0.5 * np.sin(3 * np.pi * t))))
        if kind == "walk_stop":  # walks for 2 s, then stands (legs barely moving, arms down)
            kind_now = "walk" if t < 2.0 else "stand"
            step = 0.5 * np.sin(2 * np.pi * t) if kind_now == "walk" else 0.05 * np.sin(np.pi * t)
            _swing(pose, 1, [1, 4, 7, 10], _rot("x", step))
            _swing(pose, 2, [2, 5, 8, 11], _rot("x", -step))
        heading += (0.8 / fps) if kind == "turn" else 0.0
        speed = 1.0 if kind in ("walk", "turn") or (kind == "walk_stop" and t < 2.0) else 0.0
        position += speed / fps * np.array([np.sin(heading), 0.0, np.cos(heading)])
        pose = (pose - pose[0]) @ _rot("y", heading).T + pose[0] + position
        pose[:, 1] += 0.02 * np.sin(4 * np.pi * t)
        out[i] = pose
    return out


def write_library(folder: Path, entries: dict = LIBRARY, csv_name: str = "captions.csv") -> Path:
    """BVH files in centimetres with Mixamo joint names plus a captions CSV (one caption cell split over two rows)."""
    for file, (seconds, kind, _) in entries.items():
        joints = synthetic_motion(seconds, kind) * 100.0
        write_bvh(bvh_from_joints(joints, SMPL22_PARENTS, PRESETS["mixamo"], FPS), folder / file)
    write_bvh(bvh_from_joints(synthetic_motion(3.0, "walk") * 100, SMPL22_PARENTS, PRESETS["mixamo"], FPS),
              folder / "uncaptioned.bvh")
    with open(folder / csv_name, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        for file, (_, _, cell) in entries.items():
            first, *rest = cell.split("|")
            writer.writerow([file, first])
            if rest:
                writer.writerow([file, "|".join(rest)])
    return folder / csv_name


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("library")
    write_library(folder)
    return folder


@pytest.fixture(scope="module")
def built(library: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("build") / "dataset"
    stats = build_dataset(out, bvh_dir=library, seed=7, workers=1)
    return out, stats


def _index(root: Path) -> list[dict]:
    with open(root / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def _ids(root: Path, split: str) -> list[str]:
    return (root / f"{split}.txt").read_text().split()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- small pieces -------------------------------------------------------------------------------------------------


def test_window_ranges():
    assert window_ranges(MIN_FRAMES - 1) == []
    assert window_ranges(MIN_FRAMES) == [(0, 40)]
    assert window_ranges(MAX_FRAMES) == [(0, 196)]
    assert window_ranges(MAX_FRAMES + 1) == [(0, 98), (98, 196)]
    assert window_ranges(499) == [(0, 166), (166, 332), (332, 498)]
    for n in range(MIN_FRAMES, 2000, 7):
        ranges = window_ranges(n)
        assert all(MIN_FRAMES <= e - s <= MAX_FRAMES for s, e in ranges) and ranges[-1][1] <= n
        assert n - ranges[-1][1] < len(ranges)  # fewer leftover frames than windows


def test_loop_motion_continues_a_cycle():
    # A rigid walk cycle of 12.5 frames: pose oscillates, root advances 0.5 m per cycle.
    period, frames = 12.5, 14
    t = np.arange(frames)
    joints = np.tile(rest_joints(), (frames, 1, 1))
    joints[:, :, 2] += 0.04 * t[:, None]
    joints[:, 20, 1] += 0.1 * np.sin(2 * np.pi * t / period)
    looped = loop_motion(joints, period, 60)
    assert looped.shape == (60, 22, 3)
    np.testing.assert_allclose(looped[:13], joints[:13])
    k = np.arange(60)
    np.testing.assert_allclose(looped[:, 0, 2], 0.04 * k, atol=1e-9)  # root keeps walking, no jump at the seams
    np.testing.assert_allclose(looped[:, 20, 1] - rest_joints()[20, 1], 0.1 * np.sin(2 * np.pi * k / period),
                               atol=0.1 * (1 - np.cos(2 * np.pi / period)) + 1e-9)  # linear interpolation error


def test_hold_pad():
    joints = np.arange(30 * 66, dtype=np.float64).reshape(30, 22, 3)
    padded = hold_pad(joints, 41)
    assert padded.shape == (41, 22, 3)
    np.testing.assert_array_equal(padded[:5], np.repeat(joints[:1], 5, axis=0))
    np.testing.assert_array_equal(padded[5:35], joints)
    np.testing.assert_array_equal(padded[35:], np.repeat(joints[-1:], 6, axis=0))


def test_assign_splits_stratified_and_seeded():
    takes = [Take("user", f"walk{i}", ("a person walks",), ("user",)) for i in range(20)]
    both = ("user", "violence", "violence:paper")
    takes += [Take("user", f"punch{i}", ("a person punches",), both) for i in range(3)]
    takes += [Take("user", f"stab{i}", ("a person stabs",), ("user", "violence")) for i in range(4)]
    splits = assign_splits(takes, seed=0)
    assert list(splits.values()).count("test") == 4 and list(splits.values()).count("val") == 4
    assert sorted(splits[f"user/punch{i}"] for i in range(3)) == ["test", "train", "val"]
    assert sorted(splits[f"user/stab{i}"] for i in range(4)) == ["test", "train", "train", "val"]
    assert assign_splits(takes, seed=0) == splits
    assert any(assign_splits(takes, seed=s) != splits for s in range(1, 5))


def test_read_captions_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text\na.bvh,walks\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: expected a header with columns 'file,caption'"):
        read_captions_csv(bad)
    bad.write_text("file,caption\na.bvh,walks\nb.bvh, | \n")
    with pytest.raises(ValueError, match=r"bad.csv:3: no caption for 'b.bvh'"):
        read_captions_csv(bad)
    good = tmp_path / "good.csv"
    good.write_text("file,caption\na.bvh,walks|runs\na.bvh,jogs\n")
    assert read_captions_csv(good) == {"a.bvh": ["walks", "runs", "jogs"]}


# --- a full build of the user library -----------------------------------------------------------------------------


def test_layout_windows_and_captions(built):
    root, stats = built
    for name in ("new_joints", "new_joint_vecs", "texts"):
        assert (root / name).is_dir()
    for name in ("Mean.npy", "Std.npy", "train.txt", "val.txt", "test.txt", "train_val.txt", "all.txt", "stats.json"):
        assert (root / name).is_file()
    assert not list(root.parent.glob(".dataset.*"))  # no temporary folders left
    rows = _index(root)
    ids = [r["id"] for r in rows]
    assert ids == [f"U{i:06d}" for i in range(len(ids))]
    all_ids = set(_ids(root, "all"))
    assert all_ids == set(ids) | {f"M{i}" for i in ids}
    for motion_id in all_ids:
        vecs = np.load(root / "new_joint_vecs" / f"{motion_id}.npy")
        joints = np.load(root / "new_joints" / f"{motion_id}.npy")
        assert vecs.dtype == np.float32 and vecs.shape[1] == 263
        assert MIN_FRAMES <= len(vecs) <= MAX_FRAMES  # 2-9.8 s at 20 fps
        assert joints.shape == (len(vecs), 22, 3)
        np.testing.assert_allclose(joints, recover_from_ric(vecs), atol=1e-5)
        lines = (root / "texts" / f"{motion_id}.txt").read_text().splitlines()
        assert lines and all(LINE_RE.match(line) for line in lines), lines

    by_take: dict[str, list[dict]] = {}
    for row in rows:
        by_take.setdefault(row["take"], []).append(row)
    long_walk = by_take["long_walk.bvh"]  # 25 s -> 500 frames at 20 fps -> 3 windows of 166
    assert [(int(r["start_frame"]), int(r["end_frame"])) for r in long_walk] == [(0, 166), (166, 332), (332, 498)]
    short = by_take["short_step.bvh"][0]  # 1.5 s, padded by holding its end poses
    assert (int(short["start_frame"]), int(short["end_frame"])) == (0, MIN_FRAMES)
    assert "tiny.bvh" not in by_take and "uncaptioned.bvh" not in by_take
    assert set(stats.skipped) == {"user/tiny.bvh", "user/uncaptioned.bvh"}
    assert "sub/side_wave.bvh" in by_take

    walk_a = by_take["walk_a.bvh"][0]["id"]
    assert [line.split("#")[0] for line in (root / "texts" / f"{walk_a}.txt").read_text().splitlines()] == [
        "a person walks forward", "someone walks",
    ]
    wave = by_take["wave_left.bvh"][0]["id"]
    assert (root / "texts" / f"{wave}.txt").read_text().startswith("a person waves the left hand#")
    assert (root / "texts" / f"M{wave}.txt").read_text().startswith("a person waves the right hand#")


def test_standing_still_stretches_become_windows_of_their_own(tmp_path):
    library = tmp_path / "library"
    library.mkdir()
    write_library(library, {"walk_stop.bvh": (6.0, "walk_stop", "a person walks and stops"),
                            "wave_left.bvh": (4.0, "wave", "a person waves the left hand")})
    stats = build_dataset(tmp_path / "data", bvh_dir=library, seed=7, workers=1)
    root = tmp_path / "data"
    rows = _index(root)
    still = [r for r in rows if r["labels"] == STILL_LABEL]
    assert [r["take"] for r in still] == ["walk_stop.bvh"]  # the waving take holds an arm up: no rest
    [take_window] = [r for r in rows if r["take"] == "walk_stop.bvh" and r["labels"] != STILL_LABEL]
    start, end = int(still[0]["start_frame"]), int(still[0]["end_frame"])
    assert 40 <= start <= 48 and end - start >= MIN_FRAMES  # after the 2 s walk, inside the take's window
    assert int(take_window["end_frame"]) >= end
    for prefix in ("", "M"):
        captions = [line.split("#")[0] for line in (root / "texts" / f"{prefix}{still[0]['id']}.txt").read_text()
                    .splitlines()]
        assert len(captions) == 3 and all(any(p in c or progressive(p) in c for p in grammar.STILL) for c in captions)
        assert not any("walks and stops" in c for c in captions)  # the take's caption describes another motion
    joints = np.load(root / "new_joints" / f"{still[0]['id']}.npy")
    assert np.linalg.norm(joints[:, 0, [0, 2]] - joints[0, 0, [0, 2]], axis=-1).max() < 0.05
    split_of = {i: split for split in ("train", "val", "test") for i in _ids(root, split)}
    assert split_of[still[0]["id"]] == split_of[take_window["id"]] == split_of["M" + still[0]["id"]]
    assert stats.per_label[STILL_LABEL] == len(still)


def test_mirrors_are_mirrored_features(built):
    root, _ = built
    for row in _index(root)[:4]:
        vecs = np.load(root / "new_joint_vecs" / f"{row['id']}.npy")
        mirrored = np.load(root / "new_joint_vecs" / f"M{row['id']}.npy")
        # The synthetic skeleton is left/right symmetric, so extracting the mirrored joints equals mirroring features.
        np.testing.assert_allclose(mirrored, mirror_features(vecs), atol=2e-4)
        assert not np.allclose(mirrored, vecs, atol=1e-3)


def test_stats(built):
    root, stats = built
    rows = _index(root)
    assert stats.windows == len(rows) and stats.ids == 2 * len(rows)
    assert stats.clips == len({r["take"] for r in rows}) == 9
    assert stats.frames == sum(int(r["end_frame"]) - int(r["start_frame"]) for r in rows)
    assert stats.hours == round(stats.frames / 20 / 3600, 4)
    assert sum(stats.per_split[s] for s in ("train", "val", "test")) == stats.ids
    assert stats.per_split["train_val"] == stats.per_split["train"] + stats.per_split["val"]
    assert stats.per_label == {"user": stats.windows, "violence": 3, "violence:paper": 3}
    assert (root / "stats.json").read_text().strip() == stats.to_json()
    assert sum(stats.per_split_source[s].get("user", 0) for s in ("train", "val", "test")) == stats.windows
    assert [stats.per_split_concept[s].get("violence", 0) for s in ("train", "val", "test")] == [1, 1, 1]
    assert stats.caption_stats["captions"] == sum(
        len(set((root / "texts" / f"{r['id']}.txt").read_text().splitlines())) for r in rows
    )
    card = (root / "README.md").read_text()
    assert "| violence (word_boundary) | 1 | 1 | 1 | 3 |" in card
    assert f"| user | {stats.per_split_source['train']['user']} |" in card


def test_splits_disjoint_by_take_and_violence_everywhere(built):
    root, _ = built
    split_of = {}
    for split in ("train", "val", "test"):
        for motion_id in _ids(root, split):
            assert motion_id not in split_of
            split_of[motion_id] = split
    assert _ids(root, "train_val") == _ids(root, "train") + _ids(root, "val")
    takes: dict[str, set[str]] = {}
    for row in _index(root):
        takes.setdefault(row["take"], set()).update({split_of[row["id"]], split_of["M" + row["id"]]})
    assert all(len(splits) == 1 for splits in takes.values()), takes
    assert sorted(next(iter(takes[f"punch_{i}.bvh"])) for i in (1, 2, 3)) == ["test", "train", "val"]


def test_mean_std_from_train_split(built):
    root, _ = built
    mean, std = np.load(root / "Mean.npy"), np.load(root / "Std.npy")
    assert mean.shape == std.shape == (263,) and mean.dtype == std.dtype == np.float32
    train = [np.load(root / "new_joint_vecs" / f"{i}.npy") for i in _ids(root, "train")]
    expected_mean, expected_std = compute_mean_std(train)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(std, expected_std, rtol=1e-5)
    assert np.all(std > 0)


def test_concept_splits_on_built_dataset(built):
    root, _ = built
    counts = write_concept_splits(root, "violence", "word_boundary")
    forget = set()
    for split in ("train", "val", "test"):
        forget |= set((root / "kw_splits" / "word_boundary" / f"{split}-w-violence.txt").read_text().split())
    punch_ids = {r["id"] for r in _index(root) if r["take"].startswith("punch_")}
    assert forget == punch_ids | {f"M{i}" for i in punch_ids}
    assert counts["train_val-w-violence"] + counts["test-w-violence"] == 6
    for split in ("train", "val", "test"):  # the card's per-split concept counts are the split files' (no mirrors)
        assert counts[f"{split}-w-violence"] == 2 * built[1].per_split_concept[split].get("violence", 0)


def test_deterministic_for_a_seed_and_worker_count(built, library, tmp_path):
    root, _ = built
    again = tmp_path / "again"
    build_dataset(again, bvh_dir=library, seed=7, workers=2)
    first, second = _tree(root), _tree(again)
    first = {k: v for k, v in first.items() if not k.startswith("kw_splits/")}
    assert first.keys() == second.keys() and first == second
    other = tmp_path / "other_seed"
    build_dataset(other, bvh_dir=library, seed=8, workers=1)
    assert _tree(other)["new_joint_vecs/U000000.npy"] == first["new_joint_vecs/U000000.npy"]


def bad_library(lib: Path) -> Path:
    """Two good takes plus the probe's bad files: malformed, Frame Time over 100 s, a symlink loop, 10^6 frames."""
    entries = {"walk_a.bvh": LIBRARY["walk_a.bvh"], "wave_left.bvh": LIBRARY["wave_left.bvh"]}
    write_library(lib, entries)
    good = (lib / "walk_a.bvh").read_text()
    (lib / "broken.bvh").write_text("HIERARCHY\nROOT Hips\n{\n\tOFFSET 0 0\n")
    (lib / "slow.bvh").write_text(re.sub(r"Frame Time:.*", "Frame Time: 150.0", good))
    (lib / "huge.bvh").write_text(re.sub(r"Frames:.*", "Frames: 1000000", good))
    (lib / "loop.bvh").symlink_to(lib / "loop.bvh")
    with open(lib / "captions.csv", "a", newline="") as f:
        f.writelines(f"{name},a person walks\n" for name in ("broken.bvh", "slow.bvh", "huge.bvh"))
    return lib


def test_bad_library_files_are_skipped_in_one_line_each(tmp_path, capsys):
    lib = bad_library(tmp_path / "lib")
    out = tmp_path / "out" / "dataset"
    assert cli.main(["data", "build", "--bvh-dir", str(lib), "--captions", str(lib / "captions.csv"),
                     "--out", str(out), "--workers", "1"]) == 0
    skipped = json.loads((out / "stats.json").read_text())["skipped"]
    assert "no MOTION section" in skipped["user/broken.bvh"]
    assert "Frame Time must be a number of seconds in (0, 1]" in skipped["user/slow.bvh"]
    assert "at most 100000 frames" in skipped["user/huge.bvh"]
    assert all("\n" not in reason for reason in skipped.values())
    assert "Traceback" not in capsys.readouterr().err
    assert json.loads((out / "stats.json").read_text())["clips"] == 2


def test_strict_build_fails_in_one_line_and_leaves_nothing(tmp_path, capsys):
    lib = bad_library(tmp_path / "lib")
    out = tmp_path / "out" / "dataset"
    assert cli.main(["data", "build", "--bvh-dir", str(lib), "--captions", str(lib / "captions.csv"),
                     "--out", str(out), "--workers", "1", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("safemotion: error: user/broken.bvh: could not load") and err.count("\n") == 1
    assert list((tmp_path / "out").iterdir()) == []  # no dataset, no temporary build folder


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopped_build_leaves_no_folder_and_no_workers(tmp_path, signum):
    """SIGTERM or SIGINT to the build process alone, while its two workers are busy: it exits within seconds,
    removes its temporary folder and its workers are gone."""
    lib = tmp_path / "lib"
    write_library(lib, {f"walk_{i}.bvh": (25.0, "walk", "a person walks") for i in range(40)})
    out = tmp_path / "out" / "dataset"
    build = subprocess.Popen([sys.executable, "-m", "safemotion", "data", "build", "--bvh-dir", str(lib),
                              "--captions", str(lib / "captions.csv"), "--out", str(out), "--workers", "2"],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             # as from a terminal: a test run started in the background inherits SIGINT ignored
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(children(build.pid)) < 2:
        time.sleep(0.2)
    workers = children(build.pid)
    assert len(workers) >= 2 and build.poll() is None
    time.sleep(2)  # workers inside takes
    build.send_signal(signum)
    started = time.monotonic()
    build.wait(60)
    assert time.monotonic() - started < 20 and build.returncode != 0
    assert "Traceback" not in build.stderr.read()
    assert list((tmp_path / "out").iterdir()) == []
    time.sleep(1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and "zombie" not in
                Path(f"/proc/{pid}/status").read_text().lower()]


def test_folder_of_a_killed_build_is_removed_by_the_next(library, tmp_path):
    out = tmp_path / "out" / "dataset"
    out.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = out.parent / ".dataset.building-abc123"
    (left / "new_joints").mkdir(parents=True)
    (left / ".builder-pid").write_text(dead.stdout.strip())
    build_dataset(out, bvh_dir=library, workers=1)
    assert sorted(p.name for p in out.parent.iterdir()) == ["dataset"]


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if re.search(rf"^PPid:\s+{pid}$", text, re.MULTILINE):
            found.append(int(status.parent.name))
    return found


def test_failed_rebuild_keeps_the_previous_dataset(tmp_path):
    lib = tmp_path / "lib"
    write_library(lib, {"walk_a.bvh": LIBRARY["walk_a.bvh"], "wave_left.bvh": LIBRARY["wave_left.bvh"]})
    out = tmp_path / "out" / "dataset"
    build_dataset(out, bvh_dir=lib, workers=1)
    before = _tree(out)
    lines = (lib / "walk_a.bvh").read_text().splitlines()
    first_frame = next(i for i, line in enumerate(lines) if line.startswith("Frame Time")) + 1
    lines[first_frame] = "nan " + lines[first_frame].split(maxsplit=1)[1]
    (lib / "nan.bvh").write_text("\n".join(lines) + "\n")
    with open(lib / "captions.csv", "a", newline="") as f:
        f.write("nan.bvh,a person walks ahead\n")
    with pytest.raises(Exception, match=r"nan\.bvh"):
        build_dataset(out, bvh_dir=lib, workers=1, strict=True)  # a skipped file would not fail
    assert _tree(out) == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dataset"]


def test_output_folder_rules(library, tmp_path):
    lib = tmp_path / "lib"
    write_library(lib, {"walk_a.bvh": LIBRARY["walk_a.bvh"]})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SafeMotion dataset"):
        build_dataset(foreign, bvh_dir=lib, workers=1)
    assert (foreign / "notes.txt").read_text() == "mine"
    out = tmp_path / "ds"
    build_dataset(out, bvh_dir=lib, workers=1)
    (out / "extra.txt").write_text("old build")
    build_dataset(out, bvh_dir=lib, workers=1)  # a previous build is replaced
    assert not (out / "extra.txt").exists() and (out / "stats.json").is_file()
    with pytest.raises(ValueError, match="unknown source"):
        build_dataset(tmp_path / "x", bvh_dir=lib, include={"user", "amass"})
    with pytest.raises(ValueError, match="nothing to build"):
        build_dataset(tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --- real data --------------------------------------------------------------------------------------------------


def test_include_groups_expand(library, tmp_path):
    with pytest.raises(ValueError, match=r"\['bandai-1', 'bandai-2'\] requested but their input folder was not given"):
        build_dataset(tmp_path / "x", bvh_dir=library, include={"bandai", "user"})
    assert not (tmp_path / "x").exists()


def test_deepmimic_build(shared_dir: Path, tmp_path):
    stats = build_dataset(tmp_path / "dm", shared_data=shared_dir / "data", include={"deepmimic"}, workers=1)
    rows = {r["take"]: r for r in _index(tmp_path / "dm")}
    assert stats.clips == 15 and stats.windows == 15 and not stats.skipped
    assert int(rows["kick"]["end_frame"]) == MIN_FRAMES  # 1.53 s, not cyclic: padded to 2 s
    assert int(rows["run"]["end_frame"]) == 80  # 0.8 s cycle looped to 4 s
    assert int(rows["spin"]["end_frame"]) == 88  # 4.42 s: used as is
    assert stats.per_label["violence"] == stats.per_label["violence:paper"] == 3  # kick, punch, spinkick
    assert sorted(stats.per_split_takes.items()) == [("test", 2), ("train", 11), ("val", 2)]
    texts = {p.stem: p.read_text().splitlines() for p in (tmp_path / "dm" / "texts").glob("*.txt")}
    assert stats.caption_stats["distinct_per_window_min"] >= 3
    assert not [line for lines in texts.values() for line in lines
                if grammar.normalize(line.split("#")[0]) in grammar.held_out_prompts()]
    walk = texts[rows["walk"]["id"]]
    assert len(walk) == 5  # 3 label captions + 2 measured ones (0.97 m/s forward: a normal-pace walk)
    assert any("walks" in line or "walking" in line for line in walk[3:])
