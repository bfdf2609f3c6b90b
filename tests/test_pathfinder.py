"""Pathfinder generator: labels checked by an independent flood fill over the ink, seeding, balance and encoding."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from safemotion.data.pathfinder import INK, PathfinderConfig, encode_images, generate_example, generate_examples


def connected_by_ink(image: np.ndarray, start: tuple[int, int], goal: tuple[int, int], tolerance: int) -> bool:
    """Flood fill over ink pixels, stepping to any ink pixel within `tolerance` rows and columns (bridges the gaps)."""
    ink = image > 0
    seen = np.zeros_like(ink)
    queue = deque([start])
    seen[start] = True
    while queue:
        row, col = queue.popleft()
        if (row, col) == goal:
            return True
        for r in range(max(0, row - tolerance), min(ink.shape[0], row + tolerance + 1)):
            for c in range(max(0, col - tolerance), min(ink.shape[1], col + tolerance + 1)):
                if ink[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    queue.append((r, c))
    return False


def test_labels_agree_with_an_independent_flood_fill():
    config = PathfinderConfig()
    examples = generate_examples(60, seed=0, config=config)
    for example in examples:
        first, second = example.markers
        joined = connected_by_ink(example.image, first, second, tolerance=config.gap_length + 2)
        assert int(joined) == example.label
    # The bridging tolerance matters: with no gap bridging, the dashes of a positive path fall apart.
    positives = [e for e in examples if e.label == 1]
    assert not any(connected_by_ink(e.image, *e.markers, tolerance=1) for e in positives)


def test_images_show_markers_paths_and_distractors():
    config = PathfinderConfig()
    rng = np.random.default_rng(1)
    for label in (0, 1):
        example = generate_example(rng, label, config)
        assert example.image.shape == (32, 32) and example.image.dtype == np.uint8
        assert set(np.unique(example.image)) == {0, INK}
        for row, col in example.markers:
            assert (example.image[row - 1 : row + 2, col - 1 : col + 2] == INK).all()  # filled 3x3 marker
        # Two long paths + two distractors, dashes of 3 pixels: at least that much ink besides the markers.
        assert (example.image > 0).sum() >= 2 * 6 * 3 + 2 * 3 * 3


def test_generation_is_seeded_balanced_and_encodes_to_1024_tokens():
    first = generate_examples(20, seed=7)
    again = generate_examples(20, seed=7)
    other = generate_examples(20, seed=8)
    assert all(np.array_equal(a.image, b.image) and a.label == b.label for a, b in zip(first, again))
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(first, other))
    ids, labels = encode_images(first)
    assert ids.shape == (20, 1024) and ids.dtype == np.int64 and set(np.unique(ids)) <= {0, INK}
    assert labels.sum() == 10  # balanced
    assert np.array_equal(ids[3].reshape(32, 32), first[3].image)


def test_bad_configs_and_impossible_layouts_fail_clearly():
    with pytest.raises(ValueError, match="separation"):
        PathfinderConfig(separation=3, gap_length=1)
    with pytest.raises(ValueError, match="label"):
        generate_example(np.random.default_rng(0), 2)
    crowded = PathfinderConfig(size=8, path_dashes=4, n_distractors=3, max_tries=5)
    with pytest.raises(RuntimeError, match="could not place"):
        generate_example(np.random.default_rng(0), 1, crowded)
