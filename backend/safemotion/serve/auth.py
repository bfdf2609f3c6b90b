"""API keys and roles.

A key is `smk_` + 43 URL-safe characters (256 random bits), shown once when created; the database keeps only its
SHA-256 (a fast hash suits a high-entropy secret: there is nothing to brute-force), looked up by hash and compared again
in constant time. Roles: `artist` (generate with sanitize/block, own jobs) and `safety-admin` (also `allow`, every job,
the audit log).

Single-user mode: a server on a loopback address with no keys configured accepts requests without a key, as the local
user with the artist role. Once a key exists, every request needs one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from safemotion.serve.store import ROLES, ApiKey, Store

KEY_PREFIX = "smk_"
KEY_BYTES = 32
MAX_NAME_CHARS = 100
LOCAL_USER = "local"


class AuthError(Exception):
    """A request that may not proceed: `status` 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key's name and role, or the local user of single-user mode."""

    name: str
    role: str
    key_id: int | None = None

    @property
    def is_safety_admin(self) -> bool:
        """Whether the caller holds the safety-admin role."""
        return self.role == "safety-admin"


LOCAL_CALLER = Caller(LOCAL_USER, "artist")


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key's UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(store: Store, name: str, role: str) -> tuple[str, ApiKey]:
    """A new random key (returned once, never stored) and its stored record."""
    if role not in ROLES:
        raise ValueError(f"--role {role!r} is unknown; choose one of {', '.join(ROLES)}")
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable() or name != name.strip():
        raise ValueError(f"--name {name!r}: use 1-{MAX_NAME_CHARS} printable characters without surrounding spaces")
    if name == LOCAL_USER:
        raise ValueError(f"--name {LOCAL_USER!r} is reserved for single-user mode; choose another name")
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    record = store.add_key(name, role, hash_key(key), key[:len(KEY_PREFIX) + 4])
    return key, record


def authenticate(store: Store, presented: str | None, keys_required: bool) -> Caller:
    """The caller for a presented key (None: no Authorization header); AuthError(401) when refused."""
    if presented is None:
        if keys_required:
            raise AuthError(401, "this server needs an API key: send 'Authorization: Bearer <key>' "
                                 "(create one with `safemotion keys add`)")
        return LOCAL_CALLER
    digest = hash_key(presented)
    found = store.find_key(digest)
    if found is None or not hmac.compare_digest(found[1], digest):
        raise AuthError(401, "the API key is not valid (unknown or revoked)")
    key = found[0]
    return Caller(key.name, key.role, key.id)
