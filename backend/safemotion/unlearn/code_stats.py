"""LCR code statistics: the RVQ codes that ground-truth motions of a split use, for counting forget vs retain presence.

As Mamiglia/hmu `src/methods/lcr.py` with its momask-codes fork's `Text2MotionDatasetEval` (hmu_unlearning.md §1.2):

- every caption line of a clip is its own sample: frames int(start·20):int(end·20) of its `#start#end` tags (the whole
  clip when a tag is 0); clip and sample must have 40 ≤ frames < 200;
- each sample is drawn `repeats` times (20): a random crop of ⌊T/4⌋·4 frames (2/3 of the time) or (⌊T/4⌋ − 1)·4
  (1/3) at a random start, z-normalised with the model's mean/std and zero-padded to max_motion_length (196);
- the padded crop is encoded by the RVQ-VAE (nearest codes), giving max_motion_length / unit_length (49) codes per
  layer; upstream counts all of them, padding positions included (`count_padding=True`).

The crops come from one numpy generator seeded with `seed`, drawn clip by clip, line by line, repeat by repeat, so the
table is deterministic. A clip has few distinct crops (a start among ≤ 8 frames, one of two lengths), so each distinct
crop is encoded once, in batches; the table keeps the distinct crops' codes and each sample's crop. Motions are read
one clip at a time. Only the code layers up to the highest one asked for are quantized.

Precision: by default the encoder runs in float32, as upstream. `precision="bf16"` runs the convolutional encoder in
bfloat16 (about 2.7× faster on a CPU with AVX512-BF16); the nearest-code search stays float32, but a latent close to
the boundary between two codes can land on the other one, so the table (and possibly the selection) may differ.

Cache: the code table is saved as `<cache_dir>/<key>.npz` (default cache_dir `<dataset>/.cache/lcr`), where key is
the SHA-256 of (the VQ weights, mean/std and sizes; the split file's bytes and the size and modification time of each
clip's motion and caption file; split, repeats, seed, layers, and the precision unless fp32). Forget/retain membership
is applied after loading, so one table serves every concept, k, α and rule. Delete the folder to force re-encoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from safemotion.data.motion_dataset import (
    FPS,
    MAX_FRAMES_EXCLUSIVE,
    MIN_FRAMES,
    load_motion,
    read_captions,
    read_split,
)
from safemotion.decoding import PRECISIONS
from safemotion.generate import require_native_bf16
from safemotion.models.model_dir import MotionModels
from safemotion.models.rvqvae import RVQVAE
from safemotion.motion.normalization import Normalizer
from safemotion.unlearn.lcr import code_presence

CACHE_FORMAT = 2  # 2: codes of distinct crops, with each sample's crop index
DEFAULT_REPEATS = 20  # upstream --repeat_times in scripts/eval/lcr.sh
DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class StatsSettings:
    """Which samples are encoded and how."""

    split: str = "train_val"
    repeats: int = DEFAULT_REPEATS
    seed: int = 0
    layers: tuple[int, ...] = (0,)
    batch_size: int = DEFAULT_BATCH_SIZE
    precision: str = "fp32"  # of the VQ encoder: "fp32", or "bf16" (faster where the hardware has it; codes may differ)

    def validate(self, num_quantizers: int) -> None:
        """Raise ValueError naming the first invalid setting."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision is {self.precision!r}; choose one of {list(PRECISIONS)}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct RVQ layer numbers, got {list(self.layers)}")
        bad = [layer for layer in self.layers if not 0 <= layer < num_quantizers]
        if bad:
            raise ValueError(f"layers {bad} do not exist; the model's RVQ has layers 0..{num_quantizers - 1}")


@dataclass
class CodeTable:
    """N samples from C distinct encoded crops: sample i is crop sample_crop[i], of clip clip_ids[sample_clip[i]]."""

    clip_ids: list[str]
    sample_clip: np.ndarray  # (N,) int32
    sample_crop: np.ndarray  # (N,) int32
    codes: np.ndarray  # (C, max_tokens, len(layers)) int16, codes of each distinct crop
    lengths: np.ndarray  # (C,) int16, tokens each crop covers (the rest is padding)
    layers: tuple[int, ...]

    def __len__(self) -> int:
        """Number of samples (caption lines × repeats)."""
        return len(self.sample_clip)

    def presence(self, layer: int, clip_ids: frozenset[str], num_codes: int,
                 count_padding: bool = True) -> tuple[np.ndarray, int]:
        """(per-code number of samples of the given clips that contain the code, number of such samples)."""
        if layer not in self.layers:
            raise ValueError(f"the code table holds layers {list(self.layers)}, not layer {layer}")
        in_set = np.array([clip in clip_ids for clip in self.clip_ids], dtype=bool)[self.sample_clip]
        samples_per_crop = np.bincount(self.sample_crop[in_set], minlength=len(self.codes))
        rows = self.codes[:, :, self.layers.index(layer)]
        lengths = None if count_padding else self.lengths
        return code_presence(rows, num_codes, lengths, weights=samples_per_crop), int(in_set.sum())


def caption_windows(root: Path, clip_id: str, frames: int) -> list[tuple[int, int]]:
    """(start, end) frames of each caption line of a clip kept by the 40 ≤ frames < 200 rule (fork's eval dataset)."""
    windows = []
    for line in read_captions(root / "texts" / f"{clip_id}.txt"):
        start = int(line.start * FPS) if line.start > 0 else 0
        end = int(line.end * FPS) if line.end > 0 else frames
        if MIN_FRAMES <= len(range(start, min(end, frames))) < MAX_FRAMES_EXCLUSIVE:
            windows.append((start, min(end, frames)))
    return windows


def random_crop(frames: int, unit_length: int, max_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """(start, length) of momask-codes' evaluation crop: ⌊T/u⌋·u frames, or one unit less with probability 1/3."""
    units = frames // unit_length - (1 if rng.choice(3) == 2 else 0)
    length = min(units * unit_length, max_frames)
    start = int(rng.integers(0, frames - length + 1))
    return start, length


def collect_codes(models: MotionModels, dataset: str | Path, settings: StatsSettings,
                  cache_dir: str | Path | None = None, device: str | torch.device = "cpu",
                  progress: bool = True) -> tuple[CodeTable, Path | None, bool]:
    """The code table of `settings.split` (from the cache when present) → (table, cache file or None, cache hit)."""
    dataset = Path(dataset)
    config = models.config
    settings.validate(config.vq.num_quantizers)
    clip_ids = read_split(dataset, settings.split)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{cache_key(models, dataset, clip_ids, settings)}.npz"
        if cache_file.is_file():
            return _read_table(cache_file), cache_file, True
    table = _encode_split(models, dataset, clip_ids, settings, torch.device(device), progress)
    if cache_file is not None:
        try:
            _write_table(cache_file, table)
        except OSError as err:  # e.g. a read-only dataset: the statistics are still good, just not cached
            warnings.warn(f"{cache_file}: could not write the LCR code cache ({err}); pass another cache folder")
            cache_file = None
    return table, cache_file, False


def default_cache_dir(dataset: str | Path) -> Path:
    """`<dataset>/.cache/lcr`."""
    return Path(dataset) / ".cache" / "lcr"


def cache_key(models: MotionModels, dataset: Path, clip_ids: list[str], settings: StatsSettings) -> str:
    """SHA-256 over the model's VQ, the dataset files' identity and the sampling settings."""
    digest = hashlib.sha256()
    config = models.config
    sizes = {"format": CACHE_FORMAT, "vq": vars(config.vq), "unit_length": config.unit_length,
             "max_motion_length": config.max_motion_length, "split": settings.split, "repeats": settings.repeats,
             "seed": settings.seed, "layers": list(settings.layers)}
    if settings.precision != "fp32":  # fp32 tables keep the keys they had before the setting existed
        sizes["precision"] = settings.precision
    digest.update(json.dumps(sizes, sort_keys=True).encode())
    for name, tensor in sorted(models.vq.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(np.asarray(models.mean, np.float32).tobytes())
    digest.update(np.asarray(models.std, np.float32).tobytes())
    digest.update((dataset / f"{settings.split}.txt").read_bytes())
    for clip_id in clip_ids:
        for file in (dataset / "new_joint_vecs" / f"{clip_id}.npy", dataset / "texts" / f"{clip_id}.txt"):
            stat = file.stat() if file.is_file() else None
            identity = f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}" if stat else f"{file.name}:missing"
            digest.update(identity.encode())
    return digest.hexdigest()


def encoding_vq(models: MotionModels, precision: str, device: torch.device) -> RVQVAE:
    """The model's VQ on `device` for encoding; for bf16 a copy whose encoder runs in bfloat16 (the codebooks, and
    so the nearest-code search, stay float32), refused where the device would emulate bfloat16."""
    vq = models.vq.to(device).eval()
    if PRECISIONS[precision] == torch.float32:
        return vq
    require_native_bf16(device)
    encoding = deepcopy(vq)
    encoding.encoder.to(PRECISIONS[precision])
    return encoding


@torch.inference_mode()
def _encode_split(models: MotionModels, dataset: Path, clip_ids: list[str], settings: StatsSettings,
                  device: torch.device, progress: bool) -> CodeTable:
    config = models.config
    unit, max_frames = config.unit_length, config.max_motion_length
    normalizer = Normalizer(models.mean, models.std)
    vq = encoding_vq(models, settings.precision, device)
    num_layers = max(settings.layers) + 1
    rng = np.random.default_rng(settings.seed)
    batch = np.zeros((settings.batch_size, max_frames, config.vq.dim_pose), np.float32)
    filled = 0
    codes: list[np.ndarray] = []  # codes of the distinct crops, in batches
    lengths: list[int] = []  # tokens of each distinct crop
    sample_crop: list[int] = []
    sample_clip: list[int] = []

    def flush() -> None:
        ids, _ = vq.encode(torch.from_numpy(batch[:filled]).to(device), num_layers)
        codes.append(ids[..., list(settings.layers)].cpu().numpy().astype(np.int16))

    for index, clip_id in enumerate(tqdm(clip_ids, desc="encode caption crops with the VQ", disable=not progress)):
        motion = load_motion(dataset, clip_id)
        if not MIN_FRAMES <= len(motion) < MAX_FRAMES_EXCLUSIVE:
            continue
        crops: dict[tuple[int, int], int] = {}  # (first frame, length) → distinct crop index
        for start, end in caption_windows(dataset, clip_id, len(motion)):
            for _ in range(settings.repeats):
                offset, length = random_crop(end - start, unit, max_frames, rng)
                key = (start + offset, length)
                if key not in crops:
                    crops[key] = len(lengths)
                    lengths.append(length // unit)
                    batch[filled] = 0.0
                    batch[filled, :length] = normalizer.normalize(motion[key[0]:key[0] + length])
                    filled += 1
                    if filled == settings.batch_size:
                        flush()
                        filled = 0
                sample_crop.append(crops[key])
                sample_clip.append(index)
    if filled:
        flush()
    if not sample_clip:
        raise ValueError(f"{dataset}: split '{settings.split}' has no caption line of {MIN_FRAMES}-"
                         f"{MAX_FRAMES_EXCLUSIVE - 1} frames to encode")
    return CodeTable(clip_ids=list(clip_ids), sample_clip=np.array(sample_clip, np.int32),
                     sample_crop=np.array(sample_crop, np.int32), codes=np.concatenate(codes),
                     lengths=np.array(lengths, np.int16), layers=tuple(settings.layers))


def _write_table(path: Path, table: CodeTable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, clip_ids=np.array(table.clip_ids, dtype=np.str_), sample_clip=table.sample_clip,
                     sample_crop=table.sample_crop, codes=table.codes, lengths=table.lengths,
                     layers=np.array(table.layers, np.int64))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_table(path: Path) -> CodeTable:
    try:
        with np.load(path, allow_pickle=False) as data:
            return CodeTable(clip_ids=[str(c) for c in data["clip_ids"]], sample_clip=data["sample_clip"],
                             sample_crop=data["sample_crop"], codes=data["codes"], lengths=data["lengths"],
                             layers=tuple(int(x) for x in data["layers"]))
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: unreadable LCR code cache ({err}); delete the file to re-encode") from None
