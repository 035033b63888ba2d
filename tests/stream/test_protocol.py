"""The stream's messages without a network: every message round-trips, and no input makes
`decode` fail with anything but `ProtocolError` (the caller logs it and carries on)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustmesh.control import stream_protocol as sp

names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)
ids = st.builds(lambda p: f"spiffe://example.org/{p}", st.from_regex(r"[a-z0-9/]{1,30}", fullmatch=True))
addresses = st.one_of(
    st.builds(
        lambda h, p: f"{h}:{p}", st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True), st.integers(1, 65535)
    ),
    st.builds(lambda p: f"[::1]:{p}", st.integers(1, 65535)),
)
versions = st.integers(0, 2**63 - 1)
endpoint_lists = st.dictionaries(
    names,
    st.lists(st.builds(sp.Endpoint, addresses, ids, st.sampled_from(sp.HEALTH_VALUES)), max_size=4).map(
        tuple
    ),
    max_size=4,
)
policies = st.one_of(
    st.none(),
    st.builds(
        sp.PolicyPayload,
        st.from_regex(r"[0-9a-f]{40}", fullmatch=True),
        st.one_of(st.none(), st.text(max_size=50)),
        st.dictionaries(names, st.binary(max_size=200), max_size=3),
    ),
)
messages = st.one_of(
    st.builds(
        sp.Register,
        ids,
        st.lists(addresses, max_size=3, unique=True).map(tuple),
        st.lists(names, max_size=3, unique=True).map(tuple),
        st.one_of(st.none(), names),
    ),
    st.builds(sp.Ack, versions),
    st.just(sp.Heartbeat()),
    st.just(sp.Deregister()),
    st.builds(sp.Snapshot, versions, names, st.text(min_size=1, max_size=100), policies, endpoint_lists),
    st.builds(
        sp.Update, versions, st.one_of(st.none(), st.text(min_size=1, max_size=100)), policies, endpoint_lists
    ),
    st.builds(sp.Error, st.from_regex(r"[a-z_]{1,30}", fullmatch=True), st.text(max_size=100)),
)


@given(messages)
def test_every_message_round_trips(message: sp.Message) -> None:
    text = sp.encode(message)
    assert json.loads(text)["v"] == sp.PROTOCOL_VERSION
    assert sp.decode(text) == message
    assert sp.decode(text.encode()) == message
    policy = getattr(message, "policy", None)
    if policy is not None:  # the control plane's once-per-revision encoding gives the same frame
        assert json.loads(sp.encode(message, policy_text=sp.encode_policy(policy))) == json.loads(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["register", "ack", "heartbeat", "deregister", "snapshot", "update", "error", "x"]
        ),
        "v": st.sampled_from([1, 1, 1, 2, "1", True, None]),
    },
    optional={
        k: json_values
        for k in ("version", "service", "spiffe_id", "addresses", "calls", "bundle", "policy", "endpoints")
    },
)


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        json_values.map(json.dumps),
        message_like.map(json.dumps),
    )
)
def test_decode_never_fails_with_anything_but_a_protocol_error(text: str | bytes) -> None:
    try:
        message = sp.decode(text)
    except sp.ProtocolError as exc:
        assert exc.reason
        return
    # Whatever decodes, encodes again into something that decodes the same (it is well formed).
    assert sp.decode(sp.encode(message)) == message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "invalid_json"),
        ("[1]", "invalid_json"),
        ('{"v": 1}', "missing_type"),
        ('{"type": "ack", "v": 2, "version": 1}', "unsupported_version"),
        ('{"type": "ack", "v": true, "version": 1}', "unsupported_version"),
        ('{"type": "ack", "v": 1, "version": true}', "invalid_field"),
        ('{"type": "ack", "v": 1, "version": -1}', "invalid_field"),
        (
            '{"type": "register", "v": 1, "spiffe_id": "spiffe://e/x", "addresses": ["nohost"]}',
            "invalid_field",
        ),
        ('{"type": "register", "v": 1, "spiffe_id": "spiffe://e/x", "addresses": ["h:0"]}', "invalid_field"),
        ('{"type": "register", "v": 1, "spiffe_id": "spiffe://e/x", "calls": "api"}', "invalid_field"),
        (
            '{"type": "update", "v": 1, "version": 1, "policy": {"revision": "r", "files": {"a": "!"}}}',
            "invalid_field",
        ),
        (
            '{"type": "update", "v": 1, "version": 1, "endpoints": {"api": [{"address": "h:1"}]}}',
            "invalid_field",
        ),
        ('{"type": "launch", "v": 1}', "unknown_type"),
        ("[" * 100000, "invalid_json"),
    ],
)
def test_malformed_messages_name_their_problem(text: str, reason: str) -> None:
    with pytest.raises(sp.ProtocolError) as caught:
        sp.decode(text)
    assert caught.value.reason == reason


def test_unknown_fields_are_ignored_within_a_version() -> None:
    assert sp.decode('{"type": "ack", "v": 1, "version": 3, "added_in_1_1": {"x": 1}}') == sp.Ack(3)


def test_an_update_leaves_out_what_did_not_change() -> None:
    body = json.loads(sp.encode(sp.Update(4)))
    assert body == {"type": "update", "v": 1, "version": 4}
