"""`safemotion unlearn screens`: train a model's prompt screen and motion judge on a dataset and store them.

The prompt screen reads the model's own text encoder (prompt_screen.py); the motion judge reads joints
(motion_judge.py), with take labels (e.g. `shared/data/ase_sword_shield/labels.tsv`) overriding the caption rule for
their clips. The judge is also cross-validated with whole takes held out, and the report gives its AUC and how many of
the relabelled non-violent clips it calls violent at 0.5. Both files are written into the model directory, and the
signal thresholds of config.json are cleared: new screens must be calibrated (`calibrate --signals`) before the model
generates again, so a model never pairs screens with thresholds measured on others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safemotion.models.model_dir import read_model_config
from safemotion.models.text_encoders import TextEncoder, load_text_encoder
from safemotion.unlearn.classifier import TrainSettings
from safemotion.unlearn.motion_judge import (
    cross_validate_judge,
    judge_data,
    judge_report,
    read_take_labels,
    save_motion_judge,
    train_motion_judge,
)
from safemotion.unlearn.prompt_screen import save_prompt_screen, train_prompt_screen
from safemotion.unlearn.record import safety_settings, unlearning_record, update_config_section

REPORT_THRESHOLD = 0.5


@dataclass
class ScreenOptions:
    """Inputs of `safemotion unlearn screens`."""

    model: Path
    data: Path
    take_labels: tuple[Path, ...] = ()
    folds: int = 5
    seed: int = 0
    clip_weights: Path | None = None
    clip_vocab: Path | None = None


def run_screen_training(options: ScreenOptions, encoder: TextEncoder | None = None) -> dict[str, Any]:
    """Train both screens, write them into the model directory, clear its signal thresholds; the training report."""
    config = read_model_config(options.model)
    record = unlearning_record(config)
    if record is None or not record.removed_codes:
        raise ValueError(f"{options.model}: screens judge a concept an LCR model removed; run `safemotion unlearn lcr` "
                         "first")
    settings = TrainSettings(seed=options.seed)
    labels: dict[str, int] = {}
    for file in options.take_labels:
        labels.update(read_take_labels(file))
    if encoder is None:
        encoder = load_text_encoder(config.text_encoder, "cpu", options.clip_weights, options.clip_vocab)
    screen, screen_report = train_prompt_screen(encoder, options.data, record.concept, record.rule, settings)
    data = judge_data(options.data, record.concept, record.rule, labels)
    held_out = judge_report(data, cross_validate_judge(data, options.folds, settings), REPORT_THRESHOLD)
    judge = train_motion_judge(data, record.concept, settings)
    save_prompt_screen(screen, options.model)
    save_motion_judge(judge, options.model)
    cleared = dataclasses.replace(safety_settings(config), prompt_threshold=None, motion_threshold=None,
                                  combiner=None, signals_calibration=None)
    update_config_section(options.model, "safety", cleared.to_dict())
    return {"model_dir": str(options.model), "concept": record.concept, "prompt_screen": screen_report,
            "motion_judge_held_out_takes": {**held_out, "folds": options.folds}}
