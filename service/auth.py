"""API keys: hashed when loaded, looked up by digest, never kept or logged in clear."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from core.errors import AuthenticationFailed


def key_digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def owner_id(digest: bytes) -> str:
    """The stable, non-secret id of a key's owner, used in Redis keys and logs."""
    return digest[:8].hex()


class KeyRing:
    """The accepted API keys, as SHA-256 digests.

    A presented key is hashed and compared against every stored digest with
    `hmac.compare_digest`, so the time taken reveals nothing about how close a guess was
    (and the clear keys are dropped once hashed).
    """

    def __init__(self, api_keys: Iterable[str]):
        self._digests = [key_digest(key) for key in api_keys if key]

    def __len__(self) -> int:
        return len(self._digests)

    def authenticate(self, api_key: str | None) -> str:
        """The owner id for a valid key; AuthenticationFailed otherwise."""
        if not api_key:
            raise AuthenticationFailed(
                "Missing API key: send `Authorization: Bearer <key>` or an authentication "
                "task first.",
                code="missingApiKey",
            )
        presented = key_digest(api_key)
        match: bytes | None = None
        for digest in self._digests:
            if hmac.compare_digest(presented, digest):
                match = digest
        if match is None:
            raise AuthenticationFailed("Invalid API key.", code="invalidApiKey")
        return owner_id(match)
