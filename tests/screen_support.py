"""Tiny real screens for a tiny LCR model: a prompt screen fitted on the violence concept file with real MiniLM
embeddings, a motion judge fitted on window features of synthetic arm swings (fast = violent, slow = not), and
signal thresholds written into config.json as `calibrate --signals` would."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from safemotion.models.model_dir import read_model_config
from safemotion.models.text_encoders import TextEncoder
from safemotion.unlearn.classifier import TrainSettings, fit_classifier
from safemotion.unlearn.decision import Combiner
from safemotion.unlearn.motion_judge import MotionJudge, clip_features, save_motion_judge
from safemotion.unlearn.prompt_screen import PromptScreen, load_concept_text, save_prompt_screen
from safemotion.unlearn.record import safety_settings, update_config_section

PROMPT_THRESHOLD, MOTION_THRESHOLD = 0.5, 0.5
COMBINER = Combiner(weights=[4.0, 0.5, 0.5], bias=-1.0, threshold=0.6)


def arm_swing(speed: float, frames: int = 60, seed: int = 0) -> np.ndarray:
    """A standing figure [frames, 22, 3] swinging its right wrist forward and back at `speed` cycles per second."""
    rng = np.random.default_rng(seed)
    rest = np.zeros((22, 3))
    rest[:, 1] = np.linspace(0.0, 1.6, 22)  # a vertical stick: every joint above the previous one
    rest[[7, 8, 10, 11], 1] = 0.05  # ankles and feet on the floor
    rest[0, 1] = 0.9
    joints = np.repeat(rest[None], frames, axis=0) + rng.normal(0, 0.002, (frames, 22, 3))
    t = np.arange(frames) / 20.0
    joints[:, 21, 2] += 0.3 * np.sin(2 * np.pi * speed * t)  # right wrist
    joints[:, 19, 2] += 0.15 * np.sin(2 * np.pi * speed * t)  # right elbow
    return joints


def add_tiny_screens(model_dir: Path, encoder: TextEncoder, calibrate: bool = True) -> None:
    """Write both screens (and, with `calibrate`, their thresholds and combiner) into an LCR model directory."""
    text = load_concept_text("violence")
    phrases = [text.description, *text.phrases, *text.contrast_phrases]
    labels = np.array([1] * (1 + len(text.phrases)) + [0] * len(text.contrast_phrases))
    settings = TrainSettings(hidden=8, epochs=200)
    screen = fit_classifier(encoder.encode(phrases).float().numpy(), labels, settings)
    save_prompt_screen(PromptScreen(screen, "violence", "minilm"), model_dir)
    swings = [clip_features(arm_swing(speed, seed=k)) for k, speed in enumerate([0.3, 0.4, 0.5, 2.5, 3.0, 3.5])]
    judge = fit_classifier(np.stack(swings), np.array([0, 0, 0, 1, 1, 1]), settings)
    save_motion_judge(MotionJudge(judge, "violence"), model_dir)
    if calibrate:
        set_signal_thresholds(model_dir)


def set_signal_thresholds(model_dir: Path, prompt: float = PROMPT_THRESHOLD, motion: float = MOTION_THRESHOLD,
                          combiner: Combiner = COMBINER) -> None:
    """Store signal thresholds in config.json."""
    settings = dataclasses.replace(safety_settings(read_model_config(model_dir)), prompt_threshold=prompt,
                                   motion_threshold=motion, combiner=combiner.to_dict(),
                                   signals_calibration={"by": "tests"})
    update_config_section(model_dir, "safety", settings.to_dict())
