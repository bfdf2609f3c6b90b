"""ListOps generator: labels against an independent string evaluator, LRA sampling rules, seeding and encoding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from safemotion.data.listops import (
    MAX,
    MED,
    MIN,
    PAD_ID,
    SUM_MOD,
    VOCAB,
    ListOpsConfig,
    Operation,
    encode,
    encode_batch,
    evaluate,
    generate_examples,
    to_source,
    tokenize,
)

SHORT = ListOpsConfig(min_length=20, max_length=128)


def reference_value(source: str) -> tuple[int, int, int]:
    """Evaluate an LRA source string with a stack machine; returns (value, max depth, max argument count)."""
    stack: list[tuple[str, list[int]]] = []
    result, depth, widest = None, 0, 0
    for token in source.split():
        if token in ("(", ")"):
            continue
        if token.startswith("["):
            stack.append((token, []))
            depth = max(depth, len(stack))
        elif token == "]":
            operator, args = stack.pop()
            widest = max(widest, len(args))
            ordered = sorted(args)
            middle = len(ordered) // 2
            value = {
                "[MIN": ordered[0],
                "[MAX": ordered[-1],
                "[MED": ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) // 2,
                "[SM": sum(args) % 10,
            }[operator]
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            digit = int(token)
            assert 0 <= digit <= 9
            if stack:
                stack[-1][1].append(digit)
            else:
                result = digit
    assert not stack and result is not None
    return result, depth, widest


@pytest.fixture(scope="module")
def short_examples():
    return generate_examples(250, seed=1, config=SHORT)


def test_labels_match_an_independent_evaluator(short_examples):
    lra_default = generate_examples(20, seed=2)
    for example in short_examples + lra_default:
        value, _, _ = reference_value(example.source)
        assert example.target == value, example.source


def test_lra_rules_hold_for_generated_examples(short_examples):
    lra_default = generate_examples(20, seed=3)
    for config, examples in ((SHORT, short_examples), (ListOpsConfig(), lra_default)):
        for example in examples:
            tokens = tokenize(example.source)
            assert config.min_length < len(tokens) < config.max_length
            assert set(tokens) <= {str(v) for v in range(10)} | {MIN, MAX, MED, SUM_MOD, "X"}
            _, depth, widest = reference_value(example.source)
            # Operations live at depths 1..max_depth - 1: a node at max_depth is always a digit.
            assert depth <= config.max_depth - 1 and 2 <= widest <= config.max_args
    lengths = [len(tokenize(e.source)) for e in lra_default]
    assert min(lengths) > 500 and max(lengths) < 2000


def test_generation_is_seeded_and_deduplicated(short_examples):
    again = generate_examples(60, seed=1, config=SHORT)
    other = generate_examples(60, seed=4, config=SHORT)
    assert again == short_examples[:60]  # same seed: same stream, so a shorter run is a prefix
    assert other != short_examples[:60]
    assert len({e.source for e in short_examples}) == 250


def test_all_ten_classes_occur_with_extremes_most_common(short_examples):
    counts = Counter(e.target for e in short_examples)
    assert set(counts) == set(range(10))
    # Nested MIN/MAX push values to 0 and 9: each is more frequent than the middle classes on average.
    middle = np.mean([counts[v] for v in range(1, 9)])
    assert counts[0] > middle and counts[9] > middle


def test_operator_semantics_and_lra_string_form():
    assert to_source(Operation(MAX, (2, 9))) == "( ( ( [MAX 2 ) 9 ) ] )"
    assert evaluate(Operation(MED, (1, 2))) == 1  # int(np.median([1, 2])) = int(1.5)
    assert evaluate(Operation(MED, (3, 6, 4, 5))) == 4
    assert evaluate(Operation(MED, (7, 1, 9))) == 7
    assert evaluate(Operation(SUM_MOD, (9, 8, 7))) == 4
    nested = Operation(MIN, (Operation(MAX, (2, 9)), 5, Operation(SUM_MOD, (6, 7))))
    assert evaluate(nested) == 3
    assert reference_value(to_source(nested))[0] == 3
    with pytest.raises(ValueError, match="unknown operator"):
        evaluate(Operation("[FIRST", (1, 2)))


def test_encoding_uses_the_18_token_vocabulary():
    assert len(VOCAB) == 18 and len(set(VOCAB)) == 18
    source = "( ( ( [MAX 2 ) 9 ) ] )"
    assert tokenize(source) == ["[MAX", "2", "9", "X"]
    ids = encode(source)
    assert [VOCAB[i] for i in ids] == ["[MAX", "2", "9", "X", "<eos>"]
    assert VOCAB[encode("( [FIRST 1 ] )")[0]] == "<unk>"
    batch = encode_batch([source, "7"], length=6)
    assert batch.shape == (2, 6) and batch.dtype == np.int64
    assert batch[1].tolist() == [VOCAB.index("7"), VOCAB.index("<eos>")] + [PAD_ID] * 4
    assert encode_batch([source, "7"]).shape == (2, 5)
    with pytest.raises(ValueError, match="raise length"):
        encode_batch([source], length=3)


def test_config_validation():
    with pytest.raises(ValueError, match="no token count fits"):
        ListOpsConfig(min_length=10, max_length=11)
    with pytest.raises(ValueError, match="max_args"):
        ListOpsConfig(max_args=1)
    with pytest.raises(RuntimeError, match="widen the length window"):
        generate_examples(5, seed=0, config=ListOpsConfig(max_depth=2, max_args=2, min_length=10, max_length=20), max_draws=200)
