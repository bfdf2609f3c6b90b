"""Build a HumanML3D-layout dataset from SafeMotion's motion sources (`shared/data`) or a user's BVH library.

Output folder (written to a temporary sibling folder, renamed into place only when everything succeeded):

    new_joints/<id>.npy       [T, 22, 3] float32, recovered from the features (as HumanML3D does)
    new_joint_vecs/<id>.npy   [T, 263] float32, `extract_features` of the window (HumanML3D process_file)
    texts/<id>.txt            `caption#word/POS ...#0.0#0.0`, one line per caption
    Mean.npy, Std.npy         [263] float32, train split (mirrors included), group-averaged std
    train.txt val.txt test.txt train_val.txt all.txt   ids, mirrors included
    index.csv                 id,source,take,start_frame,end_frame,labels (20 fps frames of the take after
                              looping/padding; labels `;`-separated, the take's or `measured:still`)
    stats.json                `DatasetStats`
    README.md                 clips per split, source and concept, labels, caption statistics (`dataset_card`)

Decisions:
- **Takes and windows.** A take is one source recording. Its 20 fps motion is cut into equal, non-overlapping windows
  of 40-196 feature frames (2-9.8 s; HumanML3D keeps 40 <= T < 200 and crops at 196): a take of N feature frames gives
  ceil(N / 196) windows of N // ceil(N / 196) frames; the few leftover frames at the end are dropped. Every window
  carries all captions of its take (KIT/CMU captions describe the whole trial, so for long takes a caption may
  mention actions outside a window), plus the paraphrases its measured motion supports (`caption_grammar`:
  slow / brisk walking, standing still, gestures made in place). Captions equal to a held-out evaluation prompt
  are dropped.
- **Standing still.** Few takes show standing still as their content, but many begin or end that way: every
  stretch of 2 s or more where the person stands upright, arms down and still (`caption_grammar.still_ranges`,
  measured on the recorded frames, never on looped or padded ones) is also cut into windows of its own, labelled
  `measured:still` and captioned from the standing-still family only. They overlap the take's windows and share its
  split.
- **Short takes.** Cyclic takes (DeepMimic `"Loop": "wrap"`) shorter than 4 s are repeated, each repetition moved
  to where the previous one ended (`loop_motion`), until they reach 4 s. Other takes of 1-2 s are padded to 2 s
  by holding their first and last poses (e.g. DeepMimic's 1.53 s kick); takes under 1 s are skipped.
- **Mirrors.** Every window has a copy `M<id>`: `extract_features(mirror_joints(window))`, captions with left/right
  words swapped.
- **Ids.** One letter per source and a running number in discovery order (archive member order for the Bandai and
  iClone archives, sorted names elsewhere, file order of labels.tsv / captions.tsv for the combat sources):
  B (Bandai 1+2), C (CMU iClone BVH), F (CMU FBX), D (DeepMimic), S (ASE sword and shield), X (assimp boxing),
  U (user library), Y (Motion-X, `motionx_import`; its clip id is the take name in index.csv); e.g. `B000123`,
  `MB000123`.
- **Combat sources.** The ASE sword-and-shield clips (`ase_sword_shield`: restricted unpickling, duplicates
  dropped) and the 4 captioned segments of assimp's boxing take (each segment is a take; the T-pose calibration is
  in none) are loaded like the others, so windows, mirrors and splits treat them the same way.
- **Splits by take.** All windows of a take (and their mirrors) share one split. Takes are grouped into strata:
  takes with a violent caption line form up to three strata by which rules match (labels "violence" for
  word_boundary, "violence:paper" for the paper rule; see `concepts`), all others one stratum per source. Inside a
  stratum takes are ordered by a seeded hash of their name and cut 10 % test, 10 % val, 80 % train (rounded), with
  at least one test and one val take when the stratum has >= 3 takes - so the forget sets of both rules reach every
  split whenever there are at least three violent takes for the rule.
- **Failures.** A take that fails to load fails the build (no partial dataset, one line naming the file), except FBX
  takes when Blender's `bpy` is unavailable or its importer fails, and files of a user library (`bvh_dir`) unless
  `strict`: those are skipped with a one-line warning and listed in `stats.json`. BVH files are limited in size,
  frames and frame time (data.bvh.MAX_BVH_*). An interrupted build (SIGINT, SIGTERM) stops its workers and removes
  its temporary folder; workers exit by themselves if the build process is killed, and the next build into the same
  `out` removes a folder left by a killed build.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from itertools import chain
from multiprocessing import get_context
from pathlib import Path, PurePosixPath

import numpy as np

from safemotion.atomic_dir import replace_dir
from safemotion.data import assimp_boxing as boxing
from safemotion.data import ase_sword_shield as ase
from safemotion.data import caption_grammar as grammar
from safemotion.data import captions as cap
from safemotion.data.concepts import matches_concept
from safemotion.data.dataset_card import CONCEPT_LABELS, caption_statistics, render_dataset_card
from safemotion.data.mocap_import import load_motion
from safemotion.data.motionx_import import load_motionx_joints, load_smplx, motionx_clips, smplx_model_file
from safemotion.motion.features import FEATURE_DIM, extract_features, mirror_joints, recover_from_ric
from safemotion.parent_watch import exit_when_parent_ends, process_alive

log = logging.getLogger(__name__)

FPS = 20
MIN_FRAMES = 40  # feature frames per window (2 s)
MAX_FRAMES = 196  # feature frames per window (9.8 s)
STILL_LABEL = "measured:still"  # the label of standing-still windows (`caption_grammar.still_ranges`)
LOOP_TARGET_SECONDS = 4.0
MIN_PAD_SECONDS = 1.0
TEST_FRACTION = 0.1
VAL_FRACTION = 0.1
SPLITS = ("train", "val", "test")
BUILDER_PID_FILE = ".builder-pid"  # in the temporary build folder: whose it is, to clean up after a killed build

SOURCE_LETTERS = {
    "bandai-1": "B", "bandai-2": "B", "cmu-iclone": "C", "cmu-fbx": "F", "deepmimic": "D", "ase-sword-shield": "S",
    "assimp-boxing": "X", "user": "U", "motionx": "Y",
}
SOURCES = tuple(SOURCE_LETTERS)
# Short names accepted in `include` besides the source names.
SOURCE_GROUPS = {
    "bandai": ("bandai-1", "bandai-2"), "cmu": ("cmu-iclone", "cmu-fbx"), "iclone": ("cmu-iclone",),
    "fbx": ("cmu-fbx",), "ase": ("ase-sword-shield",), "boxing": ("assimp-boxing",),
    "combat": ("ase-sword-shield", "assimp-boxing"),
}


@dataclass(frozen=True)
class Take:
    """One source recording to load, window and caption; `data` holds archive bytes when there is no `path`."""

    source: str
    name: str
    captions: tuple[str, ...]
    labels: tuple[str, ...]
    path: Path | None = None
    data: bytes | None = None
    suffix: str = ".bvh"
    cycle_seconds: float | None = None  # cyclic takes: duration of one cycle
    load_options: dict[str, object] = field(default_factory=dict)  # extra keyword arguments of `load_motion`
    kind: str | None = None  # "walk", "run", "idle" or "gesture": which measured paraphrases its windows get
    phrases: tuple[str, ...] = ()  # the content's verb phrases (gestures made in place reuse them)
    body_model: Path | None = None  # Motion-X takes: the user's SMPL-X model that poses the parameters

    @property
    def key(self) -> str:
        return f"{self.source}/{self.name}"


@dataclass
class Window:
    """One dataset clip cut from a take: feature-frame range, features and joints, plus the mirrored pair."""

    start: int
    end: int
    features: np.ndarray
    joints: np.ndarray
    mirror_features: np.ndarray
    mirror_joints: np.ndarray
    still: bool = False  # a measured standing-still stretch (`caption_grammar.still_ranges`), not a take window


@dataclass
class TakeResult:
    """Windows of a take, or why it was skipped."""

    take: Take
    windows: list[Window] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class DatasetStats:
    """Size of a built dataset; `per_split` counts ids incl. mirrors, the other counts are without mirrors."""

    clips: int
    windows: int
    frames: int
    hours: float
    ids: int
    per_source: dict[str, int]
    per_label: dict[str, int]
    per_split: dict[str, int]
    per_split_takes: dict[str, int]
    per_split_source: dict[str, dict[str, int]]
    per_split_concept: dict[str, dict[str, int]]
    caption_stats: dict[str, float]
    skipped: dict[str, str]
    seed: int

    def to_json(self) -> str:
        """Stats as indented JSON (deterministic: no timings)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def summary(self) -> str:
        """A few human-readable lines."""
        splits = " / ".join(f"{name} {self.per_split.get(name, 0):,}" for name in SPLITS)
        lines = [
            f"{self.clips:,} takes -> {self.windows:,} windows ({self.ids:,} ids with mirrors), "
            f"{self.hours:.2f} h ({self.frames:,} frames at {FPS} fps, mirrors not counted)",
            f"splits (ids incl. mirrors): {splits}",
            "per source (windows): " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.per_source.items())),
            "per label (windows): " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.per_label.items())),
        ]
        for label, name in CONCEPT_LABELS.items():
            counts = " / ".join(f"{split} {self.per_split_concept[split].get(label, 0):,}" for split in SPLITS)
            lines.append(f"{name} per split (windows): {counts}")
        lines.append("captions: " + ", ".join(f"{k} {v:,}" for k, v in self.caption_stats.items()))
        if self.skipped:
            lines.append(f"skipped takes: {len(self.skipped)} (reasons in stats.json)")
        return "\n".join(lines)


# --- source discovery ---------------------------------------------------------------------------------------------


def _stream_archive(archive: Path, suffix: str) -> Iterator[tuple[str, bytes]]:
    """(member path, contents) of every regular file ending in `suffix`, read sequentially from a .tar.xz."""
    with tarfile.open(archive, mode="r|xz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(suffix):
                handle = tar.extractfile(member)
                assert handle is not None  # regular files always have contents
                yield member.name, handle.read()


def _bandai_takes(archive: Path, source: str, seed: int) -> Iterator[Take]:
    """Bandai clips `dataset-N_{content}_{style}_{NNN}.bvh`, captioned from the content and style labels."""
    for member, data in _stream_archive(archive, ".bvh"):
        stem = PurePosixPath(member).stem
        parts = stem.split("_")
        if len(parts) != 4:
            raise ValueError(f"{archive}:{member}: expected a name like dataset-1_walk_normal_001.bvh")
        _, content, style, _ = parts
        captions = grammar.bandai_captions(content, style, key=stem, seed=seed)
        yield Take(source, stem, tuple(captions), (f"bandai:{content}", f"style:{style}"), data=data,
                   kind=grammar.BANDAI_KIND.get(content), phrases=grammar.BANDAI_CONTENT[content])


def _cmu_trial_id(subject: int, trial: int) -> str:
    return f"{subject:02d}_{trial:02d}"


def _cmu_metadata(cmu_dir: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """CMU descriptions by trial id (`cmu_trials.csv`) and KIT-ML captions by trial id."""
    descriptions = {}
    with open(cmu_dir / "cmu_trials.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            descriptions[_cmu_trial_id(int(row["Subject"]), int(row["Trial #"]))] = row["Motion Description"]
    kit = json.loads((cmu_dir / "kitml_cmu_captions.json").read_text(encoding="utf-8"))["trials"]
    kit_captions = {trial: [c["text"] for c in entry["captions"]] for trial, entry in kit.items()}
    return descriptions, kit_captions


def _cmu_take_text(
    trial: str, descriptions: dict[str, str], kit: dict[str, list[str]], seed: int
) -> tuple[tuple, tuple]:
    """Captions (KIT first, then the description grammar) and labels of a CMU trial."""
    if trial not in descriptions:
        raise ValueError(f"CMU trial {trial} is not listed in cmu_trials.csv")
    subject = int(trial.split("_")[0])
    description = descriptions[trial]
    captions = kit.get(trial, []) + grammar.cmu_description_captions(description, subject, f"cmu/{trial}", seed)
    activity = grammar.CMU_SUBJECT_ACTIVITY.get(subject) or description.split(" - ")[0].split(",")[0].strip().lower()
    return tuple(captions), (f"cmu:{activity}",)


def _iclone_takes(cmu_dir: Path, seed: int) -> Iterator[Take]:
    """CMU trials on the iClone CC_Base rig (`All_BVH/subjects/SSS/SSS_TT.bvh`)."""
    descriptions, kit = _cmu_metadata(cmu_dir)
    for member, data in _stream_archive(cmu_dir / "iclone_bvh.tar.xz", ".bvh"):
        stem = PurePosixPath(member).stem
        subject, trial = (int(x) for x in stem.split("_"))
        captions, labels = _cmu_take_text(_cmu_trial_id(subject, trial), descriptions, kit, seed)
        yield Take("cmu-iclone", stem, captions, labels, data=data)


def _fbx_takes(cmu_dir: Path, seed: int) -> Iterator[Take]:
    """keijiro's CMU clips as FBX (`SS_TT.fbx`; `Base.fbx` holds no animation)."""
    descriptions, kit = _cmu_metadata(cmu_dir)
    for path in sorted((cmu_dir / "keijiro_fbx").glob("*.fbx")):
        if path.stem == "Base":
            continue
        subject, trial = (int(x) for x in path.stem.split("_"))
        captions, labels = _cmu_take_text(_cmu_trial_id(subject, trial), descriptions, kit, seed)
        yield Take("cmu-fbx", path.stem, captions, labels, path=path, suffix=".fbx")


def _deepmimic_takes(folder: Path, seed: int) -> Iterator[Take]:
    """DeepMimic clips `humanoid3d_<name>.txt`; `"Loop": "wrap"` marks cyclic ones."""
    for path in sorted(folder.glob("humanoid3d_*.txt")):
        name = path.stem.removeprefix("humanoid3d_")
        clip = json.loads(path.read_text(encoding="utf-8"))
        cycle = sum(frame[0] for frame in clip["Frames"]) if clip.get("Loop") == "wrap" else None
        captions = tuple(grammar.deepmimic_captions(name, seed))
        yield Take("deepmimic", name, captions, (f"deepmimic:{name}",), path=path, suffix=".txt", cycle_seconds=cycle,
                   kind=grammar.DEEPMIMIC_KIND.get(name), phrases=grammar.DEEPMIMIC_PHRASES.get(name, ()))


def _ase_takes(folder: Path, skipped: dict[str, str]) -> Iterator[Take]:
    """Reallusion sword-and-shield clips (`motions/RL_Avatar_<clip>_Motion.npy`); byte-identical duplicates dropped."""
    for clip in ase.read_clips(folder):
        if clip.duplicate_of is not None:
            skipped[f"ase-sword-shield/{clip.file}"] = f"byte-identical duplicate of {clip.duplicate_of}"
            continue
        path = folder / "motions" / clip.file
        kind = "idle" if clip.category == "idle" else None  # guard-stance walks get no "relaxed walk" wording
        yield Take("ase-sword-shield", clip.clip, clip.captions, clip.labels, path=path, suffix=".npy", kind=kind)


def _boxing_takes(folder: Path) -> Iterator[Take]:
    """The captioned segments of assimp's boxing take, each its own take (the T-pose calibration is in none)."""
    options = {"extra_frames": "ignore"}
    for segment in boxing.read_segments(folder):
        yield Take("assimp-boxing", segment.name, segment.captions, ("assimp:boxing",), path=folder / boxing.TAKE_FILE,
                   load_options={**options, "seconds": (segment.start_s, segment.end_s)})


def read_captions_csv(captions_csv: Path) -> dict[str, list[str]]:
    """Captions by file (relative path as written) from a CSV with columns `file,caption`; `|` separates captions."""
    captions: dict[str, list[str]] = {}
    with open(captions_csv, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
            raise ValueError(
                f"{captions_csv}:1: expected a header with columns 'file,caption', got {reader.fieldnames}"
            )
        for row in reader:
            line = reader.line_num
            file, text = (row["file"] or "").strip(), (row["caption"] or "").strip()
            if not file:
                raise ValueError(f"{captions_csv}:{line}: empty 'file' column")
            parts = [part.strip() for part in text.split("|") if part.strip()]
            if not parts:
                raise ValueError(f"{captions_csv}:{line}: no caption for {file!r}")
            captions.setdefault(PurePosixPath(file).as_posix(), []).extend(parts)
    return captions


def _user_takes(bvh_dir: Path, captions_csv: Path, skipped: dict[str, str]) -> Iterator[Take]:
    """A user's motion library: files listed in the captions CSV (paths relative to `bvh_dir`)."""
    captions = read_captions_csv(captions_csv)
    for file in sorted(captions):
        path = bvh_dir / file
        if not path.is_file():
            raise FileNotFoundError(f"{captions_csv}: {file!r} is not a file in {bvh_dir}")
    listed = {os.path.realpath(bvh_dir / file) for file in captions}  # realpath: no error on symlink loops
    for path in sorted(bvh_dir.rglob("*.bvh")):
        if os.path.realpath(path) not in listed:
            name = path.relative_to(bvh_dir).as_posix()
            skipped[f"user/{name}"] = f"no caption in {captions_csv.name}"
            log.warning("skipping %s: no caption in %s", path, captions_csv)
    for file in sorted(captions):
        unique = tuple(dict.fromkeys(captions[file]))
        yield Take("user", file, unique, ("user",), path=bvh_dir / file, suffix=Path(file).suffix.lower())


def _motionx_takes(root: Path, smplx_model: Path) -> Iterator[Take]:
    for clip_id, file, captions in motionx_clips(root):
        yield Take("motionx", clip_id, captions, ("motionx",), path=file, suffix=file.suffix, body_model=smplx_model)


def _discover(
    shared_data: Path | None, bvh_dir: Path | None, captions_csv: Path | None, include: set[str] | None, seed: int,
    skipped: dict[str, str], motionx: Path | None = None, smplx_model: Path | None = None,
) -> Iterator[Take]:
    """Check the inputs, then return all takes of the selected sources in a fixed order (read lazily)."""
    unknown = set(include or ()) - set(SOURCES) - set(SOURCE_GROUPS)
    if unknown:
        known = ", ".join((*SOURCES, *SOURCE_GROUPS))
        raise ValueError(f"unknown source(s) {sorted(unknown)}; known sources and groups: {known}")
    if include is not None:
        include = {source for name in include for source in SOURCE_GROUPS.get(name, (name,))}
    inputs: dict[str, Callable[[], Iterator[Take]]] = {}
    if shared_data is not None:
        bandai, cmu, deepmimic = shared_data / "bandai", shared_data / "cmu", shared_data / "deepmimic"
        archives = {"bandai-1": bandai / "dataset-1.tar.xz", "bandai-2": bandai / "dataset-2.tar.xz"}
        candidates = {name: (path, partial(_bandai_takes, path, name, seed)) for name, path in archives.items()}
        candidates["cmu-iclone"] = (cmu / "iclone_bvh.tar.xz", partial(_iclone_takes, cmu, seed))
        candidates["cmu-fbx"] = (cmu / "keijiro_fbx", partial(_fbx_takes, cmu, seed))
        candidates["deepmimic"] = (deepmimic, partial(_deepmimic_takes, deepmimic, seed))
        ase_dir, boxing_dir = shared_data / "ase_sword_shield", shared_data / "assimp_boxing"
        candidates["ase-sword-shield"] = (ase_dir / "labels.tsv", partial(_ase_takes, ase_dir, skipped))
        candidates["assimp-boxing"] = (boxing_dir / "captions.tsv", partial(_boxing_takes, boxing_dir))
        for source, (needed, make) in candidates.items():
            if needed.exists():
                inputs[source] = make
            elif include is not None and source in include:
                raise FileNotFoundError(f"source {source!r} requested but {needed} does not exist")
    if bvh_dir is not None:
        if captions_csv is None:
            captions_csv = bvh_dir / "captions.csv"
        if not captions_csv.is_file():
            raise FileNotFoundError(
                f"{captions_csv}: captions CSV not found; pass captions_csv (columns file,caption) for {bvh_dir}"
            )
        inputs["user"] = partial(_user_takes, bvh_dir, captions_csv, skipped)
    if motionx is not None:
        if smplx_model is None:
            raise ValueError(f"{motionx}: Motion-X clips need an SMPL-X body model; pass --smplx-model with the folder "
                             "holding SMPLX_NEUTRAL.npz")
        load_smplx(smplx_model_file(smplx_model))  # a wrong or missing model fails here, before any take
        inputs["motionx"] = partial(_motionx_takes, motionx, smplx_model_file(smplx_model))
    if include is not None:
        missing = set(include) - set(inputs)
        if missing:
            raise ValueError(f"source(s) {sorted(missing)} requested but their input folder was not given")
        inputs = {source: make for source, make in inputs.items() if source in include}
    if not inputs:
        raise ValueError("nothing to build: pass shared_data (SafeMotion's shared/data), bvh_dir + captions_csv "
                         "and/or motionx + smplx_model")
    return chain.from_iterable(inputs[source]() for source in SOURCES if source in inputs)


# --- per-take processing (runs in worker processes) ---------------------------------------------------------------


def loop_motion(joints: np.ndarray, period: float, min_frames: int) -> np.ndarray:
    """Repeat a cyclic motion [T, 22, 3] with a cycle of `period` frames (may be fractional) to >= min_frames frames.

    The cycle closes on its first pose moved by the root's ground displacement over one period (interpolated, or
    extrapolated from the last step when the samples end before the period); frames are sampled at whole frame times
    by linear interpolation, so a fractional period adds no hitch. Heading changes over a cycle are not carried on:
    DeepMimic's cycles drift a few degrees, and turning by that much each cycle would walk a circle.
    """
    if period <= 1:
        raise ValueError(f"loop_motion: the cycle must last more than one frame, got {period}")
    root = joints[:, 0]
    i = min(int(period), len(joints) - 2)
    root_at_period = root[i] + (period - i) * (root[i + 1] - root[i])
    shift = (root_at_period - root[0]) * np.array([1.0, 0.0, 1.0])
    cycle = joints[: math.ceil(period - 1e-6)]
    knots = np.append(np.arange(len(cycle), dtype=np.float64), period)
    values = np.concatenate([cycle, joints[:1] + shift])
    frames = np.arange(max(min_frames, len(joints)), dtype=np.float64)
    repeat = np.floor(frames / period)
    phase = frames - repeat * period
    right = np.clip(np.searchsorted(knots, phase, side="right"), 1, len(knots) - 1)
    weight = ((phase - knots[right - 1]) / (knots[right] - knots[right - 1]))[:, None, None]
    looped = (1 - weight) * values[right - 1] + weight * values[right] + repeat[:, None, None] * shift
    return looped.astype(joints.dtype)


def hold_pad(joints: np.ndarray, min_frames: int) -> np.ndarray:
    """Pad a motion to `min_frames` frames by holding its first and last poses (half before, half after)."""
    missing = max(min_frames - len(joints), 0)
    before = missing // 2
    return np.concatenate(
        [np.repeat(joints[:1], before, axis=0), joints, np.repeat(joints[-1:], missing - before, axis=0)]
    )


def window_ranges(num_frames: int) -> list[tuple[int, int]]:
    """Equal non-overlapping [start, end) feature-frame windows of MIN_FRAMES..MAX_FRAMES covering a take."""
    if num_frames < MIN_FRAMES:
        return []
    count = math.ceil(num_frames / MAX_FRAMES)
    length = num_frames // count
    return [(i * length, (i + 1) * length) for i in range(count)]


def _load_take(take: Take, scratch: Path) -> np.ndarray:
    """Joints [T, 22, 3] at 20 fps; archive members go through one scratch file at a time."""
    if take.body_model is not None:
        return load_motionx_joints(take.path, take.body_model)
    if take.path is not None:
        return load_motion(take.path, **take.load_options).joints
    fd, tmp = tempfile.mkstemp(dir=scratch, prefix=f"{Path(take.name).stem}.", suffix=take.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(take.data or b"")
        return load_motion(tmp, **take.load_options).joints
    finally:
        os.unlink(tmp)


class TakeError(ValueError):
    """A take that cannot be turned into windows; the message names it."""


def process_take(take: Take, scratch: Path, strict: bool = False) -> TakeResult:
    """Load a take, loop/pad short ones, cut windows and compute features and mirrors; a user-library take that
    cannot be loaded is skipped unless `strict`."""
    try:
        joints = np.asarray(_load_take(take, scratch), dtype=np.float64)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        if take.suffix == ".fbx":  # optional source: bpy missing or Blender's importer failing skips the take
            return TakeResult(take, skipped=f"FBX import failed: {reason}")
        if take.source == "user" and not strict:
            return TakeResult(take, skipped=f"could not load: {reason}")
        raise TakeError(f"{take.key}: could not load: {reason}") from None
    take = replace(take, data=None)  # the archive bytes need not travel back to the main process
    seconds = (len(joints) - 1) / FPS
    recorded = True  # every frame as captured: neither looped nor padded with held poses
    if take.cycle_seconds is not None and seconds < LOOP_TARGET_SECONDS:
        joints, recorded = loop_motion(joints, take.cycle_seconds * FPS, round(LOOP_TARGET_SECONDS * FPS) + 1), False
    elif seconds < MIN_FRAMES / FPS:
        if seconds < MIN_PAD_SECONDS:
            return TakeResult(take, skipped=f"too short ({seconds:.2f} s < {MIN_PAD_SECONDS} s)")
        joints, recorded = hold_pad(joints, MIN_FRAMES + 1), False
    ranges = [(start, end, False) for start, end in window_ranges(len(joints) - 1)]
    if recorded:  # a held pose is not a person standing still
        ranges += [(start + a, start + b, True) for start, end in grammar.still_ranges(joints)
                   for a, b in window_ranges(end - start)]
    result = TakeResult(take)
    for start, end, still in ranges:
        piece = joints[start : end + 1]
        try:
            features = extract_features(piece)
            mirrored = extract_features(mirror_joints(piece))
        except ValueError as error:
            raise TakeError(f"{take.key} frames {start}-{end}: {error}") from None
        result.windows.append(
            Window(start, end, features, recover_from_ric(features), mirrored, recover_from_ric(mirrored), still)
        )
    return result


def _ordered_map(fn: Callable[[Take], TakeResult], items: Iterable[Take], workers: int) -> Iterator[TakeResult]:
    """fn over items in order; with workers > 1 in spawned processes, at most 4 tasks per worker in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=exit_when_parent_ends,
                               initargs=(os.getpid(),))
    finished = False
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        finished = True
    finally:
        if not finished:  # an error or an interrupt: stop at once instead of waiting for the takes in progress
            for process in list(getattr(pool, "_processes", {}).values()):  # the executor has no public way
                process.terminate()
        pool.shutdown(wait=finished, cancel_futures=True)


# --- splits and statistics ----------------------------------------------------------------------------------------


def assign_splits(takes: list[Take], seed: int) -> dict[str, str]:
    """Split name per take key: stratified (violent takes by rule, others by source), 80/10/10 by seeded hash."""
    strata: dict[str, list[Take]] = {}
    for take in takes:
        stratum = "+".join(label for label in take.labels if label.startswith("violence")) or take.source
        strata.setdefault(stratum, []).append(take)
    splits = {}
    for members in strata.values():
        members = sorted(members, key=lambda t: hashlib.sha256(f"{seed}:{t.key}".encode()).hexdigest())
        n = len(members)
        n_test, n_val = round(TEST_FRACTION * n), round(VAL_FRACTION * n)
        if n >= 3:
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        for i, take in enumerate(members):
            splits[take.key] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return splits


def _mean_std(vec_dir: Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dim mean and group-averaged std over the given feature files.

    Same result as `normalization.compute_mean_std`, merged file by file (Chan et al.) so the full train set never
    sits in memory at once.
    """
    # Imported here so the spawned workers, which import this module, do not load torch (seconds each).
    from safemotion.motion.normalization import group_average

    count, mean, m2 = 0, np.zeros(FEATURE_DIM), np.zeros(FEATURE_DIM)
    for motion_id in ids:
        x = np.load(vec_dir / f"{motion_id}.npy").astype(np.float64)
        n, x_mean = len(x), x.mean(axis=0)
        delta, total = x_mean - mean, count + len(x)
        mean += delta * n / total
        m2 += ((x - x_mean) ** 2).sum(axis=0) + delta**2 * count * n / total
        count = total
    return mean.astype(np.float32), group_average(np.sqrt(m2 / count)).astype(np.float32)


# --- build --------------------------------------------------------------------------------------------------------


def _write_window(root: Path, motion_id: str, window: Window, captions: tuple[str, ...]) -> None:
    for prefix, feats, joints, texts in (
        ("", window.features, window.joints, captions),
        ("M", window.mirror_features, window.mirror_joints, tuple(cap.mirror_caption(c) for c in captions)),
    ):
        np.save(root / "new_joint_vecs" / f"{prefix}{motion_id}.npy", feats.astype(np.float32))
        np.save(root / "new_joints" / f"{prefix}{motion_id}.npy", joints.astype(np.float32))
        lines = dict.fromkeys(cap.caption_line(text) for text in texts)
        (root / "texts" / f"{prefix}{motion_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _prepare_output(out: Path) -> Path:
    """Check that `out` may be (re)placed and create the temporary build folder next to it."""
    if out.exists() and not (out / "stats.json").is_file():
        raise FileExistsError(f"{out} exists and is not a SafeMotion dataset (no stats.json); choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.building-*"):  # left by a build that was killed
        owner = stale / BUILDER_PID_FILE
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if not process_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    (tmp / BUILDER_PID_FILE).write_text(str(os.getpid()))
    for sub in ("new_joints", "new_joint_vecs", "texts", ".scratch"):
        (tmp / sub).mkdir()
    return tmp


def build_dataset(
    out: Path,
    shared_data: Path | None = None,
    bvh_dir: Path | None = None,
    captions_csv: Path | None = None,
    seed: int = 0,
    workers: int = 2,
    include: set[str] | None = None,
    strict: bool = False,
    motionx: Path | None = None,
    smplx_model: Path | None = None,
) -> DatasetStats:
    """Build a HumanML3D-layout dataset in `out` from shared/data sources, a user BVH library + captions CSV and/or
    a Motion-X folder posed with the user's SMPL-X model (`strict`: a user file that cannot be loaded fails the build
    instead of being skipped)."""
    out = Path(out)
    shared_data = None if shared_data is None else Path(shared_data)
    bvh_dir = None if bvh_dir is None else Path(bvh_dir)
    captions_csv = None if captions_csv is None else Path(captions_csv)
    if bvh_dir is not None and not bvh_dir.is_dir():
        raise NotADirectoryError(f"{bvh_dir}: BVH library folder not found")
    if shared_data is not None and not shared_data.is_dir():
        raise NotADirectoryError(f"{shared_data}: shared data folder not found")
    if motionx is not None and not Path(motionx).is_dir():
        raise NotADirectoryError(f"{motionx}: Motion-X folder not found")
    skipped: dict[str, str] = {}
    takes = _discover(shared_data, bvh_dir, captions_csv, include, seed, skipped,
                      None if motionx is None else Path(motionx), None if smplx_model is None else Path(smplx_model))
    tmp = _prepare_output(out)
    started = time.monotonic()
    try:
        stats = _build_into(tmp, takes, seed, workers, skipped, started, strict)
        shutil.rmtree(tmp / ".scratch")
        (tmp / BUILDER_PID_FILE).unlink()
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"dataset written to {out} in {time.monotonic() - started:.0f} s", flush=True)
    print(stats.summary(), flush=True)
    return stats


def _with_violence_labels(take: Take) -> Take:
    """The take labelled "violence" / "violence:paper" when a caption line matches the word_boundary / paper rule.

    Shared-data captions that equal a held-out evaluation prompt, themselves or mirrored (e.g. a KIT caption "a person
    walks forward"), are dropped first; captions a user brings (their BVH library, Motion-X) are kept as written.
    """
    if take.source not in ("user", "motionx"):
        take = replace(take, captions=tuple(c for c in take.captions if not grammar.copies_held_out_prompt(c)))
        if not take.captions:
            raise ValueError(f"{take.key}: every caption equals a held-out evaluation prompt; add another caption")
    labels = take.labels
    if any(matches_concept(text) for text in take.captions):
        labels += ("violence",)
    if any(matches_concept(cap.caption_line(text), rule="paper") for text in take.captions):
        labels += ("violence:paper",)
    return replace(take, labels=labels)


@dataclass
class _Collector:
    """Writes the windows of finished takes into the build folder and tallies what was written."""

    root: Path
    skipped: dict[str, str]
    seed: int
    kept: list[Take] = field(default_factory=list)
    take_ids: dict[str, list[str]] = field(default_factory=dict)
    index_rows: list[tuple[str, str, str, int, int, str]] = field(default_factory=list)
    next_number: Counter[str] = field(default_factory=Counter)
    per_source: Counter[str] = field(default_factory=Counter)
    per_label: Counter[str] = field(default_factory=Counter)
    window_captions: list[tuple[str, ...]] = field(default_factory=list)
    frames: int = 0

    def add(self, result: TakeResult) -> None:
        """Write a take's windows (and mirrors) under new ids, or record why it was skipped."""
        take = result.take
        if result.skipped or not result.windows:
            self.skipped[take.key] = result.skipped or "no window of at least 2 s"
            log.warning("skipping %s: %s", take.key, self.skipped[take.key])
            return
        self.kept.append(take)
        letter = SOURCE_LETTERS[take.source]
        ids = self.take_ids.setdefault(take.key, [])
        for window in result.windows:
            motion_id = f"{letter}{self.next_number[letter]:06d}"
            self.next_number[letter] += 1
            ids.append(motion_id)
            key = f"{take.key}@{window.start}"
            if window.still:
                labels, captions = (STILL_LABEL,), tuple(grammar.still_captions(f"{key}:still", self.seed))
            else:
                facts = grammar.measure_motion(window.joints)
                labels, captions = take.labels, take.captions + tuple(grammar.window_captions(
                    take.kind, take.phrases, facts, key, self.seed, avoid=take.captions))
            _write_window(self.root, motion_id, window, captions)
            self.index_rows.append((motion_id, take.source, take.name, window.start, window.end, ";".join(labels)))
            self.frames += window.end - window.start
            self.window_captions.append(captions)
            self.per_source[take.source] += 1
            for label in labels:
                self.per_label[label] += 1


def _build_into(
    root: Path, takes: Iterable[Take], seed: int, workers: int, skipped: dict[str, str], started: float,
    strict: bool = False,
) -> DatasetStats:
    """Process all takes into `root` and write splits, Mean/Std, the index and the stats."""
    collector = _Collector(root, skipped, seed)
    worker = partial(process_take, scratch=root / ".scratch", strict=strict)
    with closing(_ordered_map(worker, map(_with_violence_labels, takes), workers)) as results:
        for done, result in enumerate(results, start=1):
            collector.add(result)
            if done % 250 == 0:
                print(f"  {done} takes processed ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    if not collector.kept:
        raise ValueError("no take produced a window of at least 2 s; nothing to write")

    take_split = assign_splits(collector.kept, seed)
    split_ids: dict[str, list[str]] = {name: [] for name in SPLITS}
    for take in collector.kept:
        for motion_id in collector.take_ids[take.key]:
            split_ids[take_split[take.key]] += [motion_id, f"M{motion_id}"]
    split_ids["train_val"] = split_ids["train"] + split_ids["val"]
    split_ids["all"] = split_ids["train"] + split_ids["val"] + split_ids["test"]
    for name, ids in split_ids.items():
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")

    mean, std = _mean_std(root / "new_joint_vecs", split_ids["train"])
    np.save(root / "Mean.npy", mean)
    np.save(root / "Std.npy", std)
    with open(root / "index.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "source", "take", "start_frame", "end_frame", "labels"])
        writer.writerows(collector.index_rows)

    windows = len(collector.index_rows)
    per_split_source: dict[str, Counter[str]] = {name: Counter() for name in SPLITS}
    per_split_concept: dict[str, Counter[str]] = {name: Counter() for name in SPLITS}
    for _, source, take_name, _, _, labels in collector.index_rows:
        split = take_split[f"{source}/{take_name}"]
        per_split_source[split][source] += 1
        per_split_concept[split].update(label for label in labels.split(";") if label in CONCEPT_LABELS)
    stats = DatasetStats(
        clips=len(collector.kept),
        windows=windows,
        frames=collector.frames,
        hours=round(collector.frames / FPS / 3600, 4),
        ids=2 * windows,
        per_source=dict(sorted(collector.per_source.items())),
        per_label=dict(sorted(collector.per_label.items())),
        per_split={name: len(split_ids[name]) for name in (*SPLITS, "train_val")},
        per_split_takes=dict(sorted(Counter(take_split.values()).items())),
        per_split_source={name: dict(sorted(per_split_source[name].items())) for name in SPLITS},
        per_split_concept={name: dict(sorted(per_split_concept[name].items())) for name in SPLITS},
        caption_stats=caption_statistics(collector.window_captions),
        skipped=dict(sorted(skipped.items())),
        seed=seed,
    )
    (root / "stats.json").write_text(stats.to_json() + "\n", encoding="utf-8")
    (root / "README.md").write_text(render_dataset_card(stats), encoding="utf-8")
    return stats
