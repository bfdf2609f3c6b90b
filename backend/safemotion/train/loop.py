"""The training loop every stage shares: AdamW, linear warm-up then step decay, checkpoints, exact resume, progress.

A checkpoint holds the trained module's state dict, optimiser, scheduler, every random state the loop uses (torch CPU
and CUDA, Python's `random`, the stage's numpy batch generator), the stage's extra state, the validation history and
the iteration. It is a torch.save dict of tensors and plain Python values, written to a temporary file and renamed
into place, and read back with torch.load(weights_only=True). Resuming from iteration k and running to N gives the
same weights as an uninterrupted run to N (same device and thread count).

Validation (optional) runs every `validate_every` iterations and at the end of each call, in eval mode without
gradients, inside `torch.random.fork_rng` with a fixed seed: it sees the same batches and masks every time and leaves
the training's random streams untouched, so weights do not depend on whether or how often it runs.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

CHECKPOINT_FORMAT = 1
VALIDATION_SEED = 20240607  # torch seed inside validation (masking, sampling); batches come from the caller's rng


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings of one stage; milestones are iteration numbers where the lr is multiplied by gamma."""

    iters: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_iters: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range setting."""
        checks = {
            "iters": self.iters >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0, "warmup_iters": self.warmup_iters >= 0,
            "gamma": 0 < self.gamma <= 1, "milestones": all(m >= 1 for m in self.milestones),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"recipe {name} = {getattr(self, name)!r} is out of range")

    def lr_factor(self, step: int) -> float:
        """Multiplier of lr at 0-based iteration `step`: (step+1)/(warmup+1) during warm-up, then gamma^#milestones."""
        if step < self.warmup_iters:
            return (step + 1) / (self.warmup_iters + 1)
        return self.gamma ** sum(step >= m for m in self.milestones)


class Stage(Protocol):
    """What the loop needs from a stage: the module to train, batches, a loss, extra state to checkpoint."""

    name: str
    module: nn.Module

    def batch(self, rng: np.random.Generator, batch_size: int) -> object:
        """Draw one batch using only `rng` for data randomness."""

    def loss(self, batch: object) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss to minimise and metrics to show."""

    def extra_state(self) -> dict[str, Tensor]:
        """Training state outside the module's state dict (e.g. EMA statistics)."""

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Restore what extra_state returned."""


@dataclass
class TrainResult:
    """What a run did: iterations completed and the loss of every iteration run in this call."""

    iterations: int
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    validation: list[dict[str, float]] = field(default_factory=list)  # {"iteration", "loss", metrics...} per run


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch (CPU and CUDA) and Python's random; return the numpy generator for batches."""
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.Generator(np.random.PCG64(seed))


def _rng_state(data_rng: np.random.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "data": data_rng.bit_generator.state,
    }


def _restore_rng(state: dict, data_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    data_rng.bit_generator.state = state["data"]


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, stage: str) -> dict:
    """Read a checkpoint written by `train`, checking it belongs to `stage`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from; run without --resume first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("stage") != stage:
        raise ValueError(f"{path}: not a '{stage}' checkpoint of format {CHECKPOINT_FORMAT} "
                         f"(found stage {payload.get('stage')!r}, format {payload.get('format')!r})")
    return payload


def _validate(module: nn.Module, validation: Callable[[], dict[str, float]]) -> dict[str, float]:
    """validation() in eval mode, without gradients, on a forked and fixed-seeded torch RNG."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    module.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(VALIDATION_SEED)
            return validation()
    finally:
        module.train()


def train(stage: Stage, recipe: Recipe, checkpoint: Path, seed: int = 3407, resume: bool = False,
          checkpoint_every: int = 1000, progress: bool = True, stop_at: int | None = None,
          validation: Callable[[], dict[str, float]] | None = None, validate_every: int = 0) -> TrainResult:
    """Train stage.module for recipe.iters iterations (or until `stop_at`), checkpointing to `checkpoint`.

    A checkpoint is written every `checkpoint_every` iterations and at the end. With resume, the run continues
    from the checkpoint's iteration with identical state. `validation` (returning {"loss": ..., ...}) runs every
    `validate_every` iterations (0: only at the end of this call); its results are kept in the checkpoint.
    """
    if validate_every < 0:
        raise ValueError(f"validate_every must be >= 0, got {validate_every}")
    recipe.validate()
    data_rng = seed_everything(seed)
    module = stage.module
    device = next(module.parameters()).device
    optimizer = torch.optim.AdamW(module.parameters(), lr=recipe.lr, betas=recipe.betas,
                                  weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_factor)
    start, history = 0, []
    if resume:
        payload = load_checkpoint(checkpoint, stage.name)
        module.load_state_dict({k: v.to(device) for k, v in payload["model"].items()})
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        stage.load_extra_state({k: v.to(device) for k, v in payload["extra"].items()})
        _restore_rng(payload["rng"], data_rng)
        start = int(payload["iteration"])
        history = list(payload.get("validation", []))
    end = recipe.iters if stop_at is None else min(stop_at, recipe.iters)
    result = TrainResult(iterations=start, validation=history)

    def write(iteration: int) -> None:
        save_checkpoint(checkpoint, {
            "format": CHECKPOINT_FORMAT, "stage": stage.name, "iteration": iteration,
            "model": module.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "extra": stage.extra_state(), "rng": _rng_state(data_rng), "recipe": asdict(recipe),
            "validation": result.validation,
        })

    module.train()
    bar = tqdm(range(start, end), initial=start, total=recipe.iters, desc=f"train {stage.name}",
               disable=not progress, dynamic_ncols=True)
    for iteration in bar:
        loss, metrics = stage.loss(stage.batch(data_rng, recipe.batch_size))
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{stage.name}: the loss is {value} at iteration {iteration + 1}; training stopped without writing "
                f"anything (the model directory and {checkpoint.name} stay as they were); lower the learning rate "
                "or check the data, then rerun (with --resume to continue from the checkpoint)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        result.losses.append(value)
        result.metrics = metrics
        result.iterations = iteration + 1
        if progress and (iteration % 10 == 0 or iteration + 1 == end):
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            **{k: f"{v:.3f}" for k, v in metrics.items()})
        done = iteration + 1
        if validation is not None and ((validate_every and done % validate_every == 0) or done == end):
            result.validation.append({"iteration": done, **_validate(module, validation)})
            if progress:
                bar.write(f"{stage.name} iteration {done}: validation loss {result.validation[-1]['loss']:.4f}")
        if done % checkpoint_every == 0 or done == end:
            write(done)
    bar.close()
    module.eval()
    return result
