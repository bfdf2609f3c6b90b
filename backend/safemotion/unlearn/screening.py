"""A model directory's screens: its prompt screen and motion judge with their calibrated thresholds and combiner.

A model is either unscreened (no screen files and no signal thresholds: it flags by the code-hit ratio alone) or
fully screened. Anything in between is refused with the command that fixes it, so a model never runs half-screened:
screen files without calibrated thresholds, thresholds without the files, only one of the two screens, or screens
made for another concept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from safemotion.models.config import ModelConfig
from safemotion.models.text_encoders import TextEncoder
from safemotion.unlearn.decision import Combiner, Decision, decide, prompt_decision
from safemotion.unlearn.motion_judge import MOTION_JUDGE_FILE, MotionJudge, load_motion_judge
from safemotion.unlearn.prompt_screen import PROMPT_SCREEN_FILE, PromptScreen, load_prompt_screen
from safemotion.unlearn.record import SafetySettings, safety_settings, unlearning_record


class ScreeningError(ValueError):
    """A model's screens are missing, uncalibrated or inconsistent."""


@dataclass
class Screens:
    """The loaded screens of one model and the settings that judge their scores."""

    prompt: PromptScreen
    motion: MotionJudge
    settings: SafetySettings
    combiner: Combiner | None  # parsed once from settings.combiner; None only before `calibrate --signals`

    def prompt_scores(self, encoder: TextEncoder, prompts: Sequence[str]) -> np.ndarray:
        """P(concept) of each request text."""
        return self.prompt.score_prompts(encoder, list(prompts))

    def prompt_scores_of_features(self, features: Tensor) -> np.ndarray:
        """P(concept) of text features (N, dim) the generator already computed."""
        return self.prompt.scores(features.float().cpu().numpy())

    def motion_scores(self, joints: Sequence[np.ndarray]) -> np.ndarray:
        """P(concept) of each motion (joints [T, 22, 3] at 20 fps)."""
        return np.array([self.motion.score(j) for j in joints])

    def before_generation(self, prompt: float) -> Decision:
        """The prompt signal alone (known before generating)."""
        return prompt_decision(prompt, self.settings.prompt_threshold)

    def decide(self, hit_ratio: float, hit_threshold: float, prompt: float, motion: float) -> Decision:
        """Every signal and the combined decision of one generated motion."""
        if self.combiner is None:
            raise ScreeningError("the screens have no calibrated combiner yet; run `safemotion unlearn calibrate "
                                 "--signals`")
        return decide(hit_ratio, hit_threshold, prompt, motion, self.settings.prompt_threshold,
                      self.settings.motion_threshold, self.combiner)


def screen_files(model_dir: str | Path) -> dict[str, bool]:
    """Which screen files the model directory holds."""
    model_dir = Path(model_dir)
    return {"prompt screen": (model_dir / PROMPT_SCREEN_FILE).is_file(),
            "motion judge": (model_dir / MOTION_JUDGE_FILE).is_file()}


def load_screens(model_dir: str | Path, config: ModelConfig, require_calibration: bool = True) -> Screens | None:
    """The model's screens, None for an unscreened model; half-screened or uncalibrated models raise ScreeningError."""
    present = screen_files(model_dir)
    settings = safety_settings(config)
    thresholds = [settings.prompt_threshold, settings.motion_threshold, settings.combiner]
    if not any(present.values()) and all(t is None for t in thresholds):
        return None
    missing = [name for name, there in present.items() if not there]
    if missing:
        raise ScreeningError(f"{model_dir}: the {' and '.join(missing)} file is missing but the model is set up for "
                             "screening; train the screens with `safemotion unlearn screens --model "
                             f"{model_dir} --data DATASET`")
    if require_calibration and not settings.signals_calibrated:
        raise ScreeningError(f"{model_dir}: the model has a prompt screen and a motion judge but no calibrated "
                             "prompt/motion thresholds and combiner, so it cannot screen; run `safemotion unlearn "
                             f"calibrate --signals --model {model_dir}`")
    prompt, motion = load_prompt_screen(model_dir, config), load_motion_judge(model_dir, config)
    record = unlearning_record(config)
    concept = None if record is None else record.concept
    for name, screen in (("prompt screen", prompt), ("motion judge", motion)):
        if concept is not None and screen.concept != concept:
            raise ScreeningError(f"{model_dir}: the {name} was trained for {screen.concept!r}, the model unlearned "
                                 f"{concept!r}; retrain it with `safemotion unlearn screens`")
    combiner = None if settings.combiner is None else Combiner.from_dict(settings.combiner)
    return Screens(prompt, motion, settings, combiner)
