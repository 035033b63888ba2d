"""Join token text format: round trip, clear parse errors, secret never in repr."""

from __future__ import annotations

import pytest

from trustmesh.ca.join_token import InvalidJoinToken, JoinToken, hash_secret, secret_matches

FP = "sha256:" + "0123456789abcdef" * 4


def test_generate_and_parse_round_trip() -> None:
    token = JoinToken.generate(FP)
    text = str(token)
    assert text.startswith("tmjoin1." + FP.removeprefix("sha256:") + ".")
    assert JoinToken.parse(text) == token
    assert token.ca_fingerprint == FP
    assert len(token.secret) == 64  # 256 bits
    assert secret_matches(token.secret, hash_secret(token.secret))
    assert not secret_matches("0" * 64, hash_secret(token.secret))
    assert token.secret not in repr(token)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "4 dot-separated parts"),
        ("tmjoin1.abc", "4 dot-separated parts"),
        ("tmjoin2." + "a" * 64 + ".0011223344556677." + "b" * 64, "must start with 'tmjoin1'"),
        ("tmjoin1." + "A" * 64 + ".0011223344556677." + "b" * 64, "fingerprint"),
        ("tmjoin1." + "a" * 63 + ".0011223344556677." + "b" * 64, "fingerprint"),
        ("tmjoin1." + "a" * 64 + ".xyz." + "b" * 64, "token id"),
        ("tmjoin1." + "a" * 64 + ".0011223344556677." + "b" * 63, "secret"),
        ("tmjoin1." + "a" * 64 + ".0011223344556677." + "b" * 64 + "\n", "secret"),
    ],
)
def test_parse_errors_name_the_broken_part(text: str, message: str) -> None:
    with pytest.raises(InvalidJoinToken, match=message) as info:
        JoinToken.parse(text)
    assert "b" * 63 not in str(info.value)  # never echo the secret


def test_generate_refuses_a_malformed_fingerprint() -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        JoinToken.generate("sha256:xyz")
