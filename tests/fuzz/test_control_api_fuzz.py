"""Join and renew request bodies, fuzzed, against a real in-process control plane over HTTPS.

Every answer must be a 4xx JSON `{"error", "detail"}`: never a 5xx, never a dropped
connection; and the store must be exactly as before (no token consumed, no SVID recorded).
A real, unused join token is in play, so a bug that consumed it on a bad CSR would show.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.budget import TRIED, fuzz_settings, on_loop, report, run_examples, seeded
from trustmesh.ca import CertificateAuthority
from trustmesh.ca.join_token import InvalidJoinToken, JoinToken
from trustmesh.clock import ManualClock
from trustmesh.control.join_client import client_context, join
from trustmesh.control.testing import ControlPlaneHarness, start_control_plane

API_ID = "spiffe://example.org/ns/default/sa/api"
PEM_HEAD = "-----BEGIN CERTIFICATE REQUEST-----"
PEM_TAIL = "-----END CERTIFICATE REQUEST-----"


# ---------------------------------------------------------------- CSRs with odd keys


@dataclass(frozen=True)
class Csr:
    name: str
    pem: str
    acceptable: bool  # would the CA sign it? (then it must never meet a good token, nor renew)


_SHA256 = hashes.SHA256()


def _csr(key: Any, *, algorithm: hashes.HashAlgorithm | None = _SHA256, **extra: Any) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, extra.get("cn", "fuzz"))])
    )
    if "uri" in extra:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(extra["uri"])]), critical=False
        )
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


@cache
def csr_pool() -> tuple[Csr, ...]:
    """Generated once per process: key generation is the slow part."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    return (
        Csr("p256", _csr(p256), True),
        Csr("p256-asks-for-admin", _csr(p256, uri="spiffe://example.org/admin", cn="x" * 60), True),
        Csr("p384-sha512", _csr(ec.generate_private_key(ec.SECP384R1()), algorithm=hashes.SHA512()), True),
        Csr("ed25519", _csr(ed25519.Ed25519PrivateKey.generate(), algorithm=None), True),
        Csr("p521", _csr(ec.generate_private_key(ec.SECP521R1())), False),
        Csr("secp256k1", _csr(ec.generate_private_key(ec.SECP256K1())), False),
        Csr("brainpool", _csr(ec.generate_private_key(ec.BrainpoolP256R1())), False),
        Csr("rsa1024", _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)), False),
        Csr("rsa-e3", _csr(rsa.generate_private_key(public_exponent=3, key_size=1024)), False),
        Csr("dsa2048", _csr(dsa.generate_private_key(key_size=2048)), False),
        Csr("ed448", _csr(ed448.Ed448PrivateKey.generate(), algorithm=None), False),
    )


def _der(pem: str) -> bytes:
    return x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)


def _wrap(der: bytes, head: str = PEM_HEAD, tail: str = PEM_TAIL) -> str:
    b64 = base64.encodebytes(der).decode()
    return f"{head}\n{b64}{tail}\n"


@st.composite
def bad_csrs(draw: st.DrawFn) -> str:
    """CSR text the CA must refuse: truncated, bit-flipped, PEM-looking noise, weak keys."""
    pool = csr_pool()
    base = draw(st.sampled_from(pool))
    kind = draw(
        st.sampled_from(
            [
                "weak-key",
                "truncated-pem",
                "truncated-der",
                "flipped-der",
                "noise",
                "headers-only",
                "surrogate",
            ]
        )
    )
    if kind == "weak-key":
        return draw(st.sampled_from([c.pem for c in pool if not c.acceptable]))
    if kind == "truncated-pem":
        return base.pem[: draw(st.integers(0, len(base.pem) - len(PEM_TAIL) - 2))]
    der = _der(base.pem)
    if kind == "truncated-der":
        return _wrap(der[: draw(st.integers(0, len(der) - 1))])
    if kind == "flipped-der":
        flipped = bytearray(der)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(der) - 1))
            flipped[i] ^= 1 << draw(st.integers(0, 7))
        return _wrap(bytes(flipped))
    if kind == "noise":
        return _wrap(draw(st.binary(max_size=600)))
    if kind == "headers-only":
        return draw(
            st.sampled_from([PEM_HEAD, PEM_HEAD + "\n" + PEM_TAIL, PEM_HEAD * 50, PEM_TAIL + PEM_HEAD])
        )
    # A lone surrogate in an otherwise good CSR (JSON `\ud800` decodes to one).
    cut = draw(st.integers(len(PEM_HEAD) + 1, len(base.pem) - 1))
    return base.pem[:cut] + draw(st.sampled_from(["\ud800", "\udfff", "\x00"])) + base.pem[cut:]


def good_csr() -> st.SearchStrategy[str]:
    return st.sampled_from([c.pem for c in csr_pool() if c.acceptable])


# ---------------------------------------------------------------- bodies

TEXT = st.text(
    st.characters(codec=None, exclude_categories=()), max_size=40
)  # surrogates included: JSON can carry them as escapes

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=25,
)


def _mutate_token(token: str) -> st.SearchStrategy[str]:
    def change(args: tuple[int, str]) -> str:
        i, c = args
        return token[:i] + c + token[i + 1 :]

    return st.one_of(
        st.tuples(st.integers(0, len(token) - 1), st.sampled_from("0123456789abcdefABCDEF.\x00\ud800é")).map(
            change
        ),
        st.integers(0, len(token)).map(lambda n: token[:n]),
        st.just(token + "0"),
        st.just(token.upper()),
        st.just(" " + token),
        st.just(token.replace(".", "..", 1)),
    )


def _same_credentials(text: object, real: str) -> bool:
    """Does `text` carry the real token's id and secret? (The fingerprint is the client's pin;
    the server does not check it, so such a mutation is the real token.)"""
    if not isinstance(text, str):
        return False
    try:
        parsed, ours = JoinToken.parse(text), JoinToken.parse(real)
    except InvalidJoinToken:
        return False
    return (parsed.token_id, parsed.secret) == (ours.token_id, ours.secret)


def tokens(real: str) -> st.SearchStrategy[Any]:
    """Anything but the real token: mutations of it, token-shaped noise, other JSON types."""
    hex_ = st.text("0123456789abcdef", min_size=0, max_size=70)
    shaped = st.builds(lambda a, b, c: f"tmjoin1.{a}.{b}.{c}", hex_, hex_, hex_)
    return st.one_of(_mutate_token(real), shaped, TEXT, JSON_VALUES).filter(
        lambda t: not _same_credentials(t, real)
    )


@dataclass
class Body:
    """One request body, and how to send it."""

    content: bytes
    content_type: str | None
    chunked: bool


@st.composite
def join_bodies(draw: st.DrawFn, real_token: str) -> bytes:
    """Bodies for /v1/join. A good CSR never goes with the real token (that one would succeed)."""
    shape = draw(st.sampled_from(["fields", "fields", "fields", "json", "raw"]))
    if shape == "fields":
        doc: dict[str, Any] = {}
        use_real = draw(st.booleans())
        if draw(st.integers(0, 9)):
            doc["token"] = real_token if use_real else draw(tokens(real_token))
        if draw(st.integers(0, 9)):
            if use_real:
                doc["csr"] = draw(st.one_of(bad_csrs(), JSON_VALUES))
            else:
                doc["csr"] = draw(st.one_of(good_csr(), bad_csrs(), JSON_VALUES))
        doc.update(
            draw(st.dictionaries(TEXT.filter(lambda k: k not in ("token", "csr")), JSON_VALUES, max_size=3))
        )
        return _dumps(draw, doc)
    if shape == "json":
        return _dumps(draw, draw(JSON_VALUES))
    return draw(raw_bodies(real_token))


def _dumps(draw: st.DrawFn, doc: Any) -> bytes:
    pad = draw(st.sampled_from([0, 0, 0, 60_000, 65_536 - 200, 65_536 + 10]))
    if pad and isinstance(doc, dict):
        doc = {**doc, "pad": "p" * pad}
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def raw_bodies(real_token: str) -> st.SearchStrategy[bytes]:
    def nest(n_open: tuple[int, str]) -> bytes:
        n, opener = n_open
        return (opener * n).encode()

    near_limit = st.integers(65_536 - 64, 65_536 + 64).map(lambda n: b'{"token": "' + b"a" * (n - 14) + b'"}')
    return st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(1, 60_000), st.sampled_from(["[", '{"a":', '{"csr":['])).map(nest),
        near_limit,
        st.sampled_from(
            [
                b"",
                b"null",
                b"NaN",
                b'"token"',
                b'{"token": "\\ud800", "csr": "\\udfff"}',
                b'{"token": "' + real_token.encode() + b'", "csr": "\\ud800' + PEM_HEAD.encode() + b'"}',
                b'{"token": "' + real_token.encode() + b'", "token": 1, "csr": null}',
                b'{"token": "' + real_token.encode() + b'"',
                b"\xef\xbb\xbf{}",
                b"\xff\xfe{\x00}\x00",
                b'{"csr": 1e999999}',
                b'{"csr": -0, "token": 123456789012345678901234567890}',
            ]
        ),
    )


@st.composite
def sent(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> Body:
    return Body(
        draw(bodies),
        draw(st.sampled_from([None, "application/json", "text/plain", "application/json; charset=latin-1"])),
        draw(st.booleans()),
    )


# ---------------------------------------------------------------- the server side


async def _post(client: httpx.AsyncClient, path: str, body: Body) -> httpx.Response:
    headers = {"content-type": body.content_type} if body.content_type else {}
    content: bytes | AsyncIterator[bytes] = body.content
    if body.chunked:

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(body.content), 8192):
                yield body.content[i : i + 8192]

        content = pieces()
    with trio.fail_after(30):
        return await client.post(path, content=content, headers=headers)


def _assert_clean_refusal(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    doc = response.json()
    assert isinstance(doc, dict), doc
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    assert isinstance(doc.get("detail"), str) and doc["detail"], doc


async def _fuzz_endpoint(
    harness: ControlPlaneHarness,
    client: httpx.AsyncClient,
    path: str,
    strategy: st.SearchStrategy[Body],
    name: str,
    budget: int,
) -> None:
    before = await harness.snapshot()

    async def one(body: Body) -> None:
        response = await _post(client, path, body)
        _assert_clean_refusal(response)
        assert await harness.snapshot() == before

    @seeded
    @fuzz_settings(budget)
    @given(strategy)
    def examples(body: Body) -> None:
        TRIED[name] += 1
        on_loop(one, body)

    await run_examples(examples)
    report(name)


async def _started(nursery: trio.Nursery, tmp_path: Path) -> ControlPlaneHarness:
    clock = ManualClock(current=datetime.now(UTC).replace(microsecond=0))
    state = tmp_path / "state"
    CertificateAuthority.init(state, "example.org", clock=clock)
    return await start_control_plane(nursery, state, clock)


async def test_join_bodies_fuzzed_are_4xx_json_and_change_nothing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    harness = await _started(nursery, tmp_path)
    token = await harness.token(API_ID)
    try:
        async with harness.client() as client:
            await _fuzz_endpoint(
                harness, client, "/v1/join", sent(join_bodies(token)), "join bodies", budget=250
            )
            # The real token was offered alongside every kind of bad CSR and still works.
            ok = await client.post("/v1/join", json={"token": token, "csr": csr_pool()[0].pem})
            assert ok.status_code == 200, ok.text
    finally:
        harness.cp.stop()


async def test_renew_bodies_fuzzed_are_4xx_json_and_change_nothing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    harness = await _started(nursery, tmp_path)
    svid = await join(harness.address, await harness.token(API_ID))
    bodies: Callable[[], st.SearchStrategy[bytes]] = lambda: st.one_of(  # noqa: E731
        st.fixed_dictionaries({"csr": st.one_of(bad_csrs(), JSON_VALUES)})
        .flatmap(
            lambda d: st.builds(lambda extra: {**d, **extra}, st.dictionaries(TEXT, JSON_VALUES, max_size=3))
        )
        .map(lambda d: json.dumps(d).encode()),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        raw_bodies("tmjoin1.x"),
    )
    try:
        async with httpx.AsyncClient(
            base_url=harness.url, verify=client_context(svid.bundle_pem, svid), timeout=30
        ) as client:
            await _fuzz_endpoint(harness, client, "/v1/renew", sent(bodies()), "renew bodies", budget=150)
            ok = await client.post("/v1/renew", json={"csr": csr_pool()[0].pem})
            assert ok.status_code == 200, ok.text  # the connection and the SVID still work
    finally:
        harness.cp.stop()
