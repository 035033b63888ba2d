"""SPIFFE IDs, parsed exactly as the SPIFFE-ID standard says, and nothing more lenient.

A SPIFFE ID is `spiffe://<trust domain><path>`. Everything trustmesh trusts hangs off
this string, so the parser is a small hand-written checker rather than a URL library:
URL libraries trim, decode percent-escapes, lower-case hosts and accept ports, and each
of those is a way for two different strings to end up meaning the same identity.

The rules (IDs from /work/shared/SPIFFE.md, cited in every error message):

- ID-01 scheme is exactly `spiffe` (lower case: upper case is rejected, not folded, §7)
- ID-02/ID-05 the trust domain is present and non-empty
- ID-03 no query (`?`) and no fragment (`#`)
- ID-06 no userinfo (`@`) and no port (`:`)
- ID-07 the trust domain is lower case; ID-08 it uses only `a-z 0-9 . - _`
- ID-09/ID-12 no percent-encoding anywhere (never decoded)
- ID-13 no empty, `.` or `..` path segments; ID-14 no trailing `/`
- ID-15 path segments use only `A-Z a-z 0-9 . - _`
- ID-17 the whole ID is at most 2048 bytes; ID-19 the trust domain at most 255 bytes

Nothing is trimmed or case-folded, so `str(SpiffeId.parse(s)) == s` byte for byte, and
equality of two IDs is equality of their strings. A trailing newline is an invalid path
or trust-domain character (py-spiffe's `^...$` regex lets it through; we do not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048  # ID-17: implementations must handle up to this, and we generate no longer ones.
MAX_TRUST_DOMAIN_BYTES = 255  # ID-19: RFC 3986 caps a host at 255 bytes.

_TRUST_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_")


class InvalidSpiffeId(ValueError):
    """A string that is not a SPIFFE ID; `rule` is the SPIFFE.md rule it breaks (e.g. `ID-14`)."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


def _byte_len(text: str) -> int:
    # surrogatepass: a lone surrogate must be counted and then rejected as a bad character,
    # not crash the length check with UnicodeEncodeError.
    return len(text.encode("utf-8", "surrogatepass"))


def validate_trust_domain(name: str) -> str:
    """Return `name` unchanged if it is a valid trust-domain name, else raise `InvalidSpiffeId`.

    Only the character set and length are checked (ID-10): `example..org` and `-x` pass,
    exactly as the standard says, and dotted-quad names are treated like any other.
    """
    if not isinstance(name, str):
        raise TypeError(f"trust domain must be str, not {type(name).__name__}")
    if name == "":
        raise InvalidSpiffeId("ID-05", "trust domain is empty")
    if _byte_len(name) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeId(
            "ID-19", f"trust domain is {_byte_len(name)} bytes, more than {MAX_TRUST_DOMAIN_BYTES}"
        )
    for ch in name:
        if ch in _TRUST_DOMAIN_CHARS:
            continue
        if ch == "%":
            raise InvalidSpiffeId("ID-09", "percent-encoding is not allowed in the trust domain")
        if ch == "@":
            raise InvalidSpiffeId("ID-06", "userinfo is not allowed in the trust domain")
        if ch == ":":
            raise InvalidSpiffeId("ID-06", "a port is not allowed in the trust domain")
        if "A" <= ch <= "Z":
            raise InvalidSpiffeId("ID-07", "trust domain must be lower case (it is never case-folded)")
        raise InvalidSpiffeId("ID-08", f"character {ch!r} is not allowed in a trust domain")
    return name


def _validate_path(path: str) -> None:
    """Check a non-empty path (starting with `/`) against ID-12..ID-15."""
    if path.endswith("/"):
        raise InvalidSpiffeId("ID-14", "trailing slash not allowed")
    for segment in path[1:].split("/"):
        if segment == "":
            raise InvalidSpiffeId("ID-13", "empty path segment not allowed")
        if segment in (".", ".."):
            raise InvalidSpiffeId("ID-13", f"path segment {segment!r} not allowed")
        for ch in segment:
            if ch in _PATH_CHARS:
                continue
            if ch == "%":
                raise InvalidSpiffeId("ID-12", "percent-encoding is not allowed in the path")
            raise InvalidSpiffeId("ID-15", f"character {ch!r} is not allowed in a path segment")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID. Build one with `SpiffeId.parse`; `str()` gives the input back.

    `trust_domain` is the authority (`example.org`); `path` is everything after it
    (`/ns/default/sa/api`), or `""` for the ID of the trust domain itself.
    """

    _text: str = field(repr=False)
    trust_domain: str = field(compare=False)
    path: str = field(compare=False)

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse `text` strictly; raise `InvalidSpiffeId` naming the first broken rule."""
        if not isinstance(text, str):
            raise TypeError(f"SPIFFE ID must be str, not {type(text).__name__}")
        if text == "":
            raise InvalidSpiffeId("ID-01", "empty string is not a SPIFFE ID")
        if not text.startswith(SCHEME_PREFIX):
            if text[: len(SCHEME_PREFIX)].lower() == SCHEME_PREFIX:
                raise InvalidSpiffeId("ID-01", "scheme must be lower-case 'spiffe' (it is never case-folded)")
            raise InvalidSpiffeId("ID-01", "scheme must be 'spiffe://'")
        if _byte_len(text) > MAX_ID_BYTES:
            raise InvalidSpiffeId("ID-17", f"SPIFFE ID is {_byte_len(text)} bytes, more than {MAX_ID_BYTES}")
        # Query and fragment are checked on the whole string first, so `spiffe://td?x` is
        # reported as a query (what it is) rather than a bad trust-domain character.
        if "?" in text:
            raise InvalidSpiffeId("ID-03", "query not allowed")
        if "#" in text:
            raise InvalidSpiffeId("ID-03", "fragment not allowed")
        rest = text[len(SCHEME_PREFIX) :]
        slash = rest.find("/")
        authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        if authority == "":
            raise InvalidSpiffeId("ID-02", "trust domain is missing")
        validate_trust_domain(authority)
        if path:
            _validate_path(path)
        return cls(text, authority, path)

    @classmethod
    def for_trust_domain(cls, trust_domain: str) -> SpiffeId:
        """The ID of a trust domain itself, `spiffe://td` (what a signing CA carries, SV-03)."""
        validate_trust_domain(trust_domain)
        return cls.parse(SCHEME_PREFIX + trust_domain)

    @classmethod
    def from_parts(cls, trust_domain: str, path: str) -> SpiffeId:
        """Build `spiffe://<trust_domain><path>` and validate it like any parsed ID."""
        return cls.parse(SCHEME_PREFIX + trust_domain + path)

    @property
    def is_workload(self) -> bool:
        """True when the ID has a path, which every leaf SVID must (X-04)."""
        return self.path != ""

    def is_member_of(self, trust_domain: str) -> bool:
        """True when this ID belongs to `trust_domain` (compared byte for byte)."""
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"SpiffeId({self._text!r})"
