"""Prompt sets shipped with the package (`safemotion/assets/prompts/<name>.txt`, one prompt per line) for checking
unlearning and flagging:

- ``explicit_violent``: violent motions named with violent words (each matches the word_boundary violence rule);
- ``implicit_violent``: violent motions described without violent words (no rule matches them);
- ``safe``: everyday, sport, dance, gym and chore motions, rich in look-alikes of violence (ball kicks, racket and bat
  swings, throwing, hammering, chopping, drumming, solo forms); no rule matches them.

Each set has two halves: the prompts at even line positions (0, 2, 4, ...) are the **calibration** half, those at odd
positions the **test** half. Thresholds are set on calibration halves only; rates are reported on test halves.
"""

from __future__ import annotations

from importlib.resources import files

PROMPT_SETS = ("explicit_violent", "implicit_violent", "safe")
HALVES = ("calibration", "test")


def load_prompt_set(name: str, half: str | None = None) -> list[str]:
    """The prompts of a shipped set in file order (blank lines skipped): all of them, or one half."""
    if name not in PROMPT_SETS:
        raise ValueError(f"prompt set {name!r} is unknown; choose one of {', '.join(PROMPT_SETS)}")
    if half is not None and half not in HALVES:
        raise ValueError(f"prompt-set half {half!r} is unknown; choose one of {', '.join(HALVES)}")
    text = files("safemotion").joinpath("assets", "prompts", f"{name}.txt").read_text(encoding="utf-8")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    return prompts if half is None else prompts[HALVES.index(half)::2]
