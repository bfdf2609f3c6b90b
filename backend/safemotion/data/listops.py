"""ListOps (Long Range Arena rules): seeded expression generator, evaluator and the 18-token encoding used by SSM papers.

Generator: `google-research/long-range-arena`, `lra_benchmarks/data/listops.py`. A node at depth < max_depth is an
operation with probability VALUE_P = 0.25, otherwise a digit; an operation takes 2..max_args arguments (generated first,
then the operator is drawn), is one of MIN, MAX, MED, SM (sum mod 10) and is closed by "]". A tree is kept when
min_length < tokens < max_length (operators, digits and "]"; parentheses not counted); duplicates are dropped. The random
draws happen in LRA's order, so `random.Random(seed)` reproduces LRA's sampler seeded with `random.seed(seed)`.
LRA itself fixes no seed and keeps the samples in a Python set; here the order is the order of first generation.

Encoding (S4 and later): drop "(" and ")", write "]" as "X", append <eos>, pad with <pad>.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Union

import numpy as np

MIN, MAX, MED, SUM_MOD, END = "[MIN", "[MAX", "[MED", "[SM", "]"
OPERATORS: tuple[str, ...] = (MIN, MAX, MED, SUM_MOD)
VALUE_P = 0.25
N_CLASSES = 10

PAD, UNK, EOS, CLOSE = "<pad>", "<unk>", "<eos>", "X"
VOCAB: tuple[str, ...] = (PAD, UNK, EOS) + tuple(str(v) for v in range(10)) + OPERATORS + (CLOSE,)
TOKEN_ID: dict[str, int] = {token: i for i, token in enumerate(VOCAB)}
PAD_ID = TOKEN_ID[PAD]


@dataclass(frozen=True)
class Operation:
    """An operator applied to its arguments (digits or operations)."""

    operator: str
    args: tuple["Tree", ...]


Tree = Union[int, Operation]


@dataclass(frozen=True)
class ListOpsConfig:
    """Sampler limits; the defaults are LRA's (lengths are exclusive bounds on the token count)."""

    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500
    max_length: int = 2000

    def __post_init__(self) -> None:
        if self.max_depth < 1 or self.max_args < 2:
            raise ValueError(f"ListOpsConfig needs max_depth >= 1 and max_args >= 2, got {self.max_depth}, {self.max_args}")
        if self.max_length - self.min_length < 2:
            raise ValueError(
                f"ListOpsConfig: no token count fits min_length {self.min_length} < length < max_length {self.max_length}"
            )


@dataclass(frozen=True)
class ListOpsExample:
    """One sample: the LRA source string (with parentheses) and its value 0..9."""

    source: str
    target: int


def generate_tree(rng: random.Random, config: ListOpsConfig, depth: int = 1) -> tuple[Tree, int]:
    """Sample one tree with LRA's recursion; returns the tree and its token count."""
    r = rng.random() if depth < config.max_depth else 1.0
    if r > VALUE_P:
        return rng.choice(range(10)), 1
    n_args = rng.randint(2, config.max_args)
    args, length = [], 2
    for _ in range(n_args):
        arg, arg_length = generate_tree(rng, config, depth + 1)
        args.append(arg)
        length += arg_length
    return Operation(rng.choice(OPERATORS), tuple(args)), length


def evaluate(tree: Tree) -> int:
    """Value of a tree: MIN, MAX, MED = int(np.median) (mean of the middle pair, truncated), SM = sum mod 10."""
    if isinstance(tree, int):
        return tree
    values = [evaluate(arg) for arg in tree.args]
    if tree.operator == MIN:
        return min(values)
    if tree.operator == MAX:
        return max(values)
    if tree.operator == MED:
        return int(np.median(values))
    if tree.operator == SUM_MOD:
        return sum(values) % 10
    raise ValueError(f"evaluate: unknown operator {tree.operator!r}; expected one of {OPERATORS}")


def to_source(tree: Tree) -> str:
    """LRA string form: nested binary pairs, e.g. MAX(2, 9) -> '( ( ( [MAX 2 ) 9 ) ] )'."""
    if isinstance(tree, int):
        return str(tree)
    text = f"( {tree.operator} {to_source(tree.args[0])} )"
    for arg in tree.args[1:]:
        text = f"( {text} {to_source(arg)} )"
    return f"( {text} {END} )"


def generate_examples(n: int, seed: int, config: ListOpsConfig = ListOpsConfig(), max_draws: int = 10_000_000) -> list[ListOpsExample]:
    """n distinct examples passing the length filter, deterministic in seed."""
    rng = random.Random(seed)
    kept: dict[str, int] = {}
    draws = 0
    while len(kept) < n:
        if draws >= max_draws:
            raise RuntimeError(
                f"generate_examples: only {len(kept)} of {n} examples after {max_draws} draws; "
                f"widen the length window ({config.min_length}, {config.max_length}) or raise max_depth/max_args"
            )
        draws += 1
        tree, length = generate_tree(rng, config)
        if config.min_length < length < config.max_length:
            kept.setdefault(to_source(tree), evaluate(tree))
    return [ListOpsExample(source, target) for source, target in kept.items()]


def tokenize(source: str) -> list[str]:
    """Model tokens of a source string: parentheses dropped, ']' written as 'X' (no <eos>)."""
    return [CLOSE if token == END else token for token in source.split() if token not in ("(", ")")]


def encode(source: str) -> list[int]:
    """Token ids of a source string followed by <eos>; unknown tokens map to <unk>."""
    return [TOKEN_ID.get(token, TOKEN_ID[UNK]) for token in tokenize(source)] + [TOKEN_ID[EOS]]


def encode_batch(sources: list[str], length: int | None = None) -> np.ndarray:
    """(batch, length) int64 ids padded with <pad>; length defaults to the longest encoding."""
    encoded = [encode(source) for source in sources]
    longest = max((len(ids) for ids in encoded), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"encode_batch: an encoding has {longest} tokens, more than length={length}; raise length")
    batch = np.full((len(encoded), length), PAD_ID, dtype=np.int64)
    for row, ids in zip(batch, encoded):
        row[: len(ids)] = ids
    return batch
