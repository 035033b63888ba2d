"""An independent reading of raw HTTP/1.1 bytes, and a raw client for the inbound sidecar.

The sidecar parses with llhttp; the oracle here is h11, a different implementation. A
request the sidecar forwards must be one h11 reads the same way (method, target, body):
two parsers that disagree on where a message ends is what request smuggling is made of.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from dataclasses import dataclass

import h11
import trio

from tests.sidecar_proxy.harness import EchoApp, SeenRequest, open_tls

# Appended to every fuzz input: a last request that closes the connection, so that a
# forwarded input ends in EOF rather than a keep-alive wait. The oracle sees it too.
SENTINEL_TARGET = "/__fuzz_end"
SENTINEL = b"GET " + SENTINEL_TARGET.encode() + b" HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n"

# No new byte for this long (and no EOF): the sidecar is waiting for input the fuzz case
# never sends (a Content-Length larger than what follows). Not a timing assertion: the
# client just stops waiting; what reached the app is checked either way.
QUIET_S = 1.0
EXCHANGE_LIMIT_S = 20.0


@dataclass(frozen=True)
class Seen:
    """One request as a parser read it: what must agree between oracle and app."""

    method: str
    target: str
    body_sha256: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class OracleReading:
    requests: list[Seen]
    error: str | None  # h11's complaint, if it stopped on one
    complete: bool  # every byte consumed into whole requests


def h11_reading(data: bytes) -> OracleReading:
    """Read `data` as a server would, pipelined requests included, with h11.

    llhttp skips CR and LF before a request line (RFC 9112 2.2 lets a server ignore empty
    lines there); h11 refuses them. The sidecar writes its own request line when it
    forwards, so this cannot move a message boundary downstream: they are skipped here too.
    """
    out: list[Seen] = []
    rest = data
    while True:
        rest = rest.lstrip(b"\r\n")
        if not rest:
            return OracleReading(out, None, True)
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(_single_spaced_request_line(rest))
        current: h11.Request | None = None
        digest = hashlib.sha256()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                return OracleReading(out, str(exc), False)
            if event is h11.NEED_DATA:
                return OracleReading(out, None, False)
            if isinstance(event, h11.Request):
                current = event
            elif isinstance(event, h11.Data):
                digest.update(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        assert current is not None
        out.append(
            Seen(
                current.method.decode("latin-1"),
                current.target.decode("latin-1"),
                digest.hexdigest(),
                tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in current.headers),
            )
        )
        if conn.their_state is h11.MUST_CLOSE:  # `connection: close` or HTTP/1.0
            return OracleReading(out, None, True)
        rest = bytes(conn._receive_buffer)  # what follows this message (private, but stable in 0.x)


def _single_spaced_request_line(data: bytes) -> bytes:
    """RFC 9112 3 lets a server split the request line on runs of whitespace (llhttp does);
    h11 wants single spaces. The sidecar writes its own request line, so read it as llhttp."""
    end = data.find(b"\r\n")
    if end < 0:
        return data
    words = data[:end].split()
    if len(words) != 3:
        return data
    return b" ".join(words) + data[end:]


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*")


def parse_answers(data: bytes) -> tuple[list[Answer], bytes]:
    """Complete responses in `data` (Content-Length or chunked framed) and the unparsed rest."""
    answers: list[Answer] = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return answers, data
        lines = data[:end].split(b"\r\n")
        m = _STATUS.fullmatch(lines[0])
        assert m is not None, f"not an HTTP/1.1 status line: {lines[0][:200]!r}"
        headers = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines[1:]]
        answer = Answer(int(m.group(1)), headers, b"")  # type: ignore[arg-type]
        rest = data[end + 4 :]
        length = answer.header(b"content-length")
        if length is not None:
            n = int(length)
            if len(rest) < n:
                return answers, data
            answer.body, data = rest[:n], rest[n:]
        elif (answer.header(b"transfer-encoding") or b"").lower() == b"chunked":
            body, after = _dechunk(rest)
            if after is None:
                return answers, data
            answer.body, data = body, after
        else:
            answer.body, data = rest, b""  # close-delimited: the rest is its body
        answers.append(answer)


def _dechunk(data: bytes) -> tuple[bytes, bytes | None]:
    body = b""
    while True:
        line_end = data.find(b"\r\n")
        if line_end < 0:
            return body, None
        size = int(data[:line_end].split(b";")[0], 16)
        data = data[line_end + 2 :]
        if size == 0:
            trailer_end = data.find(b"\r\n") if data.startswith(b"\r\n") else data.find(b"\r\n\r\n")
            if trailer_end < 0:
                return body, None
            return body, data[trailer_end + (2 if data.startswith(b"\r\n") else 4) :]
        if len(data) < size + 2:
            return body, None
        body, data = body + data[:size], data[size + 2 :]


async def exchange(port: int, context: ssl.SSLContext, data: bytes) -> tuple[list[Answer], bytes, bool]:
    """Send `data` over a new mTLS connection; (answers, unparsed bytes, closed by the server).

    Reads until the sidecar closes or goes quiet; the whole exchange is under a deadline.
    """
    with trio.fail_after(EXCHANGE_LIMIT_S):
        stream = await open_tls(port, context)
        got = b""
        closed = False
        try:

            async def send() -> None:
                try:
                    for i in range(0, len(data), 16384):
                        await stream.send_all(data[i : i + 16384])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # refused before we finished sending: the answer is what counts

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while True:
                    with trio.move_on_after(QUIET_S):
                        try:
                            piece = await stream.receive_some(65536)
                        except trio.BrokenResourceError:
                            piece = b""
                        if not piece:
                            closed = True
                            break
                        got += piece
                        continue
                    break  # quiet: the sidecar waits for bytes this case does not send
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)
    answers, rest = parse_answers(got)
    return answers, rest, closed


class Latin1EchoApp(EchoApp):
    """The harness's h11 echo app, recording fields as latin-1: fuzzed values are not UTF-8.

    (The harness app decodes as UTF-8 and would drop the connection on `\\x80`, which the
    sidecar would report as 502 app-reset: a fault of the test app, not of the sidecar.)
    """

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await self._next(stream, conn)
                if event is None or isinstance(event, h11.ConnectionClosed):
                    return
                assert isinstance(event, h11.Request)
                digest = hashlib.sha256()
                length = 0
                while True:
                    ev = await self._next(stream, conn)
                    if ev is None:
                        return
                    if isinstance(ev, h11.Data):
                        digest.update(ev.data)
                        length += len(ev.data)
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                self.requests.append(
                    SeenRequest(
                        event.method.decode("latin-1"),
                        event.target.decode("latin-1"),
                        [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers],
                        length,
                        digest.hexdigest(),
                    )
                )
                body = b'{"ok": true}'
                # No tunnels here: a 2xx to CONNECT would switch protocols.
                status = 405 if event.method == b"CONNECT" else 200
                await stream.send_all(
                    conn.send(h11.Response(status_code=status, headers=[("content-length", str(len(body)))]))
                    or b""
                )
                if event.method != b"HEAD":
                    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            # (h11.LocalProtocolError: a CONNECT answered 200 switches protocols; we stop there)
            return
        finally:
            await stream.aclose()
