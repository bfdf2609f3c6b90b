"""`safemotion unlearn finetune`: the fine-tuning baseline — continue training the masked transformer (optionally the
residual one) of a model on the retain clips only, with the training package's loop (hmu_unlearning.md §4).

Upstream resumes the released transformer (`--is_continue`, lr already decayed past its milestone) on the retain-only
dataset for as many epochs again. SafeMotion's defaults mirror that: lr 2e-5 (2e-4 × γ 0.1), no warm-up, no
milestones, the stage's usual iteration count and batch 64 (override with iters/batch_size/lr).

Training runs in a work folder (default `<out>.training`: the model copy under `model/`, checkpoints, text-feature
cache; resumable); only a finished run writes `out`, with the unlearning record.

Retrain reference D_r (not a command of its own): train the stages on the retain clips of the train split with
`safemotion train`, passing the retain split file relative to the dataset without `.txt` as --split. Either every
stage into a new model directory (`train vq ... --preset mini` first), or, as the published report does, on a copy
of the original model that keeps its VQ (so its codes, and the flag rates, stay comparable) with fresh transformers:

    R=kw_splits/word_boundary/train-wo-violence
    cp -r MODEL MODEL_DR
    safemotion train mask     --data DATA --out MODEL_DR --split $R --from-scratch
    safemotion train residual --data DATA --out MODEL_DR --split $R --from-scratch
    safemotion train length   --data DATA --out MODEL_DR --split $R --from-scratch
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safemotion.data.concepts import DEFAULT_RULE
from safemotion.models.model_dir import load_model_dir, save_model_dir, stored_dtype
from safemotion.portable_path import portable_path
from safemotion.train import DEFAULT_RECIPES, TrainOptions, run_stage
from safemotion.unlearn.concept_split import load_concept_split
from safemotion.unlearn.record import (
    UnlearningRecord,
    model_card_with_unlearning,
    require_original_model,
    save_unlearned_model,
    source_model_info,
)

FINETUNE_LR = 2e-5  # the released schedule's rate after its milestone (2e-4 × 0.1)


@dataclass
class FinetuneOptions:
    """Inputs of `safemotion unlearn finetune`; None recipe fields take the defaults described above."""

    model: Path
    data: Path
    out: Path
    concept: str = "violence"
    rule: str = DEFAULT_RULE
    split: str = "train"
    residual: bool = False
    iters: int | None = None
    batch_size: int | None = None
    lr: float = FINETUNE_LR
    seed: int = 3407
    device: str = "auto"
    work: Path | None = None
    resume: bool = False
    checkpoint_every: int = 1000
    progress: bool = True
    overwrite: bool = False
    clip_weights: Path | None = None
    clip_vocab: Path | None = None

    @property
    def work_dir(self) -> Path:
        """Folder of the training copy, checkpoints and caches."""
        return self.work if self.work is not None else Path(self.out).with_name(Path(self.out).name + ".training")


def run_finetune(options: FinetuneOptions) -> Path:
    """Fine-tune on the retain split and write the unlearned model directory; returns its path."""
    out = Path(options.out)
    if out.exists() and not options.overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    split = load_concept_split(options.data, options.concept, options.rule, options.split)
    source = load_model_dir(options.model)
    require_original_model(source.config, options.model)
    training_copy = options.work_dir / "model"
    if not (options.resume and training_copy.exists()):
        save_model_dir(source, training_copy, overwrite=True)
    stages = ["mask", "residual"] if options.residual else ["mask"]
    results = {}
    for stage in stages:
        train_options = TrainOptions(
            data=Path(options.data), out=training_copy, work=options.work_dir, split=split.split_name("retain"),
            seed=options.seed, device=options.device,
            resume=options.resume and (options.work_dir / f"{stage}.ckpt").is_file(),
            checkpoint_every=options.checkpoint_every, progress=options.progress, iters=options.iters,
            batch_size=options.batch_size, lr=options.lr, warmup_iters=0, milestones=(),
            clip_weights=options.clip_weights, clip_vocab=options.clip_vocab,
            val_split=None,  # the fine-tune is judged by its forget/retain evaluation, not a validation loss
        )
        results[stage] = run_stage(stage, train_options)
    tuned = load_model_dir(training_copy)
    record = UnlearningRecord(
        method="finetune", concept=options.concept, rule=options.rule, split_files=split.provenance(),
        settings={"stages": stages, "lr": options.lr, "warmup_iters": 0, "seed": options.seed,
                  "dataset": portable_path(options.data),
                  "iters": {s: r.iterations for s, r in results.items()},
                  "batch_size": options.batch_size or DEFAULT_RECIPES["mask"].batch_size,
                  "final_loss": {s: (sum(r.losses[-100:]) / len(r.losses[-100:]) if r.losses else None)
                                 for s, r in results.items()}},
        source_model=source_model_info(options.model),
    )
    return save_unlearned_model(tuned, out, record, model_card_with_unlearning(options.model, record),
                                overwrite=options.overwrite, dtype=stored_dtype(options.model))
