"""Reader for HumanML3D-layout datasets and the batch samplers the training stages draw from.

Layout (humanml3d_format.md §7–8): `new_joint_vecs/<id>.npy` [T, 263] at 20 fps, `texts/<id>.txt` with lines
`caption#word/POS ...#start#end`, `Mean.npy`/`Std.npy`, and split files `<split>.txt` listing ids.

- `WindowSampler` (VQ): windows of `window_size` frames, uniform over every (clip, start) pair, like momask-codes'
  MotionDataset.
- `load_caption_samples` (transformers, length estimator): one sample per clip with its whole-clip captions, and one
  per sub-clip caption (frames int(start·20):int(end·20)); clip and sub-clip must satisfy 40 ≤ frames < 200.
- `label_balance`: optional sampling weights that even out how often each content label is drawn (per-window labels
  from the `labels` column of index.csv, written by `safemotion data build`; the first one names the content).
- `TokenSampler`: batches of precomputed code ids with momask-codes' crop: a random start, and a length of
  ⌊T/4⌋ tokens (2/3 of the time) or ⌊T/4⌋ − 1 (1/3). Ids are precomputed for the 4 frame phases of each sample
  (`phase_crop`), so a crop starting at frame s uses phase s mod 4 from token s // 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import csv

import numpy as np

from safemotion.motion.features import FEATURE_DIM
from safemotion.npy_arrays import read_numeric_npy

FPS = 20
MIN_FRAMES = 40  # keep clips with MIN_FRAMES ≤ frames < MAX_FRAMES_EXCLUSIVE
MAX_FRAMES_EXCLUSIVE = 200
UNIT_LENGTH = 4


@dataclass(frozen=True)
class CaptionLine:
    """One line of a texts/<id>.txt file; start = end = 0 means the whole clip."""

    caption: str
    start: float
    end: float


@dataclass
class CaptionedSample:
    """A clip or sub-clip with the captions that describe it."""

    name: str
    motion: np.ndarray  # [T, 263] float32, not normalised
    captions: list[str]


def read_split(root: str | Path, split: str) -> list[str]:
    """Clip ids listed in <root>/<split>.txt (blank lines ignored)."""
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found; a HumanML3D-layout dataset has train.txt, val.txt, "
                                "test.txt")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path}: split '{split}' lists no clip ids")
    return ids


def read_captions(path: str | Path) -> list[CaptionLine]:
    """Parse a texts/<id>.txt file; malformed lines raise ValueError naming path and line."""
    path = Path(path)
    lines = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("#")
        if len(parts) != 4:
            raise ValueError(f"{path}:{number}: expected 'caption#tokens#start#end' (4 fields), found {len(parts)}")
        try:
            start, end = float(parts[2]), float(parts[3])
        except ValueError:
            raise ValueError(f"{path}:{number}: start/end '{parts[2]}', '{parts[3]}' are not numbers") from None
        start = 0.0 if np.isnan(start) else start
        end = 0.0 if np.isnan(end) else end
        if not parts[0].strip():
            raise ValueError(f"{path}:{number}: empty caption")
        lines.append(CaptionLine(parts[0].strip(), start, end))
    return lines


def load_motion(root: str | Path, clip_id: str) -> np.ndarray:
    """Features [T, 263] float32 of one clip, checked for shape and finiteness."""
    path = Path(root) / "new_joint_vecs" / f"{clip_id}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: motion file for clip '{clip_id}' not found")
    motion = read_numeric_npy(path)
    if motion.ndim != 2 or motion.shape[1] != FEATURE_DIM:
        raise ValueError(f"{path}: expected features [T, {FEATURE_DIM}], got {list(motion.shape)}")
    return motion


def load_dataset_stats(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's Mean.npy and Std.npy [263] (group-averaged std, before feat_bias)."""
    arrays = []
    for name in ("Mean.npy", "Std.npy"):
        path = Path(root) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: dataset statistics not found")
        array = read_numeric_npy(path)
        if array.shape != (FEATURE_DIM,):
            raise ValueError(f"{path}: expected shape [{FEATURE_DIM}], got {list(array.shape)}")
        arrays.append(array)
    return arrays[0], arrays[1]


def load_motions(root: str | Path, split: str) -> list[np.ndarray]:
    """Features of every clip in a split."""
    return [load_motion(root, clip_id) for clip_id in read_split(root, split)]


def _keep(frames: int) -> bool:
    return MIN_FRAMES <= frames < MAX_FRAMES_EXCLUSIVE


def load_caption_samples(root: str | Path, split: str) -> list[CaptionedSample]:
    """Captioned clips and sub-clips of a split after the 40 ≤ frames < 200 filter (momask-codes' rules)."""
    root = Path(root)
    samples = []
    for clip_id in read_split(root, split):
        text_path = root / "texts" / f"{clip_id}.txt"
        if not text_path.is_file():
            raise FileNotFoundError(f"{text_path}: captions for clip '{clip_id}' not found")
        motion = load_motion(root, clip_id)
        if not _keep(len(motion)):
            continue
        whole = []
        for number, line in enumerate(read_captions(text_path)):
            if line.start == 0.0 and line.end == 0.0:
                whole.append(line.caption)
                continue
            part = motion[int(line.start * FPS):int(line.end * FPS)]
            if _keep(len(part)):
                samples.append(CaptionedSample(f"{clip_id}#{number}", part, [line.caption]))
        if whole:
            samples.append(CaptionedSample(clip_id, motion, whole))
    if not samples:
        raise ValueError(f"{root}: split '{split}' has no captioned clip of {MIN_FRAMES}-{MAX_FRAMES_EXCLUSIVE - 1} "
                         "frames")
    return samples


def read_clip_labels(root: str | Path) -> dict[str, str]:
    """Clip id (mirrors `M<id>` included) -> its `;`-separated labels, from index.csv of a built dataset."""
    path = Path(root) / "index.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; label balancing needs a dataset built by `safemotion data build`")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "labels" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: has no 'labels' column; rebuild the dataset with `safemotion data build` "
                             "or train without --balance")
        labels = {row["id"]: row["labels"] for row in reader}
    return labels | {f"M{clip_id}": value for clip_id, value in labels.items()}


def label_balance(groups: list[str], power: float) -> np.ndarray:
    """Sampling weights count(group)^-power per sample: 0 draws uniformly, 1 draws every group equally often."""
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"balance power {power} must lie in [0, 1]")
    counts: dict[str, int] = {}
    for group in groups:
        counts[group] = counts.get(group, 0) + 1
    return np.array([counts[group] ** -power for group in groups], dtype=np.float64)


class WindowSampler:
    """Batches of normalised motion windows [B, window_size, 263] for VQ training."""

    def __init__(self, motions: list[np.ndarray], window_size: int):
        self.window_size = window_size
        self.motions = [m for m in motions if len(m) >= window_size]
        if not self.motions:
            raise ValueError(f"no clip has at least window_size={window_size} frames; lower the window size")
        starts = np.array([len(m) - window_size + 1 for m in self.motions])
        self.cumulative = np.concatenate([[0], np.cumsum(starts)])

    def __len__(self) -> int:
        """Number of distinct windows."""
        return int(self.cumulative[-1])

    def sample(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """Uniformly drawn windows, float32."""
        items = rng.integers(0, len(self), size=batch_size)
        clips = np.searchsorted(self.cumulative, items, side="right") - 1
        starts = items - self.cumulative[clips]
        return np.stack([self.motions[c][s:s + self.window_size] for c, s in zip(clips, starts)])


def phase_crop(frames: int, phase: int) -> slice:
    """Frames encoded for phase p: p : p + 4·⌊(frames − p)/4⌋ (whole tokens from frame p on)."""
    return slice(phase, phase + (frames - phase) // UNIT_LENGTH * UNIT_LENGTH)


class CaptionIndex:
    """The distinct captions of a list of samples and, per sample, the indices of its captions; samples are drawn
    uniformly or with the given `weights`."""

    def __init__(self, captions: list[list[str]], weights: np.ndarray | None = None):
        if not captions or any(not sample for sample in captions):
            raise ValueError("every sample needs at least one caption")
        self.captions = list(dict.fromkeys(c for sample in captions for c in sample))
        index = {c: i for i, c in enumerate(self.captions)}
        self.per_sample = [np.array([index[c] for c in sample]) for sample in captions]
        self.cumulative = None
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (len(captions),) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
                    or weights.sum() <= 0:
                raise ValueError(f"weights must be {len(captions)} finite non-negative numbers, not all zero")
            self.cumulative = np.cumsum(weights / weights.sum())

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.per_sample)

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """A drawn sample and one of its captions (index into `captions`)."""
        if self.cumulative is None:
            sample = int(rng.integers(len(self.per_sample)))
        else:
            sample = min(int(np.searchsorted(self.cumulative, rng.random(), side="right")), len(self.per_sample) - 1)
        options = self.per_sample[sample]
        return sample, int(options[rng.integers(len(options))])


@dataclass
class TokenBatch:
    """Cropped code ids padded to max_tokens, their token lengths and the chosen caption of each sample."""

    ids: np.ndarray  # [B, max_tokens, Q] int64, 0 beyond each length
    lengths: np.ndarray  # [B] int64 tokens
    captions: np.ndarray  # [B] int64 caption index into CaptionIndex.captions


class TokenSampler:
    """Random crops of precomputed code ids with a random caption each (momask-codes' Text2MotionDataset)."""

    def __init__(self, frames: list[int], phase_ids: list[list[np.ndarray]], index: CaptionIndex, max_tokens: int):
        if not len(frames) == len(phase_ids) == len(index):
            raise ValueError("frames, phase_ids and the caption index must describe the same samples")
        self.frames = frames
        self.phase_ids = phase_ids
        self.index = index
        self.max_tokens = max_tokens
        self.num_layers = phase_ids[0][0].shape[1]

    def sample(self, rng: np.random.Generator, batch_size: int) -> TokenBatch:
        """A batch of crops; per sample it draws: sample and caption, crop kind, start frame."""
        ids = np.zeros((batch_size, self.max_tokens, self.num_layers), dtype=np.int64)
        lengths = np.zeros(batch_size, dtype=np.int64)
        captions = np.zeros(batch_size, dtype=np.int64)
        for row in range(batch_size):
            i, captions[row] = self.index.draw(rng)
            tokens = self.frames[i] // UNIT_LENGTH - (1 if rng.integers(3) == 2 else 0)
            tokens = min(tokens, self.max_tokens)
            start = int(rng.integers(self.frames[i] - tokens * UNIT_LENGTH + 1))
            phase, offset = start % UNIT_LENGTH, start // UNIT_LENGTH
            ids[row, :tokens] = self.phase_ids[i][phase][offset:offset + tokens]
            lengths[row] = tokens
        return TokenBatch(ids, lengths, captions)
