"""One decision per motion from three signals: the code-hit ratio, the prompt screen and the motion judge.

Signals (each with its own threshold, stored in config.json's `safety` section and set by
`safemotion unlearn calibrate --signals` on the calibration halves of the shipped prompt sets):

- ``code_hit``: share of base tokens drawn from LCR-removed codes (flagging.py); threshold `threshold`.
- ``prompt``: P(concept) of the request text (prompt_screen.py); threshold `prompt_threshold`. Known before
  generation, so under `block` a request whose prompt fires is refused without generating.
- ``motion``: P(concept) of the generated motion (motion_judge.py); threshold `motion_threshold` (reported alone).
- ``combined``: a calibrated logistic combiner of the three,
  σ(w₁·hit_ratio + w₂·logit(prompt) + w₃·logit(motion) + b), threshold `combiner.threshold`.

The documented rule: a motion is **flagged when the prompt signal or the combined signal fires**. The code-hit and
motion signals alone are evidence the combiner weighs (a soccer kick shares codes with a kick, a drum roll moves like
a flurry), so each is reported with its own threshold and "fired", but neither flags on its own. A model without
screens (no screen files, no signal thresholds) flags by the code-hit signal alone, as before; its record lists only
that signal.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

FLAGGING_SIGNALS = ("prompt", "combined")
SIGNAL_LABELS = {"code_hit": "code-hit ratio", "prompt": "prompt screen", "motion": "motion judge",
                 "combined": "combined score"}
_EPS = 1e-6


@dataclass
class Signal:
    """One signal's score, the threshold it is compared with, and whether it reached it."""

    name: str
    score: float
    threshold: float
    fired: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """e.g. 'prompt screen 0.97 ≥ 0.62'."""
        return f"{SIGNAL_LABELS[self.name]} {self.score:.2f} {'≥' if self.fired else '<'} {self.threshold:.2f}"


@dataclass
class Combiner:
    """The calibrated logistic combiner of (hit ratio, logit prompt score, logit motion score)."""

    weights: list[float]
    bias: float
    threshold: float

    def score(self, hit_ratio: float, prompt: float, motion: float) -> float:
        """Combined probability of one motion."""
        z = float(np.dot(self.weights, combiner_inputs(hit_ratio, prompt, motion)) + self.bias)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "safety.combiner") -> Combiner:
        """Parse; a malformed combiner raises ValueError naming `where`."""
        try:
            combiner = cls(weights=[float(w) for w in data["weights"]], bias=float(data["bias"]),
                           threshold=float(data["threshold"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: expected weights (3 numbers), bias and threshold ({err})") from None
        if len(combiner.weights) != 3 or not 0 < combiner.threshold < 1:
            raise ValueError(f"{where}: expected 3 weights and a threshold in (0, 1)")
        return combiner


def logit(p: float | np.ndarray) -> float | np.ndarray:
    """log(p / (1 − p)) with p clipped to [1e-6, 1 − 1e-6]."""
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def combiner_inputs(hit_ratio: float | np.ndarray, prompt: float | np.ndarray,
                    motion: float | np.ndarray) -> np.ndarray:
    """The combiner's inputs [hit_ratio, logit(prompt), logit(motion)] (last axis)."""
    return np.stack(np.broadcast_arrays(np.asarray(hit_ratio, dtype=np.float64), logit(prompt), logit(motion)),
                    axis=-1)


@dataclass
class Decision:
    """The signals of one motion, whether it is flagged, and why (a clause for the record's sentence)."""

    signals: list[Signal]
    flagged: bool
    why: str


def decide(hit_ratio: float, hit_threshold: float, prompt: float, motion: float, prompt_threshold: float,
           motion_threshold: float, combiner: Combiner) -> Decision:
    """Every signal and the documented rule: flagged when the prompt or the combined signal fires."""
    combined = combiner.score(hit_ratio, prompt, motion)
    signals = [Signal("code_hit", hit_ratio, hit_threshold, hit_ratio >= hit_threshold),
               Signal("prompt", prompt, prompt_threshold, prompt >= prompt_threshold),
               Signal("motion", motion, motion_threshold, motion >= motion_threshold),
               Signal("combined", combined, combiner.threshold, combined >= combiner.threshold)]
    firing = [s for s in signals if s.name in FLAGGING_SIGNALS and s.fired]
    if firing:
        why = "flagged by the " + " and the ".join(s.describe() for s in firing)
    else:
        why = "not flagged: " + " and ".join(s.describe() for s in signals if s.name in FLAGGING_SIGNALS)
    evidence = [s.describe() for s in signals if s.name not in FLAGGING_SIGNALS]
    return Decision(signals, bool(firing), f"{why} ({'; '.join(evidence)})")


def with_code_hits_deciding(decision: Decision) -> Decision:
    """The decision for an edit of an existing take: the tokens it keeps came from a prompt no screen has seen, so the
    code-hit signal flags on its own too (an edit cannot bring removed content back)."""
    code_hit = next(s for s in decision.signals if s.name == "code_hit")
    if decision.flagged or not code_hit.fired:
        return decision
    return Decision(decision.signals, True, f"flagged by the {code_hit.describe()}, which decides on its own for an "
                                            f"edit of an existing take ({decision.why})")


def prompt_decision(prompt: float, prompt_threshold: float) -> Decision:
    """The decision known before generation: the prompt signal alone (used to refuse under `block`)."""
    signal = Signal("prompt", prompt, prompt_threshold, prompt >= prompt_threshold)
    verb = "flagged before generation by the" if signal.fired else "not flagged by the"
    return Decision([signal], signal.fired, f"{verb} {signal.describe()}")
