"""API tokens: how they are made, and the digest kept in their place.

Uses only the standard library, so that the command line can make tokens
where the web stack is not installed.
"""

from __future__ import annotations

import hashlib
import re
import secrets

# A recognisable prefix lets secret scanners and people tell what leaked.
TOKEN_PREFIX = "rh_"
TOKEN_RANDOM_BYTES = 32
TOKEN_SHAPE = re.compile(r"^rh_[A-Za-z0-9_-]{43}$")


def generate_token() -> str:
    """Return a new token: the prefix and 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_RANDOM_BYTES)


def looks_like_token(text: str) -> bool:
    """Tell whether text has the shape of a token, before any database work."""
    return TOKEN_SHAPE.match(text) is not None


def token_digest(token: str) -> bytes:
    """Return what is stored for a token: its SHA-256.

    A fast, unsalted hash is enough here, unlike for passwords: a token holds
    256 random bits, so neither a dictionary nor brute force can find the
    token from its digest, and salting or stretching would only slow down the
    check every request makes.
    """
    return hashlib.sha256(token.encode("ascii")).digest()
