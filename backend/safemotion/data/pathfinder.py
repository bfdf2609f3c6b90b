"""Pathfinder (Linsley et al. 2018; Long Range Arena's 32×32 version): are the two markers joined by one dashed path?

Seeded reconstruction of the rules (the original generator renders anti-aliased "paddles"; this one draws 1-pixel
dashes on a pixel grid, which keeps the label exact):

* A path is a smooth curve walked in unit steps from a random start and heading; the heading turns by at most
  ±max_turn_deg at the start of every dash. Steps alternate `dash_length` inked steps and `gap_length` blank ones, so
  the path is a row of dashes; it starts and ends on a dash.
* Every image has two long paths (`path_dashes` dashes each) and `n_distractors` short ones (`distractor_dashes`).
  Two markers (filled (2r+1)² squares, r = marker_radius) sit on path ends: positive (label 1) = both ends of the
  same long path; negative (label 0) = one end of each long path. Both classes therefore show the same ink: two long
  paths, two markers, the distractors.
* Different paths stay at least `separation` pixels apart (Chebyshev distance, markers included), so within a path
  the gaps are shorter than the distance between paths: a flood fill over ink pixels that bridges gaps up to
  `gap_length + 2` pixels decides the label independently of how the image was drawn (tests/test_pathfinder.py).
* Pixels are 0 (background) or 255 (ink); the image is flattened row-major to `size²` tokens (1,024 at 32×32), 256
  possible values, as LRA feeds it to sequence models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INK = 255


@dataclass(frozen=True)
class PathfinderConfig:
    """Image size and path shape; defaults give LRA's 32×32 images."""

    size: int = 32
    dash_length: int = 3
    gap_length: int = 1
    path_dashes: int = 6
    distractor_dashes: int = 3
    n_distractors: int = 2
    max_turn_deg: float = 30.0
    marker_radius: int = 1
    separation: int = 4
    max_tries: int = 500

    def __post_init__(self) -> None:
        if self.size < 8 or self.dash_length < 1 or self.gap_length < 1 or self.path_dashes < 1:
            raise ValueError(f"PathfinderConfig needs size >= 8 and dash, gap, path_dashes >= 1, got {self}")
        if self.separation <= self.gap_length + 2:
            raise ValueError(
                f"PathfinderConfig.separation ({self.separation}) must exceed gap_length + 2 ({self.gap_length + 2}), "
                "or a gap inside a path could be as wide as the space between two paths"
            )

    @property
    def tokens(self) -> int:
        """Sequence length of one flattened image."""
        return self.size * self.size


@dataclass(frozen=True)
class PathfinderExample:
    """One image (size, size) uint8, its label (1 = markers joined by one path) and the two marker centres (row, col)."""

    image: np.ndarray
    label: int
    markers: tuple[tuple[int, int], tuple[int, int]]


def _walk(rng: np.random.Generator, config: PathfinderConfig, dashes: int) -> list[tuple[int, int]] | None:
    """Inked pixels of one dashed path in walking order, or None if it leaves the canvas."""
    low, high = config.marker_radius, config.size - 1 - config.marker_radius
    y, x = rng.uniform(low, high, size=2)
    heading = rng.uniform(0.0, 2.0 * math.pi)
    max_turn = math.radians(config.max_turn_deg)
    pixels: list[tuple[int, int]] = []
    for dash in range(dashes):
        heading += rng.uniform(-max_turn, max_turn)
        steps = config.dash_length + (config.gap_length if dash < dashes - 1 else 0)
        for step in range(steps):
            row, col = int(round(y)), int(round(x))
            if not (low <= row <= high and low <= col <= high):
                return None
            if step < config.dash_length:
                pixels.append((row, col))
            y, x = y + math.sin(heading), x + math.cos(heading)
    return pixels


def _footprint(pixels: list[tuple[int, int]], ends: list[tuple[int, int]], config: PathfinderConfig) -> np.ndarray:
    """Boolean mask of a path's ink plus the markers on the given ends."""
    mask = np.zeros((config.size, config.size), dtype=bool)
    rows, cols = zip(*pixels)
    mask[list(rows), list(cols)] = True
    r = config.marker_radius
    for row, col in ends:
        mask[row - r : row + r + 1, col - r : col + r + 1] = True
    return mask


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Chebyshev dilation: True wherever a True pixel lies within `radius` rows and columns."""
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    size = mask.shape[0]
    for dr in range(2 * radius + 1):
        for dc in range(2 * radius + 1):
            out |= padded[dr : dr + size, dc : dc + size]
    return out


def _marker_ends(index: int, pixels: list[tuple[int, int]], label: int) -> list[tuple[int, int]]:
    """Ends of path `index` that carry a marker: both ends of path 0 if positive, else one end of paths 0 and 1."""
    if index == 0:
        return [pixels[0], pixels[-1]] if label == 1 else [pixels[0]]
    if index == 1 and label == 0:
        return [pixels[-1]]
    return []


def _place_paths(rng: np.random.Generator, label: int, config: PathfinderConfig) -> PathfinderExample | None:
    """One attempt at a full image; None when some path finds no free room."""
    occupied = np.zeros((config.size, config.size), dtype=bool)
    markers: list[tuple[int, int]] = []
    plan = [config.path_dashes] * 2 + [config.distractor_dashes] * config.n_distractors
    for index, dashes in enumerate(plan):
        forbidden = _dilate(occupied, config.separation - 1)
        for _ in range(config.max_tries):
            pixels = _walk(rng, config, dashes)
            if pixels is None:
                continue
            ends = _marker_ends(index, pixels, label)
            footprint = _footprint(pixels, ends, config)
            if not (footprint & forbidden).any():
                break
        else:
            return None
        occupied |= footprint
        markers += ends
    image = np.where(occupied, INK, 0).astype(np.uint8)
    return PathfinderExample(image, label, (markers[0], markers[1]))


def generate_example(rng: np.random.Generator, label: int, config: PathfinderConfig = PathfinderConfig()) -> PathfinderExample:
    """Draw one image with the requested label (rejection sampling of paths that keep their distance)."""
    if label not in (0, 1):
        raise ValueError(f"pathfinder: label must be 0 or 1, got {label}")
    for _ in range(config.max_tries):
        example = _place_paths(rng, label, config)
        if example is not None:
            return example
    raise RuntimeError(
        f"pathfinder: could not place {2 + config.n_distractors} separated paths in {config.max_tries} tries on a "
        f"{config.size}×{config.size} canvas; use fewer or shorter paths or a smaller separation"
    )


def generate_examples(count: int, seed: int, config: PathfinderConfig = PathfinderConfig()) -> list[PathfinderExample]:
    """`count` images, labels alternating 1, 0 in a seeded shuffled order (balanced classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 2)
    return [generate_example(rng, int(label), config) for label in labels]


def encode_images(examples: list[PathfinderExample]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (count, size²) int64 in 0..255, row-major pixels, and labels (count,) int64."""
    ids = np.stack([e.image.reshape(-1) for e in examples]).astype(np.int64)
    return ids, np.array([e.label for e in examples], dtype=np.int64)
