"""Tests for how API tokens are made, recognised and stored."""

from __future__ import annotations

import hashlib

import pytest

from reading_history.tokens import generate_token, looks_like_token, token_digest


def test_tokens_are_long_random_and_url_safe() -> None:
    """Verify each token carries 256 random bits behind a recognisable prefix."""
    tokens = {generate_token() for _ in range(1000)}

    assert len(tokens) == 1000
    for token in tokens:
        assert token.startswith("rh_")
        assert len(token) == 46
        assert looks_like_token(token)


def test_the_digest_is_sha256_of_the_token() -> None:
    """Verify what is stored is the token's SHA-256, never the token itself."""
    token = generate_token()

    digest = token_digest(token)

    assert digest == hashlib.sha256(token.encode()).digest()
    assert token.encode() not in digest


@pytest.mark.parametrize(
    "text",
    [
        "",
        "rh_",
        "rh_" + "a" * 42,
        "rh_" + "a" * 44,
        "xx_" + "a" * 43,
        "rh_" + "a" * 42 + "!",
        "rh_" + "a" * 42 + "\u00e9",
        " rh_" + "a" * 43,
    ],
)
def test_text_not_shaped_like_a_token_is_refused_unread(text: str) -> None:
    """Ensure malformed tokens are turned away before any database lookup."""
    assert not looks_like_token(text)
