"""Which header fields cross a hop, and the heads the sidecar writes when forwarding.

RFC 9110 §7.6.1: Connection, and every field it names, plus Proxy-Connection, Keep-Alive,
TE, Transfer-Encoding and Upgrade describe one hop only and are never forwarded.
Content-Length and Transfer-Encoding are rewritten from the framing llhttp parsed (the body
is re-framed by `framing`), so what we send always agrees with how we send it.
Everything else — `traceparent`, `tracestate`, `authorization`, unknown fields — passes
untouched, in order, with its original case.
"""

from __future__ import annotations

from trustmesh.sidecar.http.parser import Headers, RequestHead, ResponseHead

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",  # rewritten from the parsed framing
    }
)

XFCC = b"x-forwarded-client-cert"


def _copy_end_to_end(headers: Headers, out: list[bytes], strip: frozenset[bytes]) -> None:
    """Append `name: value\\r\\n` for each end-to-end field not in `strip`."""
    named: set[bytes] | None = None
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        low = name.lower()
        if low in HOP_BY_HOP or low in strip:
            if low == b"connection":
                if named is None:
                    named = set()
                named.update(token.strip().lower() for token in value.split(b","))
            continue
        kept.append((name, value))
    for name, value in kept:
        if named and name.lower() in named:
            continue
        out += (name, b": ", value, b"\r\n")


def forward_request_head(
    head: RequestHead, *, strip: frozenset[bytes] = frozenset(), add: bytes = b""
) -> bytes:
    """The head to send upstream: HTTP/1.1, keep-alive, end-to-end fields, our framing, `add`.

    `add` is pre-serialized fields (`name: value\\r\\n...`) the layer adds (XFCC inbound).
    """
    out = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    _copy_end_to_end(head.headers, out, strip)
    if head.chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    elif head.content_length is not None:
        out.append(b"content-length: %d\r\n" % head.content_length)
    out.append(add)
    out.append(b"\r\n")
    return b"".join(out)


def response_framing(head: ResponseHead, downstream_http11: bool) -> str:
    """How we send this response's body downstream: `length`, `chunked`, `none` or `close`.

    A body the upstream ended by closing is re-framed as chunked for an HTTP/1.1 client, so
    the client connection stays alive; an HTTP/1.0 client gets it close-delimited.
    """
    if head.body == "close":
        return "chunked" if downstream_http11 else "close"
    return head.body


def forward_response_head(head: ResponseHead, framing: str, *, close: bool) -> bytes:
    """The head to send downstream, framed as `framing`, with `connection: close` if `close`."""
    out = [b"HTTP/1.1 %d " % head.status, head.reason, b"\r\n"]
    if framing == "none":
        # HEAD and 304 answers carry the Content-Length of the body they describe, and
        # that is not ours to rewrite: pass the framing fields through as they came.
        for name, value in head.headers:
            low = name.lower()
            if low in (b"content-length", b"transfer-encoding"):
                out += (name, b": ", value, b"\r\n")
    _copy_end_to_end(head.headers, out, frozenset())
    if framing == "chunked":
        out.append(b"transfer-encoding: chunked\r\n")
    elif framing == "length":
        out.append(b"content-length: %d\r\n" % (head.content_length or 0))
    if close:
        out.append(b"connection: close\r\n")
    out.append(b"\r\n")
    return b"".join(out)
