"""Body framing on the way out: chunks are re-written from the de-chunked pieces llhttp gives.

Re-framing (instead of passing the client's chunk bytes through) means the upstream only
ever sees chunking we wrote: chunk extensions, odd sizes and whitespace tricks stop here.
"""

from __future__ import annotations

from trustmesh.sidecar.http.parser import Headers


def chunk(data: bytes) -> bytes:
    """One chunk carrying `data` (never empty: an empty chunk would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: Headers) -> bytes:
    """The zero-size chunk, trailer fields, and the final CRLF."""
    if not trailers:
        return b"0\r\n\r\n"
    out = [b"0\r\n"]
    for name, value in trailers:
        out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)
