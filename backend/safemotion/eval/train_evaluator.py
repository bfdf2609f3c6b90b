"""Training of a text-motion evaluator on a HumanML3D-layout dataset, and the measurements that check it.

Data: every caption line of the train split is a pair (text, (sub-)clip), as in the benchmark; each draw crops the
motion like the official evaluation loader (`evaluation_crop`). Text inputs (MiniLM word states + POS one-hots) are
computed once per distinct token list.

Objective: Guo et al.'s contrastive (Hadsell) loss, d = ‖e_text − e_motion‖₂:
    loss = mean over matching pairs of d² + mean over negative pairs of max(0, margin − d)²,   margin 10.
Guo et al. take one negative per pair (the batch shifted by a random offset); here every other pair of the batch is
a negative except those that are not really different (same token list, or the same clip) — more signal per batch,
which matters on two CPU cores. The movement encoder is trained jointly instead of being pretrained separately.
A batch is the quarter of similar length out of 4× as many random pairs (each pair stays equally likely): less zero
padding for the convolutions, and negatives of similar duration. Training runs on one CPU thread by default: these
small GRUs do not get faster with more threads, and get much slower when other processes share the cores.

The run is split into chunks of `eval_every` iterations of the shared training loop (checkpoint after each, exact
resume); after each chunk the evaluator is scored on the validation split (mean of R@1..3, fixed crops) and the
best weights are kept in the work folder. It stops at `iters` or after `max_minutes`, writes the best weights as an
evaluator folder, and records `measure_evaluator` on the test split in its training.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from safemotion.data.motion_dataset import load_dataset_stats, read_split
from safemotion.eval.evaluator import (
    CoEmbedding,
    Evaluator,
    EvaluatorConfig,
    TextInputs,
    TextMotionPair,
    WordVectorizer,
    evaluation_crop,
    load_text_motion_pairs,
    load_word_vectorizer,
    padded_frames,
    save_evaluator,
)
from safemotion.eval.metrics import BATCH_SIZE, diversity, fid, mm_dist, r_precision
from safemotion.motion.features import FEATURE_DIM
from safemotion.portable_path import portable_path
from safemotion.train.loop import Recipe, load_checkpoint, train

STAGE_NAME = "evaluator"
CHECKPOINT_FILE = "evaluator.ckpt"
BEST_WEIGHTS_FILE = "best.safetensors"
PROGRESS_FILE = "progress.json"
NOISE_STD = 0.5  # perturbation control: Gaussian noise of 0.5 standard deviations per feature
LENGTH_POOL = 4  # a batch is the same-length quarter of 4× as many random candidates


@dataclass(frozen=True)
class EvaluatorTraining:
    """Optimisation settings of an evaluator run."""

    iters: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_iters: int = 200
    milestones: tuple[int, ...] = (2500, 3500)
    gamma: float = 0.3
    margin: float = 10.0
    eval_every: int = 250
    max_minutes: float | None = 20.0
    seed: int = 3407
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    half: bool = True
    threads: int | None = 1  # torch CPU threads while training (None: leave as is)

    def recipe(self) -> Recipe:
        """The shared loop's recipe."""
        return Recipe(iters=self.iters, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                      warmup_iters=self.warmup_iters, milestones=self.milestones, gamma=self.gamma)

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range setting."""
        self.recipe().validate()
        if self.batch_size < 2:
            raise ValueError(f"batch_size is {self.batch_size}; contrastive training needs at least 2 pairs")
        if self.margin <= 0 or self.eval_every < 1:
            raise ValueError(f"margin ({self.margin}) and eval_every ({self.eval_every}) must be positive")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes is {self.max_minutes}; give a positive budget or None")


class TextBank:
    """Vectorized text inputs of the distinct token lists of some pairs, and each pair's row."""

    def __init__(self, pairs: Sequence[TextMotionPair], inputs_of: Callable[[list[tuple[str, ...]]], TextInputs]):
        distinct = list(dict.fromkeys(pair.tokens for pair in pairs))
        row = {tokens: i for i, tokens in enumerate(distinct)}
        self.rows = np.array([row[pair.tokens] for pair in pairs], dtype=np.int64)
        self.inputs = inputs_of(distinct)

    def select(self, rows: np.ndarray) -> TextInputs:
        """Inputs of the given distinct-text rows."""
        index = torch.from_numpy(rows)
        return TextInputs(self.inputs.word_embs[index], self.inputs.pos_onehot[index], self.inputs.lengths[index])


class EvaluatorStage:
    """The contrastive co-embedding objective as a stage of the shared training loop."""

    name = STAGE_NAME

    def __init__(self, networks: CoEmbedding, pairs: Sequence[TextMotionPair], texts: TextBank, mean: np.ndarray,
                 std: np.ndarray, margin: float, device: torch.device):
        self.module = networks
        self.pairs = pairs
        self.texts = texts
        self.mean, self.std = mean, std
        self.margin = margin
        self.device = device
        clip_index = {clip: i for i, clip in enumerate(dict.fromkeys(p.clip_id for p in pairs))}
        self.clips = np.array([clip_index[p.clip_id] for p in pairs], dtype=np.int64)
        self.frames = np.array([len(p.motion) for p in pairs], dtype=np.int64)
        self.unit_length = networks.config.unit_length

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, Tensor]:
        """Random pairs, evaluation-cropped and normalised, with the mask of valid negative pairs."""
        candidates = rng.integers(len(self.pairs), size=LENGTH_POOL * batch_size)
        candidates = candidates[np.argsort(self.frames[candidates], kind="stable")]
        group = int(rng.integers(LENGTH_POOL))
        chosen = candidates[group * batch_size:(group + 1) * batch_size]
        crops = [evaluation_crop(len(self.pairs[i].motion), rng, self.unit_length) for i in chosen]
        longest = padded_frames(max(length for _, length in crops), self.unit_length)
        motions = np.zeros((batch_size, longest, self.mean.shape[0]), np.float32)
        for row, (i, (start, length)) in enumerate(zip(chosen, crops)):
            motions[row, :length] = (self.pairs[i].motion[start:start + length] - self.mean) / self.std
        text_rows, clips = self.texts.rows[chosen], self.clips[chosen]
        negative = (text_rows[:, None] != text_rows[None, :]) & (clips[:, None] != clips[None, :])
        text = self.texts.select(text_rows)
        return {"motions": torch.from_numpy(motions).to(self.device),
                "frames": torch.tensor([length for _, length in crops]),
                "word_embs": text.word_embs.to(self.device), "pos_onehot": text.pos_onehot.to(self.device),
                "text_lengths": text.lengths, "negative": torch.from_numpy(negative).to(self.device)}

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Hadsell contrastive loss over the matching pairs and every valid negative pair."""
        text = self.module.encode_text(batch["word_embs"], batch["pos_onehot"], batch["text_lengths"])
        motion = self.module.encode_motion(batch["motions"], batch["frames"])
        distances = torch.cdist(text, motion)
        positive = distances.diagonal()
        negative = distances[batch["negative"]]
        loss = positive.pow(2).mean()
        if negative.numel():
            loss = loss + (self.margin - negative).clamp(min=0).pow(2).mean()
        return loss, {"pos_dist": positive.mean().item(),
                      "neg_dist": negative.mean().item() if negative.numel() else float("nan")}

    def extra_state(self) -> dict[str, Tensor]:
        """No state outside the networks."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Nothing to restore."""


# ---------------------------------------------------------------------------------------------- measurements

def crop_all(pairs: Sequence[TextMotionPair], rng: np.random.Generator, unit_length: int = 4) -> list[np.ndarray]:
    """One evaluation crop of every pair's motion."""
    crops = []
    for pair in pairs:
        start, length = evaluation_crop(len(pair.motion), rng, unit_length)
        crops.append(pair.motion[start:start + length])
    return crops


def retrieval_scores(text_emb: np.ndarray, motion_emb: np.ndarray, batch_size: int = BATCH_SIZE) -> dict[str, float]:
    """R@1..3 and MM-Dist over batches of `batch_size` (partial last batch dropped, as the official loader)."""
    usable = len(text_emb) // batch_size * batch_size
    if usable == 0:
        raise ValueError(f"{len(text_emb)} pairs are fewer than one batch of {batch_size}")
    r = r_precision(text_emb[:usable], motion_emb[:usable], batch_size)
    return {"r1": float(r[0]), "r2": float(r[1]), "r3": float(r[2]),
            "mm_dist": mm_dist(text_emb[:usable], motion_emb[:usable]), "samples": usable}


def measure_evaluator(evaluator: Evaluator, data: str | Path, split: str = "test", seed: int = 0,
                      batch_size: int = BATCH_SIZE, text_emb: np.ndarray | None = None) -> dict[str, Any]:
    """Real motions of a split against their own captions, and controls that must score clearly worse.

    - R@1..3, MM-Dist: each caption line a sample, shuffled, batches of `batch_size`, one evaluation crop each;
      `shuffled_pairs`: the same with motions paired to random captions (chance: k / batch_size).
    - FID: real vs an independent crop of the same real motions (≈ 0), vs frame-shuffled motions, vs motions with
      Gaussian noise of NOISE_STD feature standard deviations; diversity of the real motions.
    `text_emb` (one row per pair, in load order) skips re-embedding the captions.
    """
    pairs = load_text_motion_pairs(data, read_split(data, split))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    if text_emb is None:
        text_emb = evaluator.embed_texts([p.caption for p in pairs], [p.tokens for p in pairs])
    else:
        text_emb = text_emb[order]
    crops_a, crops_b = crop_all(pairs, rng), crop_all(pairs, rng)
    real_a, real_b = evaluator.embed_motions(crops_a), evaluator.embed_motions(crops_b)
    shuffled_frames = evaluator.embed_motions([m[rng.permutation(len(m))] for m in crops_b])
    noisy = evaluator.embed_motions([m + NOISE_STD * evaluator.std * rng.standard_normal(m.shape).astype(np.float32)
                                     for m in crops_b])
    return {
        "split": split, "pairs": len(pairs), "seed": seed, "batch_size": batch_size,
        "real": retrieval_scores(text_emb, real_a, batch_size),
        "shuffled_pairs": retrieval_scores(text_emb, real_a[rng.permutation(len(real_a))], batch_size),
        "fid_real_vs_real": fid(real_a, real_b),
        "fid_real_vs_frame_shuffled": fid(real_a, shuffled_frames),
        "fid_real_vs_noisy": fid(real_a, noisy),
        "noise_std": NOISE_STD,
        "diversity_real": diversity(real_a, rng=seed),
    }


# ---------------------------------------------------------------------------------------------- training run

def train_evaluator(data: str | Path, out: str | Path, training: EvaluatorTraining | None = None,
                    config: EvaluatorConfig | None = None, work: str | Path | None = None, resume: bool = False,
                    device: str | torch.device = "cpu", progress: bool = True, log: Callable[[str], None] = print,
                    vectorizer: WordVectorizer | None = None) -> dict[str, Any]:
    """Train an evaluator on `data` and write it to `out`; returns the training record (also in training.json).

    Checkpoints and the best weights so far live in `work` (default `<out>.training`); `resume` continues a stopped
    run from there. `max_minutes` counts from the start of this call. `vectorizer` reuses a loaded MiniLM vectorizer.
    """
    training = training or EvaluatorTraining()
    config = config or EvaluatorConfig()
    training.validate()
    config.validate()
    if config.word_features != "minilm":
        raise ValueError(f"training supports MiniLM word features only, the config asks for {config.word_features!r}")
    if config.dim_pose != FEATURE_DIM:
        raise ValueError(f"the config's dim_pose is {config.dim_pose}, but datasets hold {FEATURE_DIM}-d features")
    threads = torch.get_num_threads()
    if training.threads is not None:
        torch.set_num_threads(training.threads)
    try:
        return _train(Path(data), Path(out), training, config, work, resume, torch.device(device), progress, log,
                      vectorizer)
    finally:
        torch.set_num_threads(threads)


def _train(data: Path, out: Path, training: EvaluatorTraining, config: EvaluatorConfig, work: str | Path | None,
           resume: bool, device: torch.device, progress: bool, log: Callable[[str], None],
           vectorizer: WordVectorizer | None) -> dict[str, Any]:
    work = Path(work) if work is not None else out.with_name(out.name + ".training")
    started = time.monotonic()
    mean, std = load_dataset_stats(data)
    train_pairs = load_text_motion_pairs(data, read_split(data, training.train_split))
    val_pairs = load_text_motion_pairs(data, read_split(data, training.val_split))
    if len(val_pairs) < BATCH_SIZE:
        raise ValueError(f"{data}: split '{training.val_split}' has {len(val_pairs)} caption pairs; validation needs "
                         f"at least {BATCH_SIZE}")
    checkpoint = work / CHECKPOINT_FILE
    iteration = int(load_checkpoint(checkpoint, STAGE_NAME)["iteration"]) if resume else 0
    state = _read_progress(work) if resume else {"best": None, "history": []}
    log(f"{len(train_pairs)} training pairs, {len(val_pairs)} validation pairs; computing word features")
    vectorizer = vectorizer or load_word_vectorizer(config, device)

    def vectorize(tokens: list[tuple[str, ...]]) -> TextInputs:
        return vectorizer.vectorize(tokens, config.max_text_len)

    train_texts = TextBank(train_pairs, vectorize)
    torch.manual_seed(training.seed)
    networks = CoEmbedding(config).to(device)
    evaluator = Evaluator(config, networks, mean, std, vectorizer, device, source=str(out))
    stage = EvaluatorStage(networks, train_pairs, train_texts, mean, std, training.margin, device)
    # Fixed shuffle and crops: batches of random pairs, as the benchmark's loader draws them.
    val_rng = np.random.default_rng(training.seed)
    val_pairs = [val_pairs[i] for i in val_rng.permutation(len(val_pairs))]
    val_crops = crop_all(val_pairs, val_rng)
    val_texts = TextBank(val_pairs, vectorize)
    stopped_by = "iterations"
    while iteration < training.iters:
        if training.max_minutes is not None and time.monotonic() - started > 60 * training.max_minutes:
            stopped_by = "time budget"
            break
        stop = min(training.iters, (iteration // training.eval_every + 1) * training.eval_every)
        result = train(stage, training.recipe(), checkpoint, seed=training.seed, resume=iteration > 0 or resume,
                       checkpoint_every=training.eval_every, progress=progress, stop_at=stop)
        iteration = result.iterations
        scores = retrieval_scores(evaluator.embed_text_inputs(val_texts.select(val_texts.rows)),
                                  evaluator.embed_motions(val_crops))
        tail = result.losses[-100:]
        entry = {"iteration": iteration, "loss": float(np.mean(tail)) if tail else float("nan"),
                 "minutes": (time.monotonic() - started) / 60, **scores}
        state["history"].append(entry)
        log(f"iteration {iteration}: loss {entry['loss']:.3f}, val R@1 {scores['r1']:.3f} R@2 {scores['r2']:.3f} "
            f"R@3 {scores['r3']:.3f} MM-Dist {scores['mm_dist']:.3f} ({entry['minutes']:.1f} min)")
        score = (scores["r1"] + scores["r2"] + scores["r3"]) / 3
        improved = state["best"] is None or score > state["best"]["score"]
        if improved:
            state["best"] = {"score": score, "iteration": iteration, "val": scores}
        _write_progress(work, networks if improved else None, state)

    if state["best"] is None:
        raise ValueError(f"{work}: no validated weights; the run stopped before its first {training.eval_every} "
                         "iterations (raise max_minutes)")
    best = load_file(str(work / BEST_WEIGHTS_FILE))
    dtype = torch.float16 if training.half else torch.float32  # measure the weights as they will be stored
    networks.load_state_dict({k: v.to(dtype).float().to(device) for k, v in best.items()})
    networks.eval()
    log(f"best validation at iteration {state['best']['iteration']}; measuring on split '{training.test_split}'")
    record = {
        "dataset": portable_path(data), "training": asdict(training), "iterations": iteration,
        "stopped_by": stopped_by, "minutes_this_run": (time.monotonic() - started) / 60, **state,
        "loss": "hadsell contrastive (margin 10), all in-batch negatives except same text or same clip",
        "word_features": "all-MiniLM-L6-v2 last hidden state per word (mean over word pieces) + POS one-hot",
    }
    record["test"] = measure_evaluator(evaluator, data, training.test_split, seed=training.seed)
    save_evaluator(networks, mean, std, out, half=training.half, training=record)
    return record


def _write_progress(work: Path, networks: CoEmbedding | None, state: dict[str, Any]) -> None:
    """Validation history and best score (progress.json), and the best weights when `networks` is given."""
    work.mkdir(parents=True, exist_ok=True)
    writers = [(PROGRESS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(state), encoding="utf-8"))]
    if networks is not None:
        weights = {k: v.detach().cpu().contiguous() for k, v in networks.state_dict().items()}
        writers.insert(0, (BEST_WEIGHTS_FILE, lambda tmp: save_file(weights, tmp)))
    for name, write in writers:
        fd, tmp = tempfile.mkstemp(dir=work, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, work / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _read_progress(work: Path) -> dict[str, Any]:
    file = work / PROGRESS_FILE
    if not file.is_file() or not (work / BEST_WEIGHTS_FILE).is_file():
        return {"best": None, "history": []}
    return json.loads(file.read_text(encoding="utf-8"))
