"""The safety policies a caller may ask for (what each does: safemotion.unlearn.flagging), importable without torch."""

POLICIES = ("sanitize", "block", "allow")
DEFAULT_POLICY = "sanitize"


def check_policy(policy: str) -> str:
    """The policy name, or ValueError listing the known ones."""
    if policy not in POLICIES:
        raise ValueError(f"safety policy {policy!r} is unknown; choose one of {', '.join(POLICIES)}")
    return policy
