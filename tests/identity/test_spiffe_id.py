"""SPIFFE ID parsing against the standard: every case cites the SPIFFE.md rule it exercises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustmesh.identity import InvalidSpiffeId, SpiffeId, validate_trust_domain

TD255 = "a" * 255
TD256 = "a" * 256

# (rule, text, trust_domain, path)
VALID: list[tuple[str, str, str, str]] = [
    ("ID-04", "spiffe://example.org", "example.org", ""),
    ("ID-16", "spiffe://example.org/ns/default/sa/api", "example.org", "/ns/default/sa/api"),
    (
        "ID-16",
        "spiffe://example.org/9eebccd2-12bf-40a6-b262-65fe0487d453",
        "example.org",
        "/9eebccd2-12bf-40a6-b262-65fe0487d453",
    ),
    ("ID-08", "spiffe://a-b_c.d", "a-b_c.d", ""),
    ("ID-08", "spiffe://0123456789", "0123456789", ""),
    ("ID-10", "spiffe://192.168.0.1/x", "192.168.0.1", "/x"),
    ("ID-10", "spiffe://example..org", "example..org", ""),
    ("ID-10", "spiffe://.example.org", ".example.org", ""),
    ("ID-10", "spiffe://example.org.", "example.org.", ""),
    ("ID-10", "spiffe://-x", "-x", ""),
    ("ID-10", "spiffe://_", "_", ""),
    ("ID-13", "spiffe://td/.a", "td", "/.a"),
    ("ID-13", "spiffe://td/..a", "td", "/..a"),
    ("ID-13", "spiffe://td/...", "td", "/..."),
    ("ID-13", "spiffe://td/a./b..", "td", "/a./b.."),
    ("ID-15", "spiffe://td/UPPER/Case", "td", "/UPPER/Case"),
    ("ID-15", "spiffe://td/a-b_c.d", "td", "/a-b_c.d"),
    ("ID-15", "spiffe://td/0/1/2", "td", "/0/1/2"),
    ("ID-19", "spiffe://" + TD255, TD255, ""),
    (
        "ID-17",
        "spiffe://td/" + "a" * (2048 - len("spiffe://td/")),
        "td",
        "/" + "a" * (2048 - len("spiffe://td/")),
    ),
    ("ID-20", "spiffe://td/Path", "td", "/Path"),
]

# (rule, text)
INVALID: list[tuple[str, str]] = [
    ("ID-01", ""),
    ("ID-01", "http://example.org/a"),
    ("ID-01", "https://example.org"),
    ("ID-01", "SPIFFE://example.org/a"),
    ("ID-01", "Spiffe://example.org"),
    ("ID-01", "spiffe:/example.org"),
    ("ID-01", "spiffe:example.org"),
    ("ID-01", "example.org/a"),
    ("ID-01", " spiffe://example.org"),
    ("ID-01", "//example.org"),
    ("ID-02", "spiffe://"),
    ("ID-02", "spiffe:///path"),
    ("ID-03", "spiffe://td/a?x=1"),
    ("ID-03", "spiffe://td?x"),
    ("ID-03", "spiffe://td/a#frag"),
    ("ID-03", "spiffe://td#"),
    ("ID-03", "spiffe://td/?"),
    ("ID-06", "spiffe://user@td/a"),
    ("ID-06", "spiffe://user:pw@td"),
    ("ID-06", "spiffe://td:443/a"),
    ("ID-06", "spiffe://td:/a"),
    ("ID-06", "spiffe://@td"),
    ("ID-07", "spiffe://EXAMPLE.org"),
    ("ID-07", "spiffe://Example.org/a"),
    ("ID-07", "spiffe://example.orG"),
    ("ID-08", "spiffe://exa mple.org"),
    ("ID-08", "spiffe://example.org\n"),
    ("ID-08", "spiffe://[::1]/a"),
    ("ID-08", "spiffe://exämple.org"),
    ("ID-08", "spiffe://td!"),
    ("ID-08", "spiffe://td*.org"),
    ("ID-08", "spiffe://td+x"),
    ("ID-08", "spiffe://td\\x"),
    ("ID-09", "spiffe://ex%61mple.org"),
    ("ID-09", "spiffe://%20"),
    ("ID-12", "spiffe://td/%2F"),
    ("ID-12", "spiffe://td/%61"),
    ("ID-12", "spiffe://td/%2e%2e"),
    ("ID-12", "spiffe://td/a%"),
    ("ID-13", "spiffe://td//a"),
    ("ID-13", "spiffe://td/a//b"),
    ("ID-13", "spiffe://td/."),
    ("ID-13", "spiffe://td/.."),
    ("ID-13", "spiffe://td/a/./b"),
    ("ID-13", "spiffe://td/a/../b"),
    ("ID-14", "spiffe://td/"),
    ("ID-14", "spiffe://td/a/"),
    ("ID-14", "spiffe://td/a/b/"),
    ("ID-14", "spiffe://td//"),
    ("ID-15", "spiffe://td/a\n"),
    ("ID-15", "spiffe://td/a b"),
    ("ID-15", "spiffe://td/a:b"),
    ("ID-15", "spiffe://td/a@b"),
    ("ID-15", "spiffe://td/ä"),
    ("ID-15", "spiffe://td/a+b"),
    ("ID-15", "spiffe://td/a~b"),
    ("ID-15", "spiffe://td/a\x00"),
    ("ID-15", "spiffe://td/a\ud800"),
    ("ID-15", "spiffe://td/a\t"),
    ("ID-17", "spiffe://td/" + "a" * (2049 - len("spiffe://td/"))),
    ("ID-17", "spiffe://td/" + "/".join(["ab"] * 800)),
    ("ID-19", "spiffe://" + TD256),
    ("ID-19", "spiffe://" + TD256 + "/a"),
]


@pytest.mark.parametrize(("rule", "text", "trust_domain", "path"), VALID)
def test_valid_ids_parse_byte_for_byte(rule: str, text: str, trust_domain: str, path: str) -> None:
    sid = SpiffeId.parse(text)
    assert str(sid) == text, rule
    assert sid.trust_domain == trust_domain
    assert sid.path == path
    assert sid.is_member_of(trust_domain)


@pytest.mark.parametrize(("rule", "text"), INVALID)
def test_invalid_ids_name_the_broken_rule(rule: str, text: str) -> None:
    with pytest.raises(InvalidSpiffeId) as info:
        SpiffeId.parse(text)
    assert info.value.rule == rule
    assert str(info.value).startswith(rule + ": ")
    assert isinstance(info.value, ValueError)


def test_there_are_at_least_60_cases_from_the_standard() -> None:
    assert len(VALID) + len(INVALID) >= 60


def test_trailing_slash_message_is_explicit() -> None:
    # The issue's own example message.
    with pytest.raises(InvalidSpiffeId, match=r"^ID-14: trailing slash not allowed$"):
        SpiffeId.parse("spiffe://example.org/a/")


def test_stricter_than_py_spiffe() -> None:
    # §7: py-spiffe accepts all three of these; go-spiffe and trustmesh reject them.
    for text in ("spiffe://example.org/a\n", "spiffe://EXAMPLE.ORG/a", "spiffe://" + TD256):
        with pytest.raises(InvalidSpiffeId):
            SpiffeId.parse(text)


def test_equality_is_byte_for_byte_and_path_case_sensitive() -> None:
    # ID-20: the path is case-sensitive.
    assert SpiffeId.parse("spiffe://td/a") == SpiffeId.parse("spiffe://td/a")
    assert SpiffeId.parse("spiffe://td/a") != SpiffeId.parse("spiffe://td/A")
    assert len({SpiffeId.parse("spiffe://td/a"), SpiffeId.parse("spiffe://td/a")}) == 1


def test_for_trust_domain_and_membership() -> None:
    # SV-03: the authority's ID is the trust domain with no path.
    sid = SpiffeId.for_trust_domain("example.org")
    assert str(sid) == "spiffe://example.org"
    assert not sid.is_workload
    assert SpiffeId.parse("spiffe://example.org/x").is_workload
    assert not SpiffeId.parse("spiffe://example.org/x").is_member_of("example.com")
    assert not SpiffeId.parse("spiffe://example.org/x").is_member_of("Example.org")
    with pytest.raises(InvalidSpiffeId, match="ID-07"):
        SpiffeId.for_trust_domain("Example.org")
    assert str(SpiffeId.from_parts("td", "/a/b")) == "spiffe://td/a/b"


@pytest.mark.parametrize(
    ("rule", "name"),
    [
        ("ID-05", ""),
        ("ID-07", "A.org"),
        ("ID-08", "a/b"),
        ("ID-06", "a:1"),
        ("ID-19", TD256),
        ("ID-09", "%41"),
    ],
)
def test_validate_trust_domain_rejects(rule: str, name: str) -> None:
    with pytest.raises(InvalidSpiffeId) as info:
        validate_trust_domain(name)
    assert info.value.rule == rule


def test_validate_trust_domain_returns_input() -> None:
    assert validate_trust_domain("example.org") == "example.org"


def test_non_str_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        SpiffeId.parse(b"spiffe://td/a")  # type: ignore[arg-type]


_td_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_path_chars = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_")
_segment = st.text(_path_chars, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


@given(
    td=st.text(_td_chars, min_size=1, max_size=40),
    segments=st.lists(_segment, max_size=6),
)
def test_round_trip_property(td: str, segments: list[str]) -> None:
    """Any ID built from allowed parts parses, and gives back exactly its input and its parts."""
    path = "".join("/" + s for s in segments)
    text = "spiffe://" + td + path
    sid = SpiffeId.parse(text)
    assert str(sid) == text
    assert (sid.trust_domain, sid.path) == (td, path)
    assert SpiffeId.parse(str(sid)) == sid


@given(st.text(max_size=60))
def test_arbitrary_text_never_crashes_and_round_trips_when_accepted(text: str) -> None:
    """The parser either rejects with InvalidSpiffeId or returns an ID equal to its input."""
    try:
        sid = SpiffeId.parse(text)
    except InvalidSpiffeId as err:
        assert err.rule.startswith("ID-")
    else:
        assert str(sid) == text
