"""SafeMotion Blender extension (Blender 4.2–5.0).

The add-on talks HTTP to a SafeMotion backend and never imports torch. Its panel and operators arrive with the
Blender-extension issue; until then it registers nothing.
"""


def register() -> None:
    """Register the add-on's classes with Blender."""


def unregister() -> None:
    """Unregister everything `register` added."""
