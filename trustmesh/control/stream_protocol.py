"""The configuration stream's messages, sans I/O: typed values, JSON text in and out, validation.

Both ends import this module: the control plane (`trustmesh.control.stream`) and the
sidecar (`trustmesh.sidecar.stream_client`). Nothing here touches a socket, so every
parsing rule is tested by feeding text and looking at what comes out (as h11 does).

Every message is one websocket text frame holding a JSON object `{"type": ..., "v": 1, ...}`
(docs/stream.md is the schema). `v` is the protocol's major version: fields may be added
within a version and are ignored by readers that do not know them; a message of another
major version is refused by `decode` like any malformed one. `decode` raises only
`ProtocolError`, whose `reason` is a short code for the log; callers log it and go on,
because a malformed message must never end a stream.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

PROTOCOL_VERSION = 1
STREAM_PATH = "/v1/stream"

# Bounds that keep one message from costing much memory; far above real use. A sidecar sends
# a few short strings, so the control plane reads at most 64 KiB; the control plane sends
# policy files, so the sidecar accepts up to 16 MiB.
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
MAX_SERVER_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_NAME_LEN = 253  # a DNS name's length: service names are usually DNS-ish
MAX_ADDRESSES = 16
MAX_CALLS = 256
MAX_TEXT_LEN = 2048  # SPIFFE IDs (2048 is the SPIFFE limit), error details

Health = Literal["healthy", "disconnected"]
HEALTH_VALUES: tuple[Health, ...] = ("healthy", "disconnected")


class ProtocolError(ValueError):
    """A message that is not valid JSON of this protocol; `reason` is a short code for logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a service: where to connect, who must answer, and how it was last seen."""

    address: str  # HOST:PORT or [v6]:PORT
    spiffe_id: str
    health: Health = "healthy"


@dataclass(frozen=True, slots=True)
class PolicyPayload:
    """A validated policy revision's source files (AuthorizationPolicy and TrafficPolicy alike).

    The sidecar compiles the files with the same loader the control plane validated them with,
    so both decide from byte-identical input. `files` maps a relative path to its bytes.
    """

    revision: str
    message: str | None
    files: Mapping[str, bytes]


# ---------------------------------------------------------------- sidecar -> control plane


@dataclass(frozen=True, slots=True)
class Register:
    """Join the registry: `service` (None: the one bound to the SVID), own SPIFFE ID, addresses, calls."""

    spiffe_id: str
    addresses: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()
    service: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    version: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class Deregister:
    pass


# ---------------------------------------------------------------- control plane -> sidecar


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a sidecar needs, replacing whatever it held (sent after `register`)."""

    version: int
    service: str
    bundle_pem: str
    policy: PolicyPayload | None
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Update:
    """Only what changed since the last message: absent parts (None) are unchanged.

    `endpoints` lists, for each changed service, its complete current endpoint list (an
    empty tuple: no endpoints left), so applying an update never depends on an earlier one
    having arrived beyond the snapshot.
    """

    version: int
    bundle_pem: str | None = None
    policy: PolicyPayload | None = None
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Error:
    """The control plane refused something (`code`: e.g. `registration_refused`); `detail` says why."""

    code: str
    detail: str


ClientMessage = Register | Ack | Heartbeat | Deregister
ServerMessage = Snapshot | Update | Heartbeat | Error
Message = ClientMessage | ServerMessage


# ---------------------------------------------------------------- encoding


def _endpoints_json(endpoints: Mapping[str, tuple[Endpoint, ...]]) -> dict[str, list[dict[str, str]]]:
    return {
        service: [{"address": e.address, "spiffe_id": e.spiffe_id, "health": e.health} for e in eps]
        for service, eps in endpoints.items()
    }


def _policy_json(policy: PolicyPayload) -> dict[str, Any]:
    return {
        "revision": policy.revision,
        "message": policy.message,
        "files": {path: base64.b64encode(data).decode("ascii") for path, data in policy.files.items()},
    }


def to_json(message: Message) -> dict[str, Any]:
    """The JSON object of `message` (what `encode` serialises)."""
    body: dict[str, Any]
    if isinstance(message, Register):
        body = {
            "type": "register",
            "spiffe_id": message.spiffe_id,
            "addresses": list(message.addresses),
            "calls": list(message.calls),
        }
        if message.service is not None:
            body["service"] = message.service
    elif isinstance(message, Ack):
        body = {"type": "ack", "version": message.version}
    elif isinstance(message, Heartbeat):
        body = {"type": "heartbeat"}
    elif isinstance(message, Deregister):
        body = {"type": "deregister"}
    elif isinstance(message, Snapshot):
        body = {
            "type": "snapshot",
            "version": message.version,
            "service": message.service,
            "bundle": message.bundle_pem,
            "policy": None if message.policy is None else _policy_json(message.policy),
            "endpoints": _endpoints_json(message.endpoints),
        }
    elif isinstance(message, Update):
        body = {"type": "update", "version": message.version}
        if message.bundle_pem is not None:
            body["bundle"] = message.bundle_pem
        if message.policy is not None:
            body["policy"] = _policy_json(message.policy)
        if message.endpoints:
            body["endpoints"] = _endpoints_json(message.endpoints)
    else:
        body = {"type": "error", "code": message.code, "detail": message.detail}
    body["v"] = PROTOCOL_VERSION
    return body


def encode_policy(policy: PolicyPayload) -> str:
    """The JSON text of a policy payload, for `encode(..., policy_text=...)`."""
    return json.dumps(_policy_json(policy), separators=(",", ":"))


def encode(message: Message, *, policy_text: str | None = None) -> str:
    """One websocket text frame.

    `policy_text` is `encode_policy(message.policy)` computed once by the caller: the control
    plane sends the same revision to every sidecar, and base64 plus JSON of the files is most
    of the cost of an update, so it is done once per revision rather than once per stream.
    """
    policy = getattr(message, "policy", None)
    if policy_text is None or policy is None:
        return json.dumps(to_json(message), separators=(",", ":"))
    body = to_json(message)
    body.pop("policy")
    head = json.dumps(body, separators=(",", ":"))
    return f'{head[:-1]},"policy":{policy_text}}}'


# ---------------------------------------------------------------- decoding


def _str(data: Mapping[str, Any], name: str, *, max_len: int = MAX_TEXT_LEN, empty: bool = False) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ProtocolError("invalid_field", f"{name!r} must be a string")
    if (not value and not empty) or len(value) > max_len:
        raise ProtocolError("invalid_field", f"{name!r} must be 1 to {max_len} characters")
    return value


def _version(data: Mapping[str, Any]) -> int:
    value = data.get("version")
    # bool is an int in Python; JSON true is not a version.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ProtocolError("invalid_field", "'version' must be a non-negative integer")
    return value


def check_address(text: str) -> str:
    """`HOST:PORT` or `[v6]:PORT` with a port in 1..65535; ProtocolError otherwise."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ProtocolError("invalid_field", f"address {text[:100]!r} must be HOST:PORT")
    if any(c.isspace() or c in "/@" for c in host):
        raise ProtocolError("invalid_field", f"address {text[:100]!r} has an invalid host")
    return text


def _str_list(data: Mapping[str, Any], name: str, max_items: int, max_len: int) -> tuple[str, ...]:
    value = data.get(name, [])
    if not isinstance(value, list) or len(value) > max_items:
        raise ProtocolError("invalid_field", f"{name!r} must be a list of at most {max_items} strings")
    items: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item or len(item) > max_len:
            raise ProtocolError("invalid_field", f"each of {name!r} must be a string of 1 to {max_len}")
        items.append(item)
    return tuple(dict.fromkeys(items))  # duplicates carry no meaning; keep the order


def _endpoints(value: Any) -> dict[str, tuple[Endpoint, ...]]:
    if not isinstance(value, dict):
        raise ProtocolError("invalid_field", "'endpoints' must be an object of service -> list")
    result: dict[str, tuple[Endpoint, ...]] = {}
    for service, items in value.items():
        if not service or len(service) > MAX_NAME_LEN or not isinstance(items, list):
            raise ProtocolError("invalid_field", "'endpoints' must map service names to lists")
        eps: list[Endpoint] = []
        for item in items:
            if not isinstance(item, dict):
                raise ProtocolError("invalid_field", "each endpoint must be an object")
            health = item.get("health", "healthy")
            if health not in HEALTH_VALUES:
                raise ProtocolError("invalid_field", f"endpoint health must be one of {HEALTH_VALUES}")
            eps.append(
                Endpoint(
                    check_address(_str(item, "address", max_len=MAX_NAME_LEN + 8)),
                    _str(item, "spiffe_id"),
                    health,
                )
            )
        result[service] = tuple(eps)
    return result


def _policy(value: Any) -> PolicyPayload | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("invalid_field", "'policy' must be an object or null")
    revision = _str(value, "revision", max_len=200)
    message = value.get("message")
    if message is not None and not isinstance(message, str):
        raise ProtocolError("invalid_field", "'policy.message' must be a string or null")
    raw = value.get("files")
    if not isinstance(raw, dict):
        raise ProtocolError("invalid_field", "'policy.files' must be an object of path -> base64")
    files: dict[str, bytes] = {}
    for path, data in raw.items():
        if not isinstance(data, str) or not path:
            raise ProtocolError("invalid_field", "'policy.files' must map paths to base64 strings")
        try:
            files[path] = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_field", f"policy file {path[:100]!r} is not base64") from None
    return PolicyPayload(revision, message, files)


def decode(text: str | bytes) -> Message:
    """Parse one frame into a message; `ProtocolError` for anything that is not one."""
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("invalid_json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_json", "a message must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing_type", "'type' must be a string")
    v = data.get("v")
    if v != PROTOCOL_VERSION or isinstance(v, bool):
        raise ProtocolError(
            "unsupported_version", f"'v' is {str(v)[:20]!r}, this end speaks {PROTOCOL_VERSION}"
        )
    if kind == "register":
        service = data.get("service")
        if service is not None:
            service = _str(data, "service", max_len=MAX_NAME_LEN)
        return Register(
            spiffe_id=_str(data, "spiffe_id"),
            addresses=tuple(
                check_address(a) for a in _str_list(data, "addresses", MAX_ADDRESSES, MAX_NAME_LEN + 8)
            ),
            calls=_str_list(data, "calls", MAX_CALLS, MAX_NAME_LEN),
            service=service,
        )
    if kind == "ack":
        return Ack(_version(data))
    if kind == "heartbeat":
        return Heartbeat()
    if kind == "deregister":
        return Deregister()
    if kind == "snapshot":
        return Snapshot(
            version=_version(data),
            service=_str(data, "service", max_len=MAX_NAME_LEN),
            bundle_pem=_str(data, "bundle", max_len=MAX_SERVER_MESSAGE_BYTES),
            policy=_policy(data.get("policy")),
            endpoints=_endpoints(data.get("endpoints", {})),
        )
    if kind == "update":
        bundle = data.get("bundle")
        if bundle is not None:
            bundle = _str(data, "bundle", max_len=MAX_SERVER_MESSAGE_BYTES)
        return Update(
            version=_version(data),
            bundle_pem=bundle,
            policy=_policy(data.get("policy")),
            endpoints=_endpoints(data.get("endpoints", {})),
        )
    if kind == "error":
        return Error(_str(data, "code", max_len=100), _str(data, "detail", empty=True))
    raise ProtocolError("unknown_type", f"unknown message type {kind[:50]!r}")
