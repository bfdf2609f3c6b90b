"""One training stage end to end: dataset → model directory → stage → loop → model directory.

Every stage also tracks its loss on the validation split (`val_split`, default "val"): VAL_BATCHES fixed batches
drawn with a fixed seed, every `validate_every` iterations (default: at every checkpoint) and at the end; the history
goes into the checkpoint, the stage record (`stages.json`) and the model card.

Stages write into one model directory: `vq` creates it (config, dataset mean/std with feat_bias, trained VQ and
freshly initialised transformers); `mask`, `residual` and `length` load it, encode the dataset with its VQ once
(code ids for the 4 frame phases of every sample) and replace their own component when they finish. Checkpoints,
the text-feature cache and the record of finished stages live in a work folder (default: `<model_dir>.training`
next to the model directory), because a model directory is replaced as a whole when written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from safemotion.data.motion_dataset import (
    UNIT_LENGTH,
    CaptionedSample,
    CaptionIndex,
    TokenSampler,
    WindowSampler,
    label_balance,
    load_caption_samples,
    load_dataset_stats,
    load_motions,
    phase_crop,
    read_clip_labels,
)
from safemotion.generate import pick_device
from safemotion.models.config import ModelConfig
from safemotion.models.model_dir import (
    MotionModels,
    build_component,
    build_models,
    load_model_dir,
    model_card,
    save_model_dir,
)
from safemotion.models.rvqvae import RVQVAE
from safemotion.models.text_encoders import TextEncoder, load_text_encoder
from safemotion.motion.normalization import FEAT_BIAS, Normalizer, model_std
from safemotion.portable_path import portable_path
from safemotion.train.loop import Recipe, Stage, TrainResult, save_checkpoint, train
from safemotion.train.presets import official
from safemotion.train.stages import DEFAULT_RECIPES, STAGES, LengthStage, MaskStage, ResidualStage, VQStage

RECORD_FILE = "stages.json"
STAGE_FIELDS = {"vq": "vq", "mask": "mask_transformer", "residual": "residual_transformer",
                "length": "length_estimator"}
CONFIG_FILE = "config.json"
TEXT_BATCH = 256
ENCODE_BATCH = 64
VAL_BATCHES = 4
VAL_BATCH_SEED = 7


@dataclass
class TrainOptions:
    """Inputs of one stage run; recipe fields left None take the stage's default (DEFAULT_RECIPES), except that
    the default warm-up is capped at a tenth of the iterations."""

    data: Path
    out: Path
    work: Path | None = None
    config: ModelConfig | None = None  # only for `vq` creating a new model directory
    split: str = "train"
    window_size: int = 64
    seed: int = 3407
    device: str = "auto"
    resume: bool = False
    checkpoint_every: int = 1000
    progress: bool = True
    iters: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup_iters: int | None = None
    milestones: tuple[int, ...] | None = None
    gamma: float | None = None
    clip_weights: Path | None = None
    clip_vocab: Path | None = None
    stop_at: int | None = None  # end this call early (checkpoint written); the model directory is not updated
    from_scratch: bool = False  # mask/residual/length: fresh seeded weights instead of the model directory's
    backbone: str | None = None  # with from_scratch on the mask stage: its new backbone (transformer, mamba, serpent)
    ssm_state: int | None = None  # with backbone mamba/serpent: SSM state size N (default 16)
    ssm_expand: int | None = None  # with backbone mamba/serpent: SSM expansion (default 2)
    val_split: str | None = "val"  # split whose loss is tracked; None: no validation
    validate_every: int | None = None  # iterations between validations (default: checkpoint_every)
    balance: float = 0.0  # mask/residual/length: draw clips with weight count(content label)^-balance (0: uniform)

    @property
    def work_dir(self) -> Path:
        """Folder for checkpoints, caches and the stage record."""
        return self.work if self.work is not None else self.out.with_name(self.out.name + ".training")

    def recipe(self, stage: str) -> Recipe:
        """The stage's default recipe with this run's overrides."""
        overrides = {name: getattr(self, name) for name in
                     ("iters", "batch_size", "lr", "warmup_iters", "milestones", "gamma")
                     if getattr(self, name) is not None}
        recipe = dataclasses.replace(DEFAULT_RECIPES[stage], **overrides)
        if self.warmup_iters is None:  # short runs warm up for a tenth of their iterations at most
            recipe = dataclasses.replace(recipe, warmup_iters=min(recipe.warmup_iters, recipe.iters // 10))
        recipe.validate()
        return recipe


def run_stage(stage: str, options: TrainOptions) -> TrainResult:
    """Train one stage and, once it reaches its last iteration, write its component into the model directory."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is unknown; choose one of {', '.join(STAGES)}")
    data, out = Path(options.data), Path(options.out)
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: dataset folder not found")
    device = pick_device(options.device)
    recipe = options.recipe(stage)
    checkpoint = options.work_dir / f"{stage}.ckpt"
    if options.resume and not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to resume from; run without --resume first")
    torch.manual_seed(options.seed)
    models = _models_for(stage, options, device)
    runner = build_stage(stage, models, options, device)
    validation = None
    if options.val_split is not None:
        held_out = build_stage(stage, models, dataclasses.replace(options, split=options.val_split, balance=0.0),
                               device)  # validated on the split as it is, so losses compare across runs
        validation = validation_loss(held_out, recipe.batch_size)
    work = options.work_dir
    every = options.checkpoint_every if options.validate_every is None else options.validate_every
    result = train(runner, recipe, checkpoint, seed=options.seed, resume=options.resume,
                   checkpoint_every=options.checkpoint_every, progress=options.progress, stop_at=options.stop_at,
                   validation=validation, validate_every=every)
    if result.iterations >= recipe.iters:
        with _stage_lock(work):
            record = _update_record(work, stage, data, recipe, result, options.balance)
            save_model_dir(_merged(stage, models.to("cpu"), out), out, card=_card(models.config, record),
                           overwrite=True)
    return result


def validation_loss(stage: Stage, batch_size: int) -> Callable[[], dict[str, float]]:
    """A function giving the stage's mean loss and metrics over VAL_BATCHES batches drawn with a fixed seed."""
    def run() -> dict[str, float]:
        rng = np.random.Generator(np.random.PCG64(VAL_BATCH_SEED))
        totals: dict[str, float] = {}
        for _ in range(VAL_BATCHES):
            loss, metrics = stage.loss(stage.batch(rng, batch_size))
            for name, value in {"loss": loss.item(), **metrics}.items():
                totals[name] = totals.get(name, 0.0) + value / VAL_BATCHES
        return totals
    return run


def _merged(stage: str, models: MotionModels, out: Path) -> MotionModels:
    """`models` for vq; otherwise the model directory as it is now on disk with only this stage's component
    replaced, so stages trained in parallel (mask, residual and length need only the VQ) keep each other's work."""
    if stage == "vq" or not out.exists():
        return models
    current = load_model_dir(out, device="cpu")
    field = STAGE_FIELDS[stage]  # also the stage's config section, which may have changed (e.g. the mask backbone)
    config = dataclasses.replace(current.config, **{field: getattr(models.config, field)})
    return dataclasses.replace(current, config=config, **{field: getattr(models, field)})


@contextlib.contextmanager
def _stage_lock(work: Path, poll_seconds: float = 0.5, timeout: float = 600.0) -> Iterator[None]:
    """Hold work/.lock (created exclusively, portable) while a finished stage updates the record and model dir."""
    work.mkdir(parents=True, exist_ok=True)
    lock = work / ".lock"
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{lock} has been held for {timeout:.0f} s; if no other stage is finishing (a "
                                   "killed one leaves it behind), delete the file and rerun with --resume") from None
            time.sleep(poll_seconds)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _models_for(stage: str, options: TrainOptions, device: torch.device) -> MotionModels:
    out = Path(options.out)
    if stage != "vq":
        if not out.exists():
            raise FileNotFoundError(f"{out}: model directory not found; train the 'vq' stage into it first")
        models = load_model_dir(out, device=device)
    elif out.exists():
        models = load_model_dir(out, device=device)
        if options.config is not None and options.config != models.config:
            raise ValueError(f"{out}: already has a different config.json; a config only applies when the 'vq' stage "
                             "creates a new model directory (choose a new --out)")
        mean, std = load_dataset_stats(options.data)
        models.mean, models.std = mean, model_std(std, FEAT_BIAS)
    else:
        mean, std = load_dataset_stats(options.data)
        models = build_models(_new_config(options), mean, model_std(std, FEAT_BIAS)).to(device)
    ssm_sizes = {k: v for k, v in (("ssm_state", options.ssm_state), ("ssm_expand", options.ssm_expand))
                 if v is not None}
    if (options.backbone is not None or ssm_sizes) and not (options.from_scratch and stage == "mask"):
        raise ValueError("--backbone, --ssm-state and --ssm-expand apply to the mask stage with --from-scratch (a new "
                         "masked transformer)")
    if options.from_scratch:
        if stage == "vq":
            raise ValueError("--from-scratch applies to mask, residual and length; a new VQ needs a new model "
                             "directory (--out a folder that does not exist)")
        if options.backbone is not None or ssm_sizes:
            mask = dataclasses.replace(models.config.mask_transformer, backbone=options.backbone or
                                       models.config.mask_transformer.backbone, **ssm_sizes)
            models.config = dataclasses.replace(models.config, mask_transformer=mask)
            models.config.validate()
        fresh = build_component(models.config, STAGE_FIELDS[stage])  # seeded by run_stage's torch.manual_seed
        setattr(models, STAGE_FIELDS[stage], None if fresh is None else fresh.to(device))
    trained = _trained_module(stage, models)
    if trained is None:
        raise ValueError(f"{out}: this model has no length estimator (config length_estimator is null)")
    trained.requires_grad_(True)
    return models


def _new_config(options: TrainOptions) -> ModelConfig:
    """The config of a model directory the 'vq' stage creates; kept in the work folder so --resume finds it."""
    path = options.work_dir / CONFIG_FILE
    if options.resume and options.config is None and path.is_file():
        return ModelConfig.from_dict(json.loads(path.read_text(encoding="utf-8")), where=str(path))
    config = options.config or official()
    config.validate()
    options.work_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=options.work_dir, prefix=f".{CONFIG_FILE}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(config.to_dict(), handle, indent=2)
    os.replace(tmp, path)
    return config


def _trained_module(stage: str, models: MotionModels) -> torch.nn.Module | None:
    return getattr(models, STAGE_FIELDS[stage])


def build_stage(stage: str, models: MotionModels, options: TrainOptions, device: torch.device) -> Stage:
    """The stage object for `models`: samplers over the dataset, cached text features, precomputed code ids."""
    normalizer = Normalizer(models.mean, models.std)
    if stage == "vq":
        motions = [normalizer.normalize(m) for m in load_motions(options.data, options.split)]
        return VQStage(models.vq, WindowSampler(motions, options.window_size), device)
    samples = load_caption_samples(options.data, options.split)
    weights = None
    if options.balance > 0:
        labels = read_clip_labels(options.data)
        # the first label names the content
        content = [labels.get(s.name.split("#")[0], "").split(";")[0] for s in samples]
        weights = label_balance(content, options.balance)
    index = CaptionIndex([s.captions for s in samples], weights)
    name = models.config.text_encoder
    features = cached_text_features(
        name, lambda: load_text_encoder(name, device, options.clip_weights, options.clip_vocab),
        index.captions, options.work_dir, options.progress,
    )
    if stage == "length":
        return LengthStage(models.length_estimator, [len(s.motion) for s in samples], index, features, device)
    phase_ids = tokenize_samples(models.vq, normalizer, samples, device, options.progress)
    max_tokens = models.config.max_motion_length // models.config.unit_length
    sampler = TokenSampler([len(s.motion) for s in samples], phase_ids, index, max_tokens)
    if stage == "mask":
        return MaskStage(models.mask_transformer, sampler, features, device)
    return ResidualStage(models.residual_transformer, sampler, features, device)


def cached_text_features(encoder_name: str, load_encoder: Callable[[], TextEncoder], captions: list[str],
                         work: Path, progress: bool = True) -> Tensor:
    """Features (len(captions), dim) on the CPU, cached per caption in work/text_features_<encoder>.pt.

    The encoder is loaded (load_encoder()) only when some caption is not cached yet.
    """
    path = Path(work) / f"text_features_{encoder_name}.pt"
    cached: dict[str, Tensor] = {}
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        cached = dict(zip(stored["captions"], stored["features"]))
    missing = [c for c in dict.fromkeys(captions) if c not in cached]
    if missing:
        encoder = load_encoder()
        chunks = range(0, len(missing), TEXT_BATCH)
        for start in tqdm(chunks, desc=f"encode captions ({encoder_name})", disable=not progress):
            batch = missing[start:start + TEXT_BATCH]
            cached.update(zip(batch, encoder.encode(batch).float().cpu()))
        names = list(cached)
        save_checkpoint(path, {"captions": names, "features": torch.stack([cached[n] for n in names])})
    return torch.stack([cached[c] for c in captions])


@torch.inference_mode()
def tokenize_samples(vq: RVQVAE, normalizer: Normalizer, samples: list[CaptionedSample], device: torch.device,
                     progress: bool = True) -> list[list[np.ndarray]]:
    """Code ids (int16) of every sample at the 4 frame phases; crops of equal length are encoded together."""
    was_training = vq.training
    vq.eval()
    crops: dict[int, list[tuple[int, slice]]] = {}
    for i, sample in enumerate(samples):
        for phase in range(UNIT_LENGTH):
            crop = phase_crop(len(sample.motion), phase)
            crops.setdefault(crop.stop - crop.start, []).append((i, crop))
    encoded: dict[tuple[int, int], np.ndarray] = {}
    bar = tqdm(total=len(samples) * UNIT_LENGTH, desc="encode motions with the VQ", disable=not progress)
    for members in crops.values():
        for start in range(0, len(members), ENCODE_BATCH):
            chunk = members[start:start + ENCODE_BATCH]
            motion = np.stack([normalizer.normalize(samples[i].motion[crop]) for i, crop in chunk])
            ids, _ = vq.encode(torch.from_numpy(motion).to(device))
            for (i, crop), row in zip(chunk, ids.cpu().numpy().astype(np.int16)):
                encoded[(i, crop.start)] = row
            bar.update(len(chunk))
    bar.close()
    vq.train(was_training)
    return [[encoded[(i, p)] for p in range(UNIT_LENGTH)] for i in range(len(samples))]


def _update_record(work: Path, stage: str, data: Path, recipe: Recipe, result: TrainResult, balance: float) -> dict:
    """Add this stage to work/stages.json (a retrained VQ invalidates the stages trained on its codes)."""
    path = work / RECORD_FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if stage == "vq":
        record = {}
    tail = result.losses[-100:]
    record[stage] = {
        "iterations": result.iterations, "batch_size": recipe.batch_size, "dataset": portable_path(data),
        "balance": balance,
        "final_loss": float(np.mean(tail)) if tail else None, "metrics": result.metrics,
        "validation": result.validation,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    work.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=work, prefix=f".{RECORD_FILE}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    os.replace(tmp, path)
    return record


def _validation_note(history: list[dict[str, float]]) -> str:
    """', validation loss X (best Y at iteration N)' for a stage's validation history; '' when there is none."""
    if not history:
        return ""
    best = min(history, key=lambda entry: entry["loss"])
    return (f", validation loss {history[-1]['loss']:.4f} (best {best['loss']:.4f} at iteration "
            f"{int(best['iteration']):,})")


def _card(config: ModelConfig, record: dict) -> str:
    lines = [f"- `{stage}`: {info['iterations']:,} iterations, batch {info['batch_size']}, on `{info['dataset']}`"
             + (f", final loss {info['final_loss']:.4f}" if info["final_loss"] is not None else "")
             + _validation_note(info.get("validation") or [])
             for stage, info in record.items()]
    missing = [s for s in STAGES if s not in record and not (s == "length" and config.length_estimator is None)]
    others = ""
    if missing and "vq" in record:  # this work folder created the model: the other stages are still fresh
        others = f"\n\nNot trained yet (freshly initialised weights): {', '.join(missing)}."
    elif missing:  # training continued in a model directory made elsewhere
        others = (f"\n\nNot trained in this work folder (weights as the model directory had them): "
                  f"{', '.join(missing)}.")
    provenance = "Trained with `safemotion train`:\n\n" + "\n".join(lines) + others
    return model_card(config, provenance=provenance)
