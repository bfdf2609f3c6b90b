"""Prompt sets shipped with the package (`safemotion/assets/prompts/<name>.txt`, one prompt per line) for checking
unlearning and flagging:

- ``explicit_violent``: violent motions named with violent words (each matches the word_boundary violence rule);
- ``implicit_violent``: violent motions described without violent words (no rule matches them);
- ``safe``: everyday motions in the style of the dataset captions (no rule matches them).
"""

from __future__ import annotations

from importlib.resources import files

PROMPT_SETS = ("explicit_violent", "implicit_violent", "safe")


def load_prompt_set(name: str) -> list[str]:
    """The prompts of a shipped set, in file order (blank lines skipped)."""
    if name not in PROMPT_SETS:
        raise ValueError(f"prompt set {name!r} is unknown; choose one of {', '.join(PROMPT_SETS)}")
    text = files("safemotion").joinpath("assets", "prompts", f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
