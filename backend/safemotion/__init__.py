"""SafeMotion: text-to-motion with unlearned violent content."""

__version__ = "0.1.0"
